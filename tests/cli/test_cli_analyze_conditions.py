"""`catalog analyze` and `catalog report` over stores with several sampling conditions and
with checkpoints (click's CliRunner, SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
import re

import polars as pl
import pytest
from click.testing import CliRunner
from sqlalchemy import update

from catalog.cli import main
from catalog.db import open_catalog
from catalog.imports import import_counts
from catalog.schema import Run
from catalog.toylab.synthetic import checkpoint_counts, planted_counts

TEMPERATURES = (0.5, 1.0)
CHECKPOINTS = [("base", None)] + [("sft", 100 * s) for s in range(1, 7)]


def store(db_url, tmp_path, frame: pl.DataFrame) -> str:
    path = tmp_path / "counts.parquet"
    frame.drop("prompt_id").write_parquet(path)
    engine = open_catalog(db_url)
    import_counts(engine, path)
    engine.dispose()
    return db_url


@pytest.fixture
def sweep(db_url, tmp_path):
    """Two families sampled at two temperatures (24 new tokens, top-p 1)."""
    frames = []
    for i, temperature in enumerate(TEMPERATURES):
        frame, _ = planted_counts(families=("fam_a", "fam_b"), stages=("base", "sft"),
                                  tasks=("pick",), n_prompts=6, n_options=5, n_samples=150,
                                  random_seed=20 + i)
        frames.append(frame.with_columns(temperature=pl.lit(temperature), top_p=pl.lit(1.0),
                                         max_new_tokens=pl.lit(24)))
    return store(db_url, tmp_path, pl.concat(frames))


@pytest.fixture
def checkpoints(db_url, tmp_path):
    """One family whose SFT checkpoints crystallize at sft step 300."""
    frame, _ = checkpoint_counts(checkpoints=CHECKPOINTS, weights=[0, 0, 0, 1, 1, 1, 1],
                                 tasks=("pick",), n_prompts=5, n_options=4, n_samples=200,
                                 rounded=True, random_seed=2)
    return store(db_url, tmp_path, frame)


def run(command, *args):
    return CliRunner().invoke(main, [command, *args])


def test_every_json_row_carries_its_condition(sweep):
    result = run("analyze", "--db", sweep, "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["tasks"]) == 4  # 2 families x 2 temperatures
    for row in document["tasks"] + document["cross_family"]:
        condition = row["condition"]
        assert set(condition) == {"mode", "temperature", "top_p", "top_k", "max_new_tokens",
                                  "stop", "scaffold", "condition_key"}
        assert condition["temperature"] in TEMPERATURES and condition["max_new_tokens"] == 24
        assert re.fullmatch(r"[0-9a-f]{16}", condition["condition_key"])
    assert len(document["cross_family"]) == 4  # 2 ordered pairs in each condition
    (a_sweep, b_sweep) = document["temperature_sweep"]
    assert (a_sweep["family"], b_sweep["family"]) == ("fam_a", "fam_b")
    assert a_sweep["temperatures"] == list(TEMPERATURES)


def test_the_table_prints_one_block_per_condition_and_the_sweep(sweep):
    result = run("analyze", "--db", sweep, "--family", "fam_a")
    assert result.exit_code == 0, result.output
    text = result.stdout
    blocks = re.findall(r"^condition: (T=[0-9.]+, 24 tokens) \[[0-9a-f]{16}\]$", text, re.M)
    assert blocks == ["T=0.5, 24 tokens", "T=1, 24 tokens"]
    assert text.count("== fam_a / pick") == 2
    assert "temperature sweep: fam_a / pick (24 tokens); reference T=1, seed p" in text
    assert "PM ref seed" in text and "PM own seed" in text


def test_condition_options_select_runs(sweep):
    result = run("analyze", "--db", sweep, "--temperature", "0.5", "--format", "json",
                 "--reference-temperature", "0.5")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert {t["condition"]["temperature"] for t in document["tasks"]} == {0.5}
    assert "temperature_sweep" not in document  # one temperature is no sweep
    assert document["thresholds"]["reference_temperature"] == 0.5
    result = run("analyze", "--db", sweep, "--temperature", "0.7")
    assert result.exit_code == 1
    assert ("Error: no done sampled runs with temperature 0.7 in the selection; it holds "
            "temperature 0.5, 1") in result.output
    result = run("analyze", "--db", sweep, "--max-new-tokens", "24", "--top-p", "1",
                 "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(io.StringIO(result.stdout))
    assert frame.height == 8  # 2 families x 2 conditions x 2 stages
    assert sorted(set(frame["temperature"].to_list())) == list(TEMPERATURES)
    assert frame["condition"].unique().sort().to_list() == ["T=0.5, 24 tokens", "T=1, 24 tokens"]
    assert frame["seed_prompt"].null_count() == 0


def test_stale_runs_get_a_warning_on_stderr(sweep):
    engine = open_catalog(sweep)
    with engine.begin() as conn:
        conn.execute(update(Run).values(stale=True))
    engine.dispose()
    result = run("analyze", "--db", sweep, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tasks"]  # the JSON on stdout is untouched
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Warning: 48 of the selected runs are stale")


def test_trajectories_are_on_by_default_with_checkpoints(checkpoints):
    result = run("analyze", "--db", checkpoints, "--format", "json", "--bootstrap", "20")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["thresholds"]["trajectories"] is True
    records = {r["metric"]: r for r in document["trajectories"]}
    assert set(records) == {"liquidity", "entropy_pooled", "mse_to_seed", "probmass",
                            "tv_to_previous"}
    liquidity = records["liquidity"]
    assert liquidity["steps"] == [list(c) for c in CHECKPOINTS]
    assert set(liquidity["change_point"]) == {"index", "stage", "step", "before", "after",
                                              "jump", "delta_bic", "stability", "ci"}
    assert (liquidity["change_point"]["stage"], liquidity["change_point"]["step"]) == ("sft", 300)
    table = run("analyze", "--db", checkpoints)
    assert "checkpoint trajectories" in table.stdout
    assert "    liquidity: transition at sft step 300, delta_bic" in table.stdout
    off = run("analyze", "--db", checkpoints, "--format", "json", "--no-trajectories")
    assert "trajectories" not in json.loads(off.stdout)


def test_the_report_draws_checkpoints_and_sweeps(checkpoints, tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    for output in (first, second):
        result = run("report", "--db", checkpoints, "--output", str(output), "--bootstrap", "10")
        assert result.exit_code == 0, result.output
    assert (first / "figures" / "pick-checkpoints.png").is_file()
    html = (first / "report.html").read_text(encoding="utf-8")
    assert "Order parameters across checkpoints" in html
    assert "<li>fam_a: liquidity: transition at sft step 300, delta_bic" in html
    for figure in (first / "figures").iterdir():  # deterministic: byte-identical again
        assert figure.read_bytes() == (second / "figures" / figure.name).read_bytes()
    assert html == (second / "report.html").read_text(encoding="utf-8").replace(
        str(second), str(first))


def test_the_report_of_a_sweep_has_a_section_per_condition(sweep, tmp_path):
    result = run("report", "--db", sweep, "--output", str(tmp_path / "out"), "--family", "fam_a")
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert {"pick-t-0-5-24-tokens-stage-distributions.png",
            "pick-t-1-24-tokens-stage-distributions.png",
            "all-tasks-t-1-24-tokens-trajectories.png",
            "pick-temperature-sweep.png"} <= names
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert '<section id="temperature-sweeps">' in html
    assert "<h2>Task: pick (T=0.5, 24 tokens)</h2>" in html
