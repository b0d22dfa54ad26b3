"""Results of a crystallization analysis: the JSON contract and the same numbers as frames.

``CrystallizationResult.to_dict()`` is the stable JSON contract of ``catalog analyze``
(``{"thresholds": {...}, "tasks": [...], "cross_family": [...]}``, plus ``"trajectories"``
when checkpoint trajectories were computed and ``"temperature_sweep"`` when the selection
holds a temperature sweep); ``stages``, ``tasks`` and ``cross_family`` give the same values
as Polars DataFrames. Every task and cross-family row carries its sampling condition.
Undefined values (NaN in the metric arrays) are null, never NaN or infinity.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from analysis.groups import GroupResult, Problem
from analysis.values import condition_label, json_number

if TYPE_CHECKING:
    from analysis.sweeps import TemperatureSweep
    from analysis.trajectories import Trajectory

# Per-stage metrics (arrays over the stage axis) and per-group scalars, in output order.
STAGE_METRICS = (
    "entropy_mean_prompt",
    "entropy_pooled",
    "effective_options_mean_prompt",
    "effective_options_pooled",
    "normalized_entropy_mean_prompt",
    "normalized_entropy_pooled",
    "liquidity",
    "distinct_argmax",
    "mse_to_seed",
    "probmass",
    "probmass_proxy",
    "tv_to_sft",
    "kl_uniform",
    "chi2_uniform",
)
SCALAR_METRICS = ("nucleation_ratio", "heldout_mse", "heldout_nucleation_ratio")
CROSS_METRICS = ("mse", "rank", "predictive_ratio")
# Per-stage metrics reported as plain {stage: value} maps in the JSON (entropy-like ones
# are grouped as {stage: {mean_prompt, pooled}}).
_PLAIN_STAGE_METRICS = tuple(
    name for name in STAGE_METRICS if not name.endswith(("_mean_prompt", "_pooled"))
)


# The condition's columns of every frame: its key, its one-line label and its parameters.
_CONDITION_SCHEMA = {
    "condition_key": pl.String,
    "condition": pl.String,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "top_k": pl.Int64,
    "max_new_tokens": pl.Int64,
}
_STAGE_SCHEMA = {
    "family": pl.String,
    "task": pl.String,
    **_CONDITION_SCHEMA,
    "stage": pl.String,
    "stage_order": pl.Int64,
    "step": pl.Int64,
    "role": pl.String,
    "n_prompts": pl.Int64,
    "n_excluded": pl.Int64,
    "validity": pl.Float64,
    **{name: pl.Float64 for name in STAGE_METRICS},
    "mean_token_entropy": pl.Float64,
    "branching_factor": pl.Float64,
    "settled": pl.Boolean,
    "settled_support": pl.Float64,
    "settled_verdict": pl.String,
}
_TASK_SCHEMA = {
    "family": pl.String,
    "task": pl.String,
    **_CONDITION_SCHEMA,
    "kind": pl.String,
    "status": pl.String,
    "problems": pl.List(pl.String),
    "stages": pl.List(pl.String),
    "n_options": pl.Int64,
    "seed_prompt": pl.String,
    "seed_prompt_id": pl.Int64,
    "nucleation_ratio": pl.Float64,
    "heldout_seed_prompt_a": pl.String,
    "heldout_seed_prompt_b": pl.String,
    "heldout_same_seed": pl.Boolean,
    "heldout_mse": pl.Float64,
    "heldout_nucleation_ratio": pl.Float64,
    "liquid": pl.Boolean,
    "nucleated": pl.Boolean,
    "liquid_support": pl.Float64,
    "nucleated_support": pl.Float64,
    "liquid_verdict": pl.String,
    "nucleated_verdict": pl.String,
    "seed_stability": pl.Float64,
}
_CROSS_SCHEMA = {
    "family_a": pl.String,
    "family_b": pl.String,
    "task": pl.String,
    **_CONDITION_SCHEMA,
    "status": pl.String,
    "seed_prompt_a": pl.String,
    "seed_prompt_b": pl.String,
    "mse": pl.Float64,
    "rank": pl.Int64,
    "n_candidates": pl.Int64,
    "predictive_ratio": pl.Float64,
    "same_seed_prompt": pl.Boolean,
}


def condition_dict(key: str | None, condition: Mapping[str, Any]) -> dict[str, Any]:
    """A row's ``condition``: the condition's JSON (``Condition.to_dict()``: mode,
    temperature, top_p, top_k, max_new_tokens, stop, scaffold; or mode and ``imported``)
    and its ``condition_key``."""
    return {**condition, "condition_key": key}


def _condition_columns(key: str | None, condition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "condition_key": key,
        "condition": condition_label(condition),
        **{name: condition.get(name)
           for name in ("temperature", "top_p", "top_k", "max_new_tokens")},
    }


@dataclass
class CrossResult:
    """Cross-family seed prediction for one ordered (family_a, family_b, task) in one
    condition."""

    family_a: str
    family_b: str
    task: str
    status: str
    seed_prompt_a: str | None = None
    seed_prompt_b: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    same_seed_prompt: bool | None = None
    ci: dict[str, tuple[float, float]] | None = None
    condition_key: str | None = None
    condition: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroupTrajectories:
    """The checkpoint trajectories of one (family, task, condition), one per metric."""

    family: str
    task: str
    condition_key: str
    condition: dict[str, Any]
    series: list[Trajectory]

    def records(self) -> list[dict[str, Any]]:
        """The JSON contract's ``trajectories`` records: one per metric, with its reading."""
        head = {
            "family": self.family,
            "task": self.task,
            "condition": condition_dict(self.condition_key, self.condition),
        }
        return [{**head, **t.to_dict(), "reading": t.reading()} for t in self.series]


