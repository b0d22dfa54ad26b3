"""Bad inputs to every command, on SQLite and PostgreSQL: each is refused by the rules.

The rules: exit code 1 (2 for a usage error), exactly one short ``Error:`` line (for exit 1,
nothing else), no traceback, no password, and every table of the database exactly as it
was. The PostgreSQL URL carries a password (the test server trusts local connections, so it
is never checked) that no output may show. Besides the table of cases: Ctrl-C in
``catalog sql`` and ``catalog ingest``, reader and writer roles, concurrent imports, the
fixed behaviours (``models remove``/``update``, ``db downgrade -1``, any column type), and
property tests that throw random values at the numeric options and the import columns.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from catalog import limits
from catalog.cli import main
from catalog.cli.ingest import ingest as ingest_command
from catalog.cli.ingest import ingest_requests
from catalog.db import make_engine, open_catalog, session_scope
from catalog.errors import InvalidInput
from catalog.imports import import_counts
from catalog.registry import add_model
from catalog.roles import create_role
from catalog.schema import Run

SECRET = "s3cr3t-Pw9"
LONGEST_ERROR = 400
COUNTS = pl.DataFrame({
    "family": ["fam", "fam", "fam"],
    "stage": ["base", "base", "sft"],
    "model": ["fam-base", "fam-base", "fam-sft"],
    "task": ["coin", "coin", "coin"],
    "prompt": ["plain", "plain", "plain"],
    "option": ["heads", "tails", "heads"],
    "count": [6, 4, 10],
})
TABLE = {"default": {"heads": 0.5, "tails": 0.5}}
BIG = str(2**63)
INT32_OVER = str(2**31)
SLOW_SQL = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
              "SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(60)",
}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def url(db_url: str) -> str:
    """The database's URL; on PostgreSQL with a password that no output may show."""
    if db_url.startswith("sqlite"):
        return db_url
    return make_url(db_url).set(password=SECRET).render_as_string(hide_password=False)


@pytest.fixture
def store(url: str, tmp_path: Path) -> str:
    """A catalog with imported counts (family fam: done runs) and a table model (tab-base)."""
    counts = tmp_path / "counts.csv"
    COUNTS.write_csv(counts)
    table = tmp_path / "table.json"
    table.write_text(json.dumps(TABLE))
    engine = open_catalog(url)
    try:
        import_counts(engine, counts)
        with session_scope(engine) as session:
            add_model(session, name="tab-base", family="tab", stage="base", source=str(table),
                      backend="table", prompt_format="plain")
    finally:
        engine.dispose()
    return url


def dump(url: str) -> dict[str, list]:
    """Every row of every table, in a stable order."""
    engine = make_engine(url, create=False)
    try:
        with engine.connect() as conn:
            return {
                name: sorted(map(repr, conn.exec_driver_sql(f'SELECT * FROM "{name}"').all()))
                for name in inspect(conn).get_table_names()
            }
    finally:
        engine.dispose()


