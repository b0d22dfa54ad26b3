"""What a toy family is: its settings (hashed), the ground truth planted in it, its stages.

Planting is plain numpy: every prompt of every task gets its own answer distribution drawn
from the settings' world seed, and one prompt per task is the seed that SFT spreads.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from catalog.errors import InvalidInput
from catalog.tasks import PromptSpec, TaskSpec, bundled_task

# Bump when a change in this package changes what a given set of settings trains: the version
# is part of the settings hash, so stale cached families are not reused.
TOYLAB_VERSION = "2"

DEFAULT_TASKS = ("digit", "coin", "color")

# (stage name, prompt format), in stage order.
STAGES = (("base", "plain"), ("sft", "chat"), ("dpo", "chat"))

# Seed support threshold, as in the metrics contract (ProbMass, tau = 0.9).
SUPPORT_TAU = 0.9
# The planted peak mass of a prompt lies in [PEAK_LOW, PEAK_HIGH]: from flat to sharp, so the
# base model is liquid even on a two-option task (coin: mean pairwise JSD ~0.17).
PEAK_LOW, PEAK_HIGH = 0.35, 0.97
# Share of every planted distribution spread uniformly, so no option is impossible at base.
UNIFORM_FLOOR = 0.02


@dataclass(frozen=True)
class ToyFamilySettings:
    """Everything that determines a toy family; its hash names the cache directory.

    ``tasks``: closed tasks to train on (default: the bundled digit, coin and color).
    ``seed_prompts``: task name -> prompt key planted as that task's seed; a task not named
    gets its prompt at ``default_seed_position`` (not 0 by default, so a seed that an
    analysis finds only by breaking ties towards the lowest prompt id cannot pass for the
    planted one). ``prompts_per_task``: use the first K prompts of each task (None: all).
    ``world_seed`` draws the planted base distributions (the "pretraining data"): families
    with the same world seed share them, as real families share web text, so a seed found in
    one predicts another's. ``seed`` initializes and trains the weights. ``checkpoints``:
    how many evenly spaced checkpoints SFT and DPO each save (0: none); saving does not
    change training, so the final stages are those of the same settings without checkpoints.
    """

    tasks: tuple[TaskSpec, ...] | None = None
    seed_prompts: Mapping[str, str] = field(default_factory=dict)
    default_seed_position: int = 2
    prompts_per_task: int | None = 12
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    base_steps: int = 300
    sft_steps: int = 120
    dpo_steps: int = 12
    base_lr: float = 8e-3
    sft_lr: float = 6e-3
    dpo_lr: float = 5e-4
    dpo_beta: float = 0.5
    world_seed: int = 0
    seed: int = 0
    checkpoints: int = 0

    def resolved_tasks(self) -> tuple[TaskSpec, ...]:
        """The tasks, cut to the first ``prompts_per_task`` prompts, validated."""
        tasks = self.tasks
        if tasks is None:
            tasks = tuple(bundled_task(name) for name in DEFAULT_TASKS)
        resolved = tuple(_cut_prompts(task, self.prompts_per_task) for task in tasks)
        _check_tasks(resolved, self)
        return resolved

    def seed_key(self, task: TaskSpec) -> str:
        if task.name in self.seed_prompts:
            return self.seed_prompts[task.name]
        return task.prompts[self.default_seed_position].key

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form holding everything training depends on (the hash input)."""
        tasks = self.resolved_tasks()
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["tasks"] = [_task_dict(task) for task in tasks]
        data["seed_prompts"] = {task.name: self.seed_key(task) for task in tasks}
        data["toylab_version"] = TOYLAB_VERSION
        return data

    def settings_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PlantedTask:
    """The ground truth planted for one task."""

    task: str
    options: tuple[str, ...]
    base: Mapping[str, tuple[float, ...]]  # prompt key -> answer distribution over options
    seed_key: str
    preferred: tuple[str, ...]  # options DPO prefers (inside the seed support)

    @property
    def seed(self) -> tuple[float, ...]:
        return self.base[self.seed_key]

    @property
    def support(self) -> tuple[str, ...]:
        """The seed support at tau = 0.9, built as the metrics contract builds it."""
        return seed_support(self.options, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": list(self.options),
            "base": {key: list(probs) for key, probs in self.base.items()},
            "seed_prompt": self.seed_key,
            "support": list(self.support),
            "preferred": list(self.preferred),
        }

    @classmethod
    def from_dict(cls, task: str, data: Mapping[str, Any]) -> PlantedTask:
        return cls(
            task=task,
            options=tuple(data["options"]),
            base={key: tuple(probs) for key, probs in data["base"].items()},
            seed_key=data["seed_prompt"],
            preferred=tuple(data["preferred"]),
        )