@dataclass
class CrystallizationResult:
    """Results of one analysis: the JSON contract (``to_dict``) and Polars frames.

    ``warnings``: lines about the selection that do not stop the analysis (stale runs, low
    valid rates, mixed normalizer versions). ``validity``: per model, the valid rate and
    the rate of each invalid reason (:mod:`analysis.validity`).
    ``problems``: every problem of the analysis (those of the groups first, then those of
    cross-family pairs and trajectories, then any added by other steps).
    """

    thresholds: dict[str, Any]
    groups: list[GroupResult]
    cross: list[CrossResult]
    trajectories: list[GroupTrajectories] = field(default_factory=list)
    sweeps: list[TemperatureSweep] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    validity: list[dict[str, Any]] = field(default_factory=list)
    extra_problems: list[Problem] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return [p for g in self.groups for p in g.problems] + list(self.extra_problems)

    def to_dict(self) -> dict[str, Any]:
        document = {
            "thresholds": dict(self.thresholds),
            "problems": [p.to_dict() for p in self.problems],
            "tasks": [group_dict(g) for g in self.groups],
            "cross_family": [cross_dict(c) for c in self.cross],
        }
        if self.thresholds.get("trajectories"):
            document["trajectories"] = [r for t in self.trajectories for r in t.records()]
        if self.sweeps:
            document["temperature_sweep"] = [s.to_dict() for s in self.sweeps]
        if self.validity:
            document["validity"] = [
                {k: json_number(v) if isinstance(v, float) else v for k, v in row.items()}
                for row in self.validity
            ]
        if self.warnings:
            document["warnings"] = list(self.warnings)
        return document

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @property
    def stages(self) -> pl.DataFrame:
        """One row per (family, task, stage): every per-stage metric (and CI bounds)."""
        rows = []
        for g in self.groups:
            reading = g.verdict_reading()
            for i, stage in enumerate(g.stages):
                row: dict[str, Any] = {
                    "family": g.family,
                    "task": g.task,
                    **_condition_columns(g.condition_key, g.condition),
                    "stage": stage,
                    "stage_order": int(g.stage_orders[i]),
                    "step": g.steps[i],
                    "role": g.role(i),
                    "n_prompts": int(g.n_prompts[i]),
                    "n_excluded": len(g.excluded_prompts.get(stage, [])),
                    "validity": json_number(g.validity[i]),
                }
                for name in STAGE_METRICS:
                    row[name] = json_number(g.values[name][i]) if name in g.values else None
                bf = g.branching.get(stage)
                row["mean_token_entropy"] = None if bf is None else bf.mean_token_entropy
                row["branching_factor"] = None if bf is None else bf.branching_factor
                row["settled"] = g.verdict["settled"].get(stage)
                row["settled_support"] = (g.verdict_support or {}).get("settled", {}).get(stage)
                row["settled_verdict"] = (
                    verdict_word(reading["settled"][stage]) if stage in reading["settled"] else None
                )
                if g.ci is not None:
                    for name in STAGE_METRICS:
                        low, high = g.ci.get(name, (None, None))
                        row[f"{name}_ci_low"] = None if low is None else json_number(low[i])
                        row[f"{name}_ci_high"] = None if high is None else json_number(high[i])
                rows.append(row)
        return _frame(rows, _STAGE_SCHEMA)

    @property
    def tasks(self) -> pl.DataFrame:
        """One row per (family, task): status, seed, ratios, verdicts, seed stability."""
        rows = []
        for g in self.groups:
            d = group_dict(g)
            support, reading = g.verdict_support or {}, g.verdict_reading()
            heldout = {
                f"heldout_{k}": v
                for k, v in d["heldout"].items()
                if k not in ("choosing_half", "evaluating_half")
            }
            row: dict[str, Any] = {
                "family": g.family,
                "task": g.task,
                **_condition_columns(g.condition_key, g.condition),
                "kind": g.kind,
                "status": g.status,
                "problems": [p.message for p in g.problems],
                "stages": list(g.stages),
                "n_options": len(g.options),
                "seed_prompt": d["seed_prompt"],
                "seed_prompt_id": d["seed_prompt_id"],
                "nucleation_ratio": d["nucleation_ratio"],
                **heldout,
                "liquid": g.verdict["liquid"],
                "nucleated": g.verdict["nucleated"],
                **{f"{name}_support": support.get(name) for name in ("liquid", "nucleated")},
                **{f"{name}_verdict": verdict_word(reading[name])
                   for name in ("liquid", "nucleated")},
                "seed_stability": g.seed_stability,
            }
            if g.ci is not None:
                for name in SCALAR_METRICS:
                    bounds = g.ci.get(name)
                    row[f"{name}_ci_low"] = None if bounds is None else json_number(bounds[0])
                    row[f"{name}_ci_high"] = None if bounds is None else json_number(bounds[1])
            rows.append(row)
        return _frame(rows, _TASK_SCHEMA)

    @property
    def cross_family(self) -> pl.DataFrame:
        """One row per ordered (family_a, family_b, task) pair (CI bounds when bootstrapped)."""
        return _frame([_flat_cross(c) for c in self.cross], _CROSS_SCHEMA)


