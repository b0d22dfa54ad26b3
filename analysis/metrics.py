"""Crystallization metrics as pure, vectorized NumPy functions.

Every definition follows docs/metrics.md ("the contract"); the docstrings quote
the formula they implement. Logarithms are base 2.

Array layout. A probability vector lives on the last axis (the task's option set ``O_t``,
options sorted by text). Distributions of one (family, task) form an array of shape
``(..., S, N, K)``: stages in stage order, prompts in prompt-id order, options. Any leading
axes are a batch (bootstrap replicates), so the point estimate and every replicate go
through exactly the same code. A boolean ``mask`` of shape ``(S, N)`` (or ``(N,)`` for one
stage) marks the usable (stage, prompt) cells; masked-out cells must hold zeros, never NaN.

Undefined values (a mean over no prompts, a ratio with a zero denominator) are NaN here;
the reporting layer turns them into null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Seed-support tolerance of the contract: 0.8 + 0.1 counts as reaching 0.9.
SUPPORT_TOLERANCE = 1e-9
# Two option probabilities closer than this are equal (ties go to option text order): a mean
# of N probabilities carries a rounding error of about N * 2^-52, far below this for any
# realistic N, and count data this close are exact ties.
PROBABILITY_TIE_TOLERANCE = 1e-12
_EPS = float(np.finfo(float).eps)


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits over the last axis, ``-sum P log2 P`` with 0 log 0 = 0."""
    p = np.asarray(p, dtype=float)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -np.sum(p * logs, axis=-1) + 0.0  # + 0.0 turns -0.0 into 0.0


def effective_options(h: np.ndarray) -> np.ndarray:
    """The effective number of options ``2^H``."""
    return np.exp2(h)


def normalized_entropy(h: np.ndarray, n_options: int) -> np.ndarray:
    """``H / log2 |O_t|`` (closed tasks); NaN when the task has fewer than two options."""
    if n_options < 2:
        return np.full_like(np.asarray(h, dtype=float), np.nan)
    return np.asarray(h, dtype=float) / np.log2(n_options)


def jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits: ``H(M) - (H(P) + H(Q)) / 2`` with ``M = (P+Q)/2``.

    Clipped to [0, 1] to absorb rounding (a few ulps below 0 for equal distributions).
    """
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    value = entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2
    return np.clip(value, 0.0, 1.0)


def mse(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``(1/|O_t|) * sum over o of (P(o) - Q(o))^2``."""
    diff = np.asarray(p, dtype=float) - np.asarray(q, dtype=float)
    return np.mean(diff * diff, axis=-1)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``TV(P, Q) = 0.5 * sum |P(o) - Q(o)|``."""
    return 0.5 * np.sum(np.abs(np.asarray(p, dtype=float) - np.asarray(q, dtype=float)), axis=-1)


def kl_from_uniform(p: np.ndarray) -> np.ndarray:
    """``KL(P || U) = sum P(o) log2(P(o) / (1/K)) = log2 K - H(P)`` in bits (closed tasks)."""
    p = np.asarray(p, dtype=float)
    return np.maximum(np.log2(p.shape[-1]) - entropy(p), 0.0)


def chi_square_from_uniform(p: np.ndarray) -> np.ndarray:
    """Pearson chi-square divergence of P from the uniform U over K options.

    ``chi2(P, U) = sum over o of (P(o) - 1/K)^2 / (1/K) = K * sum P(o)^2 - 1``:
    0 for the uniform distribution, K - 1 for a point mass. Multiplying it by the number of
    samples n gives Pearson's goodness-of-fit statistic against uniform for those n samples.
    """
    p = np.asarray(p, dtype=float)
    k = p.shape[-1]
    diff = p - 1.0 / k
    return k * np.sum(diff * diff, axis=-1)


def masked_mean(p: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the prompt axis (-2) of the usable prompts: ``Pbar = mean_p P[p]``.

    NaN where no prompt is usable.
    """
    weights = np.asarray(mask, dtype=float)
    count = weights.sum(axis=-1)
    total = np.sum(p * weights[..., None], axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count[..., None]


def masked_prompt_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of a per-prompt value (last axis) over the usable prompts; NaN if none."""
    weights = np.asarray(mask, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(values * weights, axis=-1) / weights.sum(axis=-1)


def liquidity(p: np.ndarray, mask: np.ndarray, totals: np.ndarray | None = None) -> np.ndarray:
    """``L = mean over unordered pairs p != q of JSD(P[p], P[q])`` over the usable prompts.

    ``p`` has shape (..., N, K) and ``mask`` (..., N) or (N,); NaN with fewer than two
    usable prompts. ``totals`` (optional, broadcastable to (..., N)) are the sample sizes
    behind ``p`` when it holds sampled counts over their totals: where every usable prompt
    of a row has the same size n, the pair entropies (and the prompts' own entropies) come
    from a table of ``T log2 T`` over the integer pair counts T (an exact rewriting, about
    four times faster than logs).

    Matrix operations over blocks of prompt pairs (no loop over prompts or options): the
    blocks only keep the working set in the CPU cache.
    """
    p = np.asarray(p, dtype=float)
    batch, (n, k) = p.shape[:-2], p.shape[-2:]
    if p.size == 0:
        return np.full(batch, np.nan)
    flat = p.reshape(-1, n, k)
    first, second = np.triu_indices(n, k=1)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), p.shape[:-1]).reshape(-1, n)
    weights = (mask[:, first] & mask[:, second]).astype(float)
    size = _common_sample_size(totals, mask, p.shape[:-1])
    tabled = ~np.isnan(size)
    everywhere = bool(tabled.all())
    tabled_rows = flat if everywhere else flat[tabled]  # no copy in the common case
    counts = np.rint(tabled_rows * size[tabled, None, None]).astype(np.int32)
    table = _xlog2x_table(2 * int(size[tabled].max())) if tabled.any() else None

    def by_rows(from_counts, from_logs, columns: int) -> np.ndarray:
        """Per row: the table's value where the row is tabled, the logarithms' elsewhere."""
        if everywhere:
            return from_counts()
        out = np.empty((flat.shape[0], columns))
        if tabled.any():
            out[tabled] = from_counts()
        out[~tabled] = from_logs()
        return out

    # sum over usable pairs of H(M) (blocked), then subtract the (H(P) + H(Q)) / 2 part,
    # which sums to (usable - 1) / 2 * sum over usable prompts of H(P).
    mixture_total = np.zeros(flat.shape[0])
    block = max(1, _PAIR_BLOCK_FLOATS // max(1, flat.shape[0] * k))
    for start in range(0, len(first), block):
        i, j = first[start : start + block], second[start : start + block]
        pair = by_rows(
            lambda: _pair_entropy_from_counts(counts, size[tabled], i, j, table),
            lambda: _pair_entropy(flat[~tabled], i, j),
            len(i),
        )
        mixture_total += np.einsum("bp,bp->b", pair, weights[:, start : start + block])
    usable = mask.sum(axis=-1)
    own = by_rows(
        lambda: _entropy_from_counts(counts, size[tabled], table),
        lambda: entropy(flat[~tabled]),
        n,
    )
    own_total = (usable - 1) / 2 * np.sum(np.where(mask, own, 0.0), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (mixture_total - own_total) / weights.sum(axis=-1)
    return np.clip(mean, 0.0, 1.0).reshape(batch)


# About 512 KiB of float64 per pair block: fits the CPU cache.
_PAIR_BLOCK_FLOATS = 65_536
# Largest pair count T for which the T log2 T table is used (8 MiB of float64).
_TABLE_LIMIT = 1 << 20


def _common_sample_size(totals, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per flattened row: the sample size shared by all its usable prompts, else NaN."""
    rows = mask.shape[0]
    if totals is None:
        return np.full(rows, np.nan)
    sizes = np.broadcast_to(np.asarray(totals, dtype=float), shape).reshape(rows, -1)
    low = np.min(np.where(mask, sizes, np.inf), axis=-1)
    high = np.max(np.where(mask, sizes, -np.inf), axis=-1)
    common = (low == high) & (low >= 1) & (2 * low <= _TABLE_LIMIT) & (low == np.rint(low))
    return np.where(common, low, np.nan)


def _xlog2x_table(largest: int) -> np.ndarray:
    """``T log2 T`` for T = 0 .. largest (0 log 0 = 0)."""
    values = np.arange(largest + 1, dtype=float)
    return values * np.log2(np.maximum(values, 1.0))


def _pair_entropy_from_counts(
    counts: np.ndarray, size: np.ndarray, i: np.ndarray, j: np.ndarray, table: np.ndarray
) -> np.ndarray:
    """``H((P[i] + P[j]) / 2)`` where ``P = counts / size`` (one size n per row).

    With integer ``T = C[i] + C[j]`` (summing to 2n) and ``S = T / n``:
    ``sum S log2 S = (1/n) sum T log2 T - 2 log2 n`` and ``H(S/2) = 1 - (1/2) sum S log2 S``.
    """
    pair_counts = np.take(counts, i, axis=1)
    pair_counts += np.take(counts, j, axis=1)
    sums = _sum_last(np.take(table, pair_counts))
    size = size[:, None]
    return 1.0 - 0.5 * (sums / size - 2.0 * np.log2(size))


def _entropy_from_counts(counts: np.ndarray, size: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``H(P)`` of each prompt where ``P = counts / size``: ``log2 n - (1/n) sum C log2 C``
    (meaningless for an unusable all-zero row, which the callers mask out)."""
    size = size[:, None]
    return np.log2(size) - _sum_last(np.take(table, counts)) / size


def _sum_last(values: np.ndarray) -> np.ndarray:
    """Sum over a short last axis (the options): einsum, 3-4x faster than ``sum(axis=-1)``."""
    return np.einsum("...k->...", values)


def _pair_entropy(p: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``H((P[i] + P[j]) / 2)`` for the prompt pairs (i, j) of ``p`` (B, N, K) -> (B, pairs).

    With ``S = P[i] + P[j]`` (summing to 2): ``H(S/2) = 1 - (1/2) sum S log2 S``, which
    saves a pass over the block. ``max(S, tiny)`` makes 0 log 0 = 0 without a masked log.
    """
    pair_sum = np.take(p, i, axis=1)
    pair_sum += np.take(p, j, axis=1)
    logs = np.maximum(pair_sum, np.finfo(float).tiny)
    np.log2(logs, out=logs)
    logs *= pair_sum
    return 1.0 - 0.5 * logs.sum(axis=-1)


def distinct_argmax(p: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Number of distinct argmax options across the usable prompts (ties: first option)."""
    p = np.asarray(p, dtype=float)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), p.shape[:-1])
    winners = np.argmax(p, axis=-1)
    hit = (winners[..., None] == np.arange(p.shape[-1])) & mask[..., None]
    return np.sum(np.any(hit, axis=-2), axis=-1)


def mse_tie_tolerance(errors: np.ndarray, n_prompts: int, n_options: int) -> np.ndarray:
    """How far two MSE values near ``errors`` may lie apart from rounding alone.

    The distributions compared carry a rounding error of at most ``d = (N + 2) * 2^-52`` per
    entry (a mean over N prompts, then a difference), so ``mean_o (P(o) - Q(o))^2`` is off by
    at most ``4 d sqrt(MSE) + 4 d^2`` plus ``K * 2^-52 * MSE`` for its own sum. Twice that
    bound: values closer than it are the same value (docs/metrics.md, "Ties").
    """
    d = (n_prompts + 2) * _EPS
    errors = np.maximum(np.asarray(errors, dtype=float), 0.0)
    return 2.0 * (4.0 * d * np.sqrt(errors) + 4.0 * d * d + n_options * _EPS * errors)


def choose_seed(base: np.ndarray, base_mask: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``p* = argmin over usable base prompts p of MSE(P[base, p], target)``.

    ``base`` is (..., N, K) in prompt-id order, ``target`` (..., K). Ties go to the lower
    prompt id: every prompt whose MSE is within the rounding tolerance
    (:func:`mse_tie_tolerance`) of the minimum is tied with it, and the first of them wins.
    -1 where no prompt is usable or the target is undefined.
    """
    base = np.asarray(base, dtype=float)
    errors = mse(base, np.asarray(target)[..., None, :])
    usable = np.broadcast_to(np.asarray(base_mask, dtype=bool), errors.shape) & ~np.isnan(errors)
    errors = np.where(usable, errors, np.inf)
    least = np.min(errors, axis=-1, keepdims=True)
    tolerance = mse_tie_tolerance(np.where(usable, errors, 0.0), *base.shape[-2:])
    with np.errstate(invalid="ignore"):  # inf - inf where no prompt is usable
        tied = usable & (errors - least <= tolerance)
    seed = np.argmax(tied, axis=-1)
    return np.where(usable.any(axis=-1), seed, -1)


def take_prompt(p: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``p[..., index, :]`` per batch element; NaN rows where ``index`` is -1."""
    index = np.asarray(index)
    chosen = np.take_along_axis(p, np.maximum(index, 0)[..., None, None], axis=-2)[..., 0, :]
    return np.where((index >= 0)[..., None], chosen, np.nan)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, NaN (reported null) where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def nucleation_ratio(sft_mean: np.ndarray, seed: np.ndarray, base_mean: np.ndarray) -> np.ndarray:
    """``NR = MSE(Pbar[sft], S) / MSE(Pbar[sft], Pbar[base])``; NaN if the denominator is 0."""
    return ratio(mse(sft_mean, seed), mse(sft_mean, base_mean))


def seed_support(seed: np.ndarray, tau: float) -> np.ndarray:
    """Boolean mask of the seed support ``Sigma`` over the options (last axis).

    The smallest set of options, taken in decreasing order of ``S(o)`` (ties: option text
    order, which is the axis order; probabilities within ``PROBABILITY_TIE_TOLERANCE`` are
    tied), whose mass reaches ``tau`` within 1e-9. An option is in the set exactly when the
    mass of the options before it is still short of ``tau``. All False where the seed is
    undefined (NaN).
    """
    seed = np.asarray(seed, dtype=float)
    order = tie_aware_order(seed)
    ranked = np.take_along_axis(seed, order, axis=-1)
    mass_before = np.cumsum(ranked, axis=-1) - ranked
    in_sorted = mass_before < tau - SUPPORT_TOLERANCE
    support = np.zeros(seed.shape, dtype=bool)
    np.put_along_axis(support, order, in_sorted, axis=-1)
    return support & ~np.isnan(seed).any(axis=-1, keepdims=True)


def tie_aware_order(values: np.ndarray) -> np.ndarray:
    """Indices of the last axis by decreasing value, values within
    ``PROBABILITY_TIE_TOLERANCE`` of each other in axis (option text) order.

    An option's place is the number of options that come before it: clearly larger ones,
    and tied ones earlier on the axis (K is small: a (..., K, K) comparison).
    """
    values = np.asarray(values, dtype=float)
    mine, other = values[..., :, None], values[..., None, :]
    index = np.arange(values.shape[-1])
    tied = np.abs(other - mine) <= PROBABILITY_TIE_TOLERANCE
    before = (other > mine + PROBABILITY_TIE_TOLERANCE) | (tied & (index[None, :] < index[:, None]))
    place = before.sum(axis=-1)
    return np.argsort(place, axis=-1, kind="stable")


def probmass(distribution: np.ndarray, support: np.ndarray) -> np.ndarray:
    """``ProbMass = sum over o in Sigma of Pbar(o)``; ``support`` broadcasts over stages."""
    return np.sum(np.where(support, distribution, 0.0), axis=-1)


def seed_rank(
    candidates: np.ndarray, mask: np.ndarray, target: np.ndarray, seed: np.ndarray
) -> np.ndarray:
    """Rank (1 = best) of prompt ``seed`` among the usable ``candidates`` by MSE to ``target``.

    Ordering is the seed choice's: by MSE, values within the rounding tolerance
    (:func:`mse_tie_tolerance`) tied, ties by lower prompt id. NaN where undefined.
    """
    candidates = np.asarray(candidates, dtype=float)
    errors = mse(candidates, np.asarray(target)[..., None, :])
    usable = np.broadcast_to(np.asarray(mask, dtype=bool), errors.shape)
    seed = np.asarray(seed)
    reference = np.take_along_axis(errors, np.maximum(seed, 0)[..., None], axis=-1)
    tolerance = mse_tie_tolerance(
        np.fmax(np.nan_to_num(errors, nan=0.0), np.nan_to_num(reference, nan=0.0)),
        *candidates.shape[-2:],
    )
    index = np.arange(errors.shape[-1])
    tied = np.abs(errors - reference) <= tolerance
    ahead = usable & ((errors < reference - tolerance) | (tied & (index < seed[..., None])))
    rank = 1.0 + ahead.sum(axis=-1)
    defined = (seed >= 0) & ~np.isnan(reference[..., 0])
    return np.where(defined, rank, np.nan)


@dataclass(frozen=True)
class StageRoles:
    """Which stage index (on the stage axis) plays which role; None where absent."""

    base: int | None
    sft: int | None


def group_metrics(
    p: np.ndarray,
    mask: np.ndarray,
    roles: StageRoles,
    prompt_ids: Sequence[int],
    tau: float,
    closed: bool,
    totals: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """All per-(family, task) metrics for distributions ``p`` of shape (B, S, N, K).

    ``mask`` (S, N) marks usable prompts; ``prompt_ids`` (N,) are the prompt ids of the
    prompt axis (used for the even/odd held-out split). Returns arrays with leading axis B:
    per-stage metrics (B, S), per-group metrics (B,), seed indices (-1 when undefined) and
    the stage means ``pbar`` (B, S, K). Metrics that need a missing base or SFT stage are
    absent from the result. ``totals`` (S, N): sample sizes behind sampled distributions
    (lets liquidity use its exact integer fast path; see :func:`liquidity`).
    """
    p = np.asarray(p, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    pbar = masked_mean(p, mask)
    pooled = entropy(pbar)
    out: dict[str, np.ndarray] = {
        "pbar": pbar,
        "entropy_mean_prompt": masked_prompt_mean(entropy(p), mask),
        "entropy_pooled": pooled,
        "liquidity": liquidity(p, mask, totals),
        "distinct_argmax": distinct_argmax(p, mask).astype(float),
    }
    if closed:
        out["kl_uniform"] = kl_from_uniform(pbar)
        out["chi2_uniform"] = chi_square_from_uniform(pbar)
    if roles.sft is not None:
        sft_mean = pbar[:, roles.sft]
        out["tv_to_sft"] = total_variation(pbar, sft_mean[:, None, :])
        out["probmass_proxy"] = probmass(pbar, seed_support(sft_mean, tau)[:, None, :])
    if roles.base is None or roles.sft is None:
        return out

    base, base_mask, base_mean = p[:, roles.base], mask[roles.base], pbar[:, roles.base]
    sft_mean = pbar[:, roles.sft]
    seed = choose_seed(base, base_mask, sft_mean)
    seed_distribution = take_prompt(base, seed)
    out["seed"] = seed
    out["nucleation_ratio"] = nucleation_ratio(sft_mean, seed_distribution, base_mean)
    out["mse_to_seed"] = mse(pbar, seed_distribution[:, None, :])
    out["probmass"] = probmass(pbar, seed_support(seed_distribution, tau)[:, None, :])

    # Held-out check: the even-id SFT prompts choose the seed, the odd-id prompts evaluate it.
    even = (np.asarray(prompt_ids) % 2) == 0
    sft_p, sft_mask = p[:, roles.sft], mask[roles.sft]
    choosing_mean = masked_mean(sft_p, sft_mask & even)
    evaluating_mean = masked_mean(sft_p, sft_mask & ~even)
    seed_a = choose_seed(base, base_mask, choosing_mean)
    seed_b = choose_seed(base, base_mask, evaluating_mean)
    heldout_mse = mse(evaluating_mean, take_prompt(base, seed_a))
    out["heldout_seed_a"] = seed_a
    out["heldout_seed_b"] = seed_b
    out["heldout_mse"] = heldout_mse
    out["heldout_nucleation_ratio"] = ratio(heldout_mse, mse(evaluating_mean, base_mean))
    return out


def cross_family_metrics(
    base_a: np.ndarray,
    base_mask_a: np.ndarray,
    base_mean_a: np.ndarray,
    seed_a: np.ndarray,
    sft_mean_b: np.ndarray,
) -> dict[str, np.ndarray]:
    """Does family A's seed predict family B's SFT distribution? (batched over axis 0)

    ``base_a`` (B, N, K) are A's base prompt distributions, ``seed_a`` (B,) A's seed index,
    ``sft_mean_b`` (B, K) is ``Pbar_B[sft]``. Returns ``mse = MSE(Pbar_B[sft], S_A)``, the
    ``rank`` of ``S_A`` among A's usable base prompts by MSE to ``Pbar_B[sft]`` (1 = best),
    ``n_candidates`` and ``predictive_ratio = mse / MSE(Pbar_B[sft], Pbar_A[base])``.
    """
    seed_distribution = take_prompt(base_a, seed_a)
    error = mse(sft_mean_b, seed_distribution)
    return {
        "mse": error,
        "rank": seed_rank(base_a, base_mask_a, sft_mean_b, seed_a),
        "n_candidates": np.full(error.shape, float(np.sum(base_mask_a))),
        "predictive_ratio": ratio(error, mse(sft_mean_b, base_mean_a)),
    }


def resample_distributions(
    counts: np.ndarray, mask: np.ndarray, replicates: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of the distributions of a (S, N, K) count array.

    Each (stage, prompt) count vector is redrawn from ``Multinomial(n, P[s, p])`` with its
    own sample size n and empirical distribution, in one vectorized call over all cells.
    Returns (replicates, S, N, K) distributions; unusable cells stay all-zero.
    """
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=-1)
    usable = np.asarray(mask, dtype=bool) & (totals > 0)
    k = counts.shape[-1]
    safe_totals = np.where(usable, totals, 1.0)
    pvals = np.where(usable[..., None], counts / safe_totals[..., None], 1.0 / k)
    draws = rng.multinomial(
        np.where(usable, totals, 0).astype(np.int64), pvals, size=(replicates, *totals.shape)
    )
    return np.where(usable[..., None], draws / safe_totals[..., None], 0.0)


def percentile_interval(replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2.5 and 97.5 percentiles over axis 0, ignoring undefined (NaN) replicates."""
    replicates = np.asarray(replicates, dtype=float)
    flat = replicates.reshape(replicates.shape[0], -1)
    low = np.full(flat.shape[1], np.nan)
    high = np.full(flat.shape[1], np.nan)
    defined = ~np.isnan(flat).all(axis=0)
    if np.any(defined):
        low[defined], high[defined] = np.nanpercentile(flat[:, defined], [2.5, 97.5], axis=0)
    shape = replicates.shape[1:]
    return low.reshape(shape), high.reshape(shape)
