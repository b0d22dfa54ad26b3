"""why samples are invalid: counts per reason on runs, the reason on each completion

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

- runs.n_no_answer, n_ambiguous, n_off_category, n_out_of_range: the run's invalid samples
  by the reason the normalizer gave (they add up to n_invalid). NULL where the reasons are
  not known: counts imported from a file, and runs normalized before normalizers gave reasons
  (`catalog renormalize` fills them in from the stored completions).
- completions.invalid_reason: why a completion text is invalid (NULL for a valid one).
- v_runs shows the four counts and the run's normalizer_version.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of catalog.enums.INVALID_REASONS (a migration must not change with the library).
INVALID_REASONS = ("no_answer", "ambiguous", "off_category", "out_of_range")
REASON_COLUMNS = tuple(f"n_{reason}" for reason in INVALID_REASONS)

_RUN_JOINS = """
    JOIN models m ON m.id = r.model_id
    JOIN families f ON f.id = m.family_id
    JOIN tasks t ON t.id = r.task_id
    JOIN prompts p ON p.id = r.prompt_id
"""
_RUN_COLUMNS = """f.name AS family, m.stage AS stage, m.stage_order AS stage_order,
    m.step AS step, m.name AS model, t.name AS task, p.key AS prompt,
    p.position AS prompt_id, p.template AS prompt_text"""
_CONDITION_COLUMNS = """r.temperature AS temperature, r.top_p AS top_p, r.top_k AS top_k,
    r.max_new_tokens AS max_new_tokens, r.condition_key AS condition_key"""


def _v_runs(reasons: bool) -> str:
    extra = ""
    if reasons:
        extra = "".join(f"r.{column} AS {column}, " for column in REASON_COLUMNS)
        extra += "r.normalizer_version AS normalizer_version, "
    return f"""
CREATE VIEW v_runs AS
SELECT {_RUN_COLUMNS}, r.mode AS mode, r.origin AS origin, r.id AS run_id,
    r.n_samples AS n_samples,
    COALESCE((SELECT SUM(oc.count) FROM option_counts oc WHERE oc.run_id = r.id), 0) AS n_valid,
    r.n_invalid AS n_invalid, {extra}r.covered_mass AS covered_mass, r.seed AS seed,
    {_CONDITION_COLUMNS}, r.stale AS stale, m.backend AS backend,
    r.finished_at AS finished_at
FROM runs r {_RUN_JOINS}
WHERE r.status = 'done'
"""


# 0004's other views, unchanged: SQLite cannot rebuild a table that a view refers to, so
# every view is dropped and created again (copied: migrations never import each other).
V_COUNTS = f"""
CREATE VIEW v_counts AS
SELECT {_RUN_COLUMNS}, oc.option AS option, oc.count AS count, r.mode AS mode,
    r.n_invalid AS n_invalid, r.id AS run_id, {_CONDITION_COLUMNS}
FROM option_counts oc JOIN runs r ON r.id = oc.run_id {_RUN_JOINS}
WHERE r.status = 'done'
UNION ALL
SELECT {_RUN_COLUMNS}, ep.option AS option, NULL AS count, r.mode AS mode,
    r.n_invalid AS n_invalid, r.id AS run_id, {_CONDITION_COLUMNS}
