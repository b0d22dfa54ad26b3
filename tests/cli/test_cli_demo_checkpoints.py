"""``catalog demo --checkpoints 8``: 8 checkpoints of SFT and of DPO registered, sampled,
analyzed as trajectories, and the change point printed, on SQLite and on PostgreSQL.

What holds by construction: SFT trains every prompt towards one distribution, the planted
seed, from a base whose prompts each have their own, so liquidity falls from the base to
the final SFT checkpoint and its change point (docs/metrics.md, section 12) falls inside
SFT. How far a trained toy model gets is its training's outcome, so the test first checks
this on the models' own exact option distributions (one forward pass per prompt and
checkpoint; no sampling), then checks that the sampled pipeline's outcome is one that
sampling those exact distributions gives: counts with the stored runs' sizes are drawn from
them ``REPLICATES`` times (fixed seed) and analyzed, and the observed outcome of each task
must have a Monte Carlo p-value above ``SIGNIFICANCE`` / (number of tasks).
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pytest
from click.testing import CliRunner
from stat_checks import outcome_pvalue, simulated_outcomes

from catalog.demo import cache_dir
from catalog.views import read_view

SIGNIFICANCE = 0.01
REPLICATES = 399  # Monte Carlo p-values down to 1/400, below SIGNIFICANCE / 3
SIMULATION_SEED = 31
CHECKPOINTS = 8
PROMPTS_PER_TASK = 4  # keeps 17 models x 3 tasks within the suite's time
ARGS = ["--checkpoints", CHECKPOINTS, "--samples", 200, "--bootstrap", 0, "--no-report",
        "--prompts-per-task", PROMPTS_PER_TASK, "--seed", 3]


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """One cache of trained toy families for the module (both databases reuse the family)."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("CATALOG_CACHE_DIR", str(tmp_path_factory.mktemp("toy-cache")))
    yield cache_dir()
    monkeypatch.undo()


@pytest.fixture(scope="module")
def toy_family(toy_cache):
    from catalog.toylab import ToyFamilySettings, train_family

    settings = ToyFamilySettings(prompts_per_task=PROMPTS_PER_TASK, checkpoints=CHECKPOINTS)
    return train_family(toy_cache, settings)  # what the demo trains, so it reuses it


@pytest.fixture(scope="module")
def exact_frame(toy_family) -> pl.DataFrame:
    """Every checkpoint's exact option distributions, as an import-style long frame."""
    from catalog.toylab import learned_distributions

    tasks = toy_family.settings.resolved_tasks()
    rows = []
    for stage in toy_family.stages:
        for step in stage.checkpoints or (None,):
            model = stage if step is None else stage.checkpoint(step)
            for task, by_prompt in learned_distributions(model, tasks).items():
                options = next(t.options for t in tasks if t.name == task)
                for prompt, probs in by_prompt.items():
                    rows += [(stage.name, stage.order, step, task, prompt, option, float(p))
                             for option, p in zip(options, probs)]
    return pl.DataFrame(rows, orient="row", schema={
        "stage": pl.String, "stage_order": pl.Int64, "step": pl.Int64, "task": pl.String,
        "prompt": pl.String, "option": pl.String, "probability": pl.Float64,
    })


def trajectory_outcomes(document: dict) -> dict:
    """task -> (the stage where liquidity's change point fell, liquidity fell from the base
    to the final SFT checkpoint)."""
    outcomes = {}
    for record in document["trajectories"]:
        if record["metric"] != "liquidity":
            continue
        final_sft = max(i for i, (stage, _) in enumerate(record["steps"]) if stage == "sft")
        values = record["values"]
        outcomes[record["task"]] = (
            record["change_point"]["stage"], values[final_sft] < values[0],
        )
    return outcomes


_SIMULATED: dict = {}


def test_demo_with_checkpoints_finds_the_change_point_inside_sft(
    db_url, engine, toy_family, exact_frame
):
    from analysis.crystallization import analyze, analyze_data
    from analysis.frames import counts_from_frame, read_counts
    from catalog.cli import main

    result = CliRunner().invoke(main, ["demo", "--db", db_url, *map(str, ARGS)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "reused cached stages base, sft (8 checkpoints), dpo (8 checkpoints)" in result.output
    assert "2/4 ingest: 17 models x digit, coin, color" in result.output

    # Every checkpoint was sampled, and the trajectories run over all 17 of them in order.
    runs = read_view(engine, "v_runs", family="toy")
    steps = runs.select("stage_order", "step").unique().sort("stage_order", "step")
    sft, dpo = (toy_family.stage(name).checkpoints for name in ("sft", "dpo"))
    assert steps.rows() == [(0, None)] + [(1, s) for s in sft] + [(2, s) for s in dpo]
    document = analyze(engine, families=["toy"]).to_dict()
    expected_steps = [["base", None]] + [["sft", s] for s in sft] + [["dpo", s] for s in dpo]
    liquidity = [r for r in document["trajectories"] if r["metric"] == "liquidity"]
    assert sorted(r["task"] for r in liquidity) == ["coin", "color", "digit"]
    assert all(r["steps"] == expected_steps for r in liquidity)
    # The demo prints each task's reading of it.
    assert f"Change points over the {len(expected_steps)} checkpoints:" in result.output
    for record in liquidity:
        assert f"  {record['task']:<8} {record['reading']}" in result.output.splitlines()

    # The models themselves: liquidity falls and changes inside SFT (no sampling involved).
    frame = exact_frame.join(
        runs.select("stage", "step", "task", "prompt", "prompt_id").unique(),
        on=["stage", "step", "task", "prompt"], nulls_equal=True,
    ).with_columns(family=pl.lit("toy"))
    closed = {t.name: t.options for t in toy_family.settings.resolved_tasks()}
    exact = counts_from_frame(frame, closed, mode="exact")
    truth = trajectory_outcomes(analyze_data(exact).to_dict())
    assert truth == {task: ("sft", True) for task in closed}, truth

    # The sampled pipeline's outcome is a plausible sample of those distributions.
    sampled = read_counts(engine, families=["toy"])
    key = sampled.counts.sort("unit", "option").hash_rows().sum()  # same counts on both DBs
    if key not in _SIMULATED:
        _SIMULATED[key] = simulated_outcomes(
            exact, sampled, trajectory_outcomes, replicates=REPLICATES, seed=SIMULATION_SEED
        )
    simulated = _SIMULATED[key]
    observed = trajectory_outcomes(document)
    assert set(observed) == set(truth)
    for task, outcome in observed.items():
        values = [replicate[task] for replicate in simulated]
        pvalue = outcome_pvalue(outcome, values)
        assert pvalue > SIGNIFICANCE / len(observed), (task, outcome, Counter(values))
