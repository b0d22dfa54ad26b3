"""Ground truth: the whole pipeline (train, ingest, analyze) on toy families whose seed we know.

A small toy family (6 prompts per task) keeps this within CI's budget; families are trained
once per test session and cached by their settings. The plantings use seed prompts whose
planted distributions stand well apart from the base average (a two-option seed near 50/50
would make the nucleation ratio a ratio of noise at this sample size); with them the verdicts
held for every sampling seed tried (1-5), with ProbMass margins above 0.1.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from catalog.demo import DemoOptions, planted_vs_found, run_demo

SMALL = {"prompts_per_task": 6}
# Two different plantings: a different seed prompt for every task.
PLANTINGS = {
    "first": {"digit": "terse", "coin": "plain", "color": "only"},
    "second": {"digit": "roleplay", "coin": "terse", "color": "json"},
}


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """One cache of trained toy families for the whole module."""
    path = tmp_path_factory.mktemp("toy-cache")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("CATALOG_CACHE_DIR", str(path))
    yield path
    monkeypatch.undo()


def demo(engine, family: str, seeds: dict, *, world_seed=0, train_seed=0, report_dir=None):
    options = DemoOptions(
        family=family, seed_prompts=seeds, samples=400, seed=1, train_seed=train_seed,
        bootstrap=0, report_dir=report_dir, prompts_per_task=SMALL["prompts_per_task"],
        toylab={"world_seed": world_seed},
    )
    return run_demo(engine, options, say=lambda line: None)


@pytest.mark.parametrize("planting", sorted(PLANTINGS))
def test_the_pipeline_recovers_the_planted_seed_and_the_phases(
    engine, toy_cache, tmp_path, planting
):
    result = demo(engine, "toy", PLANTINGS[planting], report_dir=tmp_path / "report")
    rows = planted_vs_found(result.family, result.analysis)
    assert {row["task"] for row in rows} == {"digit", "coin", "color"}
    for row in rows:
        assert row["found_seed"] == row["planted_seed"], row
        assert row["liquid"] is True, row
        assert row["nucleated"] is True, row
        assert row["settled"] == {"dpo": True}, row
    assert {r["task"]: r["planted_seed"] for r in rows} == PLANTINGS[planting]
    # The report builds from the demo's data.
    assert result.report_path.exists()
    assert "digit" in result.report_path.read_text(encoding="utf-8")


def cross(result, task: str, a: str, b: str) -> dict:
    rows = [
        c for c in result.to_dict()["cross_family"]
        if (c["task"], c["family_a"], c["family_b"]) == (task, a, b)
    ]
    assert len(rows) == 1
    return rows[0]


def test_a_seed_shared_across_families_predicts_nucleation(engine, toy_cache):
    """Same world (planted base distributions), different weights: same seed -> rank 1."""
    from analysis.crystallization import analyze

    seeds = PLANTINGS["first"]
    demo(engine, "lab-a", seeds, train_seed=0)
    demo(engine, "lab-b", seeds, train_seed=1)
    demo(engine, "lab-c", PLANTINGS["second"], train_seed=2)
    result = analyze(engine, families=["lab-a", "lab-b", "lab-c"])
    for task in ("digit", "coin", "color"):
        same = cross(result, task, "lab-a", "lab-b")
        assert same["same_seed_prompt"] is True and same["rank"] == 1, same
        assert same["predictive_ratio"] < 1, same
        different = cross(result, task, "lab-a", "lab-c")
        assert different["same_seed_prompt"] is False, different
        assert different["rank"] > 1, different


def test_demo_command_prints_the_phases_and_how_to_query(db_url, toy_cache, tmp_path):
    from catalog.cli import main

    result = CliRunner().invoke(main, [
        "demo", "--db", db_url, "--samples", "200", "--bootstrap", "0",
        "--report", str(tmp_path / "report"), "--prompts-per-task", "6",
        *(f"--seed-prompt={task}={key}" for task, key in PLANTINGS["first"].items()),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "coin     planted plain      found plain      ok" in result.output
    assert "catalog sql" in result.output and "v_distributions" in result.output
    assert (tmp_path / "report" / "report.html").exists()
