"""Temperature sweeps: one (family, task) sampled at several temperatures (docs/metrics.md,
section 11).

A sweep is the set of conditions of one (family, task) that differ only in temperature (the
same mode, top_p, top_k, max_new_tokens, stop strings and scaffold), when it holds at least
two temperatures. Each temperature is its own condition, analyzed on its own; the sweep lines
their per-stage numbers up: pooled entropy, mean prompt entropy, liquidity, and ProbMass on
two seed supports, the one chosen at the reference temperature (``probmass_reference_seed``)
and the one re-chosen at that temperature (``probmass_own_seed``, the condition's own
ProbMass). Without a condition at the reference temperature the first is null.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.groups import GroupResult
from analysis.values import condition_label, json_number

# Two temperatures closer than this are the same (temperatures are user-typed decimals).
_SAME_TEMPERATURE = 1e-9


@dataclass
class TemperatureSweep:
    """The sweep of one (family, task): ``points`` has one row per (temperature, stage)."""

    family: str
    task: str
    condition: dict[str, Any]  # the fields the sweep's conditions share (all but temperature)
    reference_temperature: float
    reference_condition_key: str | None
    reference_seed_prompt: str | None
    reference_seed_support: list[str]
    temperatures: list[float]
    stages: list[str]
    points: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "task": self.task,
            "condition": dict(self.condition),
            "reference_temperature": self.reference_temperature,
            "reference_condition_key": self.reference_condition_key,
            "reference_seed_prompt": self.reference_seed_prompt,
            "reference_seed_support": list(self.reference_seed_support),
            "temperatures": list(self.temperatures),
            "stages": list(self.stages),
            "points": [dict(p) for p in self.points],
        }

    def label(self) -> str:
        """The shared condition in one line, without its temperature (``24 tokens``)."""
        parts = condition_label({**self.condition, "temperature": 1.0}).split(", ")[1:]
        return ", ".join(parts) or "default sampling"

    def series(self, stage: str, name: str) -> tuple[list[float], list[float | None]]:
        """One stage's (temperatures, values) of a point field, for plotting."""
        rows = [p for p in self.points if p["stage"] == stage]
        return [p["temperature"] for p in rows], [p[name] for p in rows]


def temperature_sweeps(
    groups: list[GroupResult], reference_temperature: float
) -> list[TemperatureSweep]:
    """Every temperature sweep among the analyzed groups, in the groups' order."""
    classes: dict[tuple[str, str, str], list[GroupResult]] = {}
    for g in groups:
        if not g.stages or g.condition.get("temperature") is None:
            continue
        shared = {k: v for k, v in g.condition.items() if k != "temperature"}
        classes.setdefault((g.family, g.task, json.dumps(shared, sort_keys=True)), []).append(g)
    sweeps = []
    for (family, task, shared), members in classes.items():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda g: g.condition["temperature"])
        sweeps.append(_sweep(family, task, json.loads(shared), members, reference_temperature))
    return sweeps


def _sweep(
    family: str, task: str, shared: dict, members: list[GroupResult], reference: float
) -> TemperatureSweep:
    anchor = next(
        (g for g in members if abs(g.condition["temperature"] - reference) <= _SAME_TEMPERATURE),
        None,
    )
    support = None
    if anchor is not None and anchor.seed_index >= 0:
        support = np.isin(anchor.options, anchor.seed_support)
    orders: dict[str, int] = {}
    for g in members:
        for stage, order in zip(g.stages, g.stage_orders):
            orders.setdefault(stage, int(order))
    stages = sorted(orders, key=lambda s: (orders[s], s))
    points = []
    for g in members:
        for i, stage in enumerate(g.stages):
            pbar = g.values.get("pbar")
            on_reference = None
            if support is not None and pbar is not None:
                on_reference = json_number(np.sum(pbar[i][support]))
            points.append(
                {
                    "temperature": g.condition["temperature"],
                    "condition_key": g.condition_key,
                    "stage": stage,
                    "step": g.steps[i],
                    "entropy_pooled": _at(g, "entropy_pooled", i),
                    "entropy_mean_prompt": _at(g, "entropy_mean_prompt", i),
                    "liquidity": _at(g, "liquidity", i),
                    "probmass_reference_seed": on_reference,
                    "probmass_own_seed": _at(g, "probmass", i),
                    "seed_prompt": g.prompt_key(g.seed_index),
                }
            )
    return TemperatureSweep(
        family=family,
        task=task,
        condition=shared,
        reference_temperature=reference,
        reference_condition_key=None if anchor is None else anchor.condition_key,
        reference_seed_prompt=None if anchor is None else anchor.prompt_key(anchor.seed_index),
        reference_seed_support=[] if support is None else list(anchor.seed_support),
        temperatures=[g.condition["temperature"] for g in members],
        stages=stages,
        points=points,
    )


def _at(g: GroupResult, name: str, index: int) -> float | None:
    return json_number(g.values[name][index]) if name in g.values else None
