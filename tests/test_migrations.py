"""Alembic migrations (migrations/), on SQLite and PostgreSQL, in the style of MLflow's tests.

One head; an empty database upgrades; the ORM models match the migrated schema; every
revision upgrades, downgrades and upgrades again; data stored before an upgrade is unchanged
after it and visible in the views; ``alembic upgrade head`` works from the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from catalog import db as catalog_db
from catalog.schema import Base
from catalog.views import VIEWS, read_view

REPO = Path(__file__).resolve().parent.parent
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


def table_contents(engine) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {
            name: sorted(tuple(row) for row in conn.execute(table.select()))
            for name, table in Base.metadata.tables.items()
        }


def test_data_before_an_upgrade_is_unchanged_and_visible_in_the_views(empty_engine):
    catalog_db.upgrade(empty_engine, "0001")
    with empty_engine.begin() as conn:
        for statement in ROWS_AT_0001:
            conn.execute(text(statement))
    before = table_contents(empty_engine)
    catalog_db.upgrade(empty_engine)
    assert table_contents(empty_engine) == before
    counts = read_view(empty_engine, "v_counts").sort("model", "option")
    assert counts.select("model", "prompt", "option", "count", "n_invalid").rows() == [
        ("fam-base", "plain", "heads", 3, 2),
        ("fam-base", "plain", "tails", 1, 2),
        ("fam-sft", "plain", "heads", 10, 0),
    ]
    dist = read_view(empty_engine, "v_distributions", model="fam-base").sort("option")
    assert dist["probability"].to_list() == [0.75, 0.25]
    assert read_view(empty_engine, "v_runs").height == 2  # the pending run is not shown


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
