"""The branching factor per stage (docs/metrics.md, section 13).

A run's samples drew one token per generated position from the next-token distribution at
their prefix; the tree sampler records, per position t, ``bits[t] = sum over prefixes v of
c(v) H(q_v)`` and ``tokens[t] = sum of c(v)`` (:class:`ingest.backends.TokenEntropy`). Runs
of one unit are pooled by adding both. Then, per unit (model, prompt, condition):
``Hbar = sum_t bits[t] / sum_t tokens[t]`` (bits) and ``H_t = bits[t] / tokens[t]``; per
stage: the mean over prompts of ``Hbar``, ``BF = 2^(that mean)``, and the mean ``H_t`` curve
(over the prompts whose samples reached position t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from analysis.frames import CountData
from analysis.results import json_number

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_token_entropy": json_number(self.mean_token_entropy),
            "branching_factor": json_number(self.branching_factor),
            "by_position": [json_number(h) for h in self.by_position],
            "n_prompts": self.n_prompts,
            "estimate": self.estimate,
        }


def stage_branching(data: CountData) -> dict[StageKey, StageBranching]:
    """Every (family, task, condition, stage, step) of ``data`` with token entropies."""
    if data.token_entropy.is_empty():
        return {}
    keys = ["family", "task", "condition_key", "stage", "step"]
    rows = data.token_entropy.filter(pl.col("tokens") > 0).join(
        data.units.select("unit", *keys), on="unit"
    )
    per_unit = rows.group_by("unit", *keys).agg(
        (pl.col("bits").sum() / pl.col("tokens").sum()).alias("hbar"),
        pl.col("estimate").drop_nulls().first(),
    )
    stages = per_unit.group_by(keys).agg(
        pl.col("hbar").mean(), pl.len().alias("n_prompts"),
        pl.col("estimate").drop_nulls().first(),
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
            r["hbar"], 2.0 ** r["hbar"], list(r["h"]), r["n_prompts"], r["estimate"]
        )
        for r in joined.iter_rows(named=True)
    }
