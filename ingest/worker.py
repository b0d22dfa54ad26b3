"""The worker loop: claim the next unit, load its model if needed, sample, store; repeat.

A worker runs planned units (:mod:`ingest.planning`) from the queue (:mod:`ingest.queue`)
until none is pending or claimable. It prefers units of the model it has loaded, so each
model is loaded once per worker while its units remain. A backend that samples several
prompts in one call (:attr:`Backend.units_per_call` > 1, e.g. vLLM) gets that many of the
model's sampled units at once, claimed in one statement. A background heartbeat renews the
leases of the units in hand, each unit's final write is fenced by its claim's token, a
failing unit is retried up to ``max_attempts`` times (a batch that fails is sampled again
unit by unit, so one bad unit fails alone), and a stop request (SIGTERM, SIGINT) releases
the units being sampled and ends the loop.

A worker opens one database connection, shared by its loop and its heartbeat, and holds it
while it runs. Database faults are the worker's, not the unit's: every queue operation is
retried (backoff with jitter) until the database is back or ``db_patience`` runs out, when
the worker stops with :class:`ingest.queue.DatabaseLost`; only a unit's own errors count
against its attempts.

How a worker runs (how it loads models, lease, attempts...) is :class:`WorkerOptions`; what
it samples is in the queue; what it reports while it runs are :mod:`ingest.events`.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import catalog
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.errors import CatalogError, DatabaseUnreachable, InvalidInput
from catalog.normalize import get_normalizer
from catalog.renormalize import tally_readings
from catalog.prompting import get_scaffold
from catalog.registry import get_model
from catalog.schema import Completion, ExactProb, Model, OptionCount, Task, storable_text
from catalog.tasks import TaskSpec
from ingest.backends import (
    Backend,
    DeviceLost,
    LoadOptions,
    SampleRequest,
    SamplingParams,
    TokenEntropy,
    is_sticky_device_error,
    load_backend,
    render_with,
)
from ingest.events import (
    DatabaseFault,
    ModelLoading,
    Progress,
    UnitClaimed,
    UnitDone,
    UnitFailed,
    UnitLost,
    UnitReleased,
    ignore,
)
from ingest.exact import default_surface_forms
from ingest.planning import Unit, model_spec, task_spec, unit_seed
from ingest.queue import DB_PATIENCE_SECONDS, Claim, Scope, new_worker_id, open_queue

# How often an idle worker looks for new units or expired leases.
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs: how models load, how long it holds a unit, when it stops.

    ``load``: device, dtype, batch size, pickles (:class:`ingest.backends.LoadOptions`);
    ``lease_seconds``: a claimed unit is the worker's for this long, renewed by a heartbeat
    every third of it; ``max_attempts``: a unit failing this many times becomes ``failed``;
    ``idle_exit``: with nothing claimable, wait this long for new units or expiring leases
    before exiting (0: exit at once); ``max_units``: exit after this many units (None: no
    limit); ``models``: only units of these registered models (empty: any); ``db_patience``:
    how long the database may stay unreachable before the worker gives up.
    """

    load: LoadOptions = LoadOptions()
    lease_seconds: float = 120.0
    max_attempts: int = 3
    idle_exit: float = 0.0
    max_units: int | None = None
    models: Sequence[str] = ()
    db_patience: float = DB_PATIENCE_SECONDS

    def __post_init__(self) -> None:
        if not self.lease_seconds >= 1:
            raise InvalidInput(f"lease must be at least 1 second, got {self.lease_seconds}")
        if self.max_attempts < 1:
            raise InvalidInput(f"max attempts must be at least 1, got {self.max_attempts}")
        if self.idle_exit < 0:
            raise InvalidInput(f"idle exit must be >= 0 seconds, got {self.idle_exit}")
        if not self.db_patience >= 0:
            raise InvalidInput(f"db patience must be >= 0 seconds, got {self.db_patience}")
        if self.max_units is not None and self.max_units < 1:
            raise InvalidInput(f"max units must be at least 1, got {self.max_units}")


