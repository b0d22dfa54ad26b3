"""Checkpoint trajectories (analysis/trajectories.py) against the contract, docs/metrics.md
section 12: series, change point, transition-or-drift BIC and the bootstrap of k*.

Pure: no database. References are written out here independently: an explicit loop over the
breaks k in plain NumPy, and exact rational arithmetic (fractions) for the tie rule.
"""

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest
import ruptures
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import metrics
from analysis import trajectories as tr

# Fixed, derandomized property tests: the same examples on every run.
PROPERTY = settings(derandomize=True, max_examples=200, deadline=None)

PLANTED = 7  # first crystallized checkpoint of the planted series
CHECKPOINTS = [("base", None)] + [("sft", 100 * s) for s in range(1, 12)]


# ----- independent references ---------------------------------------------------------------


def reference_change_point(y):
    """The contract in plain NumPy: a loop over k, first minimum, BIC with floored SSEs."""
    y = np.asarray(y, dtype=float)
    m = len(y)
    costs = []
    for k in range(1, m):
        left, right = y[:k], y[k:]
        costs.append(np.sum((left - left.mean()) ** 2) + np.sum((right - right.mean()) ** 2))
    k = int(np.argmin(costs)) + 1
    before, after = y[:k].mean(), y[k:].mean()
    # The line's SSE does not change with a shift of y; fitting the centered series keeps
    # polyfit accurate on series with a large offset (1000 + 1e-3 noise below).
    i = np.arange(m)
    centered = y - y.mean()
    slope, intercept = np.polyfit(i, centered, 1)
    sse_line = np.sum((centered - (slope * i + intercept)) ** 2)
    sse_step = costs[k - 1]
    floor = 1e-12 * m
    bic_line = m * np.log(max(sse_line, floor) / m) + 2 * np.log(m)
    bic_step = m * np.log(max(sse_step, floor) / m) + 3 * np.log(m)
    return k, before, after, after - before, bic_line - bic_step


def exact_break(values):
    """argmin over k of the split cost in exact rationals, ties to the smaller k."""
    y = [Fraction(v) for v in values]

    def sse(segment):
        mean = sum(segment) / len(segment)
        return sum((v - mean) ** 2 for v in segment)

    costs = [sse(y[:k]) + sse(y[k:]) for k in range(1, len(y))]
    return 1 + costs.index(min(costs))


def planted_distributions(rng, n_prompts=10, n_options=10, noise=0.05):
    """Per checkpoint (prompts x options): liquid before PLANTED, crystallized from it.

    Liquid: prompt p puts most of its mass on its own option p; crystallized: every prompt
    on option 0. A small Dirichlet noise (fixed seed) on every row.
    """
    out = []
    for c in range(len(CHECKPOINTS)):
        peak = np.zeros((n_prompts, n_options))
        if c < PLANTED:
            peak[np.arange(n_prompts), np.arange(n_prompts) % n_options] = 1.0
        else:
            peak[:, 0] = 1.0
        jitter = rng.dirichlet(np.ones(n_options), size=n_prompts)
        out.append((1 - noise) * peak + noise * jitter)
    return out


# ----- change point ------------------------------------------------------------------------


def test_change_point_matches_plain_numpy_loop_on_random_series():
    rng = np.random.default_rng(20240611)
    for trial in range(400):
        m = int(rng.integers(4, 41))
        kind = trial % 4
        if kind == 0:
            y = rng.random(m)
        elif kind == 1:  # a level shift plus noise
            y = np.where(np.arange(m) >= rng.integers(1, m), 1.0, 0.0) + 0.3 * rng.normal(size=m)
        elif kind == 2:  # a line plus noise
            y = rng.normal() * np.arange(m) + rng.normal(size=m)
        else:  # large offset, small spread
            y = 1000.0 + 1e-3 * rng.random(m)
        cp = tr.change_point(y)
        k, before, after, jump, dbic = reference_change_point(y)
        assert cp.index == k, (trial, y)
        assert cp.before == pytest.approx(before, abs=1e-9)
        assert cp.after == pytest.approx(after, abs=1e-9)
        assert cp.jump == pytest.approx(jump, abs=1e-9)
        assert cp.delta_bic == pytest.approx(dbic, abs=1e-9, rel=1e-9)


grid_series = st.integers(1, 20).flatmap(
    lambda q: st.lists(st.integers(0, q), min_size=4, max_size=24).map(lambda js: (q, js))
)