@dataclass(frozen=True)
class ToyStage:
    name: str
    order: int
    prompt_format: str  # "plain" or "chat", as the model registry records it
    path: Path
    checkpoints: tuple[int, ...] = ()  # steps saved in path/checkpoint-<step>/, in order

    def checkpoint(self, step: int) -> ToyStage:
        """The stage's checkpoint at ``step``, as a stage of its own (no checkpoints)."""
        if step not in self.checkpoints:
            raise InvalidInput(
                f"toy stage {self.name!r} has checkpoints at steps {list(self.checkpoints)}, "
                f"not {step}"
            )
        return replace(self, path=self.path / f"checkpoint-{step}", checkpoints=())


@dataclass(frozen=True)
class ToyFamily:
    """A trained toy family: its stage directories and the planted ground truth."""

    root: Path
    settings: ToyFamilySettings
    settings_hash: str
    stages: tuple[ToyStage, ...]
    planted: Mapping[str, PlantedTask]
    train_seconds: Mapping[str, float]
    reused: bool  # True when this call found the family in the cache

    @property
    def name(self) -> str:
        """The default family name: its directory name, ``toy-<settings hash[:12]>``."""
        return self.root.name

    def stage(self, name: str) -> ToyStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise InvalidInput(
            f"toy families have stages {', '.join(s for s, _ in STAGES)}, not {name!r}"
        )


# --------------------------------------------------------------------------- planting


def seed_support(
    options: Sequence[str], dist: Sequence[float], tau: float = SUPPORT_TAU
) -> tuple[str, ...]:
    """Smallest set of options, by decreasing probability (ties: option text), with mass >= tau."""
    ranked = sorted(zip(options, dist), key=lambda pair: (-pair[1], pair[0]))
    support, mass = [], 0.0
    for option, prob in ranked:
        support.append(option)
        mass += prob
        if mass >= tau - 1e-9:
            break
    return tuple(support)


def plant_task(task: TaskSpec, seed_key: str, rng: np.random.Generator) -> PlantedTask:
    """Plant one answer distribution per prompt, and the DPO preferences inside the seed support.

    Prompt i peaks on option ``order[i % n]`` (a random order, so argmaxes differ across
    prompts). Prompts sharing a peak option get peak masses spread evenly over
    [low, PEAK_HIGH] so that no two prompts plant nearly the same distribution; the rest of
    the mass goes to the other options by a Dirichlet draw, which makes low-peak prompts flat
    and high-peak prompts sharp. DPO prefers the more probable half of the seed support:
    an analysis estimates the support from samples, and an option at its edge may fall out
    of the estimate, so the options DPO moves mass to must not be the marginal ones.
    """
    n = len(task.options)
    low = max(PEAK_LOW, 1.0 / n + 0.05)  # the peak must stay the argmax (coin: > 0.5)
    order = rng.permutation(n)
    by_peak: dict[int, list[int]] = {}
    for i in range(len(task.prompts)):
        by_peak.setdefault(int(order[i % n]), []).append(i)
    peak_mass = np.empty(len(task.prompts))
    for group in by_peak.values():
        if len(group) == 1:
            levels = np.array([rng.uniform(low, PEAK_HIGH)])
        else:
            levels = np.linspace(low, PEAK_HIGH, len(group))
        peak_mass[group] = rng.permutation(levels)
    dists = []
    for i in range(len(task.prompts)):
        rest = rng.dirichlet(np.full(n - 1, 0.5)) * (1.0 - peak_mass[i])
        dist = np.insert(rest, int(order[i % n]), peak_mass[i])
        dist = (1.0 - UNIFORM_FLOOR) * dist + UNIFORM_FLOOR / n
        dists.append(tuple(float(p) for p in dist / dist.sum()))
    # DPO moves mass inside the seed support, so the seed needs two or more options there:
    # if its distribution is too sharp, it trades distributions with the nearest prompt
    # whose distribution is broad enough, or (if none is) is flattened.
    seed_index = [p.key for p in task.prompts].index(seed_key)
    broad = [i for i, d in enumerate(dists) if len(seed_support(task.options, d)) >= 2]
    if broad:
        swap = min(broad, key=lambda i: (abs(i - seed_index), i))
        dists[seed_index], dists[swap] = dists[swap], dists[seed_index]
    else:
        sharp = np.array(dists[seed_index])
        keep = (0.8 - 1.0 / n) / (sharp.max() - 1.0 / n)  # peak 0.8 after mixing in uniform
        dists[seed_index] = tuple(float(p) for p in keep * sharp + (1.0 - keep) / n)
    base = {prompt.key: dist for prompt, dist in zip(task.prompts, dists)}
    support = seed_support(task.options, base[seed_key])
    n_preferred = math.ceil(len(support) / 2)
    preferred = tuple(sorted(support[:n_preferred]))  # support is ordered by probability
    return PlantedTask(task.name, tuple(task.options), base, seed_key, preferred)


