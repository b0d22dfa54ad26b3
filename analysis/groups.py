"""The analysis of one (family, task, condition) (:class:`GroupResult`) and the problems
an analysis reports (:class:`Problem`); :mod:`analysis.results` gathers them into the
JSON contract and frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.metrics import StageRoles


@dataclass(frozen=True)
class Problem:
    """Something the analysis left out, could not compute or could not find, named where it
    happened: one entry of the JSON contract's ``problems`` list.

    ``kind`` is a stable word (docs/metrics.md, "Problems"); ``message`` says it in one line
    for people. The other fields say where, and are null where they do not apply.
    """

    kind: str
    message: str
    family: str | None = None
    task: str | None = None
    condition_key: str | None = None
    stage: str | None = None
    step: int | None = None
    role: str | None = None
    metric: str | None = None
    prompts: tuple[str, ...] | list[str] | None = None
    family_b: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "family": self.family,
            "family_b": self.family_b,
            "task": self.task,
            "condition_key": self.condition_key,
            "stage": self.stage,
            "step": None if self.step is None else int(self.step),
            "role": self.role,
            "metric": self.metric,
            "prompts": None if self.prompts is None else list(self.prompts),
            "message": self.message,
        }


@dataclass
class GroupResult:
    """The analysis of one (family, task, condition); arrays run over ``stages`` unless
    scalar. ``steps``: the step of each stage's final checkpoint, the one its metrics use
    (None: the stage's step-less model); ``checkpoints``: every (stage, step) in order."""

    family: str
    task: str
    condition_key: str
    condition: dict[str, Any]
    steps: list[int | None]
    checkpoints: list[tuple[str, int | None]]
    kind: str
    options: list[str]
    stages: list[str]
    stage_orders: list[int]
    roles: StageRoles
    status: str
    problems: list[Problem]
    prompt_keys: list[str]
    prompt_ids: np.ndarray
    n_prompts: np.ndarray
    excluded_prompts: dict[str, list[str]]
    validity: np.ndarray
    values: dict[str, np.ndarray]
    seed_support: list[str]
    verdict: dict[str, Any]
    ci: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    seed_stability: float | None = None
    # With a bootstrap: the share of replicates in which each verdict holds (the shape of
    # ``verdict``), and the share below which a verdict reads "uncertain".
    verdict_support: dict[str, Any] | None = None
    support_threshold: float | None = None
    # {stage: analysis.branching.StageBranching, None without token entropies}
    branching: dict[str, Any] = field(default_factory=dict)
    # The arrays behind the numbers: pooled counts (or probabilities) on O_t, (S, N, K);
    # distributions P[s, p], (S, N, K); sampled and usable (stage, prompt) cells, (S, N).
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)), repr=False)
    distributions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)), repr=False)
    sampled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)
    usable: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)

    def role(self, index: int) -> str:
        """"base", "sft", "settling" (after SFT) or "other" for a stage index."""
        if index == self.roles.base:
            return "base"
        if index == self.roles.sft:
            return "sft"
        if self.roles.sft is not None and index > self.roles.sft:
            return "settling"
        return "other"

    def prompt_key(self, index: int) -> str | None:
        """The prompt key at a prompt-axis index (None for -1, "undefined")."""
        return None if index < 0 else self.prompt_keys[int(index)]

    @property
    def seed_index(self) -> int:
        return int(self.values.get("seed", -1))

    def verdict_reading(self) -> dict[str, Any]:
        """The verdicts as reported: ``verdict`` with "uncertain" where the bootstrap
        support of a defined verdict is below the threshold (without a bootstrap: as is)."""
        support, threshold = self.verdict_support, self.support_threshold

        def read(value: bool | None, share: float | None) -> bool | str | None:
            if value is None or share is None or threshold is None or share >= threshold:
                return value
            return "uncertain"

        if support is None:
            return {**self.verdict, "settled": dict(self.verdict["settled"])}
        return {
            "liquid": read(self.verdict["liquid"], support["liquid"]),
            "nucleated": read(self.verdict["nucleated"], support["nucleated"]),
            "settled": {s: read(x, support["settled"].get(s))
                        for s, x in self.verdict["settled"].items()},
        }
