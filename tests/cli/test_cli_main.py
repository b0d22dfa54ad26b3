"""The ``catalog`` group itself: global options typed before the command name."""

from __future__ import annotations

import polars as pl
from click.testing import CliRunner

from catalog.cli import main
from catalog.db import make_engine
from catalog.views import read_sql

COUNTS = pl.DataFrame(
    {
        "family": ["fam", "fam"],
        "stage": ["base", "base"],
        "model": ["fam-base", "fam-base"],
        "task": ["coin", "coin"],
        "prompt": ["plain", "plain"],
        "option": ["heads", "tails"],
        "count": [3, 1],
    }
)


def counts_in(url: str) -> int:
    engine = make_engine(url)
    try:
        frame = read_sql(engine, "SELECT COALESCE(SUM(count), 0) AS n FROM option_counts")
    finally:
        engine.dispose()
    return int(frame["n"][0])


def test_db_before_the_command_name(db_url, tmp_path):
    path = tmp_path / "counts.csv"
    COUNTS.write_csv(path)
    result = CliRunner().invoke(main, ["--db", db_url, "import-counts", str(path)])
    assert result.exit_code == 0, result.output
    assert counts_in(db_url) == 4


def test_db_after_the_command_wins_over_one_before(db_url, tmp_path):
    path = tmp_path / "counts.csv"
    COUNTS.write_csv(path)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    result = CliRunner().invoke(main, ["--db", other, "import-counts", str(path), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert counts_in(db_url) == 4
    assert not (tmp_path / "other.db").exists()


def test_db_before_the_command_beats_the_environment(db_url, tmp_path):
    path = tmp_path / "counts.csv"
    COUNTS.write_csv(path)
    env_url = f"sqlite:///{tmp_path / 'from-env.db'}"
    result = CliRunner(env={"CATALOG_DATABASE_URL": env_url}).invoke(
        main, ["--db", db_url, "import-counts", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert counts_in(db_url) == 4
    assert not (tmp_path / "from-env.db").exists()


def test_the_environment_is_used_without_db(db_url, tmp_path):
    path = tmp_path / "counts.csv"
    COUNTS.write_csv(path)
    result = CliRunner(env={"CATALOG_DATABASE_URL": db_url}).invoke(
        main, ["import-counts", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert counts_in(db_url) == 4


def test_a_malformed_global_url_is_one_clear_line():
    result = CliRunner().invoke(main, ["--db", "postgresql://u:secret@host:notaport/x", "db",
                                       "current"])
    assert result.exit_code == 1
    assert "malformed" in result.output and "secret" not in result.output