def plant(settings: ToyFamilySettings) -> dict[str, PlantedTask]:
    """The planted ground truth of every task, from the settings' world seed."""
    planted = {}
    for index, task in enumerate(settings.resolved_tasks()):
        rng = np.random.default_rng([settings.world_seed, index])
        planted[task.name] = plant_task(task, settings.seed_key(task), rng)
    return planted



# --------------------------------------------------------------------------- validation


def _cut_prompts(task: TaskSpec, limit: int | None) -> TaskSpec:
    if limit is None or len(task.prompts) <= limit:
        return task
    return replace(task, prompts=tuple(task.prompts[:limit]))


def _check_tasks(tasks: Sequence[TaskSpec], settings: ToyFamilySettings) -> None:
    if settings.prompts_per_task is not None and settings.prompts_per_task < 2:
        raise InvalidInput("the toy lab needs at least 2 prompts per task; raise prompts_per_task")
    most = min(settings.sft_steps, settings.dpo_steps)
    if not 0 <= settings.checkpoints <= most:
        raise InvalidInput(
            f"checkpoints must be between 0 and {most} (the steps of the shorter of SFT and "
            f"DPO), got {settings.checkpoints}"
        )
    names = [t.name for t in tasks]
    unknown = sorted(set(settings.seed_prompts) - set(names))
    if unknown:
        raise InvalidInput(f"seed_prompts names tasks not in the toy family: {', '.join(unknown)}")
    for task in tasks:
        if task.kind != "closed" or len(task.options) < 2:
            raise InvalidInput(f"toy lab task {task.name!r} must be closed with at least 2 options")
        for option in task.options:
            if not re.fullmatch(r"\w+", option):
                raise InvalidInput(
                    f"toy lab task {task.name!r}: option {option!r} is not one word; "
                    "the toy lab trains single-word options only"
                )
        keys = [p.key for p in task.prompts]
        seed_key = settings.seed_prompts.get(task.name)
        if seed_key is not None and seed_key not in keys:
            raise InvalidInput(
                f"planted seed prompt {seed_key!r} is not among the first {len(keys)} prompts of "
                f"task {task.name!r}; pick one of: {', '.join(keys)}"
            )
        if seed_key is None and not 0 <= settings.default_seed_position < len(keys):
            raise InvalidInput(
                f"default_seed_position {settings.default_seed_position} is out of range for task "
                f"{task.name!r} with {len(keys)} prompts; name its seed in seed_prompts"
            )


def _task_dict(task: TaskSpec) -> dict[str, Any]:
    return {
        "name": task.name,
        "options": list(task.options),
        "prompts": [[p.key, p.text] for p in task.prompts],
        # Aliases are words of the vocabulary, so they change the model too.
        "aliases": {option: list(forms) for option, forms in sorted(task.aliases.items())},
    }


def make_task(name: str, options: Sequence[str], prompts: Sequence[tuple[str, str]]) -> TaskSpec:
    """A closed task spec from plain values (for custom toy families and tests)."""
    return TaskSpec(
        name=name,
        kind="closed",
        normalizer="choice",
        options=tuple(options),
        prompts=tuple(PromptSpec(key, text) for key, text in prompts),
    )