@PROPERTY
@given(grid_series)
def test_change_point_tie_rule_is_exact_on_grid_series(qjs):
    """Values j / q: plenty of exact ties; the break is the exact rational argmin (smallest
    k on ties). Distinct split costs differ by far more than the tie tolerance here."""
    q, js = qjs
    y = np.asarray(js, dtype=float) / q
    expected = exact_break([Fraction(j, q) for j in js])
    assert tr.change_point(y).index == expected
    assert tr.change_point_indices(y) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 0, 1], 1),  # k = 1 and k = 3 tie
        ([1, 0, 1, 0, 1, 0], 1),
        ([0.7, 0.1, 0.1, 0.7], 1),  # raw ruptures (1.1.10) says 3: rounding breaks the tie
        ([0.9, 0.7, 0.3, 0.7, 0.9], 1),  # raw ruptures says 4
        ([0.1] * 7, 1),  # constant: every k ties; raw ruptures says 2
        ([0.0] * 5, 1),
        ([2.5] * 40, 1),
        ([0, 0, 1, 1], 2),
    ],
)
def test_tie_rule_smaller_k(values, expected):
    assert tr.change_point(values).index == expected
    assert tr.change_point_indices(np.asarray(values, float)) == expected
    assert exact_break(values) == expected


def test_tie_resolution_does_not_depend_on_which_tied_break_ruptures_returns(monkeypatch):
    """Force ruptures to return the largest tied break: the result is still the smallest."""

    def largest_tied(self, n_bkps):
        costs = [self.cost.error(0, k) + self.cost.error(k, self.n_samples)
                 for k in range(1, self.n_samples)]
        best = min(costs)
        last = max(k for k, c in enumerate(costs, start=1) if abs(c - best) < 1e-12)
        return [last, self.n_samples]

    monkeypatch.setattr(ruptures.Dynp, "predict", largest_tied)
    assert tr.change_point([0, 1, 0, 1]).index == 1
    assert tr.change_point([0.1] * 7).index == 1
    assert tr.change_point([3, 1, 2, 2, 1, 3]).index == exact_break([3, 1, 2, 2, 1, 3])


def test_segments_of_one_point_are_allowed():
    """min_size = 1: the break can be at k = 1 or k = m - 1 (k in 1 .. m-1)."""
    assert tr.change_point([5, 0, 0, 0, 0]).index == 1
    assert tr.change_point([0, 0, 0, 0, 5]).index == 4
    cp = tr.change_point([0, 0, 0, 0, 5])
    assert (cp.before, cp.after, cp.jump) == (0.0, 5.0, 5.0)


def test_fewer_than_four_points_or_undefined_values_give_none():
    assert tr.change_point([]) is None
    assert tr.change_point([1.0]) is None
    assert tr.change_point([0.0, 1.0, 2.0]) is None
    assert tr.change_point([0.0, 1.0, np.nan, 1.0]) is None
    assert tr.change_point_indices(np.zeros((3, 3))).tolist() == [-1, -1, -1]
    batch = np.array([[0, 0, 1, 1], [0, np.nan, 1, 1]], dtype=float)
    assert tr.change_point_indices(batch).tolist() == [2, -1]
    assert tr.change_point([0.0, 0.0, 1.0, 1.0]) is not None


def test_sse_zero_stays_finite():
    m = 4
    perfect_step = tr.change_point([0.0, 0.0, 1.0, 1.0])  # SSE_step = 0
    sse_line = np.sum((np.array([0, 0, 1, 1]) - np.polyval(np.polyfit(range(4), [0, 0, 1, 1], 1),
                                                            range(4))) ** 2)
    expected = m * np.log(sse_line / m) - m * np.log(1e-12) - np.log(m)
    assert np.isfinite(perfect_step.delta_bic) and perfect_step.delta_bic > 0
    assert perfect_step.delta_bic == pytest.approx(expected, rel=1e-12)
    constant = tr.change_point([0.3] * 6)  # both SSEs 0: floored, delta_bic = -ln m
    assert constant.delta_bic == pytest.approx(-np.log(6), abs=1e-9)
    line = tr.change_point([0.0, 1.0, 2.0, 3.0, 4.0])  # SSE_line = 0
    assert np.isfinite(line.delta_bic) and line.delta_bic < 0


def test_planted_straight_decline_is_a_drift():
    rng = np.random.default_rng(7)
    y = 0.9 - 0.05 * np.arange(16) + 0.005 * rng.normal(size=16)
    cp = tr.change_point(y)
    assert cp.delta_bic < 0
    assert not cp.transition


