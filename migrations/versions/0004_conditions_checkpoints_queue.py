"""conditions, checkpoints, backends and the work queue

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- runs.condition (readable JSON) and runs.condition_key: what the user chose that changes
  the answer distribution (mode, temperature, top_p, top_k, max_new_tokens, the user's stop
  strings, the base-stage scaffold). Filled in for the runs already stored: ingested runs
  from their parameters (a plain stage's newline stop is the catalog's own protocol, not the
  user's), imported runs as the "imported" condition. The views pool within one condition
  and show it as columns.
- runs.stale: the task's options or normalizer changed after the run was normalized
  (`catalog renormalize` clears it).
- runs.claim_token and runs.heartbeat_at: the queue's fencing token and the last heartbeat.
- models.step (a checkpoint of a stage; unique per family, stage and step, and at most one
  model without a step per stage), models.backend (replacing the "table:" prefix of
  source) and models.backend_options.
"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (a migration must not change when the library does).
PLAIN_DEFAULT_STOP = ["\n"]
SCAFFOLD_AT_0003 = "qa@1"  # "Question: {prompt}\nAnswer:", the only scaffold before 0004


def _condition_key(condition: dict) -> str:
    canonical = json.dumps(condition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _condition(row) -> dict:
    if row.origin == "import":
        return {"mode": row.mode, "imported": True}
    if row.mode == "exact":
        return {"mode": "exact", "temperature": None, "top_p": None, "top_k": None,
                "max_new_tokens": None, "stop": [], "scaffold": SCAFFOLD_AT_0003}
    sampling = row.sampling if isinstance(row.sampling, dict) else json.loads(row.sampling or "{}")
    stop = list(sampling.get("stop") or [])
    if row.prompt_format == "plain" and stop == PLAIN_DEFAULT_STOP:
        stop = []
    top_k = row.top_k or None
    return {
        "mode": "sampled",
        "temperature": None if row.temperature is None else float(row.temperature),
        "top_p": None if row.top_p is None else float(row.top_p),
        "top_k": top_k,
        "max_new_tokens": row.max_new_tokens,
        "stop": stop,
        "scaffold": SCAFFOLD_AT_0003,
    }


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

V_RUNS = f"""
CREATE VIEW v_runs AS
SELECT {_RUN_COLUMNS}, r.mode AS mode, r.origin AS origin, r.id AS run_id,
    r.n_samples AS n_samples,
    COALESCE((SELECT SUM(oc.count) FROM option_counts oc WHERE oc.run_id = r.id), 0) AS n_valid,
    r.n_invalid AS n_invalid, r.covered_mass AS covered_mass, r.seed AS seed,
    {_CONDITION_COLUMNS}, r.stale AS stale, m.backend AS backend,
    r.finished_at AS finished_at
FROM runs r {_RUN_JOINS}
WHERE r.status = 'done'
"""

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

VIEWS = {"v_runs": V_RUNS, "v_counts": V_COUNTS, "v_distributions": V_DISTRIBUTIONS}


# 0003's views, restored on downgrade (copied: migrations never import each other).
V_RUNS_0003 = """
CREATE VIEW v_runs AS
SELECT f.name AS family, m.stage AS stage, m.stage_order AS stage_order,
    m.name AS model, t.name AS task, p.key AS prompt, p.position AS prompt_id,
    p.template AS prompt_text, r.mode AS mode, r.origin AS origin, r.id AS run_id,
    r.n_samples AS n_samples,
    COALESCE((SELECT SUM(oc.count) FROM option_counts oc WHERE oc.run_id = r.id), 0) AS n_valid,
    r.n_invalid AS n_invalid, r.covered_mass AS covered_mass, r.seed AS seed,
    r.temperature AS temperature, r.top_p AS top_p, r.top_k AS top_k,
    r.max_new_tokens AS max_new_tokens, r.finished_at AS finished_at
FROM runs r 
    JOIN models m ON m.id = r.model_id
    JOIN families f ON f.id = m.family_id
    JOIN tasks t ON t.id = r.task_id
    JOIN prompts p ON p.id = r.prompt_id

