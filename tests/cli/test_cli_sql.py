"""``catalog sql`` is read-only on SQLite and PostgreSQL: a statement that tries to write is
refused with one line, and every table holds what it held before."""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from catalog import db as catalog_db
from catalog.cli import main
from catalog.errors import InvalidInput
from catalog.schema import Base
from catalog.views import READ_ONLY_REFUSAL, read_sql

COUNTS = pl.DataFrame(
    {
        "family": ["fam", "fam", "fam"],
        "stage": ["base", "base", "sft"],
        "model": ["fam-base", "fam-base", "fam-sft"],
        "task": ["coin", "coin", "coin"],
        "prompt": ["plain", "plain", "plain"],
        "option": ["heads", "tails", "heads"],
        "count": [3, 1, 8],
    }
)
# Statements that write: name -> (SQL, SQLite's version where it differs).
WRITES = {
    "insert": ("INSERT INTO families (name, created_at) VALUES ('intruder', CURRENT_TIMESTAMP)",),
    "update": ("UPDATE option_counts SET count = count + 1",),
    "update returning": ("UPDATE runs SET stale = NOT stale RETURNING id",),
    "delete": ("DELETE FROM option_counts",),
    "create table": ("CREATE TABLE scratch (x INTEGER)",),
    "drop table": ("DROP TABLE option_counts",),
    "alter table": ("ALTER TABLE runs ADD COLUMN extra INTEGER",),
    "data-modifying cte": (
        "WITH gone AS (DELETE FROM option_counts RETURNING *) SELECT COUNT(*) AS n FROM gone",
        # SQLite has no DELETE inside WITH; a WITH before a DELETE is its form
        "WITH doomed AS (SELECT id FROM runs) "
        "DELETE FROM option_counts WHERE run_id IN (SELECT id FROM doomed)",
    ),
    "commit, then delete": ("COMMIT; DELETE FROM option_counts",),
    "select, then delete": ("SELECT 1; DELETE FROM option_counts",),
}
# SQLite's driver refuses a second statement before running anything.
ONE_STATEMENT = "Error: the query failed: You can only execute one statement at a time.\n"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def store_contents(url: str) -> dict[str, list[tuple]]:
    """Every row of every catalog table, in a stable order."""
    engine = catalog_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: sorted(map(tuple, conn.execute(select(table)).all()), key=repr)
                for name, table in Base.metadata.tables.items()
            }
    finally:
        engine.dispose()


@pytest.fixture
def filled_url(db_url, tmp_path):
    path = tmp_path / "counts.csv"
    COUNTS.write_csv(path)
    assert run("import-counts", path, "--db", db_url).exit_code == 0
    return db_url


@pytest.mark.parametrize("statement", WRITES)
def test_a_write_is_refused_in_one_line_and_changes_nothing(filled_url, backend, statement):
    sql = WRITES[statement][-1 if backend == "sqlite" else 0]
    before = store_contents(filled_url)
    result = run("sql", sql, "--db", filled_url)
    assert result.exit_code == 1
    if backend == "sqlite" and ";" in sql:
        assert result.output == ONE_STATEMENT
    else:
        assert result.output == f"Error: {READ_ONLY_REFUSAL}\n"
    assert store_contents(filled_url) == before
    assert before["option_counts"]  # there was something to lose


def test_reads_still_work_and_the_engine_still_writes_after_a_refusal(filled_url):
    engine = catalog_db.open_catalog(filled_url)
    try:
        with pytest.raises(InvalidInput, match="read-only"):
            read_sql(engine, WRITES["delete"][0])
        with engine.begin() as conn:  # the pooled connections were not left read-only
            conn.exec_driver_sql("UPDATE option_counts SET count = count + 1")
        total = read_sql(engine, "SELECT SUM(count) AS n FROM option_counts")["n"].item()
        assert total == COUNTS["count"].sum() + COUNTS.height
    finally:
        engine.dispose()
    result = run("sql", "SELECT option, count FROM v_counts WHERE model = 'fam-sft'",
                 "--format", "csv", "--db", filled_url)
    assert result.exit_code == 0 and result.output == "option,count\nheads,9\n"


def test_switching_read_only_off_is_a_statement_without_rows(filled_url, backend):
    sql = {"sqlite": "PRAGMA query_only = OFF",
           "postgresql": "SET default_transaction_read_only = off"}[backend]
    before = store_contents(filled_url)
    result = run("sql", sql, "--db", filled_url)
    assert result.exit_code == 1
    assert result.output == {
        "sqlite": "Error: catalog sql refuses PRAGMA query_only = ... (it changes the store)\n",
        "postgresql": "Error: the statement returns no rows; give one query that does (e.g. "
                      "SELECT ...)\n",
    }[backend]
    assert store_contents(filled_url) == before
    assert run("sql", "SELECT 1 AS x WHERE 1 = 0", "--db", filled_url).exit_code == 0