def test_batch_indices_agree_with_change_point():
    rng = np.random.default_rng(3)
    series = np.concatenate(
        [
            rng.random((200, 12)),
            np.round(rng.random((200, 12)) * 3) / 3,  # many ties
            np.where(np.arange(12) >= 5, 0.2, 0.8) + 0.01 * rng.normal(size=(50, 12)),
        ]
    )
    batch = tr.change_point_indices(series)
    assert batch.tolist() == [tr.change_point(y).index for y in series]


# ----- series ------------------------------------------------------------------------------


def brute_force_series(distributions, seed, support):
    out = {name: [] for name in tr.TRAJECTORY_METRICS}
    means = []
    for p in distributions:
        pairs = list(itertools.combinations(range(len(p)), 2))
        out["liquidity"].append(np.mean([metrics.jsd(p[a], p[b]) for a, b in pairs]))
        pbar = p.mean(axis=0)
        means.append(pbar)
        out["entropy_pooled"].append(-sum(x * np.log2(x) for x in pbar if x > 0))
        out["mse_to_seed"].append(np.mean((pbar - seed) ** 2))
        out["probmass"].append(pbar[support].sum())
    out["tv_to_previous"] = [0.5 * np.abs(b - a).sum() for a, b in zip(means, means[1:])]
    return out


def test_series_match_brute_force_with_uneven_prompt_counts():
    rng = np.random.default_rng(11)
    k = 5
    distributions = [rng.dirichlet(np.ones(k), size=n) for n in (6, 4, 5, 6, 3)]
    seed = distributions[0][2]
    support = metrics.seed_support(seed, 0.9)
    series = tr.trajectory_series(distributions, seed, support)
    assert list(series) == list(tr.TRAJECTORY_METRICS)
    expected = brute_force_series(distributions, seed, support)
    for name in tr.TRAJECTORY_METRICS:
        np.testing.assert_allclose(series[name], expected[name], rtol=1e-12, atol=1e-12)


def test_tv_series_has_n_points_and_starts_at_c1():
    rng = np.random.default_rng(5)
    distributions = [rng.dirichlet(np.ones(4), size=3) for _ in CHECKPOINTS]
    series = tr.trajectory_series(distributions, distributions[0][0], np.ones(4, bool))
    n = len(CHECKPOINTS) - 1
    assert series["tv_to_previous"].shape == (n,)
    assert all(series[name].shape == (n + 1,) for name in tr.TRAJECTORY_METRICS[:-1])
    result = {t.metric: t for t in tr.trajectories(CHECKPOINTS, distributions)}
    assert set(result) == {"liquidity", "entropy_pooled", "tv_to_previous"}  # no seed given
    assert result["tv_to_previous"].steps == CHECKPOINTS[1:]
    assert len(result["tv_to_previous"].values) == n


def test_planted_liquidity_jump_found_at_that_checkpoint():
    distributions = planted_distributions(np.random.default_rng(42))
    seed = distributions[0][0]
    series = tr.trajectory_series(distributions, seed, metrics.seed_support(seed, 0.9))
    liquidity = series["liquidity"]
    assert liquidity[:PLANTED].min() > 0.5 > 0.1 > liquidity[PLANTED:].max()
    cp = tr.change_point(liquidity)
    assert cp.index == PLANTED
    assert cp.delta_bic > 0 and cp.transition
    assert cp.jump < -0.4
    assert cp.before == pytest.approx(liquidity[:PLANTED].mean())
    assert cp.after == pytest.approx(liquidity[PLANTED:].mean())


# ----- bootstrap ---------------------------------------------------------------------------


def planted_counts(rng, samples=200):
    return [rng.multinomial(samples, p) for p in planted_distributions(rng)]


def test_bootstrap_same_seed_same_result():
    counts = planted_counts(np.random.default_rng(1))
    seed = counts[0][0] / counts[0][0].sum()
    support = metrics.seed_support(seed, 0.9)
    a = tr.bootstrap_change_points(counts, seed, support, 60, 123)
    b = tr.bootstrap_change_points(counts, seed, support, 60, np.random.default_rng(123))
    assert list(a) == list(tr.TRAJECTORY_METRICS)
    for name in a:
        np.testing.assert_array_equal(a[name].replicates, b[name].replicates)
        assert (a[name].stability, a[name].ci) == (b[name].stability, b[name].ci)


