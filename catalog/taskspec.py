"""What a task is: a validated task definition (:class:`TaskSpec`) and its prompts.

Reading and validating task files is :mod:`catalog.tasks`, which checks each spec against
its normalizer (:mod:`catalog.normalize`); the normalizers read completions against a spec.
Both import the spec from here, so only tasks imports normalize: no circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from catalog.enums import TaskKind
from catalog.errors import NotFound


@dataclass(frozen=True)
class PromptSpec:
    """One prompt variant: a stable key and the user-message text."""

    key: str
    text: str


@dataclass(frozen=True)
class TaskSpec:
    """A validated task definition.

    ``options`` is the closed option list in canonical order (empty for open tasks);
    ``aliases`` maps an option to other surface forms that normalize to it;
    ``params`` holds normalizer parameters (e.g. ``{"min": 1, "max": 100}``);
    ``scaffold`` is the base-stage scaffold's id (:mod:`catalog.prompting`; None: the default).
    Prompt order is the order of the file: a prompt's position is its prompt id.
    """

    name: str
    kind: TaskKind
    normalizer: str
    prompts: tuple[PromptSpec, ...]
    options: tuple[str, ...] = ()
    description: str = ""
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    scaffold: str | None = None

    # Specs key the normalizers' compiled-pattern caches, so hashing must be cheap; it uses
    # a few immutable fields (aliases/params are dicts), and equal specs hash equally.
    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.normalizer, len(self.options), len(self.prompts)))

    def prompt(self, key: str) -> PromptSpec:
        """The prompt variant with this key (NotFound lists the task's keys)."""
        for prompt in self.prompts:
            if prompt.key == key:
                return prompt
        keys = ", ".join(p.key for p in self.prompts)
        raise NotFound(f"task {self.name!r} has no prompt {key!r}; its prompts are: {keys}")

    def surface_forms(self) -> dict[str, tuple[str, ...]]:
        """Each option with the forms that mean it: the option itself, then its aliases."""
        if self.kind == "open":
            return {canonical: (canonical, *forms) for canonical, forms in self.aliases.items()}
        return {option: (option, *self.aliases.get(option, ())) for option in self.options}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict in the task-file layout (read back by
        :func:`catalog.tasks.spec_from_dict`)."""
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "options": list(self.options),
            "normalizer": self.normalizer,
            "aliases": {option: list(forms) for option, forms in self.aliases.items()},
            "params": dict(self.params),
            "scaffold": self.scaffold,
            "prompts": [{"key": p.key, "text": p.text} for p in self.prompts],
        }

    def normalization(self) -> dict[str, Any]:
        """The fields that decide how completions normalize: a stored run's counts are out
        of date (stale) when any of them changes."""
        data = self.to_dict()
        return {key: data[key] for key in ("kind", "options", "normalizer", "aliases", "params")}
