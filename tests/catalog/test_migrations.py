"""Alembic migrations (migrations/), on SQLite and PostgreSQL, in the style of MLflow's tests.

One head; an empty database upgrades; the ORM models match the migrated schema; every
revision upgrades, downgrades and upgrades again; data stored before an upgrade is unchanged
after it and visible in the views; ``alembic upgrade head`` works from the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, select, text

from catalog import db as catalog_db
from catalog.conditions import Condition
from catalog.prompting import PLAIN_SCAFFOLD_NAME
from catalog.schema import Base
from catalog.views import VIEWS, read_view

REPO = Path(__file__).resolve().parents[2]
TABLES = set(Base.metadata.tables)


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(catalog_db.alembic_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


@pytest.fixture
def empty_engine(empty_db_url):
    engine = catalog_db.make_engine(empty_db_url)
    yield engine
    engine.dispose()


def schema_objects(engine) -> tuple[set[str], set[str]]:
    inspector = inspect(engine)
    return set(inspector.get_table_names()) - {"alembic_version"}, set(inspector.get_view_names())


def test_migrations_have_one_head():
    heads = ScriptDirectory.from_config(catalog_db.alembic_config()).get_heads()
    assert heads == [catalog_db.head_revision()]
    assert revisions()[0] == "0001"


def test_upgrade_from_empty(empty_engine):
    assert catalog_db.current_revision(empty_engine) is None
    catalog_db.upgrade(empty_engine)
    assert catalog_db.current_revision(empty_engine) == catalog_db.head_revision()
    assert schema_objects(empty_engine) == (TABLES, set(VIEWS))


def test_models_match_the_migrated_schema(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_every_revision_upgrades_downgrades_and_upgrades_again(empty_engine):
    previous = "base"
    for revision in revisions():
        catalog_db.upgrade(empty_engine, revision)
        after_upgrade = schema_objects(empty_engine)
        catalog_db.downgrade(empty_engine, previous)
        assert catalog_db.current_revision(empty_engine) == (None if previous == "base" else previous)
        catalog_db.upgrade(empty_engine, revision)
        assert catalog_db.current_revision(empty_engine) == revision
        assert schema_objects(empty_engine) == after_upgrade
        previous = revision
    catalog_db.downgrade(empty_engine, "base")
    assert schema_objects(empty_engine) == (set(), set())


# Rows written at revision 0001 with plain SQL, as an older catalog would have written them.
ROWS_AT_0001 = [
    "INSERT INTO families (id, name, created_at) VALUES (1, 'fam', '2025-01-01 00:00:00')",
    "INSERT INTO models (id, name, family_id, stage, stage_order, prompt_format, "
    "trust_remote_code, created_at) VALUES (1, 'fam-base', 1, 'base', 0, 'plain', false, "
    "'2025-01-01 00:00:00'), (2, 'fam-sft', 1, 'sft', 1, 'chat', false, '2025-01-01 00:00:00')",
    "INSERT INTO tasks (id, name, kind, options, normalizer, normalizer_version, spec, "
    "created_at) VALUES (1, 'coin', 'closed', '[\"heads\", \"tails\"]', 'choice', '1', '{}', "
    "'2025-01-01 00:00:00')",
    "INSERT INTO prompts (id, task_id, key, position, template) VALUES "
    "(1, 1, 'plain', 0, 'Flip a coin.'), (2, 1, 'terse', 1, 'Heads or tails?')",
    "INSERT INTO runs (id, unit_key, model_id, task_id, prompt_id, mode, origin, status, "
    "sampling, n_invalid, attempts, library_versions, created_at) VALUES "
    "(1, 'u1', 1, 1, 1, 'sampled', 'import', 'done', '{}', 2, 0, '{}', '2025-01-01 00:00:00'), "
    "(2, 'u2', 2, 1, 1, 'sampled', 'import', 'done', '{}', 0, 0, '{}', '2025-01-01 00:00:00'), "
    "(3, 'u3', 2, 1, 2, 'sampled', 'ingest', 'pending', '{}', 0, 0, '{}', '2025-01-01 00:00:00')",
    "INSERT INTO option_counts (run_id, option, count) VALUES "
    "(1, 'heads', 3), (1, 'tails', 1), (2, 'heads', 10)",
]
# Rows of 0003 that 0004 gives a condition, a backend and no "table:" prefix.
ROWS_AT_0003 = [
    "INSERT INTO models (id, name, family_id, stage, stage_order, source, prompt_format, "
    "trust_remote_code, created_at) VALUES (3, 'fam-dpo', 1, 'dpo', 2, 'table:/t.json', 'chat', "
    "false, '2025-01-01 00:00:00')",
    # a plain stage sampled with the catalog's own newline stop (not the user's)
    "INSERT INTO runs (id, unit_key, model_id, task_id, prompt_id, mode, origin, status, "
    "n_samples, temperature, top_p, max_new_tokens, sampling, n_invalid, attempts, "
    "library_versions, created_at) VALUES (4, 'u4', 1, 1, 2, 'sampled', 'ingest', 'done', 4, "
    "0.7, 1.0, 8, '{\"n\": 4, \"stop\": [\"\\n\"], \"temperature\": 0.7}', 0, 1, '{}', "
    "'2025-01-01 00:00:00')",
    "INSERT INTO option_counts (run_id, option, count) VALUES (4, 'tails', 4)",
]


def table_columns(engine) -> dict[str, list[str]]:
    metadata = MetaData()
    metadata.reflect(engine)
    return {name: list(table.c.keys()) for name, table in metadata.tables.items()
            if name != "alembic_version"}


def table_contents(engine, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """Every row of the given columns of each table (those that existed at some revision)."""
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as conn:
        return {
            name: sorted(tuple(row) for row in conn.execute(
                select(*(metadata.tables[name].c[c] for c in names))))
            for name, names in columns.items()
        }


def test_data_before_an_upgrade_is_unchanged_and_visible_in_the_views(empty_engine):
    catalog_db.upgrade(empty_engine, "0001")
    with empty_engine.begin() as conn:
        for statement in ROWS_AT_0001:
            conn.execute(text(statement))
    columns_at_0001 = table_columns(empty_engine)
    before = table_contents(empty_engine, columns_at_0001)
    catalog_db.upgrade(empty_engine)
    assert table_contents(empty_engine, columns_at_0001) == before
    counts = read_view(empty_engine, "v_counts").sort("model", "option")
    assert counts.select("model", "prompt", "option", "count", "n_invalid").rows() == [
        ("fam-base", "plain", "heads", 3, 2),
        ("fam-base", "plain", "tails", 1, 2),
        ("fam-sft", "plain", "heads", 10, 0),
    ]
    dist = read_view(empty_engine, "v_distributions", model="fam-base").sort("option")
    assert dist["probability"].to_list() == [0.75, 0.25]
    assert read_view(empty_engine, "v_runs").height == 2  # the pending run is not shown


def test_0004_fills_in_conditions_and_backends(empty_engine):
    catalog_db.upgrade(empty_engine, "0001")
    with empty_engine.begin() as conn:
        for statement in ROWS_AT_0001:
            conn.execute(text(statement))
    catalog_db.upgrade(empty_engine, "0003")
    with empty_engine.begin() as conn:
        for statement in ROWS_AT_0003:
            conn.execute(text(statement))
    catalog_db.upgrade(empty_engine, "0004")
    with empty_engine.connect() as conn:
        runs = {row.id: row for row in conn.execute(
            text("SELECT id, condition, condition_key, stale FROM runs"))}
        models = dict(conn.execute(text("SELECT name, backend || ' ' || source FROM models "
                                        "WHERE source IS NOT NULL")).all())
    imported = Condition.unknown_import()
    assert runs[1].condition_key == runs[2].condition_key == imported.key
    ingested = Condition.sampled(temperature=0.7, top_p=1.0, top_k=None, max_new_tokens=8,
                                 scaffold=PLAIN_SCAFFOLD_NAME)
    assert runs[4].condition_key == ingested.key  # the plain stage's newline stop is not in it
    stored = runs[4].condition if isinstance(runs[4].condition, dict) else json.loads(runs[4].condition)
    assert Condition.from_dict(stored) == ingested
    assert not any(run.stale for run in runs.values())
    assert models == {"fam-dpo": "table /t.json"}
    dist = read_view(empty_engine, "v_distributions", model="fam-base")
    by_condition = dict(dist.group_by("condition_key").agg(pl.col("count").sum()).rows())
    assert by_condition == {imported.key: 4, ingested.key: 4}  # never pooled
    assert dist.filter(pl.col("condition_key") == ingested.key)["temperature"].to_list() == [0.7]
    catalog_db.downgrade(empty_engine, "0003")
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT source FROM models WHERE id = 3")).scalar() == "table:/t.json"


def test_alembic_upgrade_head_from_the_repository(empty_db_url):
    env = {**os.environ, "CATALOG_DATABASE_URL": empty_db_url}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    engine = catalog_db.make_engine(empty_db_url)
    try:
        assert catalog_db.current_revision(engine) == catalog_db.head_revision()
        assert schema_objects(engine) == (TABLES, set(VIEWS))
    finally:
        engine.dispose()
