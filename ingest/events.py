"""What a job reports while it runs: one small dataclass per kind of event.

The worker (:mod:`ingest.worker`) and ``catalog ingest``'s job (:mod:`ingest.jobs`) call a
:data:`Progress` callback with these; the command line renders them all in one place
(:class:`catalog.cli.progress.UnitProgress`), so ``catalog ingest`` and ``catalog worker``
show the same things, a unit's failure included, as they happen. ``model`` is a registered
model's name and ``unit`` a unit's label (``task/prompt ...``; ``run ID`` before its task
is read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """Anything a job reports."""


@dataclass(frozen=True)
class UnitEvent(Event):
    """Something that happened to one unit of a model."""

    model: str
    unit: str


@dataclass(frozen=True)
class UnitsPlanned(Event):
    """A model's units are planned: ``units`` in all, ``todo`` of them to sample."""

    model: str
    units: int
    todo: int


@dataclass(frozen=True)
class ModelSkipped(Event):
    """All ``units`` of a model were already done: it is not even loaded."""

    model: str
    units: int


@dataclass(frozen=True)
class UnitsBusy(Event):
    """``units`` of a model are held by other workers and left to them."""

    model: str
    units: int


@dataclass(frozen=True)
class ModelLoading(Event):
    """A worker starts loading a model (which may take minutes)."""

    model: str


@dataclass(frozen=True)
class UnitClaimed(UnitEvent):
    """A worker claimed a unit and is about to sample it."""


@dataclass(frozen=True)
class UnitDone(UnitEvent):
    """A unit's result is stored: ``samples`` drawn in ``seconds`` (exact mode: 0 samples)."""

    samples: int
    seconds: float


@dataclass(frozen=True)
class UnitFailed(UnitEvent):
    """A unit's attempt failed with ``error`` (one line); ``final``: it is now ``failed``,
    else it goes back to pending for another attempt."""

    error: str
    final: bool


@dataclass(frozen=True)
class UnitLost(UnitEvent):
    """A unit's result was refused: its lease ran out and another worker claimed it."""


@dataclass(frozen=True)
class UnitReleased(UnitEvent):
    """A unit was given back untried (a stop was requested, or the GPU failed)."""


@dataclass(frozen=True)
class DatabaseFault(Event):
    """The database is unreachable (``error``); the next try is in ``wait`` seconds."""

    error: str
    wait: float


Progress = Callable[[Event], None]


def ignore(event: Event) -> None:
    """A :data:`Progress` that reports nothing."""
