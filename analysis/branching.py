"""The branching factor per stage (docs/metrics.md, section 13).

A run's samples drew one token per generated position from the next-token distribution at
their prefix; the tree sampler records, per position t, ``bits[t] = sum over prefixes v of
c(v) H(q_v)`` and ``tokens[t] = sum of c(v)`` (:class:`ingest.backends.TokenEntropy`). Runs
of one unit are pooled by adding both. Then, per unit (model, prompt, condition):
``Hbar = sum_t bits[t] / sum_t tokens[t]`` (bits) and ``H_t = bits[t] / tokens[t]``; per
stage: the mean over prompts of ``Hbar``, ``BF = 2^(that mean)``, and the mean ``H_t`` curve
(over the prompts whose samples reached position t). With a bootstrap, the mean gets a 95%
interval from resampling the prompts with replacement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from analysis import metrics
from analysis.frames import CountData
from analysis.values import json_number

StageKey = tuple[str, str, str, str, int | None]  # family, task, condition_key, stage, step


@dataclass(frozen=True)
class StageBranching:
    """One stage's token entropy: ``mean_token_entropy`` (bits, the mean over prompts of
    their count-weighted mean per-token entropy), ``branching_factor = 2^mean_token_entropy``,
    ``by_position`` (the mean ``H_t``, t = 1, 2, ...), ``n_prompts`` with token entropies,
    and ``estimate`` (None: exact from the full distributions; else how it was estimated)."""

    mean_token_entropy: float
    branching_factor: float
    by_position: list[float]
    n_prompts: int
    estimate: str | None
    per_prompt: tuple[float, ...] = ()  # each prompt's Hbar, in prompt id order
    ci: tuple[float, float] | None = None  # of mean_token_entropy, from a bootstrap

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_token_entropy": json_number(self.mean_token_entropy),
            "branching_factor": json_number(self.branching_factor),
            "by_position": [json_number(h) for h in self.by_position],
            "n_prompts": self.n_prompts,
            "estimate": self.estimate,
            "ci": None if self.ci is None else {
                "mean_token_entropy": [json_number(x) for x in self.ci],
                "branching_factor": [json_number(2.0 ** x) for x in self.ci],
            },
        }

    def bootstrapped(self, replicates: int, rng: np.random.Generator) -> StageBranching:
        """With the 95% interval of the mean over prompts, prompts resampled with
        replacement (the token entropies themselves are not resampled); BF's interval is 2
        to the power of its bounds."""
        values = np.asarray(self.per_prompt, dtype=float)
        draws = values[rng.integers(0, len(values), size=(replicates, len(values)))]
        low, high = metrics.percentile_interval(draws.mean(axis=1))
        return replace(self, ci=(float(low), float(high)))


def stage_branching(data: CountData) -> dict[StageKey, StageBranching]:
    """Every (family, task, condition, stage, step) of ``data`` with token entropies."""
    if data.token_entropy.is_empty():
        return {}
    keys = ["family", "task", "condition_key", "stage", "step"]
    rows = data.token_entropy.filter(pl.col("tokens") > 0).join(
        data.units.select("unit", *keys), on="unit"
    )
    rows = rows.join(data.units.select("unit", "prompt_id"), on="unit")
    per_unit = rows.group_by("unit", "prompt_id", *keys).agg(
        (pl.col("bits").sum() / pl.col("tokens").sum()).alias("hbar"),
        pl.col("estimate").drop_nulls().first(),
    )
    stages = per_unit.group_by(keys).agg(
        pl.col("hbar").mean(), pl.len().alias("n_prompts"),
        pl.col("estimate").drop_nulls().first(),
        pl.col("hbar").sort_by("prompt_id").alias("per_prompt"),
    )
    curves = (
        rows.group_by(*keys, "position")
        .agg((pl.col("bits") / pl.col("tokens")).mean().alias("h"))
        .sort("position")
        .group_by(keys, maintain_order=True)
        .agg(pl.col("h"))
    )
    joined = stages.join(curves, on=keys, nulls_equal=True)
    return {
        (r["family"], r["task"], r["condition_key"], r["stage"], r["step"]): StageBranching(
            r["hbar"], 2.0 ** r["hbar"], list(r["h"]), r["n_prompts"], r["estimate"],
            tuple(r["per_prompt"]),
        )
        for r in joined.iter_rows(named=True)
    }