WHERE r.status = 'done'
"""

V_COUNTS_0003 = """
CREATE VIEW v_counts AS
SELECT f.name AS family, m.stage AS stage, m.stage_order AS stage_order,
    m.name AS model, t.name AS task, p.key AS prompt, p.position AS prompt_id,
    p.template AS prompt_text, oc.option AS option, oc.count AS count, r.mode AS mode,
    r.n_invalid AS n_invalid, r.id AS run_id
FROM option_counts oc JOIN runs r ON r.id = oc.run_id 
    JOIN models m ON m.id = r.model_id
    JOIN families f ON f.id = m.family_id
    JOIN tasks t ON t.id = r.task_id
    JOIN prompts p ON p.id = r.prompt_id

WHERE r.status = 'done'
UNION ALL
SELECT f.name AS family, m.stage AS stage, m.stage_order AS stage_order,
    m.name AS model, t.name AS task, p.key AS prompt, p.position AS prompt_id,
    p.template AS prompt_text, ep.option AS option, NULL AS count, r.mode AS mode,
    r.n_invalid AS n_invalid, r.id AS run_id
FROM exact_probs ep JOIN runs r ON r.id = ep.run_id 
    JOIN models m ON m.id = r.model_id
    JOIN families f ON f.id = m.family_id
    JOIN tasks t ON t.id = r.task_id
    JOIN prompts p ON p.id = r.prompt_id

WHERE r.status = 'done'
"""

V_DISTRIBUTIONS_0003 = """
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


def upgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")

    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("step", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("backend", sa.String(length=50), nullable=False,
                                   server_default="transformers"))
        batch.add_column(sa.Column("backend_options", sa.JSON(), nullable=False,
                                   server_default="{}"))
        batch.drop_constraint("uq_models_family_id_stage", type_="unique")
        batch.create_unique_constraint("uq_models_family_id_stage_step",
                                       ["family_id", "stage", "step"])
        batch.create_check_constraint("ck_models_step_nonnegative", "step IS NULL OR step >= 0")
    # At most one model without a step per (family, stage): NULL steps are distinct in a
    # unique constraint, so this needs a partial index (both databases have them).
    op.create_index("uq_models_family_id_stage_final", "models", ["family_id", "stage"],
                    unique=True, sqlite_where=sa.text("step IS NULL"),
                    postgresql_where=sa.text("step IS NULL"))
    op.execute("UPDATE models SET backend = 'table', source = SUBSTR(source, 7) "
               "WHERE source LIKE 'table:%'")

    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("condition", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("condition_key", sa.String(length=16), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("stale", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_runs_condition_key", ["condition_key"])

    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT r.id, r.mode, r.origin, r.temperature, r.top_p, r.top_k, r.max_new_tokens, "
        "r.sampling, m.prompt_format FROM runs r JOIN models m ON m.id = r.model_id"
    )).all()
    runs = sa.table("runs", sa.column("id"), sa.column("condition", sa.JSON),
                    sa.column("condition_key"))
    updates = []
    for row in rows:
        condition = _condition(row)
        updates.append({"run_id": row.id, "condition": condition,
                        "condition_key": _condition_key(condition)})
    if updates:
        bind.execute(
            runs.update().where(runs.c.id == sa.bindparam("run_id"))
            .values(condition=sa.bindparam("condition", type_=sa.JSON),
                    condition_key=sa.bindparam("condition_key")),
            updates,
        )

    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_condition_key")
        for name in ("heartbeat_at", "claim_token", "stale", "condition_key", "condition"):
            batch.drop_column(name)
    op.execute("UPDATE models SET source = 'table:' || source WHERE backend = 'table'")
    op.drop_index("uq_models_family_id_stage_final", table_name="models")
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("ck_models_step_nonnegative", type_="check")
        batch.drop_constraint("uq_models_family_id_stage_step", type_="unique")
        batch.create_unique_constraint("uq_models_family_id_stage", ["family_id", "stage"])
        for name in ("backend_options", "backend", "step"):
            batch.drop_column(name)
    for sql in (V_RUNS_0003, V_COUNTS_0003, V_DISTRIBUTIONS_0003):
        op.execute(sql)