def _flat_cross(c: CrossResult) -> dict[str, Any]:
    d = cross_dict(c) | _condition_columns(c.condition_key, c.condition)
    row = {k: d[k] for k in _CROSS_SCHEMA}
    for name, (low, high) in (d["ci"] or {}).items():
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
    return row


def _frame(rows: list[dict[str, Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Rows with a fixed schema; bootstrap bound columns (``*_ci_low/high``) are Float64."""
    columns = dict(schema)
    for row in rows:
        for name in row:
            columns.setdefault(name, pl.Float64)
    return pl.DataFrame(rows, schema=columns)


def verdict_word(value: bool | str | None) -> str:
    """A verdict as a word: "yes", "no", "uncertain" (bootstrap support below the
    threshold) or "undefined"."""
    if isinstance(value, str):
        return value
    return {True: "yes", False: "no", None: "undefined"}[value]


def _per_stage(g: GroupResult, name: str) -> dict[str, float | None]:
    array = g.values.get(name)
    return {s: None if array is None else json_number(array[i]) for i, s in enumerate(g.stages)}


def _mean_and_pooled(g: GroupResult, prefix: str) -> dict[str, dict[str, float | None]]:
    mean_prompt = _per_stage(g, f"{prefix}_mean_prompt")
    pooled = _per_stage(g, f"{prefix}_pooled")
    return {s: {"mean_prompt": mean_prompt[s], "pooled": pooled[s]} for s in g.stages}


def group_dict(g: GroupResult) -> dict[str, Any]:
    """One element of the JSON contract's ``tasks`` list."""
    v = g.values
    seed = g.seed_index
    seed_a, seed_b = int(v.get("heldout_seed_a", -1)), int(v.get("heldout_seed_b", -1))
    d: dict[str, Any] = {
        "family": g.family,
        "task": g.task,
        "condition": condition_dict(g.condition_key, g.condition),
        "kind": g.kind,
        "status": g.status,
        "problems": [p.message for p in g.problems],
        "stages": list(g.stages),
        "stage_orders": {s: int(o) for s, o in zip(g.stages, g.stage_orders)},
        "steps": dict(zip(g.stages, g.steps)),
        "checkpoints": [[stage, step] for stage, step in g.checkpoints],
        "roles": {
            "base": None if g.roles.base is None else g.stages[g.roles.base],
            "sft": None if g.roles.sft is None else g.stages[g.roles.sft],
            "settling": [s for i, s in enumerate(g.stages) if g.role(i) == "settling"],
        },
        "n_options": len(g.options),
        "n_prompts": {s: int(n) for s, n in zip(g.stages, g.n_prompts)},
        "excluded_prompts": {s: list(keys) for s, keys in g.excluded_prompts.items()},
        "seed_prompt": g.prompt_key(seed),
        "seed_prompt_id": None if seed < 0 else int(g.prompt_ids[seed]),
        "seed_support": list(g.seed_support),
        "nucleation_ratio": json_number(v.get("nucleation_ratio")),
        "heldout": {
            "choosing_half": "even prompt ids",
            "evaluating_half": "odd prompt ids",
            "seed_prompt_a": g.prompt_key(seed_a),
            "seed_prompt_b": g.prompt_key(seed_b),
            "same_seed": None if seed_a < 0 or seed_b < 0 else seed_a == seed_b,
            "mse": json_number(v.get("heldout_mse")),
            "nucleation_ratio": json_number(v.get("heldout_nucleation_ratio")),
        },
        "entropy": _mean_and_pooled(g, "entropy"),
        "effective_options": _mean_and_pooled(g, "effective_options"),
        "normalized_entropy": _mean_and_pooled(g, "normalized_entropy"),
    }
    for name in _PLAIN_STAGE_METRICS:
        d[name] = _per_stage(g, name)
    d["distinct_argmax"] = {
        s: None if x is None else int(x) for s, x in d["distinct_argmax"].items()
    }
    d["verdict"] = g.verdict_reading()
    d["verdict_point"] = {
        "liquid": g.verdict["liquid"],
        "nucleated": g.verdict["nucleated"],
        "settled": dict(g.verdict["settled"]),
    }
    d["verdict_support"] = None if g.verdict_support is None else {
        **g.verdict_support, "settled": dict(g.verdict_support["settled"])
    }
    d["branching_factor"] = {
        s: None if g.branching.get(s) is None else g.branching[s].to_dict() for s in g.stages
    }
    d["validity"] = {s: json_number(x) for s, x in zip(g.stages, g.validity)}
    d["ci"] = None if g.ci is None else _ci_dict(g)
    d["seed_stability"] = g.seed_stability
    return d


def _ci_dict(g: GroupResult) -> dict[str, Any]:
    ci: dict[str, Any] = {}
    for name, (low, high) in (g.ci or {}).items():
        if name in SCALAR_METRICS:
            ci[name] = {"value": [json_number(low), json_number(high)]}
        else:
            ci[name] = {
                s: [json_number(low[i]), json_number(high[i])] for i, s in enumerate(g.stages)
            }
    return ci


def cross_dict(c: CrossResult) -> dict[str, Any]:
    """One element of the JSON contract's ``cross_family`` list."""
    v = c.values
    rank = json_number(v.get("rank"))
    candidates = json_number(v.get("n_candidates"))
    return {
        "family_a": c.family_a,
        "family_b": c.family_b,
        "task": c.task,
        "condition": condition_dict(c.condition_key, c.condition),
        "status": c.status,
        "seed_prompt_a": c.seed_prompt_a,
        "seed_prompt_b": c.seed_prompt_b,
        "mse": json_number(v.get("mse")),
        "rank": None if rank is None else int(rank),
        "n_candidates": None if candidates is None else int(candidates),
        "predictive_ratio": json_number(v.get("predictive_ratio")),
        "same_seed_prompt": c.same_seed_prompt,
        "ci": None
        if c.ci is None
        else {k: [json_number(low), json_number(high)] for k, (low, high) in c.ci.items()},
    }
