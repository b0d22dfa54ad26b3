"""``catalog ingest`` in one process: plan a request's units, then sample them with one worker.

The pieces are :mod:`ingest.planning` (grid -> units and keys), :mod:`ingest.queue` (claim,
heartbeat, complete, fail) and :mod:`ingest.worker` (load, sample, store). Here a model is
loaded first (so a model that cannot load leaves the store as it was), its units are
planned with it as the renderer, and the in-process worker samples the ones that are not
done; a model whose units are all done is not even loaded. Each unit's random stream is
derived from the user's seed and the unit key, so a killed-and-resumed job stores exactly
the counts an uninterrupted job stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select

from catalog.db import session_scope
from catalog.schema import Run
from ingest.events import ModelSkipped, Progress, UnitsBusy, UnitsPlanned, ignore
from ingest.planning import IngestRequest, all_done, plan_model, resolve
from ingest.worker import StopFlag, Worker, WorkerOptions, open_backend


@dataclass
class IngestSummary:
    units: int = 0
    already_done: int = 0
    done: int = 0
    samples: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: IngestSummary) -> None:
        """Count another job's units in (the values of a sweep are one job each)."""
        for name in ("units", "already_done", "done", "samples", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed += other.failed


def run_ingest(
    engine: Engine,
    request: IngestRequest,
    options: WorkerOptions = WorkerOptions(),
    *,
    progress: Progress = ignore,
    stop: StopFlag | None = None,
) -> IngestSummary:
    """Sample every unit of ``request`` that is not done yet; return what happened.

    ``progress(event)`` is called with :mod:`ingest.events`: UnitsPlanned, ModelSkipped (all
    its units done), UnitsBusy (held by other workers) and the worker's events
    (:class:`ingest.worker.Worker`). A unit that keeps failing ends ``failed`` after
    ``options.max_attempts`` and the job goes on; the summary lists it.
    """
    summary = IngestSummary()
    started = time.perf_counter()
    models, tasks = resolve(engine, request)
    with Worker(engine, options, progress=progress, stop=stop) as worker:
        for model in models:
            if all_done(engine, model, tasks, request):
                units = sum(len(prompts) for _, prompts in tasks)
                summary.units += units
                summary.already_done += units
                progress(ModelSkipped(model.name, units))
                continue
            with open_backend(model, options.load) as backend:
                planned = plan_model(engine, model, tasks, request, renderer=backend)
                summary.units += len(planned.run_ids)
                summary.already_done += planned.done
                progress(UnitsPlanned(model.name, len(planned.run_ids), len(planned.todo)))
                worker.use_backend(model, backend)
                worker.run(run_ids=planned.todo)
                worker.close()
            busy = _running(engine, planned.todo)
            if busy:
                progress(UnitsBusy(model.name, busy))
            if worker.stop.requested:
                break
    summary.done = worker.summary.done
    summary.samples = worker.summary.samples
    summary.failed = worker.summary.failed
    summary.seconds = time.perf_counter() - started
    return summary


def _running(engine: Engine, run_ids: list[int]) -> int:
    """How many of these units other workers hold."""
    if not run_ids:
        return 0
    with session_scope(engine) as session:
        return session.scalar(
            select(func.count()).select_from(Run)
            .where(Run.id.in_(run_ids), Run.status == "running")
        )
