"""The queue's progress: units by state, running units and their workers, throughput, ETA,
failures (what ``catalog status`` shows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from catalog.enums import RUN_STATUSES
from catalog.schema import Family, Model, Prompt, Run, Task
from ingest.queue import open_queue

RECENT_MINUTES = 10.0


@dataclass
class QueueStatus:
    """A snapshot of the queue (ingested units only; imported counts are not work)."""

    at: datetime
    groups: list[dict[str, Any]] = field(default_factory=list)  # family, model, task, states
    running: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)  # failed, or pending with an error
    throughput: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        return {state: sum(g[state] for g in self.groups) for state in RUN_STATUSES}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        data["totals"] = self.totals()
        return data


def queue_status(engine: Engine, recent_minutes: float = RECENT_MINUTES) -> QueueStatus:
    """Read the queue: counts by (family, model, task) and state, running units with their
    worker, host and lease, units done per minute over the last ``recent_minutes`` (over
    the time since the first of them started, if shorter) with an ETA for the rest, and
    failed units with their errors."""
    with open_queue(engine) as queue:
        now = queue.clock()
    status = QueueStatus(at=now)
    with engine.connect() as conn:
        status.groups = _groups(conn)
        status.running = [
            {"model": r.model, "task": r.task, "prompt": r.prompt, "worker": r.claimed_by,
             "host": r.host, "attempt": r.attempts,
             "running_seconds": _age(now, r.started_at),
             "heartbeat_age_seconds": _age(now, r.heartbeat_at),
             "lease_left_seconds": _age(r.lease_expires_at, now)}
            for r in conn.execute(_unit_rows(Run.claimed_by, Run.host, Run.attempts,
                                             Run.started_at, Run.heartbeat_at,
                                             Run.lease_expires_at)
                                  .where(Run.status == "running").order_by(Run.started_at))
        ]
        status.failed = [
            {"model": r.model, "task": r.task, "prompt": r.prompt, "state": r.status,
             "attempts": r.attempts, "error": r.error}
            for r in conn.execute(_unit_rows(Run.status, Run.attempts, Run.error)
                                  .where(Run.error.is_not(None),
                                         Run.status.in_(("failed", "pending")))
                                  .order_by(Run.status, Run.id))
        ]
        since = now - timedelta(minutes=recent_minutes)
        recent = conn.execute(
            select(func.count(), func.min(Run.started_at), func.sum(Run.n_samples))
            .where(Run.origin == "ingest", Run.status == "done", Run.finished_at >= since)
        ).one()
    totals = status.totals()
    status.throughput = _throughput(now, since, *recent, totals["pending"] + totals["running"])
    return status


def _groups(conn) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(Family.name.label("family"), Model.name.label("model"), Task.name.label("task"),
               Run.status, func.count().label("units"))
        .join(Model, Model.id == Run.model_id).join(Family, Family.id == Model.family_id)
        .join(Task, Task.id == Run.task_id).where(Run.origin == "ingest")
        .group_by(Family.name, Model.name, Model.stage_order, Task.name, Run.status)
        .order_by(Family.name, Model.stage_order, Model.name, Task.name)
    )
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        group = groups.setdefault((r.family, r.model, r.task), {
            "family": r.family, "model": r.model, "task": r.task,
            **{state: 0 for state in RUN_STATUSES},
        })
        group[r.status] = r.units
    return list(groups.values())


def _unit_rows(*columns):
    return (
        select(Model.name.label("model"), Task.name.label("task"), Prompt.key.label("prompt"),
               *columns)
        .join(Model, Model.id == Run.model_id).join(Task, Task.id == Run.task_id)
        .join(Prompt, Prompt.id == Run.prompt_id).where(Run.origin == "ingest")
    )


def _throughput(now, since, done: int, first_start, samples, remaining: int) -> dict[str, Any]:
    span = (now - max(first_start, since)).total_seconds() if done else 0.0
    per_minute = done / span * 60 if span > 0 else None
    return {
        "window_minutes": round((now - since).total_seconds() / 60, 1),
        "units_done": done,
        "units_per_minute": None if per_minute is None else round(per_minute, 2),
        "samples_per_second": round((samples or 0) / span, 1) if span > 0 else None,
        "remaining": remaining,
        "eta_seconds": round(remaining / per_minute * 60) if per_minute and remaining else None,
    }


def _age(now: datetime | None, then: datetime | None) -> float | None:
    """Seconds from ``then`` to ``now`` (None if either is unknown)."""
    if now is None or then is None:
        return None
    return round((now - then).total_seconds(), 1)


# ------------------------------------------------------------------------------ as text


def render_status(status: QueueStatus) -> str:
    """The snapshot as Markdown tables: states per (family, model, task), throughput and
    ETA, running units, errors."""
    totals = status.totals()
    rate = status.throughput
    lines = [f"queue at {status.at:%Y-%m-%d %H:%M:%S} UTC: "
             + ", ".join(f"{totals[s]} {s}" for s in RUN_STATUSES)]
    if rate.get("units_per_minute"):
        eta = "-" if rate["eta_seconds"] is None else _clock(rate["eta_seconds"])
        lines.append(f"last {rate['window_minutes']:g} min: {rate['units_done']} units done, "
                     f"{rate['units_per_minute']:g} units/min, {rate['samples_per_second']:g} "
                     f"samples/s; {rate['remaining']} to go, ETA {eta}")
    else:
        lines.append(f"no unit finished in the last {rate['window_minutes']:g} min; "
                     f"{rate['remaining']} to go, ETA unknown")
    sections = [
        ("units", status.groups, ["family", "model", "task", *RUN_STATUSES]),
        ("running", status.running, ["model", "task", "prompt", "worker", "host", "attempt",
                                     "running_seconds", "heartbeat_age_seconds",
                                     "lease_left_seconds"]),
        ("errors", status.failed, ["model", "task", "prompt", "state", "attempts", "error"]),
    ]
    for title, rows, columns in sections:
        if rows:
            lines += ["", f"{title}:", markdown_table(rows, columns)]
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