FROM exact_probs ep JOIN runs r ON r.id = ep.run_id {_RUN_JOINS}
WHERE r.status = 'done'
"""

# Pooled by ids (model, task, prompt, condition) before the names are joined. Every run of
# one condition has the same temperature, top_p, top_k and max_new_tokens (they are part of
# it), so the condition's columns are read from any one of its runs.
V_DISTRIBUTIONS = """
CREATE VIEW v_distributions AS
WITH sampled AS (
    SELECT r.model_id, r.task_id, r.prompt_id AS prompt_row, r.condition_key, oc.option,
        SUM(oc.count) AS count
    FROM option_counts oc JOIN runs r ON r.id = oc.run_id
    WHERE r.status = 'done' AND r.mode = 'sampled'
    GROUP BY r.model_id, r.task_id, r.prompt_id, r.condition_key, oc.option
), exact AS (
    SELECT r.model_id, r.task_id, r.prompt_id AS prompt_row, r.condition_key, ep.option,
        AVG(ep.probability) AS probability
    FROM exact_probs ep JOIN runs r ON r.id = ep.run_id
    WHERE r.status = 'done' AND r.mode = 'exact'
    GROUP BY r.model_id, r.task_id, r.prompt_id, r.condition_key, ep.option
), pooled AS (
    SELECT model_id, task_id, prompt_row, condition_key, option, count, 'sampled' AS mode,
        CASE WHEN SUM(count) OVER (PARTITION BY model_id, task_id, prompt_row, condition_key) > 0
            THEN CAST(count AS DOUBLE PRECISION)
                / SUM(count) OVER (PARTITION BY model_id, task_id, prompt_row, condition_key)
        END AS probability
    FROM sampled
    UNION ALL
    SELECT model_id, task_id, prompt_row, condition_key, option, NULL AS count, 'exact' AS mode,
        CASE WHEN SUM(probability)
                OVER (PARTITION BY model_id, task_id, prompt_row, condition_key) > 0
            THEN probability
                / SUM(probability) OVER (PARTITION BY model_id, task_id, prompt_row, condition_key)
        END AS probability
    FROM exact
), conditions AS (
    SELECT condition_key, MIN(temperature) AS temperature, MIN(top_p) AS top_p,
        MIN(top_k) AS top_k, MIN(max_new_tokens) AS max_new_tokens
    FROM runs WHERE status = 'done'
    GROUP BY condition_key
)
SELECT f.name AS family, m.stage AS stage, m.stage_order AS stage_order, m.step AS step,
    m.name AS model, t.name AS task, p.key AS prompt, p.position AS prompt_id,
    p.template AS prompt_text, d.option AS option, d.count AS count, d.mode AS mode,
    d.probability AS probability, c.temperature AS temperature, c.top_p AS top_p,
    c.top_k AS top_k, c.max_new_tokens AS max_new_tokens, d.condition_key AS condition_key
FROM pooled d
    JOIN models m ON m.id = d.model_id
    JOIN families f ON f.id = m.family_id
    JOIN tasks t ON t.id = d.task_id
    JOIN prompts p ON p.id = d.prompt_row
    JOIN conditions c ON c.condition_key = d.condition_key
"""



def _drop_views() -> None:
    for name in ("v_distributions", "v_counts", "v_runs"):
        op.execute(f"DROP VIEW {name}")


def _create_views(reasons: bool) -> None:
    for sql in (_v_runs(reasons), V_COUNTS, V_DISTRIBUTIONS):
        op.execute(sql)


def upgrade() -> None:
    _drop_views()
    with op.batch_alter_table("runs") as batch:
        for column in REASON_COLUMNS:
            batch.add_column(sa.Column(column, sa.Integer(), nullable=True))
            batch.create_check_constraint(f"ck_runs_{column}_nonnegative",
                                          f"{column} IS NULL OR {column} >= 0")
    reasons = ", ".join(f"'{reason}'" for reason in INVALID_REASONS)
    with op.batch_alter_table("completions") as batch:
        batch.add_column(sa.Column("invalid_reason", sa.String(length=20), nullable=True))
        batch.create_check_constraint(
            "ck_completions_invalid_reason_known",
            f"invalid_reason IS NULL OR invalid_reason IN ({reasons})")
    _create_views(reasons=True)


def downgrade() -> None:
    _drop_views()
    with op.batch_alter_table("completions") as batch:
        batch.drop_constraint("ck_completions_invalid_reason_known", type_="check")
        batch.drop_column("invalid_reason")
    with op.batch_alter_table("runs") as batch:
        for column in REASON_COLUMNS:
            batch.drop_constraint(f"ck_runs_{column}_nonnegative", type_="check")
            batch.drop_column(column)
    _create_views(reasons=False)