def invoke(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(main, list(args))


def error_line(result, code: int) -> str:
    """The one Error line of a refused command, checked against the rules (not the data)."""
    output = result.output
    assert result.exit_code == code, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    assert SECRET not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert len(errors[0]) <= LONGEST_ERROR, errors[0]
    lines = [line for line in output.splitlines() if line.strip()]
    if code == 1:
        assert lines == errors, output
    else:  # click's usage lines, then the error
        assert lines[-1] == errors[0], output
    return errors[0]


def refused(url: str, args: list[str], code: int, env: dict | None = None) -> str:
    """Run a bad command; it must follow the rules and leave the database as it was."""
    before = dump(url)
    line = error_line(invoke(*args, env=env), code)
    assert dump(url) == before
    return line


# ---------------------------------------------------------------------------- the cases

INGEST = ["ingest", "--family", "tab", "--task", "coin"]
ADD = ["models", "add"]
SOURCE = ["--family", "newfam", "--stage", "base", "--source", "org/model"]

# (id, arguments, exit code, a part of the Error line). In the arguments "{db}" is the
# database URL, "{tmp}" a fresh folder, "{file}" a regular file, "{missing}" a database that
# does not exist (a SQLite path in missing folders, or a PostgreSQL database never created),
# "{slow}" a query that runs for a long time.
CASES = [
    # 1, 6: numbers the store cannot hold, at the edge (usage errors).
    ("ingest-temperature-inf", [*INGEST, "--temperature", "inf"], 2, "finite number"),
    ("ingest-temperature-overflow", [*INGEST, "--temperature", "1e309"], 2, "finite number"),
    ("ingest-temperature-nan", [*INGEST, "--temperature", "nan"], 2, "finite number"),
    ("ingest-temperature-zero", [*INGEST, "--temperature", "0"], 2, "must be > 0"),
    ("ingest-temperature-sweep-inf", [*INGEST, "--temperature", "0.5,inf"], 2, "finite"),
    ("ingest-temperature-text", [*INGEST, "--temperature", "hot"], 2, "not a number"),
    ("ingest-top-p-over-one", [*INGEST, "--top-p", "2"], 2, "must be <= 1"),
    ("ingest-top-p-nan", [*INGEST, "--top-p", "nan"], 2, "finite number"),
    ("ingest-samples-int32", [*INGEST, "--samples", INT32_OVER], 2, "at most 2,147,483,647"),
    ("ingest-samples-int64", [*INGEST, "--samples", BIG], 2, "at most"),
    ("ingest-samples-zero", [*INGEST, "--samples", "0"], 2, "must be >= 1"),
    ("ingest-seed-int64", [*INGEST, "--seed", BIG], 2, "at most 9,223,372,036,854,775,807"),
    ("ingest-seed-negative", [*INGEST, "--seed", "-1"], 2, "must be >= 0"),
    ("ingest-max-new-tokens-int64", [*INGEST, "--max-new-tokens", BIG], 2, "at most"),
    ("ingest-max-new-tokens-zero", [*INGEST, "--max-new-tokens", "0"], 2, ">= 1"),
    ("ingest-top-k-int64", [*INGEST, "--top-k", BIG], 2, "at most"),
    ("ingest-batch-size-zero", [*INGEST, "--batch-size", "0"], 2, "'auto' or an integer"),
    ("ingest-batch-size-int64", [*INGEST, "--batch-size", BIG], 2, "'auto' or an integer"),
    ("plan-samples-int32", ["plan", "--family", "tab", "--task", "coin", "--samples",
                            INT32_OVER], 2, "at most"),
    ("plan-temperature-inf", ["plan", "--family", "tab", "--task", "coin", "--temperature",
                              "inf"], 2, "finite"),
    ("analyze-temperature-inf", ["analyze", "--temperature", "inf"], 2, "finite"),
    ("analyze-tau-nan", ["analyze", "--tau", "nan"], 2, "finite"),
    ("analyze-seed-over", ["analyze", "--seed", str(2**64)], 2, "at most"),
    ("analyze-top-k-over", ["analyze", "--top-k", str(2**40)], 2, "at most"),
    ("analyze-reference-temperature-inf", ["analyze", "--reference-temperature", "inf"], 2,
     "finite"),
    ("analyze-threshold-nan", ["analyze", "--liquid-threshold", "nan"], 2, "finite"),
    ("analyze-bootstrap-huge", ["analyze", "--bootstrap", str(10**12)], 2, "range"),
    ("report-tau-inf", ["report", "--tau", "inf"], 2, "finite"),
    ("status-minutes-inf", ["status", "--minutes", "inf"], 2, "finite"),
    ("status-interval-nan", ["status", "--interval", "nan"], 2, "finite"),
    ("worker-lease-inf", ["worker", "--lease-seconds", "inf"], 2, "finite"),
    ("worker-max-attempts-over", ["worker", "--max-attempts", INT32_OVER], 2, "at most"),
    ("worker-idle-exit-negative", ["worker", "--idle-exit", "-1"], 2, ">= 0"),
    ("demo-samples-over", ["demo", "--samples", INT32_OVER], 2, "at most"),
    ("sql-timeout-zero", ["sql", "SELECT 1", "--timeout", "0"], 2, "> 0"),
    ("sql-timeout-inf", ["sql", "SELECT 1", "--timeout", "inf"], 2, "finite"),
    # 10: names.
    ("models-add-empty-name", [*ADD, "", *SOURCE], 2, "empty"),
    ("models-add-blank-name", [*ADD, "   ", *SOURCE], 2, "empty"),
    ("models-add-newline-name", [*ADD, "a\nb", *SOURCE], 2, "control character"),
    ("models-add-escape-name", [*ADD, "a\x1b[31mb", *SOURCE], 2, "control character"),
    ("models-add-long-name", [*ADD, "m" * 201, *SOURCE], 2, "at most 200 fit"),
    ("models-add-empty-family", [*ADD, "m", "--family", "", "--stage", "base", "--source",
                                 "org/m"], 2, "empty"),
    ("models-add-tab-stage", [*ADD, "m", "--family", "f", "--stage", "a\tb", "--source",
                              "org/m"], 2, "control character"),
    ("models-add-step-over", [*ADD, "m", *SOURCE, "--step", BIG], 2, "at most"),
    ("models-add-order-over", [*ADD, "m", *SOURCE, "--stage-order", INT32_OVER], 2, "at most"),
    ("models-add-missing-source", [*ADD, "m", "--family", "f", "--stage", "base", "--source",
                                   "{tmp}/no/such/model"], 2, "no such local directory"),
    ("models-add-registered", [*ADD, "fam-base", *SOURCE], 1, "already registered"),
    # 4: remove and update.
    ("models-remove-unknown", ["models", "remove", "nope"], 1, "no model named 'nope'"),
    ("models-remove-done-runs", ["models", "remove", "fam-base"], 1, "--force"),
    ("models-update-unknown", ["models", "update", "nope", "--notes", "x"], 1, "no model"),
    ("models-update-done-runs", ["models", "update", "fam-base", "--source", "org/other"], 1,
     "--force"),
    ("models-update-nothing", ["models", "update", "fam-base"], 2, "nothing to change"),
    ("models-update-missing-source", ["models", "update", "tab-base", "--source",
                                      "{tmp}/nowhere/x"], 2, "no such local directory"),
    # 16: names that are not there.
    ("models-list-unknown-family", ["models", "list", "--family", "nope"], 1, "no family"),
    ("export-unknown-family", ["export", "{tmp}/out.csv", "--family", "nope"], 1, "no family"),
    ("export-unknown-task", ["export", "{tmp}/out.csv", "--task", "nope"], 1, "no task"),
    ("ingest-unknown-family", ["ingest", "--family", "nope", "--task", "coin"], 1, "nope"),
    # 2: output paths that cannot be written.
    ("export-under-a-file", ["export", "{file}/out.csv"], 1, "cannot use"),
    ("export-under-proc", ["export", "/proc/catalog-nope/out.csv"], 1, "cannot use"),
    ("export-full-disk", ["export", "/dev/full", "--format", "csv"], 1, "No space left"),
    ("analyze-output-under-a-file", ["analyze", "--output", "{file}/out.txt"], 1, "cannot use"),
    ("analyze-output-full-disk", ["analyze", "--output", "/dev/full"], 1, "No space left"),
    ("report-output-under-a-file", ["report", "--output", "{file}/report", "--task", "coin"],
     1, "cannot use"),
    # 7: read-only commands create nothing.
    ("status-missing-database", ["status", "--db", "{missing}"], 1, "{missing-says}"),
    ("sql-missing-database", ["sql", "SELECT 1", "--db", "{missing}"], 1, "{missing-says}"),
    ("analyze-missing-database", ["analyze", "--db", "{missing}"], 1, "{missing-says}"),
    ("export-missing-database", ["export", "{tmp}/x.csv", "--db", "{missing}"], 1,
     "{missing-says}"),
    ("models-list-missing-database", ["models", "list", "--db", "{missing}"], 1,
     "{missing-says}"),
    ("db-current-missing-database", ["db", "current", "--db", "{missing}"], 1,
     "{missing-says}"),
    ("empty-db-option", ["status", "--db", ""], 1, "--db is empty"),
    # 5, 14: catalog sql.
    ("sql-delete", ["sql", "DELETE FROM runs"], 1, "read-only"),
    ("sql-pragma-write", ["sql", "PRAGMA journal_mode=DELETE"], 1, "{pragma-says}"),
    ("sql-pragma-query-only-off", ["sql", "PRAGMA query_only=OFF"], 1, "{pragma-says}"),
    ("sql-attach", ["sql", "ATTACH DATABASE '{tmp}/attached.db' AS a"], 1, "{attach-says}"),
    ("sql-vacuum-into", ["sql", "VACUUM INTO '{tmp}/copy.db'"], 1, "{vacuum-says}"),
    ("sql-timeout", ["sql", "{slow}", "--timeout", "0.5"], 1, "statement timeout (0.5 s)"),
    ("sql-unknown-table", ["sql", "SELECT * FROM nope"], 1, "the query failed"),
    # 9: usage errors never echo the URL's password.
    ("extra-arguments-echo-url", ["status", "extra", "{db}"], 2, "unexpected extra"),
    ("extra-arguments-before-command", ["--db", "{db}", "tasks", "list", "{db}"], 2,
     "unexpected extra"),
    # 12: migrations.
    ("db-upgrade-unknown", ["db", "upgrade", "9999"], 1, "unknown schema revision '9999'"),
    ("db-downgrade-unknown", ["db", "downgrade", "9999"], 1, "unknown schema revision"),
    ("db-upgrade-past-head", ["db", "upgrade", "+5"], 1, "cannot migrate to +5"),
    ("db-downgrade-no-revision", ["db", "downgrade"], 2, "Missing argument"),
    # 16: create-role.
    ("create-role-both-kinds", ["db", "create-role", "x_role", "--reader", "--writer"], 2,
     "one of --reader or --writer"),
    ("create-role-no-kind", ["db", "create-role", "x_role"], 2, "give --reader or --writer"),
    ("create-role-two-passwords", ["db", "create-role", "x_role", "--reader", "--password",
                                   "--password-env", "X"], 2, "not both"),
]


def _filled(part: str, url: str, backend: str, tmp_path: Path, postgres_missing: str) -> str:
    missing = (f"sqlite:///{tmp_path}/no/such/folder/catalog.db" if backend == "sqlite"
               else postgres_missing)
    return (part.replace("{db}", url).replace("{tmp}", str(tmp_path))
            .replace("{file}", str(tmp_path / "counts.csv")).replace("{missing}", missing)
            .replace("{slow}", SLOW_SQL[backend]))


EXPECTED_BY_BACKEND = {
    "{missing-says}": {"sqlite": "no such database file", "postgresql": "cannot connect"},
    "{pragma-says}": {"sqlite": "refuses PRAGMA", "postgresql": "the query failed"},
    "{attach-says}": {"sqlite": "refuses ATTACH", "postgresql": "the query failed"},
    "{vacuum-says}": {"sqlite": "refuses ATTACH and VACUUM INTO", "postgresql": "the query failed"},
}


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, store, backend, tmp_path):
    name, args, code, expected = case
    postgres_missing = make_url(store).set(database="catalog_nowhere_17").render_as_string(
        hide_password=False)
    argv = [_filled(a, store, backend, tmp_path, postgres_missing) for a in args]
    if "--db" not in argv:
        argv += ["--db", store]
    files = sorted(p.name for p in tmp_path.rglob("*"))
    line = refused(store, argv, code)
    expected = EXPECTED_BY_BACKEND.get(expected, {}).get(backend, expected)
    assert expected in line, line
    # Nothing new on disk: no database, folder, export or attached file.
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert [f for f in after if f not in files and not f.endswith((".lock", "-wal", "-shm"))] \
        == [], name


