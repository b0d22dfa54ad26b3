"""Ingest jobs: plan work units, claim them, sample, store each unit in one transaction.

A work unit is (model, task, prompt, sampling parameters, N, seed, mode). Its key is a hash
of all of those (with the model's source and revision and the fully rendered prompt), stored
unique in ``runs.unit_key``; so running the same command again only does the units that are
not done, and a changed parameter is a different unit.

Many workers (processes, machines) may run the same job against one database. A worker
claims a unit with a compare-and-set update (status ``pending`` -> ``running`` with its id
and a lease), samples it, then stores its completions, option counts and provenance and sets
it ``done`` in one transaction, which only succeeds while it still holds the claim. A unit
left ``running`` by a worker that died is taken over when its lease expires, or at once by a
worker on the same host that sees that the claimant's process is gone. Each unit's random
stream is derived from the user's seed and the unit key, so a killed-and-resumed job stores
exactly the counts an uninterrupted job stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import catalog
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.enums import RUN_MODES
from catalog.errors import CatalogError, InvalidInput, NotFound
from catalog.normalize import get_normalizer
from catalog.prompting import PLAIN_SCAFFOLD_NAME, text_hash
from catalog.registry import family_models, get_model, task_by_name
from catalog.schema import (
    Completion, ExactProb, Model, OptionCount, Prompt, Run, Task, storable_text, utcnow,
)
from catalog.tasks import TaskSpec
from ingest.backends import Backend, ModelSpec, SamplingParams, load_backend
from ingest.exact import default_surface_forms

# Base models run on after their answer ("7\nQuestion: ..."): stopping at the newline keeps
# the prefix tree small. Only used when the user gives no stop strings.
PLAIN_DEFAULT_STOP = ("\n",)
UNIT_KEY_VERSION = 1


@dataclass(frozen=True)
class IngestRequest:
    """What to sample: models (by name or whole families) x tasks x prompts, and how."""

    tasks: Sequence[str]
    params: SamplingParams
    models: Sequence[str] = ()
    families: Sequence[str] = ()
    prompts: Sequence[str] = ()  # prompt keys; empty = every prompt of each task
    seed: int = 0
    mode: str = "sampled"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | str = "auto"
    allow_pickle: bool = False
    lease_seconds: int = 1800

    def __post_init__(self) -> None:
        if self.mode not in RUN_MODES:
            raise InvalidInput(f"mode {self.mode!r} is not one of {', '.join(RUN_MODES)}")
        if not self.models and not self.families:
            raise InvalidInput("name the models to sample with --model NAME or --family NAME")
        if not self.tasks:
            raise InvalidInput("name the tasks to sample with --task NAME")
        if self.lease_seconds < 10:
            raise InvalidInput("lease must be at least 10 seconds")


@dataclass
class Unit:
    """One planned work unit (before or after it is stored in ``runs``)."""

    key: str
    model_id: int
    task: TaskSpec
    task_id: int
    prompt_id: int
    prompt_key: str
    rendered: str
    params: SamplingParams | None  # None in exact mode
    seed: int | None
    prompt_format: str = "chat"
    run_id: int | None = None

    @property
    def label(self) -> str:
        return f"{self.task.name}/{self.prompt_key}"


@dataclass
class IngestSummary:
    units: int = 0
    already_done: int = 0
    done: int = 0
    samples: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------ unit keys


def unit_key(
    model: Model, task: str, prompt_key: str, rendered: str, mode: str,
    params: SamplingParams | None, seed: int | None,
) -> str:
    """The hash that identifies a work unit (a changed parameter is a different unit)."""
    payload = {
        "v": UNIT_KEY_VERSION,
        "model": [model.name, model.source, model.revision, model.gguf_file],
        "task": task,
        "prompt": prompt_key,
        "rendered_prompt": text_hash(rendered),
        "mode": mode,
        "params": params.to_dict() if params is not None else None,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def unit_seed(seed: int, key: str) -> int:
    """The unit's own random seed in [0, 2**63), from the user's seed and the unit key."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ------------------------------------------------------------------------------ planning