@dataclass
class WorkerSummary:
    worker: str = ""
    done: int = 0
    samples: int = 0
    retried: int = 0  # failed attempts put back to pending
    failed: list[str] = field(default_factory=list)  # units that ended failed, with errors
    lost: int = 0  # results refused: another worker had claimed the unit
    released: int = 0
    models_loaded: int = 0
    exit_reason: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        parts = [f"{self.done} units done ({self.samples:,} samples)"]
        parts += [f"{n} {what}" for n, what in ((len(self.failed), "failed"),
                  (self.retried, "retried"), (self.lost, "lost to other workers"),
                  (self.released, "released")) if n]
        return (f"worker {self.worker}: {', '.join(parts)}, {self.models_loaded} model loads "
                f"in {self.seconds:.1f}s; {self.exit_reason}")


# ------------------------------------------------------------------------------ stopping


class StopRequested(BaseException):
    """Raised inside sampling or model loading when a stop is requested (a BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it)."""


class StopFlag:
    """A stop request: set by a signal handler; interrupts only what is interruptible."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._interruptible = False

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, *_signal_args: object) -> None:
        self._event.set()
        if self._interruptible:
            raise StopRequested

    def wait(self, seconds: float) -> None:
        self._event.wait(seconds)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Sampling and loading may be cut short; database writes never are."""
        if self.requested:
            raise StopRequested
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


@contextlib.contextmanager
def stop_on_signals(*signals: int) -> Iterator[StopFlag]:
    """A stop flag set by SIGTERM and SIGINT (or ``signals``) while in the block."""
    stop = StopFlag()
    signals = signals or (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, stop.request) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------ units


@dataclass
class UnitResult:
    completions: dict[str, int] | None = None  # sampled mode
    probabilities: dict[str, float] | None = None  # exact mode
    covered_mass: float | None = None
    seconds: float = 0.0
    token_entropy: TokenEntropy | None = None  # sampled mode, where the backend knows it
    record: dict = field(default_factory=dict)  # the backend's facts of this unit (usage)


def open_backend(model: Model, load: LoadOptions) -> Backend:
    """Load a registered model for sampling (the one place workers load models)."""
    return load_backend(model_spec(model), load)


def check_rendered(backend: Backend, unit: Unit) -> None:
    """The prompt must render as it did when the unit was planned (its hash is stored)."""
    rendered = render_with(backend, unit.prompt_text, unit.prompt_format, unit.scaffold)
    if rendered != unit.rendered:
        raise InvalidInput(
            f"{unit.label}: the prompt renders differently than when it was planned (the "
            "tokenizer, chat template or prompt text changed); plan the grid again"
        )


def sample_units(backend: Backend, units: Sequence[Unit]) -> list[UnitResult]:
    """Sample checked units of one model and mode, in order: sampled units in one
    :meth:`Backend.sample_many` call (their wall time shared evenly), exact ones scored one
    by one (workers batch sampled units only)."""
    if units[0].params is None:
        return [score_unit(backend, unit) for unit in units]
    t0 = time.perf_counter()
    counts = backend.sample_many([
        SampleRequest(unit.rendered, unit.params, unit_seed(unit.seed, unit.key))
        for unit in units
    ])
    seconds = (time.perf_counter() - t0) / len(units)
    records = backend.call_records() or [{}] * len(units)
    return [UnitResult(completions=c, seconds=seconds, record=r,
                       token_entropy=getattr(c, "token_entropy", None))
            for c, r in zip(counts, records, strict=True)]


def score_unit(backend: Backend, unit: Unit) -> UnitResult:
    """Exact mode: the option probabilities of one checked unit."""
    t0 = time.perf_counter()
    forms = default_surface_forms(unit.task.options, unit.task.aliases, unit.prompt_format)
    exact = backend.option_probabilities(unit.rendered, forms)
    return UnitResult(probabilities=exact.probabilities, covered_mass=exact.covered_mass,
                      seconds=time.perf_counter() - t0)


