"""Re-normalization: re-derive stored sampled runs' counts from their stored completions.

After a task's options, aliases or normalizer parameters change (``catalog tasks add FILE
--update`` marks the task's runs stale), or after a normalizer's version changes,
:func:`renormalize` maps every stored completion text of the selected done sampled runs to
an option (or an invalid reason) again with the task's current normalizer and rewrites the
run's option counts, invalid count and counts per invalid reason, one transaction per run, recording the normalizer's version and clearing the
stale flag. No model is loaded and nothing is sampled. A run whose counts come out the same
is not rewritten, so running it again changes nothing.

Runs without completions (imported counts: nothing to re-derive them from) are counted,
named in the summary and left alone; stale ones stay stale (re-import them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import Engine, delete, exists, insert, select, update

from catalog import registry
from catalog.db import session_scope
from catalog.enums import INVALID_REASONS
from catalog.errors import NotFound
from catalog.normalize import Reading
from catalog.registry import TaskNormalizer
from catalog.schema import (
    INVALID_REASON_COLUMNS,
    Completion,
    Family,
    Model,
    OptionCount,
    Prompt,
    Run,
    Task,
)
from catalog.tasks import bundled_task, bundled_tasks

BUNDLED = {task.name for task in bundled_tasks()}
# Runs without completions named in the summary; the rest are counted.
_NAMED_RUNS = 10


class Tally(NamedTuple):
    """Distinct completion texts read: counts per option and per invalid reason, and each
    text's reading."""

    options: dict[str, int]
    reasons: dict[str, int]
    readings: dict[str, Reading]

    @property
    def n_invalid(self) -> int:
        return sum(self.reasons.values())

    def reason_columns(self) -> dict[str, int]:
        """The run's ``n_<reason>`` columns (every reason, zero where none)."""
        return {f"n_{reason}": self.reasons.get(reason, 0) for reason in INVALID_REASONS}


def tally_readings(read: Callable[[str], Reading], completions: Mapping[str, int]) -> Tally:
    """Read each distinct completion text once and add up its count by option or reason."""
    options: dict[str, int] = {}
    reasons: dict[str, int] = {}
    readings: dict[str, Reading] = {}
    for text, count in completions.items():
        reading = readings[text] = read(text)
        if reading.option is not None:
            options[reading.option] = options.get(reading.option, 0) + count
        else:
            reasons[reading.reason] = reasons.get(reading.reason, 0) + count
    return Tally(options, reasons, readings)


@dataclass
class RenormalizeSummary:
    """What :func:`renormalize` did."""

    runs: int = 0  # sampled runs with completions, re-derived
    changed_runs: int = 0  # of those, runs whose option counts or invalid count changed
    changed_samples: int = 0  # samples whose option changed
    cleared_stale: int = 0  # runs no longer stale
    without_completions: int = 0  # runs left alone
    named: list[str] = field(default_factory=list)  # the first few of them

    def __str__(self) -> str:
        lines = [
            f"re-derived {self.runs:,} runs from their completions: {self.changed_runs:,} "
            f"changed ({self.changed_samples:,} samples changed option), "
            f"{self.cleared_stale:,} no longer stale"
        ]
        if self.without_completions:
            more = self.without_completions - len(self.named)
            lines.append(
                f"left alone {self.without_completions:,} runs without completions (imported "
                f"counts): {', '.join(self.named)}" + (f" and {more:,} more" if more else "")
            )
        return "\n".join(lines)


def update_bundled_tasks(engine: Engine, tasks: Iterable[str] | None = None) -> list[str]:
    """Bring stored bundled tasks (all, or these) to this catalog's bundled definitions
    (new vocabularies, aliases, normalizer parameters), as ``catalog tasks add FILE
    --update`` would; returns the names of the tasks that changed (their runs are stale)."""
    names = set(tasks) if tasks else None
    changed = []
    with session_scope(engine) as session:
        for stored in session.scalars(select(Task).order_by(Task.name)):
            if (names is not None and stored.name not in names) or stored.name not in BUNDLED:
                continue
            if registry.store_task(session, bundled_task(stored.name), update=True).changed:
                changed.append(stored.name)
    return changed


