"""Task definitions: the bundled suite (catalog/tasks/*.toml) and users' own task files.

A task file is TOML (see catalog/tasks/coin.toml for a commented example). This module
parses and validates it into a :class:`TaskSpec`; storing specs in the database is done by
:mod:`catalog.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


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
    ``params`` holds normalizer parameters (e.g. ``{"min": 1, "max": 100}``).
    Prompt order is the order of the file: a prompt's position is its prompt id.
    """

    name: str
    kind: Literal["closed", "open"]
    normalizer: str
    prompts: tuple[PromptSpec, ...]
    options: tuple[str, ...] = ()
    description: str = ""
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