def resolve_models(session: Session, request: IngestRequest) -> list[Model]:
    models = [get_model(session, name) for name in request.models]
    for family in request.families:
        members = family_models(session, family)
        if not members:
            raise NotFound(f"family {family!r} has no models; see `catalog models list`")
        models.extend(members)
    unique = list({m.id: m for m in models}.values())
    for model in unique:
        if not model.source:
            raise InvalidInput(
                f"model {model.name!r} has no source (its counts were imported); register a "
                "sampleable model with `catalog models add NAME --source HUB_ID_OR_PATH ...`"
            )
    return unique


def task_spec(task: Task) -> TaskSpec:
    """The stored task as a spec, with the prompts as stored (positions are prompt ids)."""
    data = dict(task.spec)
    data["prompts"] = [{"key": p.key, "text": p.template} for p in task.prompts if p.template]
    return TaskSpec.from_dict(data, source=f"stored task {task.name!r}")


def resolve_tasks(session: Session, request: IngestRequest) -> list[tuple[Task, list[Prompt]]]:
    selected = []
    for name in dict.fromkeys(request.tasks):
        task = task_by_name(session, name)
        if request.mode == "exact" and task.kind != "closed":
            raise InvalidInput(f"exact mode needs a closed task; {name!r} is open")
        prompts = [p for p in task.prompts if p.template]
        if request.prompts:
            by_key = {p.key: p for p in prompts}
            wanted = [k for k in request.prompts if k in by_key]
            if not wanted:
                raise NotFound(
                    f"task {name!r} has none of the prompts {', '.join(request.prompts)}; "
                    f"its prompts are: {', '.join(by_key)}"
                )
            prompts = [by_key[k] for k in wanted]
        if not prompts:
            raise InvalidInput(f"task {name!r} has no prompt texts to sample")
        selected.append((task, prompts))
    return selected


def params_for(model: Model, request: IngestRequest) -> SamplingParams | None:
    if request.mode == "exact":
        return None
    params = request.params
    if model.prompt_format == "plain" and not params.stop:
        params = SamplingParams(**{**params.to_dict(), "stop": PLAIN_DEFAULT_STOP})
    return params


def plan_units(
    backend: Backend, model: Model, tasks: list[tuple[Task, list[Prompt]]],
    request: IngestRequest,
) -> list[Unit]:
    params = params_for(model, request)
    seed = request.seed if request.mode == "sampled" else None
    units = []
    for task, prompts in tasks:
        spec = task_spec(task)
        for prompt in prompts:
            rendered = backend.render(prompt.template, model.prompt_format)
            key = unit_key(model, task.name, prompt.key, rendered, request.mode, params, seed)
            units.append(Unit(key, model.id, spec, task.id, prompt.id, prompt.key, rendered,
                              params, seed, model.prompt_format))
    return units


def store_pending(engine: Engine, units: list[Unit], model: Model, request: IngestRequest) -> None:
    """Insert the units that are not stored yet as ``pending`` runs; fill in run ids."""
    keys = [u.key for u in units]
    with session_scope(engine) as session:
        existing = _run_ids(session, keys)
        new = [_pending_row(u, request) for u in units if u.key not in existing]
        if new:
            # Another worker may insert the same units at the same moment: keep theirs.
            session.execute(_dialect_insert(engine, Run).on_conflict_do_nothing(
                index_elements=["unit_key"]), new)
    with session_scope(engine) as session:
        ids = _run_ids(session, keys)
    for unit in units:
        unit.run_id = ids[unit.key]