def renormalize(
    engine: Engine,
    *,
    tasks: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
) -> RenormalizeSummary:
    """Re-derive the counts of the done sampled runs of these tasks and families (default:
    all) from their completions with each task's current normalizer."""
    summary = RenormalizeSummary()
    with session_scope(engine) as session:
        query = _selected_runs(session, tasks, families)
        runs = session.execute(
            query.add_columns(exists().where(Completion.run_id == Run.id).label("has_texts"))
            .order_by(Run.id)
        ).all()
        normalizers = {
            task.id: TaskNormalizer(task)
            for task in session.scalars(select(Task).where(Task.id.in_({r.task_id for r in runs})))
        }
    for run in runs:
        if not run.has_texts:
            summary.without_completions += 1
            if len(summary.named) < _NAMED_RUNS:
                summary.named.append(f"{run.model} {run.task}/{run.prompt} (run {run.id})")
            continue
        with session_scope(engine) as session:
            _renormalize_run(session, run.id, normalizers[run.task_id], summary)
        summary.runs += 1
    return summary


def _selected_runs(session, tasks, families):
    """Done sampled runs with their names, of the named tasks and families (checked)."""
    query = (
        select(Run.id, Run.task_id, Model.name.label("model"), Task.name.label("task"),
               Prompt.key.label("prompt"))
        .join(Model, Model.id == Run.model_id)
        .join(Family, Family.id == Model.family_id)
        .join(Task, Task.id == Run.task_id)
        .join(Prompt, Prompt.id == Run.prompt_id)
        .where(Run.status == "done", Run.mode == "sampled")
    )
    for column, names, what in ((Task.name, tasks, "task"), (Family.name, families, "family")):
        if not names:
            continue
        names = list(names)
        known = set(session.scalars(select(column).where(column.in_(names))))
        missing = [name for name in names if name not in known]
        if missing:
            raise NotFound(
                f"no stored {what} named {missing[0]!r}; see `catalog tasks list` and "
                "`catalog models list`"
            )
        query = query.where(column.in_(names))
    return query


def _renormalize_run(session, run_id: int, normalize: TaskNormalizer,
                     summary: RenormalizeSummary) -> None:
    """Re-derive one run in the caller's transaction; write only what differs."""
    texts = session.execute(
        select(Completion.id, Completion.text, Completion.count, Completion.option,
               Completion.invalid_reason)
        .where(Completion.run_id == run_id)
    ).all()
    counts = tally_readings(normalize.read, {row.text: row.count for row in texts})
    moved = []
    for row in texts:
        reading = counts.readings[row.text]
        if reading != (row.option, row.invalid_reason):
            moved.append({"id": row.id, "option": reading.option,
                          "invalid_reason": reading.reason})
            if reading.option != row.option:
                summary.changed_samples += row.count
    run = session.execute(
        select(Run.n_invalid, Run.stale, Run.normalizer_version,
               *(getattr(Run, column) for column in INVALID_REASON_COLUMNS))
        .where(Run.id == run_id)
    ).one()
    stored = dict(session.execute(
        select(OptionCount.option, OptionCount.count).where(OptionCount.run_id == run_id)
    ).all())
    if moved:
        session.execute(update(Completion), moved)
    values = {}
    if stored != counts.options or run.n_invalid != counts.n_invalid:
        session.execute(delete(OptionCount).where(OptionCount.run_id == run_id))
        if counts.options:
            session.execute(insert(OptionCount), [
                {"run_id": run_id, "option": option, "count": count}
                for option, count in counts.options.items()
            ])
        values["n_invalid"] = counts.n_invalid
        summary.changed_runs += 1
    reasons = counts.reason_columns()
    if any(getattr(run, column) != n for column, n in reasons.items()):
        values.update(reasons)
    if run.stale:
        values["stale"] = False
        summary.cleared_stale += 1
    if run.normalizer_version != normalize.version:
        values["normalizer_version"] = normalize.version
    if values:
        session.execute(update(Run).where(Run.id == run_id).values(**values))