def test_bootstrap_sharp_planted_jump_is_stable():
    """Stability level: at least 0.95 of 200 replicates keep the planted break."""
    counts = planted_counts(np.random.default_rng(2))
    seed = counts[0][0] / counts[0][0].sum()
    support = metrics.seed_support(seed, 0.9)
    boot = tr.bootstrap_change_points(counts, seed, support, 200, 0)
    liquidity = boot["liquidity"]
    assert liquidity.point == PLANTED
    assert liquidity.replicates.shape == (200,)
    assert liquidity.stability >= 0.95
    low, high = liquidity.ci
    assert low <= PLANTED <= high
    # The percentile ends are replicate values (valid indices, inverted_cdf).
    assert {low, high} <= set(liquidity.replicates.tolist())


def test_bootstrap_replicates_follow_the_point_rule():
    """Each replicate k* equals change_point() on that replicate's series (recomputed)."""
    counts = planted_counts(np.random.default_rng(4))
    c, mask = tr.stack_checkpoints(counts)
    draws = metrics.resample_distributions(c, mask, 25, np.random.default_rng(9))
    series = tr.series_from_stack(draws, mask, None, None, c.sum(axis=-1))
    boot = tr.bootstrap_change_points(counts, None, None, 25, 9)
    for name, values in series.items():
        assert boot[name].replicates.tolist() == [tr.change_point(v).index for v in values]


def test_bootstrap_with_seed_rule_rechooses_seed_per_replicate():
    counts = planted_counts(np.random.default_rng(6))
    rule = tr.SeedRule(base=0, sft=len(CHECKPOINTS) - 1, tau=0.9)
    p, mask = tr.stack_checkpoints([x / x.sum(axis=1, keepdims=True) for x in counts])
    seed, support = rule.apply(p, mask)
    chosen = metrics.choose_seed(p[0], mask[0], metrics.masked_mean(p[-1], mask[-1]))
    np.testing.assert_array_equal(seed, p[0, chosen])
    boot = tr.bootstrap_change_points(counts, None, None, 40, 0, seed_rule=rule)
    assert list(boot) == list(tr.TRAJECTORY_METRICS)
    assert boot["probmass"].ci is not None
    with pytest.raises(ValueError):
        tr.bootstrap_change_points([x + 0.5 for x in counts], None, None, 5, 0)


# ----- results -----------------------------------------------------------------------------


def test_trajectories_to_dict_and_reading():
    counts = planted_counts(np.random.default_rng(8))
    seed = counts[0][0] / counts[0][0].sum()
    support = metrics.seed_support(seed, 0.9)
    result = tr.trajectories(CHECKPOINTS, counts, seed, support, replicates=100, rng=0)
    assert [t.metric for t in result] == list(tr.TRAJECTORY_METRICS)
    liquidity = result[0].to_dict()
    json.dumps(liquidity, allow_nan=False)
    assert set(liquidity) == {"metric", "steps", "values", "change_point"}
    assert liquidity["steps"][:2] == [["base", None], ["sft", 100]]
    cp = liquidity["change_point"]
    assert set(cp) == {
        "index", "stage", "step", "before", "after", "jump", "delta_bic", "stability", "ci"
    }
    assert (cp["index"], cp["stage"], cp["step"]) == (PLANTED, "sft", 700)
    assert cp["stability"] >= 0.95
    assert cp["ci"]["low"]["index"] <= PLANTED <= cp["ci"]["high"]["index"]
    assert set(cp["ci"]["low"]) == {"index", "stage", "step"}
    assert result[0].reading().startswith("liquidity: transition at sft step 700, delta_bic ")

    plain = tr.trajectories(CHECKPOINTS, counts, seed, support)[0].to_dict()["change_point"]
    assert plain["stability"] is None and plain["ci"] is None
    assert plain["index"] == PLANTED


def test_reading_drift_and_too_short():
    steps = [("base", None), ("sft", 1), ("sft", 2), ("sft", 3), ("dpo", None)]
    values = [0.9, 0.7, 0.5, 0.3, 0.1]
    drift = tr.Trajectory("liquidity", steps, values, tr.change_point(values))
    assert drift.reading().startswith("liquidity: drift, delta_bic -")
    short = tr.Trajectory("entropy_pooled", steps[:3], values[:3], None)
    assert short.reading() == "entropy_pooled: no change point (3 points, needs at least 4)"
    nan = tr.Trajectory("mse_to_seed", steps, [np.nan] * 5, None).to_dict()
    assert nan["values"] == [None] * 5 and nan["change_point"] is None
