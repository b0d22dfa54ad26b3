"""The store's commands through click's CliRunner: models, tasks, import-counts, export, sql.

Every bad input must exit with code 1 and one ``Error:`` line saying what to do, and leave
the store exactly as it was.
"""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from catalog import db as catalog_db
from catalog.cli import main
from catalog.schema import Base
from catalog.tasks import bundled_task

COUNTS = pl.DataFrame(
    {
        "family": ["fam", "fam", "fam", "fam"],
        "stage": ["base", "base", "sft", "sft"],
        "model": ["fam-base", "fam-base", "fam-sft", "fam-sft"],
        "task": ["coin", "coin", "coin", "coin"],
        "prompt": ["plain", "plain", "plain", "terse"],
        "option": ["heads", "tails", "heads", "heads"],
        "count": [3, 1, 8, 5],
    }
)
TASK_FILE = """
name = "pet"
description = "Name a pet."
kind = "open"
normalizer = "open_word"

[[prompts]]
key = "ask"
text = "Name a pet."

[[prompts]]
key = "polite"
text = "Please name a pet animal."
"""


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def table_rows(output: str) -> list[list[str]]:
    """The cells of a printed Markdown table, header first (the |---| line dropped)."""
    lines = [line for line in output.splitlines() if line.startswith("|") and "---" not in line]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]


def table_sizes(url: str) -> dict[str, int]:
    engine = catalog_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: conn.execute(select(func.count()).select_from(table)).scalar()
                for name, table in Base.metadata.tables.items()
            }
    finally:
        engine.dispose()


