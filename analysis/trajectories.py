"""Checkpoint trajectories: metric series over a family's checkpoints and their change point.

The pure, database-free core of the trajectory analysis (docs/metrics.md, section 12).

Checkpoints. A family's checkpoints are its models in order of (stage_order, step); a stage
without steps is one checkpoint. They are named ``(stage, step)`` here, ``step`` None for a
stage without steps. ``c_0`` is the base.

Series. For one (family, task, condition) and checkpoints ``c_0 .. c_n``, with
``Pbar[c] = mean over prompts of P[c, p]`` and the seed ``S`` and support ``Sigma`` of the
stage metrics, each metric of :data:`TRAJECTORY_METRICS` is a series ``y_0 .. y_n``:
liquidity ``L``, pooled entropy ``H(Pbar)``, ``MSE(Pbar, S)``, ProbMass on ``Sigma`` and
``TV(Pbar[c_i], Pbar[c_(i-1)])``; the last starts at ``c_1`` (n points, point i compares
``c_(i+1)`` with ``c_i``). The metric functions are those of :mod:`analysis.metrics`.

Change point (at least 4 points, m of them): the break ``k*`` in ``1 .. m-1`` minimizing
``SSE(y_0 .. y_(k-1)) + SSE(y_k .. y_(m-1))`` (sum of squared deviations from the segment
mean; segments of one point allowed), ties to the smaller k; ``k*`` is the first point of
the new level. The search is the exact dynamic program of ``ruptures`` (``Dynp``, L2 cost,
``min_size=1``, ``jump=1``). ruptures compares its floating-point costs exactly and keeps the
first minimum, so an exact tie of the contract can come out as a larger k when rounding makes
the smaller one a few ulps dearer (a constant series [0.1] * 7 gives k = 2, the symmetric
[0.7, 0.1, 0.1, 0.7] gives k = 3, both should be 1). The tie is resolved here: ``k*`` is the
smallest k whose split cost is within :func:`tie_tolerance` of the cost of ruptures' break.
Split costs closer than that (about 1e-12 of the series' scale, a thousand times the
rounding error) count as equal.

Transition or drift: ``delta_bic = BIC_line - BIC_step`` with ``BIC = m ln(SSE / m) +
p ln(m)``, the step model (p = 3) against a least-squares line in the point index (p = 2),
each SSE floored at ``1e-12 * m``. Positive: a transition describes the series better than
a drift.

Uncertainty: :func:`bootstrap_change_points` redraws every (checkpoint, prompt) count vector
from ``Multinomial(n, P)`` with its own n and P, recomputes the series and ``k*`` per
replicate, and reports ``stability`` (fraction of replicates with the point ``k*``) and a
percentile interval of the replicate ``k*``. Per replicate the break is found by the same
rule in NumPy, vectorized over replicates (:func:`change_point_indices`): one ruptures call
takes about 2 ms, far too slow for thousands of replicates of every series.

Example::

    result = trajectories(checkpoints, counts, seed, support, replicates=1000, rng=0)
    [t.reading() for t in result]  # ["liquidity: transition at sft step 300, ...", ...]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ruptures

from analysis import metrics
from analysis.values import json_number

TRAJECTORY_METRICS = ("liquidity", "entropy_pooled", "mse_to_seed", "probmass", "tv_to_previous")
# The change point needs at least this many points.
MIN_POINTS = 4
# SSEs are floored at SSE_FLOOR * m in the BIC so that it stays finite.
SSE_FLOOR = 1e-12
# Split costs within TIE_TOLERANCE * m * max|y| * max|y - mean(y)| of each other are a tie.
TIE_TOLERANCE = 1e-12
# Bootstrap chunks hold about this many floats in the pairwise-JSD step (bounds memory).
_CHUNK_FLOATS = 4_000_000

Checkpoint = tuple[str, int | None]


# ----- change point ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangePoint:
    """The change point of one series; ``index`` is the first point of the new level.

    ``stability`` and ``ci`` (the replicate ``k*`` at the 2.5 and 97.5 percentiles, as
    point indices) are None without a bootstrap.
    """

    index: int
    before: float
    after: float
    jump: float
    delta_bic: float
    stability: float | None = None
    ci: tuple[int, int] | None = None

    @property
    def transition(self) -> bool:
        """True when the step model beats the straight line (``delta_bic > 0``)."""
        return self.delta_bic > 0


def split_costs(values: np.ndarray) -> np.ndarray:
    """``SSE(y_0 .. y_(k-1)) + SSE(y_k .. y_(m-1))`` for k = 1 .. m-1 (last axis).

    (..., m) -> (..., m-1); element k-1 is the cost of the break at k. Two-pass sums of
    squared deviations from each segment's mean, vectorized over the breaks and any batch.
    """
    y = np.asarray(values, dtype=float)[..., None, :]  # (..., 1, m)
    m = y.shape[-1]
    breaks = np.arange(1, m)
    left = np.arange(m) < breaks[:, None]  # (m-1, m): point i is left of break k
    left_mean = np.sum(np.where(left, y, 0.0), axis=-1) / breaks
    right_mean = np.sum(np.where(left, 0.0, y), axis=-1) / (m - breaks)
    deviation = y - np.where(left, left_mean[..., None], right_mean[..., None])
    return np.einsum("...km,...km->...k", deviation, deviation)


def line_sse(values: np.ndarray) -> np.ndarray:
    """SSE of the least-squares line in the point index i = 0 .. m-1 (last axis)."""
    y = np.asarray(values, dtype=float)
    m = y.shape[-1]
    centered_index = np.arange(m) - (m - 1) / 2
    centered = y - y.mean(axis=-1, keepdims=True)
    slope = centered @ centered_index / (centered_index @ centered_index)
    residual = centered - slope[..., None] * centered_index
    return np.einsum("...m,...m->...", residual, residual)


def delta_bic(sse_step: np.ndarray, sse_line: np.ndarray, m: int) -> np.ndarray:
    """``BIC_line - BIC_step``, ``BIC = m ln(SSE / m) + p ln(m)``, SSE >= 1e-12 * m."""
    floor = SSE_FLOOR * m

    def bic(sse, parameters: int):
        return m * np.log(np.maximum(sse, floor) / m) + parameters * np.log(m)

    return bic(np.asarray(sse_line, float), 2) - bic(np.asarray(sse_step, float), 3)


def tie_tolerance(values: np.ndarray) -> np.ndarray:
    """Split costs this close are a tie: ``1e-12 * m * max|y| * max|y - mean(y)|``.

    The rounding error of a split cost is about ``m * eps * |y| * |y - mean|`` (a few
    1e-16 of that scale), so the tolerance is a thousand times above it and far below any
    difference the data can resolve. Zero for an all-zero series (exact ties only).
    """
    y = np.asarray(values, dtype=float)
    scale = np.max(np.abs(y), axis=-1)
    spread = np.max(np.abs(y - y.mean(axis=-1, keepdims=True)), axis=-1)
    return TIE_TOLERANCE * y.shape[-1] * scale * spread


def change_point(values: Sequence[float] | np.ndarray) -> ChangePoint | None:
    """The contract's change point of one series; None below 4 points or with NaN/inf.

    The break is searched by ``ruptures.Dynp(model="l2", min_size=1, jump=1)`` (exact
    dynamic programming; with one break and ``min_size=1`` its candidates are exactly
    k = 1 .. m-1), then moved to the smallest k whose split cost ties with it (see
    :func:`tie_tolerance`). ``before``/``after`` are the segment means, ``jump = after -
    before``, ``delta_bic`` compares this step with a straight line (positive: transition).
    """
    y = np.asarray(values, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"a series is one-dimensional, got shape {y.shape}")
    m = y.size
    if m < MIN_POINTS or not np.isfinite(y).all():
        return None
    found, _end = ruptures.Dynp(model="l2", min_size=1, jump=1).fit(y).predict(n_bkps=1)
    costs = split_costs(y)
    ties = costs <= costs[found - 1] + tie_tolerance(y)
    index = int(np.argmax(ties)) + 1  # first True: the smallest tied break
    before, after = float(y[:index].mean()), float(y[index:].mean())
    return ChangePoint(
        index=index,
        before=before,
        after=after,
        jump=after - before,
        delta_bic=float(delta_bic(costs[index - 1], line_sse(y), m)),
    )


def change_point_indices(series: np.ndarray) -> np.ndarray:
    """``k*`` of every series on the last axis, vectorized: (..., m) -> (...) ints.

    The same rule as :func:`change_point` (smallest k whose split cost is within
    :func:`tie_tolerance` of the minimum), computed in NumPy for a batch of replicates.
    -1 where undefined (fewer than 4 points, or a NaN/inf in the series).
    """
    y = np.asarray(series, dtype=float)
    batch, m = y.shape[:-1], y.shape[-1]
    if m < MIN_POINTS:
        return np.full(batch, -1, dtype=np.int64)
    finite = np.isfinite(y).all(axis=-1)
    y = np.where(finite[..., None], y, 0.0)
    costs = split_costs(y)
    best = costs.min(axis=-1, keepdims=True)
    ties = costs <= best + tie_tolerance(y)[..., None]
    return np.where(finite, np.argmax(ties, axis=-1) + 1, -1).astype(np.int64)


# ----- series ------------------------------------------------------------------------------


def stack_checkpoints(
    matrices: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-checkpoint (prompts x options) matrices -> (C, N, K) array and (C, N) mask.

    Checkpoints may have different numbers of prompts; shorter ones are padded with zero
    rows. A row is usable (mask True) when it sums to more than 0.
    """
    arrays = [np.asarray(a, dtype=float) for a in matrices]
    if not arrays:
        raise ValueError("a trajectory needs at least one checkpoint")
    if any(a.ndim != 2 for a in arrays):
        raise ValueError("each checkpoint is a (prompts x options) matrix")
    k = arrays[0].shape[1]
    if any(a.shape[1] != k for a in arrays):
        raise ValueError("all checkpoints must share the task's option set (same columns)")
    n = max(a.shape[0] for a in arrays)
    stacked = np.zeros((len(arrays), n, k))
    for c, a in enumerate(arrays):
        stacked[c, : a.shape[0]] = a
    return stacked, stacked.sum(axis=-1) > 0