def result_rows(unit: Unit, result: UnitResult, provenance: dict) -> tuple[dict, list]:
    """The run's columns and the rows (completions, option counts or exact probabilities)
    that store a unit's result."""
    normalizer = get_normalizer(unit.task.normalizer)
    if result.record:
        provenance = with_backend_record(provenance, **result.record)
    values = {**provenance, "wall_seconds": result.seconds,
              "normalizer_version": normalizer.version}
    if result.completions is None:
        values["covered_mass"] = result.covered_mass
        exact_rows = [
            {"run_id": unit.run_id, "option": o, "probability": min(max(p, 0.0), 1.0)}
            for o, p in (result.probabilities or {}).items()
        ]
        return values, [(ExactProb, exact_rows)]
    read = functools.partial(normalizer.read, task=unit.task)
    counts = tally_readings(read, result.completions)
    stored: dict[str, dict] = {}
    for text, count in result.completions.items():
        reading = counts.readings[text]
        row = stored.setdefault(storable_text(text), {
            "run_id": unit.run_id, "text": storable_text(text), "count": 0,
            "option": reading.option, "invalid_reason": reading.reason,
        })
        row["count"] += count
    values.update(n_invalid=counts.n_invalid, **counts.reason_columns())
    if result.token_entropy is not None:
        values["token_entropy"] = result.token_entropy.to_json()
    option_rows = [{"run_id": unit.run_id, "option": o, "count": c}
                   for o, c in counts.options.items()]
    return values, [(Completion, list(stored.values())), (OptionCount, option_rows)]


def precision_columns(condition: dict | None, dtype: str | None) -> dict:
    """The run's condition and key with its precision in them, when it ran below float32
    (runs of different precision must not pool); nothing to change otherwise."""
    if not condition:
        return {}
    planned = Condition.from_dict(condition)
    stored = planned.in_precision(dtype)
    if stored == planned:
        return {}
    return {"condition": stored.to_dict(), "condition_key": stored.key}


def backend_provenance(backend: Backend) -> dict:
    """The run columns that describe a loaded backend and this software."""
    info = backend.provenance()
    return {
        "model_revision": info.get("model_revision"),
        "dtype": info.get("dtype"),
        "device": info.get("device"),
        "chat_template_hash": info.get("chat_template_hash"),
        # the backend's name, options and own choices (vLLM: seeding) go with the versions
        "library_versions": {**(info.get("library_versions") or {}),
                             "backend": backend.backend_record()},
        "catalog_version": catalog.__version__,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
    }


def with_backend_record(provenance: dict, **entries) -> dict:
    """``provenance`` with ``entries`` added to its backend record."""
    versions = provenance["library_versions"]
    return {**provenance,
            "library_versions": {**versions, "backend": {**versions["backend"], **entries}}}