def _dialect_insert(engine: Engine, table):
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _run_ids(session: Session, keys: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        rows = session.execute(select(Run.unit_key, Run.id).where(Run.unit_key.in_(chunk)))
        ids.update((key, run_id) for key, run_id in rows)
    return ids


def unit_condition(request: IngestRequest) -> Condition:
    """The sampling condition of the request's units: the user's parameters and stop strings
    (not the newline stop the catalog adds for plain stages) and the base-stage scaffold."""
    if request.mode == "exact":
        return Condition.exact(scaffold=PLAIN_SCAFFOLD_NAME)
    params = request.params
    return Condition.sampled(
        temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
        max_new_tokens=params.max_new_tokens, stop=params.stop, scaffold=PLAIN_SCAFFOLD_NAME,
    )


def _pending_row(unit: Unit, request: IngestRequest) -> dict:
    params = unit.params
    condition = unit_condition(request)
    return {
        "condition": condition.to_dict(),
        "condition_key": condition.key,
        "unit_key": unit.key,
        "model_id": unit.model_id,
        "task_id": unit.task_id,
        "prompt_id": unit.prompt_id,
        "mode": request.mode,
        "origin": "ingest",
        "status": "pending",
        "n_samples": params.n if params else None,
        "seed": unit.seed,
        "temperature": params.temperature if params else None,
        "top_p": params.top_p if params else None,
        "top_k": params.top_k if params else None,
        "max_new_tokens": params.max_new_tokens if params else None,
        "sampling": params.to_dict() if params else {},
        "n_invalid": 0,
        "attempts": 0,
        "library_versions": {},
        "created_at": utcnow(),
    }


# ------------------------------------------------------------------------------ claiming


def new_worker_id() -> str:
    """``host:pid:token``: the host and pid let a worker on the same host spot a dead one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _claimant_is_dead(claimed_by: str | None) -> bool:
    if not claimed_by:
        return True
    host, _, rest = claimed_by.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's worker: only its lease tells
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim(engine: Engine, run_id: int, worker: str, lease_seconds: int) -> bool:
    """Try to take a unit; True if this worker now holds it.

    Claimable: pending, failed, or running under an expired lease or a dead local claimant.
    The update compares against the state just read, so two workers never both win.
    """
    now = utcnow()
    with session_scope(engine) as session:
        row = session.execute(
            select(Run.status, Run.claimed_by, Run.lease_expires_at).where(Run.id == run_id)
        ).one()
        if row.status == "done":
            return False
        if row.status == "running":
            expired = row.lease_expires_at is not None and row.lease_expires_at < now
            if not expired and not _claimant_is_dead(row.claimed_by):
                return False
        same_claimant = (
            Run.claimed_by.is_(None) if row.claimed_by is None else Run.claimed_by == row.claimed_by
        )
        result = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == row.status, same_claimant)
            .values(
                status="running",
                claimed_by=worker,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Run.attempts + 1,
                started_at=now,
                error=None,
            )
        )
        return result.rowcount == 1


class LeaseKeeper:
    """Renews the lease of the unit being worked on, from a background thread."""

    def __init__(self, engine: Engine, worker: str, lease_seconds: int) -> None:
        self.engine, self.worker, self.lease_seconds = engine, worker, lease_seconds
        self.run_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="lease-keeper")

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            run_id = self.run_id
            if run_id is None:
                continue
            try:
                with session_scope(self.engine) as session:
                    session.execute(
                        update(Run)
                        .where(Run.id == run_id, Run.claimed_by == self.worker,
                               Run.status == "running")
                        .values(lease_expires_at=utcnow() + timedelta(seconds=self.lease_seconds))
                    )
            except Exception:  # noqa: BLE001 - a missed renewal only shortens the lease
                pass


# ------------------------------------------------------------------------------ storing


@dataclass
class UnitResult:
    completions: dict[str, int] | None = None  # sampled mode
    probabilities: dict[str, float] | None = None  # exact mode
    covered_mass: float | None = None
    seconds: float = 0.0


def store_result(
    engine: Engine, unit: Unit, worker: str, result: UnitResult, provenance: dict
) -> bool:
    """Store a unit's result and mark it done, atomically; False if the claim was lost."""
    normalizer = get_normalizer(unit.task.normalizer)
    now = utcnow()
    values = {
        **provenance,
        "status": "done",
        "lease_expires_at": None,
        "finished_at": now,
        "wall_seconds": result.seconds,
        "rendered_prompt": unit.rendered,
        "rendered_prompt_hash": text_hash(unit.rendered),
        "normalizer_version": normalizer.version,
    }
    completion_rows, option_rows, exact_rows = [], [], []
    if result.completions is not None:
        counts: dict[str | None, int] = {}
        stored: dict[str, dict] = {}
        for text, count in result.completions.items():
            option = normalizer(text, unit.task)
            counts[option] = counts.get(option, 0) + count
            row = stored.setdefault(storable_text(text), {
                "run_id": unit.run_id, "text": storable_text(text), "count": 0, "option": option
            })
            row["count"] += count
        completion_rows = list(stored.values())
        values["n_invalid"] = counts.pop(None, 0)
        option_rows = [{"run_id": unit.run_id, "option": o, "count": c} for o, c in counts.items()]
    else:
        values["covered_mass"] = result.covered_mass
        exact_rows = [
            {"run_id": unit.run_id, "option": o, "probability": min(max(p, 0.0), 1.0)}
            for o, p in (result.probabilities or {}).items()
        ]
    with session_scope(engine) as session:
        # The compare-and-set comes first: it takes the write lock and proves the claim.
        updated = session.execute(
            update(Run)
            .where(Run.id == unit.run_id, Run.status == "running", Run.claimed_by == worker)
            .values(**values)
        )
        if updated.rowcount != 1:
            session.rollback()
            return False
        for table, rows in ((Completion, completion_rows), (OptionCount, option_rows),
                            (ExactProb, exact_rows)):
            if rows:
                session.execute(insert(table), rows)
    return True


def mark_failed(engine: Engine, unit: Unit, worker: str, error: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(Run)
            .where(Run.id == unit.run_id, Run.claimed_by == worker, Run.status == "running")
            .values(status="failed", error=error[:2000], lease_expires_at=None)
        )


# ------------------------------------------------------------------------------ the job


def run_ingest(
    engine: Engine,
    request: IngestRequest,
    *,
    progress: Callable[[str, dict], None] | None = None,
    worker: str | None = None,
) -> IngestSummary:
    """Sample every unit of ``request`` that is not done yet; return what happened.

    ``progress(event, info)`` is called with ``"plan"`` (info: units, todo, model), ``"unit"``
    (info: unit label, samples, seconds) and ``"skip"``. A unit whose sampling raises an
    error is marked failed and the job goes on; the summary lists the failures.
    """
    worker = worker or new_worker_id()
    progress = progress or (lambda event, info: None)
    summary = IngestSummary()
    started = time.perf_counter()
    models, tasks = _resolve(engine, request)
    model_specs = [(m, _model_spec(m)) for m in models]
    for model, spec in model_specs:
        if _all_done(engine, model, tasks, request):
            n = sum(len(prompts) for _, prompts in tasks)
            summary.units += n
            summary.already_done += n
            progress("skip", {"model": model.name, "units": n})
            continue
        with load_backend(spec, device=request.device, dtype=request.dtype,
                          allow_pickle=request.allow_pickle,
                          batch_size=request.batch_size) as backend:
            _ingest_model(engine, backend, model, tasks, request, worker, summary, progress)
    summary.seconds = time.perf_counter() - started
    return summary


def _resolve(engine: Engine, request: IngestRequest):
    """Models and tasks of the request; bundled tasks are stored on first use."""
    for attempt in range(2):
        try:
            with session_scope(engine) as session:
                models = resolve_models(session, request)
                tasks = resolve_tasks(session, request)
                return models, tasks
        except IntegrityError:
            if attempt:
                raise
            # Another worker stored the same bundled task at the same moment: use theirs.
    raise AssertionError("unreachable")


def _model_spec(model: Model) -> ModelSpec:
    return ModelSpec(
        source=model.source, revision=model.revision, gguf_file=model.gguf_file,
        trust_remote_code=model.trust_remote_code, prompt_format=model.prompt_format,
    )


def _all_done(engine: Engine, model: Model, tasks, request: IngestRequest) -> bool:
    """Cheap check before loading a model: does every (task, prompt) have a done run with
    these exact parameters? (The unit key, which needs the rendered prompt, decides later.)"""
    params = params_for(model, request)
    with session_scope(engine) as session:
        rows = session.execute(
            select(Run.prompt_id, Run.sampling, Run.seed).where(
                Run.model_id == model.id, Run.status == "done", Run.mode == request.mode
            )
        ).all()
    wanted_sampling = params.to_dict() if params is not None else {}
    wanted_seed = request.seed if params is not None else None
    done = {r.prompt_id for r in rows if r.sampling == wanted_sampling and r.seed == wanted_seed}
    return all(p.id in done for _, prompts in tasks for p in prompts)


def _ingest_model(engine, backend, model, tasks, request, worker, summary, progress) -> None:
    units = plan_units(backend, model, tasks, request)
    store_pending(engine, units, model, request)
    with session_scope(engine) as session:
        rows = session.execute(
            select(Run.id, Run.status).where(Run.id.in_([u.run_id for u in units]))
        )
        status = {run_id: state for run_id, state in rows}
    todo = [u for u in units if status[u.run_id] != "done"]
    summary.units += len(units)
    summary.already_done += len(units) - len(todo)
    progress("plan", {"model": model.name, "units": len(units), "todo": len(todo)})
    provenance = _job_provenance(backend)
    with LeaseKeeper(engine, worker, request.lease_seconds) as keeper:
        for unit in todo:
            if not claim(engine, unit.run_id, worker, request.lease_seconds):
                progress("busy", {"unit": unit.label, "model": model.name})
                continue
            keeper.run_id = unit.run_id
            try:
                result = _sample_unit(backend, unit, request)
            except CatalogError as exc:
                mark_failed(engine, unit, worker, str(exc))
                summary.failed.append(f"{model.name} {unit.label}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - recorded, then the job goes on
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                mark_failed(engine, unit, worker, message)
                summary.failed.append(f"{model.name} {unit.label}: {message}")
                continue
            finally:
                keeper.run_id = None
            if store_result(engine, unit, worker, result, provenance):
                summary.done += 1
                samples = unit.params.n if unit.params else 0
                summary.samples += samples
                progress("unit", {"unit": unit.label, "model": model.name,
                                  "samples": samples, "seconds": result.seconds})


def _sample_unit(backend: Backend, unit: Unit, request: IngestRequest) -> UnitResult:
    t0 = time.perf_counter()
    if unit.params is not None:
        completions = backend.sample(unit.rendered, unit.params, unit_seed(request.seed, unit.key))
        return UnitResult(completions=completions, seconds=time.perf_counter() - t0)
    forms = default_surface_forms(unit.task.options, unit.task.aliases, unit.prompt_format)
    exact = backend.option_probabilities(unit.rendered, forms)
    return UnitResult(probabilities=exact.probabilities, covered_mass=exact.covered_mass,
                      seconds=time.perf_counter() - t0)


def _job_provenance(backend: Backend) -> dict:
    info = backend.provenance()
    return {
        "model_revision": info.get("model_revision"),
        "dtype": info.get("dtype"),
        "device": info.get("device"),
        "chat_template_hash": info.get("chat_template_hash"),
        "library_versions": info.get("library_versions") or {},
        "catalog_version": catalog.__version__,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
    }


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