def test_models_add_list_and_load(db_url):
    result = run("models", "add", "fam-sft", "--family", "fam", "--stage", "SFT",
                 "--source", "org/fam-sft", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "fam-sft: family fam, stage SFT (order 1), chat prompts, from org/fam-sft" in result.output
    result = run("models", "add", "fam-base", "--family", "fam", "--stage", "base",
                 "--source", "org/fam-base", "--db", db_url)
    assert "stage base (order 0), plain prompts" in result.output
    assert run("models", "load", "study", "--db", db_url).output == (
        "registered 8 models in 2 families: olmo-2-1124-7b, tulu-3-8b\n"
    )
    assert table_rows(run("models", "list", "--family", "fam", "--db", db_url).output) == [
        ["family", "stage", "order", "step", "model", "source", "revision", "format", "backend"],
        ["fam", "base", "0", "", "fam-base", "org/fam-base", "", "plain", "transformers"],
        ["fam", "SFT", "1", "", "fam-sft", "org/fam-sft", "", "chat", "transformers"],
    ]
    assert "allenai/Llama-3.1-Tulu-3-8B-DPO" in run("models", "list", "--db", db_url).output


def test_models_add_refuses_bad_input_and_changes_nothing(db_url):
    run("models", "add", "m", "--family", "f", "--stage", "base", "--source", "org/m", "--db", db_url)
    before = table_sizes(db_url)
    cases = [
        (["--stage", "ppo"], "unknown stage name 'ppo': pass --stage-order"),
        (["--stage", "base", "--trust-remote-code"], "needs --revision pinned to a full 40-character"),
    ]
    for extra, message in cases:
        args = ["models", "add", "m2", "--family", "f", "--source", "org/m2", *extra, "--db", db_url]
        result = run(*args)
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and message in result.output
        assert len(result.output.strip().splitlines()) == 1
    result = run("models", "add", "m", "--family", "f", "--stage", "base", "--source", "org/other",
                 "--db", db_url)
    assert result.exit_code == 1 and "already registered with source 'org/m'" in result.output
    result = run("models", "add", "m3", "--stage", "sft", "--source", "x", "--db", db_url)
    assert result.exit_code == 2 and "Missing option '--family'" in result.output
    assert table_sizes(db_url) == before


def test_models_load_errors(db_url, tmp_path):
    result = run("models", "load", tmp_path / "nope.toml", "--db", db_url)
    assert result.exit_code == 1 and "no such experiment file" in result.output
    assert table_sizes(db_url)["models"] == 0


def test_tasks_list_show_add(db_url, tmp_path):
    listing = table_rows(run("tasks", "list", "--db", db_url).output)
    assert listing[0] == ["task", "kind", "options", "prompts", "where"]
    coin = bundled_task("coin")
    assert ["coin", "closed", "2", str(len(coin.prompts)), "bundled"] in listing
    shown = run("tasks", "show", "coin", "--db", db_url).output
    assert shown.startswith("coin (closed task, bundled, not stored yet)")
    assert "options: heads, tails" in shown and "normalizer: choice" in shown
    assert f"    0  {coin.prompts[0].key}: {coin.prompts[0].text}\n" in shown
    path = tmp_path / "pet.toml"
    path.write_text(TASK_FILE)
    result = run("tasks", "add", path, "--db", db_url)
    assert result.output == "stored task pet (open, 0 options, 2 prompts)\n"
    listing = table_rows(run("tasks", "list", "--db", db_url).output)
    assert ["pet", "open", "0", "2", "stored"] in listing
    shown = run("tasks", "show", "pet", "--db", db_url).output
    assert "stored in the catalog" in shown and "    1  polite: Please name a pet animal." in shown


def test_tasks_errors(db_url, tmp_path):
    result = run("tasks", "show", "nope", "--db", db_url)
    assert result.exit_code == 1 and "catalog tasks list" in result.output
    path = tmp_path / "bad.toml"
    path.write_text(TASK_FILE.replace('kind = "open"', 'kind = "sometimes"'))
    result = run("tasks", "add", path, "--db", db_url)
    assert result.exit_code == 1 and str(path) in result.output and "kind" in result.output
    assert table_sizes(db_url)["tasks"] == 0


def test_import_export_and_sql(db_url, tmp_path):
    path = tmp_path / "counts.csv"
    COUNTS.write_csv(path)
    result = run("import-counts", path, "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "imported 4 rows as 3 runs (0 replaced), 17 valid samples" in result.output
    assert "(3 replaced)" in run("import-counts", path, "--db", db_url).output
    query = "SELECT model, option, probability FROM v_distributions WHERE prompt = 'plain' ORDER BY model, option"
    result = run("sql", query, "--format", "csv", "--db", db_url)
    assert result.output == (
        "model,option,probability\nfam-base,heads,0.75\nfam-base,tails,0.25\nfam-sft,heads,1.0\n"
    )
    assert table_rows(run("sql", query, "--db", db_url).output)[1] == ["fam-base", "heads", "0.75"]
    exported = tmp_path / "out" / "coin.parquet"
    result = run("export", exported, "--task", "coin", "--family", "fam", "--db", db_url)
    assert result.output == f"wrote 4 rows to {exported}\n"
    assert pl.read_parquet(exported)["count"].sum() == 17


BAD_COUNTS = {
    "missing column": (COUNTS.drop("option"), "missing column(s) option"),
    "negative count": (
        COUNTS.with_columns(count=pl.Series([3, 1, -8, 5])),
        "row 3 (line 4), column count: -8 is negative",
    ),
    "unknown stage with no order": (
        COUNTS.with_columns(stage=pl.Series(["base", "base", "ppo", "ppo"])),
        "row 3 (line 4), column stage: unknown stage name 'ppo' with no stage_order",
    ),
}


@pytest.mark.parametrize("case", list(BAD_COUNTS))
def test_import_counts_bad_files(db_url, tmp_path, case):
    frame, message = BAD_COUNTS[case]
    good = tmp_path / "good.csv"
    COUNTS.head(2).write_csv(good)
    run("import-counts", good, "--db", db_url)
    before = table_sizes(db_url)
    path = tmp_path / "bad.csv"
    frame.write_csv(path)
    result = run("import-counts", path, "--db", db_url)
    assert result.exit_code == 1
    assert result.output == f"Error: {path}: {message}" + result.output.split(message, 1)[1]
    assert len(result.output.strip().splitlines()) == 1
    assert table_sizes(db_url) == before


def test_sql_and_export_errors(db_url, tmp_path):
    result = run("sql", "SELECT nothing FROM nowhere", "--db", db_url)
    assert result.exit_code == 1 and result.output.startswith("Error: the query failed:")
    result = run("export", tmp_path / "out.txt", "--db", db_url)
    assert result.exit_code == 1 and "use --format csv or parquet" in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://alice:s3cret@127.0.0.1:1/catalog", "cannot connect to postgresql+psycopg://alice:***@127.0.0.1:1/catalog"),
        ("postgresql://alice:s3cret@127.0.0.1:port/catalog", "the database URL is malformed"),
        ("not a url at all s3cret", "the database URL is malformed"),
        ("mysql://alice:s3cret@127.0.0.1/catalog", "mysql://alice:***@127.0.0.1/catalog: unsupported database"),
    ],
)
@pytest.mark.parametrize(
    "command", [["models", "list"], ["tasks", "list"], ["import-counts", "counts.csv"], ["sql", "SELECT 1"]]
)
def test_wrong_urls_fail_cleanly_without_the_password(url, message, command):
    result = run(*command, "--db", url)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert "s3cret" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_url_can_come_from_the_environment(db_url, monkeypatch):
    monkeypatch.setenv("CATALOG_DATABASE_URL", db_url)
    result = run("models", "add", "m", "--family", "f", "--stage", "base", "--source", "x")
    assert result.exit_code == 0
    assert table_sizes(db_url)["models"] == 1


@pytest.mark.parametrize(
    "command",
    [
        ["models", "list"],
        ["models", "load", "study"],
        ["tasks", "list"],
        ["import-counts", "COUNTS"],
        ["export", "out.csv"],
        ["sql", "SELECT 1"],
    ],
)
def test_a_stale_schema_is_refused_by_every_command(empty_db_url, tmp_path, command):
    engine = catalog_db.make_engine(empty_db_url)
    catalog_db.upgrade(engine, "0001")
    engine.dispose()
    counts = tmp_path / "counts.csv"
    COUNTS.write_csv(counts)
    args = [str(counts) if a == "COUNTS" else str(tmp_path / a) if a == "out.csv" else a for a in command]
    before = table_sizes(empty_db_url)
    result = run(*args, "--db", empty_db_url)
    assert result.exit_code == 1
    assert "database schema is at 0001 but this catalog needs" in result.output
    assert "run `catalog db upgrade --db" in result.output
    assert table_sizes(empty_db_url) == before
    engine = catalog_db.make_engine(empty_db_url)
    assert catalog_db.current_revision(engine) == "0001"
    engine.dispose()