def test_the_suite_holds_every_case():
    """The count the issue's closing note gives (each case runs on both databases)."""
    assert len(CASES) == 86


# ---------------------------------------------------------------------------- imports


def _import(url: str, tmp_path: Path, frame: pl.DataFrame | str, name: str = "bad.csv",
            *extra: str) -> str:
    path = tmp_path / name
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.write_csv(path)
    return refused(url, ["import-counts", str(path), *extra, "--db", url], 1)


def _row(**changes) -> pl.DataFrame:
    values = {"family": "new", "stage": "base", "model": "new-base", "task": "coin",
              "prompt": "plain", "option": "heads", "count": "1", **changes}
    return pl.DataFrame({k: [str(v)] for k, v in values.items()})


@pytest.mark.parametrize("changes, expected", [
    ({"count": str(2**31)}, "add up to more than 2,147,483,647"),
    ({"count": str(2**64)}, "is too large"),
    ({"count": "1" * 100_000}, "(100,000 characters)"),
    ({"stage_order": str(2**31)}, "is too large; the store holds at most 2,147,483,647"),
    ({"step": str(2**63)}, "is too large"),
    ({"top_k": str(2**31)}, "is too large"),
    ({"max_new_tokens": str(2**40)}, "is too large"),
    ({"n_invalid": str(2**31)}, "is too large"),
    ({"temperature": "inf"}, "is not a number"),
    ({"temperature": "1e309"}, "is not a number"),
    ({"model": "a\nb"}, "control character"),
    ({"family": "x" * 201}, "longer than 200"),
], ids=lambda v: str(v)[:40])
def test_bad_import_values(store, tmp_path, changes, expected):
    line = _import(store, tmp_path, _row(**changes))
    assert "bad.csv: row 1" in line and expected in line, line


