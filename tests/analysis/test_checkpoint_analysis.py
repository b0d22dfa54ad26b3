"""Checkpoint trajectories through the whole analysis (docs/metrics.md, section 12), on SQLite
and PostgreSQL: stores with checkpoints (a ``step`` column) imported with import-counts.

The planted series are deterministic: counts are ``N * P`` rounded (largest remainder), no
sampling, so the expected break and the sign of ``delta_bic`` follow from the planted
distributions alone. The reference values are an independent plain-NumPy computation of the
contract written here (loops over prompt pairs and breaks, logarithms, no code of the
analysis).
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from analysis.crystallization import AnalysisOptions, analyze, analyze_data
from analysis.frames import counts_from_frame
from catalog.imports import import_counts
from catalog.toylab.synthetic import checkpoint_counts

SFT_STEPS = [100 * s for s in range(1, 12)]
CHECKPOINTS = [("base", None)] + [("sft", step) for step in SFT_STEPS]
PLANTED = 7  # the first crystallized checkpoint: sft step 700
TASK = "pick"  # an open task (bundled task names would check their option lists)


def store(engine, tmp_path, frame: pl.DataFrame, name: str = "counts") -> None:
    path = tmp_path / f"{name}.parquet"
    frame.drop("prompt_id").write_parquet(path)
    import_counts(engine, path)


def planted_jump(**overrides):
    fields = dict(checkpoints=CHECKPOINTS, weights=[0.0] * PLANTED + [1.0] * (12 - PLANTED),
                  tasks=(TASK,), n_prompts=6, n_options=5, n_samples=400, rounded=True,
                  random_seed=3)
    fields.update(overrides)
    return checkpoint_counts(**fields)


# ----- an independent reference ---------------------------------------------------------------


def entropy(p):
    p = np.asarray(p, float)
    return float(-sum(x * np.log2(x) for x in p if x > 0))


def jsd(p, q):
    return entropy((np.asarray(p) + np.asarray(q)) / 2) - (entropy(p) + entropy(q)) / 2


def reference_series(frame: pl.DataFrame, options: list[str], tau: float = 0.9) -> dict:
    """The contract's five series, from the counts frame, with plain loops."""
    per_checkpoint = []
    for stage, step in CHECKPOINTS:
        rows = frame.filter((pl.col("stage") == stage) & pl.col("step").eq_missing(step))
        prompts = []
        for _, part in sorted(rows.partition_by("prompt_id", as_dict=True).items()):
            counts = dict(zip(part["option"], part["count"]))
            vector = np.array([counts.get(o, 0) for o in options], float)
            if vector.sum() > 0:
                prompts.append(vector / vector.sum())
        per_checkpoint.append(prompts)
    pbar = [np.mean(prompts, axis=0) for prompts in per_checkpoint]
    # Seed: the base prompt closest (MSE) to the final SFT checkpoint's mean, lower id on ties.
    errors = [np.mean((p - pbar[-1]) ** 2) for p in per_checkpoint[0]]
    seed = per_checkpoint[0][int(np.argmin(errors))]
    order = sorted(range(len(options)), key=lambda o: (-seed[o], options[o]))
    support, mass = [], 0.0
    for o in order:
        if mass >= tau - 1e-9:
            break
        support.append(o)
        mass += seed[o]
    return {
        "liquidity": [np.mean([jsd(p, q) for p, q in itertools.combinations(prompts, 2)])
                      for prompts in per_checkpoint],
        "entropy_pooled": [entropy(m) for m in pbar],
        "mse_to_seed": [float(np.mean((m - seed) ** 2)) for m in pbar],
        "probmass": [float(sum(m[o] for o in support)) for m in pbar],
        "tv_to_previous": [0.5 * float(np.abs(pbar[c] - pbar[c - 1]).sum())
                           for c in range(1, len(pbar))],
    }


def reference_change_point(y):
    y = np.asarray(y, float)
    m = len(y)
    costs = [np.sum((y[:k] - y[:k].mean()) ** 2) + np.sum((y[k:] - y[k:].mean()) ** 2)
             for k in range(1, m)]
    k = int(np.argmin(costs)) + 1
    i = np.arange(m)
    slope, intercept = np.polyfit(i, y - y.mean(), 1)
    sse_line = np.sum((y - y.mean() - (slope * i + intercept)) ** 2)
    floor = 1e-12 * m
    bic_line = m * np.log(max(sse_line, floor) / m) + 2 * np.log(m)
    bic_step = m * np.log(max(costs[k - 1], floor) / m) + 3 * np.log(m)
    before, after = y[:k].mean(), y[k:].mean()
    return k, before, after, after - before, bic_line - bic_step


def by_metric(document, family="fam_a"):
    return {t["metric"]: t for t in document["trajectories"] if t["family"] == family}


# ----- through the store ----------------------------------------------------------------------


def test_series_and_change_points_equal_an_independent_computation(engine, tmp_path):
    frame, _ = planted_jump(rounded=False, n_samples=300, random_seed=8)
    store(engine, tmp_path, frame)
    document = analyze(engine, options=AnalysisOptions(trajectories=True)).to_dict()
    task = document["tasks"][0]
    options = sorted(frame.filter(pl.col("count") > 0)["option"].unique().to_list())
    expected = reference_series(frame, options)
    series = by_metric(document)
    assert list(series) == ["liquidity", "entropy_pooled", "mse_to_seed", "probmass",
                            "tv_to_previous"]
    for metric, values in expected.items():
        record = series[metric]
        assert record["condition"] == task["condition"]
        steps = CHECKPOINTS[1:] if metric == "tv_to_previous" else CHECKPOINTS
        assert record["steps"] == [list(s) for s in steps]
        np.testing.assert_allclose(record["values"], values, rtol=0, atol=1e-9)
        k, before, after, jump, dbic = reference_change_point(values)
        change = record["change_point"]
        assert change["index"] == k, metric
        assert [change["stage"], change["step"]] == list(steps[k])
        for name, value in (("before", before), ("after", after), ("jump", jump),
                            ("delta_bic", dbic)):
            assert change[name] == pytest.approx(value, abs=1e-9, rel=1e-9), (metric, name)
        assert change["stability"] is None and change["ci"] is None  # no bootstrap


