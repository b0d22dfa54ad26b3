"""The engine factory, session scope and schema gate (catalog/db.py)."""

import pytest
from sqlalchemy import text

from catalog import db as catalog_db
from catalog.errors import DatabaseUnreachable, SchemaOutOfDate
from catalog.schema import Family


def test_empty_database_is_brought_to_head(empty_db_url):
    engine = catalog_db.open_catalog(empty_db_url)
    assert catalog_db.current_revision(engine) == catalog_db.head_revision()
    engine.dispose()


def test_session_scope_commits_and_rolls_back(engine):
    with catalog_db.session_scope(engine) as session:
        session.add(Family(name="kept"))
    with pytest.raises(RuntimeError):
        with catalog_db.session_scope(engine) as session:
            session.add(Family(name="dropped"))
            session.flush()
            raise RuntimeError("boom")
    with engine.connect() as conn:
        names = conn.execute(text("SELECT name FROM families")).scalars().all()
    assert names == ["kept"]


def test_stale_schema_is_refused_with_the_command_to_run(empty_db_url):
    engine = catalog_db.make_engine(empty_db_url)
    catalog_db.upgrade(engine, "0001")
    with pytest.raises(SchemaOutOfDate, match="run `catalog db upgrade"):
        catalog_db.open_catalog(empty_db_url)
    engine.dispose()


def test_unreachable_database_names_the_masked_url():
    with pytest.raises(DatabaseUnreachable) as info:
        catalog_db.open_catalog("postgresql://alice:s3cret@127.0.0.1:1/nowhere")
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)
