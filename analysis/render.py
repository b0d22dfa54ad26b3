"""Text renderings of a crystallization result: a terminal table, JSON and CSV.

The table prints one block per sampling condition: per (family, task), its stages in order
with entropy, liquidity, MSE to the seed, ProbMass and validity; then the seed prompt,
nucleation ratio, held-out check and verdict lines; then the condition's cross-family
table. Temperature sweeps and checkpoint trajectories (one reading per series) follow. The
thresholds come first, so a pasted table always says how it was computed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import polars as pl

from analysis.groups import GroupResult
from analysis.results import (
    CrossResult,
    CrystallizationResult,
    cross_dict,
    group_dict,
    verdict_word,
)
from analysis.sweeps import TemperatureSweep
from analysis.values import condition_label
from catalog.enums import RESULT_FORMATS


def render(result: CrystallizationResult, fmt: str) -> str:
    """The result as ``table``, ``json`` or ``csv`` text."""
    if fmt == "json":
        return result.to_json() + "\n"
    if fmt == "csv":
        return to_csv(result)
    if fmt == "table":
        return to_table(result)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(RESULT_FORMATS)}")


def to_csv(result: CrystallizationResult) -> str:
    """One row per (family, task, condition, stage): per-stage metrics plus the group's seed,
    ratios and verdicts (list columns joined with "; ") and the thresholds (``thresholds_*``
    columns). Cross-family rows, sweeps and trajectories are in the JSON and the table."""
    stages = result.stages
    shared = [c for c in result.tasks.columns if c in stages.columns and c != "condition_key"]
    per_group = result.tasks.with_columns(
        pl.col("problems").list.join("; "), pl.col("stages").list.join("; ")
    ).drop("stages", *[c for c in shared if c not in ("family", "task")])
    frame = stages.join(
        per_group, on=["family", "task", "condition_key"], how="left", nulls_equal=True
    ).with_columns(
        pl.lit(value).alias(f"thresholds_{name}") for name, value in result.thresholds.items()
    )
    buffer = io.StringIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


def to_table(result: CrystallizationResult) -> str:
    t = result.thresholds
    lines = [
        (
            f"thresholds: tau {t['tau']:g}; liquid: L[base] >= {t['liquid_threshold']:g}; "
            f"nucleated: NR < {t['nucleation_ratio_threshold']:g}, L[sft] < L[base], "
            f"ProbMass[sft] >= {t['probmass_threshold']:g}; settled: ProbMass[s] >= "
            f"ProbMass[sft] - {t['settle_tolerance']:g}"
        ),
        (
            f"mode {t['mode']}; min samples per prompt {t['min_samples']}; bootstrap "
            + (f"{t['bootstrap']} replicates, seed {t['seed']}" if t["bootstrap"] else "off")
        ),
        "",
    ]
    bootstrapped = bool(t["bootstrap"])
    for key in dict.fromkeys(g.condition_key for g in result.groups):
        groups = [g for g in result.groups if g.condition_key == key]
        lines += [f"condition: {condition_label(groups[0].condition)} [{key}]", ""]
        for group in groups:
            lines += _group_block(group, bootstrapped)
            lines.append("")
        lines += _cross_block([c for c in result.cross if c.condition_key == key], bootstrapped)
        lines.append("")
    for sweep in result.sweeps:
        lines += _sweep_block(sweep)
        lines.append("")
    if t.get("trajectories"):
        lines += _trajectory_block(result)
    shown = {"cross_family_not_compared"}  # listed under their cross-family table
    others = [p for p in result.extra_problems if p.kind not in shown]
    if others:
        lines += ["", "problems:"] + [f"  {p.task}: {p.message}" for p in others]
    return "\n".join(lines).rstrip() + "\n"


def _group_block(g: GroupResult, bootstrapped: bool) -> list[str]:
    d = group_dict(g)
    header = f"== {g.family} / {g.task} ({g.kind}, {len(g.options)} options) — status: {g.status}"
    lines = [header]
    if g.stages:
        headers = ["stage", "order", "prompts", "valid", "H prompt", "H pooled", "2^H",
                   "liquidity", "argmax", "MSE to seed", "ProbMass", "proxy PM", "TV to sft",
                   "BF"]
        rows = []
        for i, stage in enumerate(g.stages):

            def cell(name: str, digits: int = 4, i: int = i) -> str:
                return _cell(g, name, i, digits, bootstrapped)

            rows.append([
                stage + ("" if g.role(i) in ("other", "settling") else f" ({g.role(i)})"),
                str(g.stage_orders[i]),
                str(int(g.n_prompts[i])),
                _percent(d["validity"][stage]),
                cell("entropy_mean_prompt", 3),
                cell("entropy_pooled", 3),
                cell("effective_options_pooled", 2),
                cell("liquidity"),
                cell("distinct_argmax", 0),
                cell("mse_to_seed", 6),
                cell("probmass"),
                cell("probmass_proxy"),
                cell("tv_to_sft"),
                _branching(d["branching_factor"][stage]),
            ])
        lines += ["  " + line for line in _columns(headers, rows)]
    if d["seed_prompt"] is not None:
        nr = _number(d["nucleation_ratio"], 4) + _interval(d, "nucleation_ratio", 4)
        stability = "" if g.seed_stability is None else f"; seed stability {g.seed_stability:.0%}"
        lines.append(
            f"  seed prompt: {d['seed_prompt']} (id {d['seed_prompt_id']}); NR = {nr}{stability}"
        )
        lines.append(f"  seed support: {', '.join(d['seed_support'])}")
        h = d["heldout"]
        same = {True: "same seed", False: "different seeds", None: "undefined"}[h["same_seed"]]
        lines.append(
            f"  held-out (even ids choose, odd evaluate): {h['seed_prompt_a'] or '-'} / "
            f"{h['seed_prompt_b'] or '-'} ({same}); NR on odd half = "
            f"{_number(h['nucleation_ratio'], 4)}"
        )
    v, support = d["verdict"], d["verdict_support"] or {}

    def said(name: str, stage: str | None = None) -> str:
        value = v[name] if stage is None else v[name][stage]
        share = support.get(name) if stage is None else support.get(name, {}).get(stage)
        return _yes(value) + ("" if share is None else f" ({share:.0%} of replicates)")

    settled = ", ".join(f"{s} {said('settled', s)}" for s in v["settled"]) or "-"
    lines.append(
        f"  verdict: liquid at base {said('liquid')}; nucleated at sft {said('nucleated')}; "
        f"settled {settled}"
    )
    lines += [f"  problem: {p.message}" for p in g.problems]
    return lines


def _cross_block(cross: list[CrossResult], bootstrapped: bool) -> list[str]:
    if not cross:
        return ["cross-family: fewer than two families sampled a task in this condition"]
    headers = ["task", "family A", "family B", "seed A", "seed B", "MSE",
               "rank", "pred. ratio", "same seed"]
    rows = []
    problems = []
    for c in map(cross_dict, cross):
        if c["status"] != "ok":
            problems.append(f"  {c['task']}: {c['family_a']} -> {c['family_b']}: {c['status']}")
            continue
        rank = f"{c['rank']}/{c['n_candidates']}"
        ratio = _number(c["predictive_ratio"], 4)
        bounds = (c["ci"] or {}).get("predictive_ratio")
        if bootstrapped and bounds and bounds[0] is not None:
            ratio += f" [{_number(bounds[0], 3)}, {_number(bounds[1], 3)}]"
        rows.append([c["task"], c["family_a"], c["family_b"], c["seed_prompt_a"],
                     c["seed_prompt_b"], _number(c["mse"], 6), rank, ratio,
                     _yes(c["same_seed_prompt"])])
    lines = ["cross-family seed prediction (A's seed vs B's SFT distribution):"]
    lines += ["  " + line for line in _columns(headers, rows)] if rows else ["  no comparable pair"]
    return lines + problems


def _sweep_block(sweep: TemperatureSweep) -> list[str]:
    reference = f"T={sweep.reference_temperature:g}"
    seed = sweep.reference_seed_prompt
    lines = [
        f"temperature sweep: {sweep.family} / {sweep.task} ({sweep.label()}); "
        f"reference {reference}, seed {seed or 'undefined'}"
        + ("" if sweep.reference_condition_key else f" ({reference} was not sampled)")
    ]
    headers = ["T", "stage", "H prompt", "H pooled", "liquidity", "PM ref seed",
               "PM own seed", "own seed"]
    rows = [
        [f"{p['temperature']:g}", p["stage"], _number(p["entropy_mean_prompt"], 3),
         _number(p["entropy_pooled"], 3), _number(p["liquidity"], 4),
         _number(p["probmass_reference_seed"], 4), _number(p["probmass_own_seed"], 4),
         p["seed_prompt"] or "-"]
        for p in sweep.points
    ]
    return lines + ["  " + line for line in _columns(headers, rows)]


def _trajectory_block(result: CrystallizationResult) -> list[str]:
    lines = ["checkpoint trajectories (change point per series; delta_bic > 0: a transition):"]
    if not result.trajectories:
        return lines + ["  no (family, task) with usable prompts"]
    for t in result.trajectories:
        points = len(t.series[0].steps) if t.series else 0
        lines.append(
            f"  {t.family} / {t.task} [{condition_label(t.condition)}]: {points} checkpoints"
        )
        lines += [f"    {series.reading()}" for series in t.series]
    return lines


def _branching(bf: dict[str, Any] | None) -> str:
    """The stage's branching factor (``~`` where estimated from top-k logprobs)."""
    if bf is None or bf["branching_factor"] is None:
        return "-"
    return ("~" if bf["estimate"] else "") + f"{bf['branching_factor']:.2f}"


def _cell(g: GroupResult, name: str, i: int, digits: int, bootstrapped: bool) -> str:
    if name not in g.values:
        return "-"
    text = _number(g.values[name][i], digits)
    if bootstrapped and g.ci and name in ("liquidity", "mse_to_seed", "probmass"):
        low, high = g.ci[name]
        if not math.isnan(low[i]):
            text += f" [{_number(low[i], digits)}, {_number(high[i], digits)}]"
    return text


def _interval(d: dict[str, Any], name: str, digits: int) -> str:
    bounds = (d["ci"] or {}).get(name, {}).get("value")
    if not bounds or bounds[0] is None:
        return ""
    return f" [{_number(bounds[0], digits)}, {_number(bounds[1], digits)}]"


def _number(value: Any, digits: int) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{float(value):.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _yes(value: bool | str | None) -> str:
    return verdict_word(value)


def _columns(headers: Sequence[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers, two spaces between columns."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    return [line(headers), *(line(r) for r in rows)]
