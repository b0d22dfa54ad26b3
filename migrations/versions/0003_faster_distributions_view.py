"""v_distributions groups by ids, not by eight text columns

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Same rows and values as 0002's view; pooling by (model, task, prompt) ids before joining the
names is about twice as fast on millions of rows. Also guards the exact-mode division when
every option of a run has probability 0.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

V_DISTRIBUTIONS = """
CREATE VIEW v_distributions AS
WITH sampled AS (
    SELECT r.model_id, r.task_id, r.prompt_id AS prompt_row, oc.option, SUM(oc.count) AS count
    FROM option_counts oc JOIN runs r ON r.id = oc.run_id
    WHERE r.status = 'done' AND r.mode = 'sampled'
    GROUP BY r.model_id, r.task_id, r.prompt_id, oc.option
), exact AS (
    SELECT r.model_id, r.task_id, r.prompt_id AS prompt_row, ep.option,
        AVG(ep.probability) AS probability
    FROM exact_probs ep JOIN runs r ON r.id = ep.run_id
    WHERE r.status = 'done' AND r.mode = 'exact'
    GROUP BY r.model_id, r.task_id, r.prompt_id, ep.option
), pooled AS (
    SELECT model_id, task_id, prompt_row, option, count, 'sampled' AS mode,
        CASE WHEN SUM(count) OVER (PARTITION BY model_id, task_id, prompt_row) > 0
            THEN CAST(count AS DOUBLE PRECISION)
                / SUM(count) OVER (PARTITION BY model_id, task_id, prompt_row)
        END AS probability
    FROM sampled
    UNION ALL
    SELECT model_id, task_id, prompt_row, option, NULL AS count, 'exact' AS mode,
        CASE WHEN SUM(probability) OVER (PARTITION BY model_id, task_id, prompt_row) > 0
            THEN probability / SUM(probability) OVER (PARTITION BY model_id, task_id, prompt_row)
        END AS probability
    FROM exact
)
SELECT f.name AS family, m.stage AS stage, m.stage_order AS stage_order, m.name AS model,
    t.name AS task, p.key AS prompt, p.position AS prompt_id, p.template AS prompt_text,
    d.option AS option, d.count AS count, d.mode AS mode, d.probability AS probability
FROM pooled d
    JOIN models m ON m.id = d.model_id
    JOIN families f ON f.id = m.family_id
    JOIN tasks t ON t.id = d.task_id
    JOIN prompts p ON p.id = d.prompt_row
"""

# 0002's definition, restored on downgrade.
_RUN_JOINS = """
    JOIN models m ON m.id = r.model_id
    JOIN families f ON f.id = m.family_id
    JOIN tasks t ON t.id = r.task_id
    JOIN prompts p ON p.id = r.prompt_id
"""
_RUN_COLUMNS = """f.name AS family, m.stage AS stage, m.stage_order AS stage_order,
    m.name AS model, t.name AS task, p.key AS prompt, p.position AS prompt_id,
    p.template AS prompt_text"""
V_DISTRIBUTIONS_0002 = f"""
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


def upgrade() -> None:
    op.execute("DROP VIEW v_distributions")
    op.execute(V_DISTRIBUTIONS)


def downgrade() -> None:
    op.execute("DROP VIEW v_distributions")
    op.execute(V_DISTRIBUTIONS_0002)