def test_a_planted_jump_in_liquidity_is_found_at_its_checkpoint(engine, tmp_path):
    frame, seeds = planted_jump()
    store(engine, tmp_path, frame)
    result = analyze(engine, options=AnalysisOptions(bootstrap=40, seed=2))  # on by default
    document = result.to_dict()
    assert document["thresholds"]["trajectories"] is True
    liquidity = by_metric(document)["liquidity"]["change_point"]
    assert (liquidity["index"], liquidity["stage"], liquidity["step"]) == (PLANTED, "sft", 700)
    assert liquidity["delta_bic"] > 0
    # After the jump every prompt answers with the seed's rounded counts: liquidity 0.
    assert liquidity["after"] == pytest.approx(0.0, abs=1e-12) and liquidity["jump"] < 0
    # Every replicate sees the same break (the jump is most of the series' variance).
    assert liquidity["stability"] == 1.0
    assert liquidity["ci"] == {"low": {"index": 7, "stage": "sft", "step": 700},
                               "high": {"index": 7, "stage": "sft", "step": 700}}
    reading = by_metric(document)["liquidity"]["reading"]
    assert reading.startswith("liquidity: transition at sft step 700, delta_bic")
    # The stage metrics use the final checkpoints, and their seed is the planted prompt.
    task = document["tasks"][0]
    assert task["steps"] == {"base": None, "sft": 1100}
    assert task["seed_prompt_id"] == seeds[("fam_a", TASK)]
    assert len(task["checkpoints"]) == 12


def test_a_planted_straight_decline_is_a_drift(engine, tmp_path):
    """Weights chosen (by bisection on the reference liquidity) so that liquidity falls on a
    straight line from the base's value to a tenth of it."""
    frame, _ = planted_jump(weights=[0.0] * 12, n_samples=100_000)
    base = frame.filter(pl.col("stage") == "base")
    options = sorted(frame["option"].unique().to_list())
    liquid = np.array([[dict(zip(p["option"], p["count"]))[o] for o in options]
                       for _, p in sorted(base.partition_by("prompt_id", as_dict=True).items())],
                      float)
    liquid /= liquid.sum(axis=1, keepdims=True)
    seed = liquid[0]

    def liquidity_at(w):
        mixed = (1 - w) * liquid + w * seed
        return np.mean([jsd(p, q) for p, q in itertools.combinations(mixed, 2)])

    top = liquidity_at(0.0)
    weights = []
    for target in np.linspace(top, top / 10, 12):
        low, high = 0.0, 1.0
        for _ in range(60):  # liquidity falls as the seed's share grows
            middle = (low + high) / 2
            low, high = (middle, high) if liquidity_at(middle) > target else (low, middle)
        weights.append((low + high) / 2)
    frame, _ = planted_jump(weights=weights, n_samples=100_000, seed_prompts={("fam_a", TASK): 0})
    store(engine, tmp_path, frame)
    liquidity = by_metric(analyze(engine).to_dict())["liquidity"]
    np.testing.assert_allclose(liquidity["values"], np.linspace(top, top / 10, 12), atol=1e-3)
    assert liquidity["change_point"]["delta_bic"] < 0
    assert liquidity["reading"].startswith("liquidity: drift, delta_bic -")


def test_stage_metrics_use_each_stages_final_checkpoint(engine, tmp_path):
    """The analysis of a store with checkpoints equals that of a store holding only the
    final checkpoints (the step-less base and sft step 1100), trajectories aside."""
    frame, _ = planted_jump(random_seed=5)  # rounded: every checkpoint has the finals' options
    store(engine, tmp_path, frame)
    with_checkpoints = analyze(engine, options=AnalysisOptions(bootstrap=10, trajectories=False))
    finals = frame.filter(pl.col("step").is_null() | (pl.col("step") == 1100))
    only_finals = analyze_data(counts_from_frame(finals), AnalysisOptions(bootstrap=10))
    left, right = with_checkpoints.to_dict(), only_finals.to_dict()
    assert "trajectories" not in left
    for name in ("entropy", "liquidity", "mse_to_seed", "probmass", "nucleation_ratio",
                 "seed_prompt", "verdict", "ci", "seed_stability", "steps"):
        assert left["tasks"][0][name] == right["tasks"][0][name], name


def test_a_store_without_checkpoints_has_no_trajectories_unless_asked(engine, tmp_path):
    frame, _ = planted_jump(checkpoints=[("base", None), ("sft", None), ("dpo", None),
                                         ("rl", None)], weights=[0, 1, 1, 1])
    store(engine, tmp_path, frame)
    document = analyze(engine).to_dict()
    assert set(document) == {"thresholds", "problems", "tasks", "cross_family", "validity"}
    assert document["thresholds"]["trajectories"] is False
    asked = analyze(engine, options=AnalysisOptions(trajectories=True)).to_dict()
    liquidity = by_metric(asked)["liquidity"]
    assert liquidity["steps"] == [["base", None], ["sft", None], ["dpo", None], ["rl", None]]
    assert liquidity["change_point"]["index"] == 1  # the four stages are the four points