def test_import_ragged_csv_row_names_its_line(store, tmp_path):
    text = ("family,stage,model,task,prompt,option,count\n"
            "new,base,new-base,coin,plain,heads,1\n"
            "new,base,new-base,coin,plain,tails,1,extra\n")
    line = _import(store, tmp_path, text)
    assert "row 2 (line 3): 8 fields, but the header has 7" in line


def test_import_map_of_a_missing_field(store, tmp_path):
    line = _import(store, tmp_path, _row(), "bad.csv", "--map", "n=count")
    assert "--map n=count: the file has no field 'n'" in line


def test_huge_value_message_is_short(store, tmp_path):
    line = _import(store, tmp_path, _row(temperature="9" * 1_000_000))
    assert len(line) < LONGEST_ERROR and "1,000,000 characters" in line


def test_an_open_task_answer_longer_than_the_option_column_is_invalid(store, tmp_path):
    """The same on both databases: an answer no option column holds counts as invalid."""
    path = tmp_path / "gens.jsonl"
    records = [{"family": "o", "stage": "base", "model": "o-base", "task": "open-ended",
                "prompt": "p", "completion": "w" * 2000},
               {"family": "o", "stage": "base", "model": "o-base", "task": "open-ended",
                "prompt": "p", "completion": "short"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = invoke("import-completions", str(path), "--db", store)
    assert result.exit_code == 0, result.output
    engine = make_engine(store)
    with engine.connect() as conn:
        n_invalid = conn.execute(text("SELECT n_invalid FROM runs r JOIN models m ON "
                                      "m.id = r.model_id WHERE m.name = 'o-base'")).scalar()
        longest = conn.execute(text("SELECT max(length(option)) FROM option_counts")).scalar()
    engine.dispose()
    assert n_invalid == 1 and longest <= limits.text_max("option_counts.option")


# ---------------------------------------------------------------------------- fixed behaviour


def test_models_remove_and_update(store):
    assert "--force" in refused(store, ["models", "remove", "fam-sft", "--db", store], 1)
    result = invoke("models", "remove", "fam-sft", "--force", "--db", store)
    assert result.exit_code == 0 and "1 done units" in result.output, result.output
    result = invoke("models", "update", "fam-base", "--notes", "kept", "--db", store)
    assert result.exit_code == 0 and "notes None -> 'kept'" in result.output, result.output
    result = invoke("models", "update", "fam-base", "--source", "org/other", "--force",
                    "--db", store)
    assert result.exit_code == 0, result.output
    result = invoke("models", "remove", "tab-base", "--db", store)  # no runs: no --force
    assert "family 'tab' had no other model" in result.output, result.output
    listing = invoke("models", "list", "--db", store).output
    assert "fam-sft" not in listing and "tab-base" not in listing and "org/other" in listing
    counts = invoke("sql", "SELECT count(*) AS n FROM option_counts", "--format", "csv",
                    "--db", store).output
    assert counts.split() == ["n", "2"]  # fam-sft's count went with it, fam-base's stayed


def test_db_downgrade_minus_one_and_the_hint_after_base(store):
    result = invoke("db", "downgrade", "-1", "--db", store)
    assert result.exit_code == 0, result.output
    assert "catalog db upgrade" in refused(store, ["status", "--db", store], 1)
    assert invoke("db", "upgrade", "--db", store).exit_code == 0
    assert invoke("db", "downgrade", "base", "--db", store).exit_code == 0
    line = refused(store, ["analyze", "--db", store], 1)
    assert "holds no catalog yet" in line and "catalog db upgrade" in line


def test_debug_shows_the_traceback(store):
    result = invoke("--debug", "models", "remove", "nope", "--db", store)
    assert result.exit_code == 1 and result.exception is not None
    assert type(result.exception).__name__ == "NotFound"
    result = invoke("models", "remove", "nope", "--db", store,
                    env={"CATALOG_DEBUG": "1"})
    assert type(result.exception).__name__ == "NotFound"


def test_sql_prints_any_column_type(store, backend):
    if backend == "sqlite":
        query = "SELECT 9223372036854775807 AS big, x'00ff' AS raw, NULL AS absent"
        expected = ["9223372036854775807", "00ff"]
    else:
        query = ("SELECT now() - created_at AS age, 12.5::money AS cash, pg_sleep(0) AS v, "
                 "int4range(1, 5) AS r, 123456789012345678901234567890::numeric AS n "
                 "FROM families LIMIT 1")
        expected = ["$12.50", "[1, 5)", "µs"]  # the interval as Polars prints it
    result = invoke("sql", query, "--format", "csv", "--db", store)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output
    for part in expected:
        assert part in result.output


# ---------------------------------------------------------------------------- Ctrl-C


def _catalog(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "catalog.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def _wait_for(condition, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"waited {limit:g} s for {what}"
        time.sleep(0.1)


def _scalar(url: str, sql: str):
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def test_ctrl_c_stops_catalog_sql(store, backend):
    process = _catalog("sql", SLOW_SQL[backend], "--db", store)
    if backend == "postgresql":
        # this test's database only: another test's query may still run on the server
        running = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND query = 'SELECT pg_sleep(60)' AND state = 'active'")
        _wait_for(lambda: _scalar(store, running) == 1, "the query to start")
    else:
        time.sleep(3)  # imports, then the query
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 130, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: interrupted"), output
    assert SECRET not in output and "Traceback" not in output
    if backend == "postgresql":  # cancelled on the server, not left running
        _wait_for(lambda: _scalar(store, running) == 0, "the server to cancel the query", 10)


def test_ctrl_c_in_ingest_releases_the_unit(store, tmp_path):
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({**TABLE, "delay_seconds": 30}))
    assert invoke("models", "update", "tab-base", "--source", str(slow), "--db",
                  store).exit_code == 0
    args = ["ingest", "--model", "tab-base", "--task", "coin", "--prompt", "plain",
            "--samples", "10", "--db", store]
    process = _catalog(*args)
    running = "SELECT count(*) FROM runs WHERE status = 'running'"
    _wait_for(lambda: _scalar(store, running) == 1, "a unit to be claimed")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "run the same command again to resume" in errors[0], output
    assert "Traceback" not in output and "Aborted" not in output
    assert _scalar(store, running) == 0
    assert _scalar(store, "SELECT max(attempts) FROM runs WHERE origin = 'ingest'") == 0


# ---------------------------------------------------------------------------- concurrency


def test_two_imports_of_one_new_family_at_once_both_succeed(store, tmp_path):
    """Item 8: the get-or-create of families, models, tasks and prompts is race-free."""
    for attempt in range(2):
        paths = []
        for i in range(2):  # the same new family, models and task; each its own prompt
            frame = COUNTS.with_columns(
                pl.lit(f"race{attempt}").alias("family"), pl.lit("dice").alias("task"),
                pl.lit(f"p{i}").alias("prompt"),
                (pl.lit(f"race{attempt}-") + pl.col("stage")).alias("model"),
            )
            path = tmp_path / f"race{attempt}-{i}.csv"
            frame.write_csv(path)
            paths.append(path)
        processes = [_catalog("import-counts", str(p), "--db", store) for p in paths]
        outputs = [p.communicate(timeout=120)[0] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
    families = _scalar(store, "SELECT count(*) FROM families WHERE name LIKE 'race%'")
    prompts = _scalar(store, "SELECT count(*) FROM prompts p JOIN tasks t ON t.id = p.task_id "
                             "WHERE t.name = 'dice'")
    assert families == 2 and prompts == 2  # one task "dice" with prompts p0 and p1


# ---------------------------------------------------------------------------- roles


@pytest.fixture
def roles(postgres, store, backend):
    """A reader and a writer of the store (PostgreSQL only); dropped afterwards."""
    if backend != "postgresql":
        pytest.fail("roles need PostgreSQL")  # never reached: the tests below ask for it
    names = {kind: f"{postgres.prefix}_bad_{kind}" for kind in ("reader", "writer")}
    owner = make_engine(store)
    for kind, name in names.items():
        create_role(owner, name, kind)
    yield {kind: make_url(store).set(username=name).render_as_string(hide_password=False)
           for kind, name in names.items()}
    with owner.begin() as conn:
        for name in names.values():
            conn.exec_driver_sql(f"DROP OWNED BY {name}")
            conn.exec_driver_sql(f"DROP ROLE {name}")
    owner.dispose()


ROLE_CASES = [
    ("reader", ["models", "add", "m", "--family", "f", "--stage", "base", "--source", "o/m"]),
    ("reader", ["import-counts", "{counts}"]),
    ("reader", ["tasks", "add", "{task}"]),
    ("reader", ["plan", "--family", "tab", "--task", "coin"]),
    ("reader", ["ingest", "--family", "tab", "--task", "coin", "--samples", "5"]),
    ("reader", ["db", "downgrade", "base"]),
    ("reader", ["models", "remove", "fam-base", "--force"]),
    ("writer", ["db", "downgrade", "base"]),
    ("reader", ["models", "update", "tab-base", "--notes", "x"]),
]


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("kind, args", ROLE_CASES, ids=[f"{k}-{a[0]}-{a[1]}"
                                                        for k, a in ROLE_CASES])
def test_a_role_without_the_privilege_gets_one_line(roles, store, tmp_path, kind, args):
    task = tmp_path / "mytask.toml"
    task.write_text('name = "mytask"\nkind = "closed"\noptions = ["a", "b"]\n'
                    'normalizer = "choice"\n[[prompts]]\nkey = "p"\ntext = "a or b?"\n')
    other = COUNTS.with_columns(pl.lit("other").alias("family"),
                                pl.col("model").str.replace("fam", "other"))
    other.write_csv(tmp_path / "other.csv")
    argv = [a.replace("{counts}", str(tmp_path / "other.csv")).replace("{task}", str(task))
            for a in args]
    line = refused(store, [*argv, "--db", roles[kind]], 1)
    assert "permission denied" in line or "must be owner" in line, line


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_reader_cannot_create_temporary_tables(roles, store):
    engine = make_engine(roles["reader"])
    try:
        with pytest.raises(Exception) as caught, engine.begin() as conn:
            conn.exec_driver_sql("CREATE TEMPORARY TABLE scratch (x INTEGER)")
        assert caught.value.orig.sqlstate == "42501"
        writer = make_engine(roles["writer"])
        with writer.begin() as conn:  # imports use one
            conn.exec_driver_sql("CREATE TEMPORARY TABLE scratch (x INTEGER)")
        writer.dispose()
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- properties

NUMERIC_OPTIONS = {  # option: the runs column it fills
    "--samples": "n_samples", "--seed": "seed", "--top-k": "top_k",
    "--max-new-tokens": "max_new_tokens", "--temperature": "temperature", "--top-p": "top_p",
}
REQUEST_PARAMETERS = {"models", "families", "tasks", "prompts", "samples", "seed",
                      "temperature", "top_p", "top_k", "max_new_tokens", "stop", "mode",
                      "scaffold"}
ANY_NUMBER = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e309", "-0", "0x10", "1_000", " 7 ", "", "inf", "NaN", "2.5e-324"]),
    st.text(max_size=12),
)


@pytest.fixture
def property_store(db_url, tmp_path):
    """A catalog with a few imported runs (their model, task and prompt ids are reused)."""
    engine = open_catalog(db_url)
    path = tmp_path / "counts.csv"
    COUNTS.write_csv(path)
    import_counts(engine, path)
    yield engine, tmp_path
    engine.dispose()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(sorted(NUMERIC_OPTIONS)), value=ANY_NUMBER)
def test_what_an_option_accepts_both_databases_store(property_store, option, value):
    """Whatever the numeric options of ingest/plan accept, both databases store as given;
    anything else is a usage error (never a crash)."""
    args = ["--family", "tab", "--task", "coin", option, value]
    try:  # parsing, then what the command builds from the values (sweeps are split there)
        ctx = ingest_command.make_context("ingest", args)
        selection = {k: v for k, v in ctx.params.items() if k in REQUEST_PARAMETERS}
        params = ingest_requests(**selection)[0].params
    except (click.BadParameter, click.UsageError):
        return  # the property: anything refused is a usage error, nothing else
    column = NUMERIC_OPTIONS[option]
    given_value = {"n_samples": params.n, "seed": ingest_requests(**selection)[0].seed}.get(
        column, getattr(params, column, None))
    if isinstance(given_value, float):
        assert math.isfinite(given_value)
    if column == "top_k" and given_value is None:
        return  # --top-k 0 is "off"
    engine = property_store[0]
    with session_scope(engine) as session:
        model_id, task_id, prompt_id = session.execute(
            text("SELECT model_id, task_id, prompt_id FROM runs")).first()
        run = Run(unit_key="property", model_id=model_id, task_id=task_id,
                  prompt_id=prompt_id, **{column: given_value})
        session.add(run)
        session.flush()
        stored = session.scalar(text(f"SELECT {column} FROM runs WHERE unit_key = 'property'"))
        session.rollback()
    assert stored == given_value


IMPORT_COLUMNS = ["count", "n_invalid", "stage_order", "step", "top_k", "max_new_tokens",
                  "temperature", "top_p"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from(IMPORT_COLUMNS), value=ANY_NUMBER)
def test_an_import_column_is_stored_as_given_or_refused_at_its_row(property_store, column,
                                                                   value):
    engine, tmp_path = property_store
    path = tmp_path / "property.csv"
    _row(model="prop-base", family="prop", **{column: value}).write_csv(path)
    url = engine.url.render_as_string(hide_password=False)
    before = dump(url)
    try:
        import_counts(engine, path)
    except InvalidInput as exc:
        message = str(exc)
        assert "property.csv: row 1" in message and len(message) < LONGEST_ERROR, message
        assert dump(url) == before
        return
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT r.n_samples, r.n_invalid, m.stage_order, m.step, r.top_k, "
            "r.max_new_tokens, r.temperature, r.top_p FROM runs r JOIN models m "
            "ON m.id = r.model_id WHERE m.name = 'prop-base' ORDER BY r.id DESC")).first()
    stored = dict(zip(["count", "n_invalid", "stage_order", "step", "top_k",
                       "max_new_tokens", "temperature", "top_p"], row))
    if value.strip() and column != "count":
        number = float(value)
        assert math.isfinite(number)
        if column == "top_k" and number == 0:
            return  # 0 is "off", stored as NULL
        assert stored[column] == pytest.approx(number)


def test_tasks_list_without_a_catalog_shows_the_bundled_tasks(tmp_path):
    """Listing tasks needs no catalog: a missing one is a note, and nothing is created."""
    missing = f"sqlite:///{tmp_path}/no/such/folder/catalog.db"
    for args in (["tasks", "list"], ["tasks", "show", "coin"]):
        result = invoke(*args, "--db", missing)
        assert result.exit_code == 0, result.output
        assert "coin" in result.stdout
        assert result.stderr.startswith("Note: ") and "no such database file" in result.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_killed_sql_query_stops_on_the_server_at_its_timeout(store):
    """kill -9 sends no cancel; the statement timeout still ends the query on the server."""
    process = _catalog("sql", SLOW_SQL["postgresql"], "--timeout", "3", "--db", store)
    running = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
               "AND query = 'SELECT pg_sleep(60)' AND state = 'active'")
    _wait_for(lambda: _scalar(store, running) == 1, "the query to start")
    process.kill()
    process.communicate(timeout=30)
    _wait_for(lambda: _scalar(store, running) == 0, "the server to stop the query", 30)
