"""The metric functions of analysis/metrics.py against metrics.md and brute-force references."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import metrics

# Fixed, derandomized property tests: the same examples on every run.
PROPERTY = settings(derandomize=True, max_examples=150, deadline=None)


def distributions(min_options=2, max_options=8):
    """Probability vectors built from small integer counts (at least one positive)."""
    return st.lists(st.integers(0, 20), min_size=min_options, max_size=max_options).filter(
        any
    ).map(lambda c: np.asarray(c, dtype=float) / sum(c))


def pairs_of_distributions():
    return st.integers(2, 8).flatmap(
        lambda k: st.tuples(
            st.lists(st.integers(0, 20), min_size=k, max_size=k).filter(any),
            st.lists(st.integers(0, 20), min_size=k, max_size=k).filter(any),
        )
    ).map(lambda pq: tuple(np.asarray(c, dtype=float) / sum(c) for c in pq))


def prompt_matrices():
    """(N prompts x K options) distributions, N in 1..6."""
    return st.tuples(st.integers(1, 6), st.integers(2, 6)).flatmap(
        lambda nk: st.lists(
            st.lists(st.integers(0, 9), min_size=nk[1], max_size=nk[1]).filter(any),
            min_size=nk[0],
            max_size=nk[0],
        )
    ).map(lambda rows: np.asarray([np.asarray(r, float) / sum(r) for r in rows]))


# ----- the worked example of metrics.md ----------------------------------------------------

BASE = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]])
SFT_MEAN = np.array([0.9, 0.05, 0.05])
ALL = np.ones(3, dtype=bool)


def test_worked_example_base_mean():
    assert np.round(metrics.masked_mean(BASE, ALL), 4).tolist() == [0.4111, 0.4111, 0.1778]


def test_worked_example_mse_to_sft_and_seed():
    errors = metrics.mse(BASE, SFT_MEAN)
    assert np.round(errors, 7).tolist() == [0.0050000, 0.4016667, 0.1605556]
    assert metrics.choose_seed(BASE, ALL, SFT_MEAN) == 0  # p1


def test_worked_example_nucleation_ratio():
    base_mean = metrics.masked_mean(BASE, ALL)
    assert round(float(metrics.mse(SFT_MEAN, base_mean)), 7) == 0.1285802
    nr = metrics.nucleation_ratio(SFT_MEAN, BASE[0], base_mean)
    assert round(float(nr), 7) == 0.0388862


def test_worked_example_seed_support_and_probmass():
    support = metrics.seed_support(BASE[0], 0.9)
    assert support.tolist() == [True, True, False]  # {a, b}
    assert round(float(metrics.probmass(SFT_MEAN, support)), 7) == 0.95


def test_worked_example_entropies():
    h = metrics.entropy(BASE)
    assert round(float(h[0]), 4) == 0.9219
    assert round(float(h[2]), 4) == 1.5850


# ----- definitions ---------------------------------------------------------------------------


def test_entropy_treats_zero_probability_as_zero_contribution():
    assert metrics.entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    assert metrics.entropy(np.array([0.5, 0.5, 0.0])) == pytest.approx(1.0)


def test_support_tolerance_counts_a_rounded_sum_as_reaching_tau():
    # 0.8 + 0.1 is 0.9000000000000001 or 0.8999999999999999 depending on order: both reach.
    seed = np.array([0.7, 0.1, 0.1, 0.1])
    assert metrics.seed_support(seed, 0.9).tolist() == [True, True, True, False]


def test_support_ties_follow_option_order():
    assert metrics.seed_support(np.array([0.25, 0.25, 0.25, 0.25]), 0.5).tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_support_of_full_mass_takes_every_positive_option():
    assert metrics.seed_support(np.array([0.5, 0.0, 0.5]), 1.0).tolist() == [True, False, True]


def test_nucleation_ratio_is_undefined_when_sft_equals_base_mean():
    base_mean = np.array([0.5, 0.5])
    assert np.isnan(metrics.nucleation_ratio(base_mean, np.array([1.0, 0.0]), base_mean))


def test_seed_ties_go_to_the_lower_prompt_id():
    base = np.array([[0.2, 0.8], [0.8, 0.2], [0.8, 0.2]])
    assert metrics.choose_seed(base, np.ones(3, bool), np.array([0.8, 0.2])) == 1


def test_seed_ignores_unusable_prompts_and_is_undefined_without_any():
    base = np.array([[0.8, 0.2], [0.0, 0.0]])
    assert metrics.choose_seed(base, np.array([False, True]), np.array([0.8, 0.2])) == 1
    assert metrics.choose_seed(base, np.array([False, False]), np.array([0.8, 0.2])) == -1


def test_kl_and_chi_square_from_uniform():
    uniform = np.full(4, 0.25)
    point = np.array([1.0, 0.0, 0.0, 0.0])
    assert metrics.kl_from_uniform(uniform) == pytest.approx(0.0)
    assert metrics.kl_from_uniform(point) == pytest.approx(2.0)
    assert metrics.chi_square_from_uniform(uniform) == pytest.approx(0.0)
    assert metrics.chi_square_from_uniform(point) == pytest.approx(3.0)  # K - 1
    # chi2 * n is Pearson's statistic: counts (30, 10, 10, 10) against uniform.
    counts = np.array([30.0, 10, 10, 10])
    pearson = np.sum((counts - 15) ** 2 / 15)
    assert metrics.chi_square_from_uniform(counts / 60) * 60 == pytest.approx(pearson)


def test_liquidity_needs_two_usable_prompts():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.liquidity(p, np.array([True, True])) == pytest.approx(1.0)
    assert np.isnan(metrics.liquidity(p, np.array([True, False])))


def test_distinct_argmax_counts_usable_prompts_only():
    p = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]])
    assert metrics.distinct_argmax(p, np.array([True, True, True])) == 3
    assert metrics.distinct_argmax(p, np.array([True, False, True])) == 2


def test_seed_rank_orders_like_the_seed_choice():
    candidates = np.array([[0.5, 0.5], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    target = np.array([0.9, 0.1])
    usable = np.ones(4, bool)
    assert metrics.seed_rank(candidates, usable, target, np.array(1)) == 1
    assert metrics.seed_rank(candidates, usable, target, np.array(2)) == 2  # tie: higher id
    assert metrics.seed_rank(candidates, usable, target, np.array(3)) == 4


def test_percentile_interval_skips_undefined_replicates():
    low, high = metrics.percentile_interval(np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]]))
    assert low[0] == pytest.approx(1.05) and high[0] == pytest.approx(2.95)
    assert np.isnan(low[1]) and np.isnan(high[1])


# ----- properties ----------------------------------------------------------------------------


@PROPERTY
@given(distributions())
def test_entropy_is_between_zero_and_log2_n(p):
    h = metrics.entropy(p)
    assert 0.0 <= h <= np.log2(len(p)) + 1e-12
    assert 1.0 - 1e-12 <= metrics.effective_options(h) <= len(p) + 1e-9


@PROPERTY
@given(pairs_of_distributions())
def test_jsd_is_symmetric_bounded_and_zero_only_for_equal(pq):
    p, q = pq
    forward, backward = metrics.jsd(p, q), metrics.jsd(q, p)
    assert forward == pytest.approx(backward, abs=1e-15)
    assert 0.0 <= forward <= 1.0
    if np.allclose(p, q, atol=0, rtol=0):
        assert forward == pytest.approx(0.0, abs=1e-12)
    else:
        assert forward > 0.0
    assert metrics.jsd(p, p) == pytest.approx(0.0, abs=1e-12)


@PROPERTY
@given(prompt_matrices(), st.lists(st.booleans(), min_size=6, max_size=6))
def test_liquidity_is_the_mean_jsd_over_unordered_pairs(p, mask_bits):
    mask = np.asarray(mask_bits[: len(p)])
    pairs = [
        metrics.jsd(p[i], p[j])
        for i, j in itertools.combinations(range(len(p)), 2)
        if mask[i] and mask[j]
    ]
    value = metrics.liquidity(np.where(mask[:, None], p, 0.0), mask)
    if pairs:
        assert value == pytest.approx(np.mean(pairs), abs=1e-12)
        assert 0.0 <= value <= 1.0
    else:
        assert np.isnan(value)


@PROPERTY
@given(prompt_matrices(), distributions(2, 6))
def test_chosen_seed_has_minimal_mse(base, target_raw):
    k = base.shape[1]
    target = np.resize(target_raw, k)
    target = target / target.sum() if target.sum() > 0 else np.full(k, 1 / k)
    seed = int(metrics.choose_seed(base, np.ones(len(base), bool), target))
    errors = [float(metrics.mse(row, target)) for row in base]
    assert errors[seed] == min(errors)
    assert seed == errors.index(min(errors))  # ties: the lowest prompt id


@PROPERTY
@given(distributions(), distributions(), st.floats(0.05, 1.0))
def test_probmass_is_a_probability_and_support_is_minimal(seed, stage_raw, tau):
    stage = np.resize(stage_raw, len(seed))
    stage = stage / stage.sum() if stage.sum() > 0 else np.full(len(seed), 1 / len(seed))
    support = metrics.seed_support(seed, tau)
    mass = float(metrics.probmass(stage, support))
    assert 0.0 <= mass <= 1.0 + 1e-12
    assert seed[support].sum() >= tau - 1e-9
    # Minimal: dropping the support's smallest option falls short of tau.
    if support.sum() > 1:
        smallest = seed[support].min()
        assert seed[support].sum() - smallest < tau - 1e-9


def test_resampling_keeps_sample_sizes_and_unusable_cells_empty():
    counts = np.array([[[5.0, 5.0, 0.0], [0.0, 0.0, 0.0]]])
    mask = np.array([[True, False]])
    draws = metrics.resample_distributions(counts, mask, 50, np.random.default_rng(0))
    assert draws.shape == (50, 1, 2, 3)
    assert np.allclose(draws[:, 0, 0].sum(axis=-1), 1.0)
    assert np.all(draws[:, 0, 0, 2] == 0.0)  # a zero-probability option stays at zero
    assert np.all(draws[:, 0, 1] == 0.0)


def test_group_metrics_batch_matches_one_by_one():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), size=(3, 2, 5))  # 3 replicates, 2 stages, 5 prompts
    mask = np.ones((2, 5), bool)
    roles = metrics.StageRoles(base=0, sft=1)
    batch = metrics.group_metrics(p, mask, roles, np.arange(5), 0.9, closed=True)
    for r in range(3):
        single = metrics.group_metrics(p[r : r + 1], mask, roles, np.arange(5), 0.9, closed=True)
        for name, array in single.items():
            np.testing.assert_allclose(batch[name][r], array[0], err_msg=name)


@PROPERTY
@given(
    st.integers(2, 6), st.integers(2, 6), st.integers(1, 40), st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_liquidity_integer_fast_path_equals_the_definition(n, k, size, seed, equal_sizes):
    rng = np.random.default_rng(seed)
    sizes = np.full(n, size) if equal_sizes else rng.integers(1, 40, size=n)
    counts = np.stack([rng.multinomial(s, rng.dirichlet(np.ones(k))) for s in sizes])
    p = counts / sizes[:, None]
    mask = rng.random(n) < 0.8
    p = np.where(mask[:, None], p, 0.0)
    assert metrics.liquidity(p, mask, sizes) == pytest.approx(
        metrics.liquidity(p, mask), abs=1e-12, nan_ok=True
    )