def trajectory_series(
    distributions: Sequence[np.ndarray],
    seed: np.ndarray | None = None,
    support: np.ndarray | None = None,
    totals: Sequence[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The five series of one (family, task, condition), in :data:`TRAJECTORY_METRICS` order.

    ``distributions``: per checkpoint in order, a (prompts x options) matrix whose rows sum
    to 1 over the task's option set. ``seed`` is ``S`` (K,) and ``support`` the boolean
    ``Sigma`` (K,) of the stage metrics; ``mse_to_seed`` / ``probmass`` are absent when they
    are None. ``totals`` (optional, per checkpoint (prompts,)): the sample sizes behind
    sampled distributions, which lets liquidity use its exact integer fast path.
    Returns arrays of n + 1 values (``tv_to_previous``: n values); NaN where undefined.
    """
    p, mask = stack_checkpoints(distributions)
    sizes = None
    if totals is not None:
        sizes = np.zeros(mask.shape)
        for c, t in enumerate(totals):
            sizes[c, : len(t)] = t
    return series_from_stack(p, mask, seed, support, sizes)


def series_from_stack(
    p: np.ndarray,
    mask: np.ndarray,
    seed: np.ndarray | None,
    support: np.ndarray | None,
    totals: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The series for stacked distributions ``p`` (..., C, N, K) and ``mask`` (C, N).

    Leading axes are a batch (bootstrap replicates); ``seed`` is (K,) or (..., K), ``support``
    likewise. Returns arrays (..., C), ``tv_to_previous`` (..., C-1).
    """
    pbar = metrics.masked_mean(p, mask)  # (..., C, K)
    out = {
        "liquidity": metrics.liquidity(p, mask, totals),
        "entropy_pooled": metrics.entropy(pbar),
    }
    if seed is not None:
        out["mse_to_seed"] = metrics.mse(pbar, np.asarray(seed, dtype=float)[..., None, :])
    if support is not None:
        out["probmass"] = metrics.probmass(pbar, np.asarray(support, dtype=bool)[..., None, :])
    out["tv_to_previous"] = metrics.total_variation(pbar[..., 1:, :], pbar[..., :-1, :])
    return out


@dataclass(frozen=True)
class SeedRule:
    """How the stage metrics choose ``S`` and ``Sigma``, by checkpoint index.

    ``S = P[base, p*]`` with ``p* = argmin over the base prompts of MSE(P[base, p],
    Pbar[sft])`` (``sft``: the final SFT checkpoint) and ``Sigma = seed_support(S, tau)``.
    """

    base: int
    sft: int
    tau: float

    def apply(self, p: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(S, Sigma)`` for stacked ``p`` (..., C, N, K): shapes (..., K)."""
        base = p[..., self.base, :, :]
        target = metrics.masked_mean(p[..., self.sft, :, :], mask[self.sft])
        chosen = metrics.choose_seed(base, mask[self.base], target)
        seed = metrics.take_prompt(base, chosen)
        return seed, metrics.seed_support(seed, self.tau)


def seed_from_checkpoints(
    distributions: Sequence[np.ndarray], rule: SeedRule
) -> tuple[np.ndarray, np.ndarray]:
    """``(S, Sigma)`` chosen by ``rule`` from per-checkpoint distributions (NaN / all False
    when no base prompt is usable)."""
    p, mask = stack_checkpoints(distributions)
    return rule.apply(p, mask)


# ----- bootstrap ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexUncertainty:
    """Bootstrap of one series' ``k*``.

    ``replicates`` (B,) holds each replicate's ``k*`` (-1 where undefined); ``stability``
    is the fraction of all B replicates whose ``k*`` equals the point ``k*`` (None when the
    point estimate is undefined); ``ci`` the (2.5, 97.5) percentiles of the defined
    replicate ``k*`` by ``numpy.percentile(..., method="inverted_cdf")``, so both ends are
    replicate values, hence valid point indices (None when no replicate is defined).
    """

    point: int | None
    replicates: np.ndarray
    stability: float | None
    ci: tuple[int, int] | None


def index_uncertainty(point: int | None, replicates: np.ndarray) -> IndexUncertainty:
    """Stability and percentile interval of replicate change-point indices."""
    replicates = np.asarray(replicates, dtype=np.int64)
    stability = None if point is None else float(np.mean(replicates == point))
    defined = replicates[replicates >= 0]
    ci = None
    if defined.size:
        low, high = np.percentile(defined, [2.5, 97.5], method="inverted_cdf")
        ci = (int(low), int(high))
    return IndexUncertainty(point, replicates, stability, ci)


def bootstrap_change_points(
    counts: Sequence[np.ndarray],
    seed: np.ndarray | None,
    support: np.ndarray | None,
    replicates: int,
    rng: np.random.Generator | int | None,
    *,
    seed_rule: SeedRule | None = None,
    point: Mapping[str, int | None] | None = None,
) -> dict[str, IndexUncertainty]:
    """Bootstrap the change point of every series of one (family, task, condition).

    ``counts``: per checkpoint in order, a (prompts x options) matrix of integer counts
    (prompts with no valid sample excluded, or all-zero rows, which are ignored). Each
    replicate redraws every row from ``Multinomial(n, P)`` with the row's own sample size n
    and empirical P (:func:`analysis.metrics.resample_distributions`), recomputes the series
    and their ``k*`` (:func:`change_point_indices`), vectorized over chunks of replicates.
    ``rng``: a Generator, or a seed for ``numpy.random.default_rng``; the same seed gives
    the same result.

    ``S`` and ``Sigma``: by default every replicate keeps the point estimate's ``seed`` and
    ``support`` (those of the stage metrics). With ``seed_rule`` each replicate re-chooses
    them from its own resampled base and final SFT checkpoints (so seed uncertainty
    propagates); ``seed`` / ``support`` then only serve the point estimate, and are taken
    from the rule as well when None.

    ``point``: the point ``k*`` per metric, when already known (else computed from
    ``counts`` with :func:`change_point`). Returns an :class:`IndexUncertainty` per series.
    """
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {replicates}")
    c, mask = stack_checkpoints(counts)
    if not np.array_equal(c, np.rint(c)) or (c < 0).any():
        raise ValueError("the bootstrap needs non-negative integer counts")
    totals = c.sum(axis=-1)
    p = np.where(mask[..., None], c / np.where(mask, totals, 1.0)[..., None], 0.0)
    if seed_rule is not None and seed is None:
        seed, rule_support = seed_rule.apply(p, mask)
        support = rule_support if support is None else support
    if point is None:
        series = series_from_stack(p, mask, seed, support, totals)
        point = {name: _index(change_point(values)) for name, values in series.items()}
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    n_checkpoints, n, k = c.shape
    per_replicate = n_checkpoints * max(n * (n - 1) // 2, n, 1) * max(k, 1)
    chunk = max(1, min(replicates, _CHUNK_FLOATS // per_replicate))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, replicates, chunk):
        draws = metrics.resample_distributions(
            c, mask, min(chunk, replicates - start), generator
        )
        if seed_rule is not None:
            replicate_seed, replicate_support = seed_rule.apply(draws, mask)
            seed_b = replicate_seed if seed is not None else None
            support_b = replicate_support if support is not None else None
        else:
            seed_b, support_b = seed, support
        series = series_from_stack(draws, mask, seed_b, support_b, totals)
        for name, values in series.items():
            parts.setdefault(name, []).append(change_point_indices(values))
    return {
        name: index_uncertainty(point.get(name), np.concatenate(chunks))
        for name, chunks in parts.items()
    }


def _index(cp: ChangePoint | None) -> int | None:
    return None if cp is None else cp.index


# ----- results -----------------------------------------------------------------------------


@dataclass
class Trajectory:
    """One metric's series over the checkpoints and its change point.

    ``steps`` are the checkpoints ``(stage, step)`` of the series' points (for
    ``tv_to_previous``: ``c_1 .. c_n``, point i comparing ``c_(i+1)`` with ``c_i``).
    """

    metric: str
    steps: list[Checkpoint]
    values: list[float]
    change_point: ChangePoint | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN values are null; ``ci`` is
        ``{"low": {"index", "stage", "step"}, "high": {...}}`` or null."""
        cp = self.change_point
        change = None
        if cp is not None:
            change = {
                "index": cp.index,
                **self._at(cp.index),
                "before": json_number(cp.before),
                "after": json_number(cp.after),
                "jump": json_number(cp.jump),
                "delta_bic": json_number(cp.delta_bic),
                "stability": json_number(cp.stability),
                "ci": None
                if cp.ci is None
                else {
                    "low": {"index": cp.ci[0], **self._at(cp.ci[0])},
                    "high": {"index": cp.ci[1], **self._at(cp.ci[1])},
                },
            }
        return {
            "metric": self.metric,
            "steps": [[stage, step] for stage, step in self.steps],
            "values": [json_number(v) for v in self.values],
            "change_point": change,
        }

    def reading(self) -> str:
        """One line, e.g. ``liquidity: transition at sft step 300, delta_bic 41.0 (...)``."""
        cp = self.change_point
        if cp is None:
            if len(self.values) < MIN_POINTS:
                why = f"{len(self.values)} points, needs at least {MIN_POINTS}"
            else:
                why = "undefined values"
            return f"{self.metric}: no change point ({why})"
        where = self._where(cp.index)
        levels = f"{cp.before:.3g} -> {cp.after:.3g}"
        if cp.stability is not None:
            levels += f", stability {cp.stability:.2f}"
        if cp.ci is not None:
            levels += f", 95% ci {self._where(cp.ci[0])} .. {self._where(cp.ci[1])}"
        if cp.transition:
            return f"{self.metric}: transition at {where}, delta_bic {cp.delta_bic:.1f} ({levels})"
        return (
            f"{self.metric}: drift, delta_bic {cp.delta_bic:.1f} "
            f"(best break at {where}, {levels})"
        )

    def _at(self, index: int) -> dict[str, Any]:
        stage, step = self.steps[index]
        return {"stage": stage, "step": step}

    def _where(self, index: int) -> str:
        stage, step = self.steps[index]
        return stage if step is None else f"{stage} step {step}"


def trajectories(
    checkpoints: Sequence[Checkpoint],
    data: Sequence[np.ndarray],
    seed: np.ndarray | None = None,
    support: np.ndarray | None = None,
    *,
    replicates: int = 0,
    rng: np.random.Generator | int | None = None,
    seed_rule: SeedRule | None = None,
) -> list[Trajectory]:
    """The trajectories of one (family, task, condition), in :data:`TRAJECTORY_METRICS` order.

    ``checkpoints``: ``(stage, step)`` of ``c_0 .. c_n`` in order; ``data``: per checkpoint
    a (prompts x options) matrix of counts (sampled mode) or probabilities (exact mode);
    each row is normalized by its sum, all-zero rows are ignored. ``seed`` / ``support``:
    ``S`` and ``Sigma`` of the stage metrics (when None and ``seed_rule`` is given, chosen
    by the rule; else the two seed series are left out). ``replicates`` > 0 bootstraps the
    change points (integer counts needed; see :func:`bootstrap_change_points`).
    """
    if len(checkpoints) != len(data):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(data)} matrices")
    raw, mask = stack_checkpoints(data)
    totals = raw.sum(axis=-1)
    p = np.where(mask[..., None], raw / np.where(mask, totals, 1.0)[..., None], 0.0)
    if seed_rule is not None and seed is None:
        seed, rule_support = seed_rule.apply(p, mask)
        support = rule_support if support is None else support
    integral = np.array_equal(raw, np.rint(raw))
    series = series_from_stack(p, mask, seed, support, totals if integral else None)
    steps = [(str(stage), None if step is None else int(step)) for stage, step in checkpoints]
    result = []
    for name, values in series.items():
        result.append(
            Trajectory(
                metric=name,
                steps=steps[1:] if name == "tv_to_previous" else list(steps),
                values=[float(v) for v in values],
                change_point=change_point(values),
            )
        )
    if replicates:
        boot = bootstrap_change_points(
            data,
            seed,
            support,
            replicates,
            rng,
            seed_rule=seed_rule,
            point={t.metric: _index(t.change_point) for t in result},
        )
        for t in result:
            if t.change_point is not None:
                u = boot[t.metric]
                t.change_point = replace(t.change_point, stability=u.stability, ci=u.ci)
    return result
