"""the branching factor: per-run token entropy sums by position

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

- runs.token_entropy (JSON, NULL where unknown): for a sampled run, per generated position t
  the count-weighted sum of the next-token entropies (bits) over the prefixes its samples
  passed through, and the number of tokens drawn there:
  ``{"bits": [...], "tokens": [...], "estimate": null | "how it was estimated"}``. The tree
  sampler records it exactly; imported counts leave it NULL (docs/metrics.md, section 13).

A nullable column added with ALTER TABLE ADD COLUMN: no table rebuild, so the views that
refer to runs stay as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("token_entropy", sa.JSON(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place (no rebuild, the views stay valid).
        op.execute("ALTER TABLE runs DROP COLUMN token_entropy")
    else:
        op.drop_column("runs", "token_entropy")
