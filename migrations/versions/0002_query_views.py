"""query views: v_runs, v_counts, v_distributions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

The views are the catalog's public SQL surface (psql, Polars, notebooks). Only runs whose
status is 'done' appear, so half-finished work units are never visible.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RUN_JOINS = """
    JOIN models m ON m.id = r.model_id
    JOIN families f ON f.id = m.family_id
    JOIN tasks t ON t.id = r.task_id
    JOIN prompts p ON p.id = r.prompt_id
"""
_RUN_COLUMNS = """f.name AS family, m.stage AS stage, m.stage_order AS stage_order,
    m.name AS model, t.name AS task, p.key AS prompt, p.position AS prompt_id,
    p.template AS prompt_text"""

V_RUNS = f"""
CREATE VIEW v_runs AS
SELECT {_RUN_COLUMNS}, r.mode AS mode, r.origin AS origin, r.id AS run_id,
    r.n_samples AS n_samples,
    COALESCE((SELECT SUM(oc.count) FROM option_counts oc WHERE oc.run_id = r.id), 0) AS n_valid,
    r.n_invalid AS n_invalid, r.covered_mass AS covered_mass, r.seed AS seed,
    r.temperature AS temperature, r.top_p AS top_p, r.top_k AS top_k,
    r.max_new_tokens AS max_new_tokens, r.finished_at AS finished_at
FROM runs r {_RUN_JOINS}
WHERE r.status = 'done'
"""

V_COUNTS = f"""
CREATE VIEW v_counts AS
SELECT {_RUN_COLUMNS}, oc.option AS option, oc.count AS count, r.mode AS mode,
    r.n_invalid AS n_invalid, r.id AS run_id
FROM option_counts oc JOIN runs r ON r.id = oc.run_id {_RUN_JOINS}
WHERE r.status = 'done'
UNION ALL
SELECT {_RUN_COLUMNS}, ep.option AS option, NULL AS count, r.mode AS mode,
    r.n_invalid AS n_invalid, r.id AS run_id
FROM exact_probs ep JOIN runs r ON r.id = ep.run_id {_RUN_JOINS}
WHERE r.status = 'done'
"""

# Sampled counts are pooled over the runs of one (model, prompt); exact probabilities of
# repeated exact runs are averaged. Each (model, task, prompt, mode) sums to probability 1.
V_DISTRIBUTIONS = f"""
CREATE VIEW v_distributions AS
WITH sampled AS (
    SELECT {_RUN_COLUMNS}, oc.option AS option, SUM(oc.count) AS count
    FROM option_counts oc JOIN runs r ON r.id = oc.run_id {_RUN_JOINS}
    WHERE r.status = 'done' AND r.mode = 'sampled'
    GROUP BY f.name, m.stage, m.stage_order, m.name, t.name, p.key, p.position, p.template,
        oc.option
), exact AS (
    SELECT {_RUN_COLUMNS}, ep.option AS option, AVG(ep.probability) AS probability
    FROM exact_probs ep JOIN runs r ON r.id = ep.run_id {_RUN_JOINS}
    WHERE r.status = 'done' AND r.mode = 'exact'
    GROUP BY f.name, m.stage, m.stage_order, m.name, t.name, p.key, p.position, p.template,
        ep.option
)
SELECT family, stage, stage_order, model, task, prompt, prompt_id, prompt_text, option,
    count, 'sampled' AS mode,
    CASE WHEN SUM(count) OVER (PARTITION BY model, task, prompt) > 0
        THEN CAST(count AS DOUBLE PRECISION) / SUM(count) OVER (PARTITION BY model, task, prompt)
    END AS probability
FROM sampled
UNION ALL
SELECT family, stage, stage_order, model, task, prompt, prompt_id, prompt_text, option,
    NULL AS count, 'exact' AS mode,
    probability / SUM(probability) OVER (PARTITION BY model, task, prompt) AS probability
FROM exact
"""

VIEWS = {"v_runs": V_RUNS, "v_counts": V_COUNTS, "v_distributions": V_DISTRIBUTIONS}


def upgrade() -> None:
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