@functools.cache
def git_commit() -> str | None:
    """The catalog checkout's commit, when it runs from a git checkout."""
    root = Path(catalog.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------ the loop


class Heartbeat:
    """Renews the leases of the units in hand every third of the lease, from a thread."""

    def __init__(self, queue, lease_seconds: float) -> None:
        self.queue, self.lease_seconds = queue, lease_seconds
        self.claims: tuple[Claim, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="heartbeat")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            for claim in self.claims:
                try:
                    self.queue.heartbeat(claim, self.lease_seconds)
                except Exception:  # noqa: BLE001 - a missed renewal only shortens the lease
                    pass


class Named(NamedTuple):
    """Which unit of which model, as events name them (``run ID`` until the unit is read)."""

    model: str
    unit: str


@dataclass(frozen=True)
class LoadedBackend:
    """The backend a worker samples with: its model, the run columns that describe it, and
    whether this worker loaded it (and so closes it)."""

    model_id: int
    backend: Backend
    provenance: dict
    owned: bool


class Worker:
    """One worker: :meth:`run` claims and processes units until the queue has none for it.

    ``progress(event)`` is called with :mod:`ingest.events`: ModelLoading, UnitClaimed,
    UnitDone, UnitFailed, UnitLost, UnitReleased and DatabaseFault.
    """

    def __init__(
        self, engine: Engine, options: WorkerOptions = WorkerOptions(), *,
        progress: Progress = ignore, stop: StopFlag | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.engine, self.options = engine, options
        self.progress = progress
        self.queue = open_queue(engine, patience=options.db_patience, on_fault=self._db_fault)
        self.stop = stop or StopFlag()
        self.summary = WorkerSummary(worker=worker_id or new_worker_id())
        self.model_ids = _model_ids(engine, options.models)
        self.unloadable: set[int] = set()  # models this worker failed to load
        self._backend: LoadedBackend | None = None
        # What units refer to, read once: models, task specs, prompts (key, text).
        self._models: dict[int, Model] = {}
        self._specs: dict[int, TaskSpec] = {}
        self._prompts: dict[int, tuple[str, str]] = {}

    @property
    def id(self) -> str:
        return self.summary.worker

    def _db_fault(self, error: str, wait: float) -> None:
        self.progress(DatabaseFault(error, wait))

    def use_backend(self, model: Model, backend: Backend) -> None:
        """Sample ``model``'s units with a backend the caller loaded (and closes)."""
        self._drop_backend()
        self._backend = LoadedBackend(model.id, backend, backend_provenance(backend), owned=False)

    def run(self, *, run_ids: Sequence[int] | None = None) -> WorkerSummary:
        """Process units (only ``run_ids`` if given) until none is claimable, the idle time
        runs out, ``max_units`` are done, or a stop is requested."""
        started = time.perf_counter()
        scope = Scope(
            model_ids=None if self.model_ids is None else tuple(self.model_ids),
            run_ids=None if run_ids is None else tuple(run_ids),
        )
        with Heartbeat(self.queue, self.options.lease_seconds) as heartbeat:
            self.summary.exit_reason = self._loop(scope, heartbeat)
        self.summary.seconds += time.perf_counter() - started
        return self.summary

    def close(self) -> None:
        self._drop_backend()
        self.queue.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _loop(self, scope: Scope, heartbeat: Heartbeat) -> str:
        idle_since: float | None = None
        empty_claims = 0
        processed = 0
        while True:
            if self.stop.requested:
                return "stopped on request"
            if self.options.max_units is not None and processed >= self.options.max_units:
                return f"--max-units {self.options.max_units} reached"
            current = self._backend.model_id if self._backend else None
            claim = self.queue.claim_next(
                self.id, lease_seconds=self.options.lease_seconds,
                max_attempts=self.options.max_attempts, prefer_model=current,
                scope=Scope(scope.model_ids, scope.run_ids, tuple(self.unloadable)),
            )
            if claim is not None:
                idle_since, empty_claims = None, 0
                budget = None if self.options.max_units is None else (
                    self.options.max_units - processed)
                processed += self._process(claim, heartbeat, budget, scope)
                continue
            narrowed = Scope(scope.model_ids, scope.run_ids, tuple(self.unloadable))
            self.queue.fail_exhausted(self.options.max_attempts, narrowed)
            if self.queue.expire_dead_local_claims(narrowed):
                continue
            # A claim can miss a unit another worker held locked for an instant: look again.
            if empty_claims < 3 and self.queue.has_claimable(self.options.max_attempts, narrowed):
                empty_claims += 1
                self.stop.wait(0.05)
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= self.options.idle_exit:
                return "no unit pending or claimable"
            self.stop.wait(min(POLL_SECONDS, self.options.idle_exit))

    def _process(self, claim: Claim, heartbeat: Heartbeat, budget: int | None,
                 scope: Scope) -> int:
        """Sample a claimed unit, with more of its model's units when the backend samples
        several per call (up to ``budget`` in all), and store each. Returns how many units
        were claimed."""
        heartbeat.claims = (claim,)
        named = Named(f"model {claim.model_id}", f"run {claim.run_id}")
        try:
            try:
                model, unit = self._unit(claim)
                named = Named(model.name, unit.label)
                self.progress(UnitClaimed(*named))
                with self.stop.interruptible():
                    backend, provenance = self._backend_for(model)
                check_rendered(backend, unit)
            except StopRequested:
                self._release([(claim, None, named)])
                return 1
            except Exception as exc:  # noqa: BLE001 - recorded with the unit, then go on
                _reraise_database_faults(exc)
                self._fail(claim, named, exc)
                return 1
            batch = [(claim, unit, named)]
            if unit.params is not None:
                batch += self._claim_more(model, backend, budget, scope, heartbeat)
            self._sample_and_store(backend, provenance, batch)
            return len(batch)
        finally:
            heartbeat.claims = ()

    def _sample_and_store(self, backend: Backend, provenance: dict,
                          batch: list[tuple[Claim, Unit, Named]]) -> None:
        try:
            with self.stop.interruptible():
                results = sample_units(backend, [unit for _, unit, _ in batch])
        except StopRequested:
            self._release(batch)
            return
        except Exception as exc:  # noqa: BLE001 - recorded with the unit, then go on
            if is_sticky_device_error(exc):
                # the GPU context is dead: give the units back untried and stop this worker
                self._release(batch)
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise DeviceLost(
                    f"the GPU failed ({first_line}); its units were released for another "
                    "worker, and this worker stops (its CUDA context cannot recover)"
                ) from None
            if len(batch) == 1:
                self._fail(batch[0][0], batch[0][2], exc)
                return
            # One unit's error must not fail the units sampled with it: each alone again.
            for item in batch:
                self._sample_and_store(backend, provenance, [item])
            return
        if len(batch) > 1:
            # vLLM's samples depend on what shares a call: record it with each run
            provenance = with_backend_record(provenance, call_runs=[c.run_id for c, _, _ in batch])
        for (claim, unit, named), result in zip(batch, results, strict=True):
            self._store(claim, unit, result, provenance, named)

    def _release(self, batch: list[tuple[Claim, Unit | None, Named]]) -> None:
        for claim, _, named in batch:
            self.queue.release(claim)
            self.summary.released += 1
            self.progress(UnitReleased(*named))

    def _claim_more(self, model: Model, backend: Backend, budget: int | None, scope: Scope,
                    heartbeat: Heartbeat) -> list[tuple[Claim, Unit, Named]]:
        """Further units of ``model`` for one sampling call, when its backend takes several.
        A unit that cannot be read or renders differently is failed here and left out."""
        wanted = backend.units_per_call - 1
        if budget is not None:
            wanted = min(wanted, budget - 1)
        if wanted < 1:
            return []
        claims = self.queue.claim_batch(
            self.id, wanted, lease_seconds=self.options.lease_seconds,
            max_attempts=self.options.max_attempts,
            scope=Scope((model.id,), scope.run_ids, mode="sampled"),
        )
        heartbeat.claims = (*heartbeat.claims, *claims)
        more = []
        for claim in claims:
            named = Named(model.name, f"run {claim.run_id}")
            try:
                unit = self._unit(claim)[1]
                named = Named(model.name, unit.label)
                self.progress(UnitClaimed(*named))
                check_rendered(backend, unit)
            except Exception as exc:  # noqa: BLE001 - that unit alone fails
                _reraise_database_faults(exc)
                self._fail(claim, named, exc)
                continue
            more.append((claim, unit, named))
        return more

    def _store(self, claim: Claim, unit: Unit, result: UnitResult, provenance: dict,
               named: Named) -> None:
        values, children = result_rows(unit, result, provenance)
        values.update(precision_columns(claim.unit.get("condition"), provenance.get("dtype")))
        if self.queue.complete(claim, values, children):
            samples = unit.params.n if unit.params else 0
            self.summary.done += 1
            self.summary.samples += samples
            self.progress(UnitDone(*named, samples=samples, seconds=result.seconds))
        else:
            self.summary.lost += 1
            self.progress(UnitLost(*named))

    def _fail(self, claim: Claim, named: Named, exc: Exception) -> None:
        error = str(exc) if isinstance(exc, CatalogError) else f"{type(exc).__name__}: {exc}"
        error = (error.strip().splitlines() or [type(exc).__name__])[0]
        status = self.queue.fail(claim, error, self.options.max_attempts)
        if status == "failed":
            self.summary.failed.append(f"{named.model} {named.unit}: {error}")
        elif status == "pending":
            self.summary.retried += 1
        self.progress(UnitFailed(*named, error=error, final=status == "failed"))

    def _backend_for(self, model: Model) -> tuple[Backend, dict]:
        if self._backend is not None and self._backend.model_id == model.id:
            return self._backend.backend, self._backend.provenance
        self._drop_backend()
        self.progress(ModelLoading(model.name))
        try:
            backend = open_backend(model, self.options.load)
        except CatalogError:
            self.unloadable.add(model.id)  # the same error again for each of its units
            raise
        self.summary.models_loaded += 1
        self._backend = LoadedBackend(model.id, backend, backend_provenance(backend), owned=True)
        return backend, self._backend.provenance

    def _drop_backend(self) -> None:
        if self._backend is not None and self._backend.owned:
            self._backend.backend.close()
        self._backend = None

    def _unit(self, claim: Claim) -> tuple[Model, Unit]:
        """The claimed unit, from what the planner stored (returned with the claim)."""
        stored = claim.unit
        self._read_references(claim.model_id, stored["task_id"], stored["prompt_id"])
        model = self._models[claim.model_id]
        prompt_key, prompt_text = self._prompts[stored["prompt_id"]]
        params = SamplingParams(**stored["sampling"]) if stored["mode"] == "sampled" else None
        unit = Unit(stored["unit_key"], claim.model_id, self._specs[stored["task_id"]],
                    stored["task_id"], stored["prompt_id"], prompt_key, prompt_text,
                    stored["rendered_prompt"], params, stored["seed"], model.prompt_format,
                    claim.run_id, scaffold=_scaffold(stored.get("condition")))
        if unit.rendered is None:
            raise InvalidInput(f"{unit.label} has no planned prompt; plan it with `catalog plan`")
        return model, unit

    def _read_references(self, model_id: int, task_id: int, prompt_id: int) -> None:
        if model_id in self._models and task_id in self._specs and prompt_id in self._prompts:
            return

        def read(conn) -> None:  # on the queue's connection: a worker holds only that one
            with Session(bind=conn, expire_on_commit=False) as session:
                if model_id not in self._models:
                    self._models[model_id] = session.get(Model, model_id)
                task = session.get(Task, task_id)
                self._specs[task_id] = task_spec(task)
                self._prompts.update((p.id, (p.key, p.template)) for p in task.prompts)
                session.expunge_all()
        self.queue.read(read)


def _reraise_database_faults(exc: Exception) -> None:
    """A database error while reading a unit is the worker's, never the unit's."""
    if isinstance(exc, (DBAPIError, DatabaseUnreachable)):
        raise exc


def _scaffold(condition: dict | None) -> str:
    """The scaffold a unit was planned with (part of its condition)."""
    return get_scaffold((condition or {}).get("scaffold")).id


def run_worker(
    engine: Engine, options: WorkerOptions = WorkerOptions(), *,
    progress: Progress = ignore, stop: StopFlag | None = None,
) -> WorkerSummary:
    """Run one worker on the queue until it has nothing to do (see :class:`Worker`)."""
    with Worker(engine, options, progress=progress, stop=stop) as worker:
        return worker.run()


def _model_ids(engine: Engine, names: Sequence[str]) -> list[int] | None:
    if not names:
        return None
    with session_scope(engine) as session:
        return [get_model(session, name).id for name in names]
