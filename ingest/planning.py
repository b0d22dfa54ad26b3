"""Planning: a grid of (model, task, prompt) x sampling parameters -> work units in the queue.

A work unit is (model, task, prompt, sampling parameters, N, seed, mode). Its key is a hash
of all of those, with the model's source and revision and the fully rendered prompt,
stored unique in ``runs.unit_key``: planning the same grid again adds nothing, and a changed
parameter (or chat template) is a different unit.

The planner renders every prompt with the model's tokenizer alone, no weights
(:func:`ingest.backends.load_renderer`), so the key covers the exact text the model will
see and a pending unit holds everything a worker needs (model, task, prompt, rendered
prompt, sampling parameters, seed): any worker can run it without planning again.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.enums import RUN_MODES
from catalog.errors import InvalidInput, NotFound
from catalog.prompting import DEFAULT_SCAFFOLD, get_scaffold, text_hash
from catalog.registry import (
    experiment_path, family_models, get_model, load_experiment, task_by_name,
)
from catalog.schema import Model, Prompt, Run, Task, utcnow
from catalog.tasks import TaskSpec, spec_from_dict
from ingest.backends import (
    ModelSpec,
    Renderer,
    SamplingParams,
    check_backend_options,
    load_renderer,
    render_with,
)
from ingest.queue import WorkQueue, open_queue

# Base models run on after their answer ("7\nQuestion: ..."): stopping at the newline keeps
# the prefix tree small. Only used when the user gives no stop strings.
PLAIN_DEFAULT_STOP = ("\n",)
UNIT_KEY_VERSION = 1


@dataclass(frozen=True)
class IngestRequest:
    """What to sample: models (by name or whole families) x tasks x prompts, and how.

    How a worker runs it (device, dtype, batch size, lease) is :class:`ingest.worker.
    WorkerOptions`."""

    tasks: Sequence[str]
    params: SamplingParams
    models: Sequence[str] = ()
    families: Sequence[str] = ()
    prompts: Sequence[str] = ()  # prompt keys; empty = every prompt of each task
    seed: int = 0
    mode: str = "sampled"
    scaffold: str | None = None  # base-stage scaffold; None: each task's, else the default

    def __post_init__(self) -> None:
        if self.scaffold is not None:
            object.__setattr__(self, "scaffold", get_scaffold(self.scaffold).id)
        if self.mode not in RUN_MODES:
            raise InvalidInput(f"mode {self.mode!r} is not one of {', '.join(RUN_MODES)}")
        if not self.models and not self.families:
            raise InvalidInput("name the models to sample with --model NAME or --family NAME")
        if not self.tasks:
            raise InvalidInput("name the tasks to sample with --task NAME")


@dataclass
class Unit:
    """One work unit: what a worker samples and stores."""

    key: str
    model_id: int
    task: TaskSpec
    task_id: int
    prompt_id: int
    prompt_key: str
    prompt_text: str
    rendered: str
    params: SamplingParams | None  # None in exact mode
    seed: int | None
    prompt_format: str = "chat"
    run_id: int | None = None
    scaffold: str = DEFAULT_SCAFFOLD  # plain stages are rendered in it; part of the condition

    @property
    def label(self) -> str:
        return f"{self.task.name}/{self.prompt_key}"


@dataclass
class ModelPlan:
    """A model's units after planning, by what the queue already had."""

    model: str
    run_ids: list[int] = field(default_factory=list)  # every unit of the grid
    todo: list[int] = field(default_factory=list)  # not done yet
    new: int = 0
    already_planned: int = 0  # pending or running
    done: int = 0
    requeued: int = 0  # failed units given new attempts


@dataclass
class PlanSummary:
    models: list[ModelPlan] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(m, name) for m in self.models)

    def line(self) -> str:
        line = (f"{self.total('new')} units new, {self.total('already_planned')} already "
                f"planned, {self.total('done')} done")
        if self.total("requeued"):
            line += f", {self.total('requeued')} failed units queued again"
        return line


# ------------------------------------------------------------------------------ unit keys


def unit_key(
    model: Model, task: str, prompt_key: str, rendered: str, mode: str,
    params: SamplingParams | None, seed: int | None, scaffold: str = DEFAULT_SCAFFOLD,
) -> str:
    """The hash that identifies a work unit (a changed parameter is a different unit)."""
    payload: dict[str, Any] = {
        "v": UNIT_KEY_VERSION,
        "model": [model.name, model.source, model.revision, model.gguf_file],
        "task": task,
        "prompt": prompt_key,
        "rendered_prompt": text_hash(rendered),
        "mode": mode,
        "params": params.to_dict() if params is not None else None,
        "seed": seed,
    }
    # A chat stage renders the same under every scaffold, yet its runs belong to the
    # scaffold's condition. The default is left out, so the keys of earlier runs stay valid.
    if scaffold != DEFAULT_SCAFFOLD:
        payload["scaffold"] = scaffold
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def unit_seed(seed: int, key: str) -> int:
    """The unit's own random seed in [0, 2**63), from the user's seed and the unit key."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def model_spec(model: Model) -> ModelSpec:
    """How a registered model is loaded (by the planner's renderer and by workers)."""
    return ModelSpec(
        source=model.source, revision=model.revision, gguf_file=model.gguf_file,
        trust_remote_code=model.trust_remote_code, prompt_format=model.prompt_format,
        backend=model.backend, backend_options=model.backend_options or {},
    )


# ------------------------------------------------------------------------------ selection


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
    return spec_from_dict(data, source=f"stored task {task.name!r}")


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


def resolve(engine: Engine, request: IngestRequest):
    """Models and tasks of the request; bundled tasks are stored on first use."""
    for attempt in range(2):
        try:
            with session_scope(engine) as session:
                return resolve_models(session, request), resolve_tasks(session, request)
        except IntegrityError:
            if attempt:
                raise
            # Another planner stored the same bundled task at the same moment: use theirs.
    raise AssertionError("unreachable")


def params_for(model: Model, request: IngestRequest) -> SamplingParams | None:
    if request.mode == "exact":
        return None
    params = request.params
    if model.prompt_format == "plain" and not params.stop:
        params = SamplingParams(**{**params.to_dict(), "stop": PLAIN_DEFAULT_STOP})
    return params


def task_scaffold(request: IngestRequest, task: Task) -> str:
    """The base-stage scaffold of a task's units: ``--scaffold``, else the task file's, else
    the default."""
    return get_scaffold(request.scaffold or (task.spec or {}).get("scaffold")).id


def unit_condition(request: IngestRequest, scaffold: str = DEFAULT_SCAFFOLD) -> Condition:
    """The sampling condition of the request's units: the user's parameters and stop strings
    (not the newline stop the catalog adds for plain stages) and the base-stage scaffold."""
    if request.mode == "exact":
        return Condition.exact(scaffold=scaffold)
    params = request.params
    return Condition.sampled(
        temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
        max_new_tokens=params.max_new_tokens, stop=params.stop, scaffold=scaffold,
    )


# ------------------------------------------------------------------------------ planning


def plan(engine: Engine, request: IngestRequest) -> PlanSummary:
    """Enqueue every unit of ``request`` that is not stored yet; failed units get new
    attempts. Prompts are rendered with each model's tokenizer alone (no weights), and not
    at all for a model whose units are all done."""
    summary = PlanSummary()
    models, tasks = resolve(engine, request)
    for model in models:
        if all_done(engine, model, tasks, request):
            run_ids = list(done_runs(engine, model, tasks, request).values())
            summary.models.append(ModelPlan(model.name, run_ids, done=len(run_ids)))
            continue
        renderer = load_renderer(model_spec(model))
        try:
            summary.models.append(plan_model(engine, model, tasks, request, renderer))
        finally:
            close = getattr(renderer, "close", None)
            if close is not None:
                close()
    return summary


def plan_units(
    renderer: Renderer, model: Model, tasks: list[tuple[Task, list[Prompt]]],
    request: IngestRequest,
) -> list[Unit]:
    params = params_for(model, request)
    seed = request.seed if request.mode == "sampled" else None
    units = []
    for task, prompts in tasks:
        spec = task_spec(task)
        scaffold = task_scaffold(request, task)
        for prompt in prompts:
            rendered = render_with(renderer, prompt.template, model.prompt_format, scaffold)
            key = unit_key(model, task.name, prompt.key, rendered, request.mode, params, seed,
                           scaffold)
            units.append(Unit(key, model.id, spec, task.id, prompt.id, prompt.key,
                              prompt.template, rendered, params, seed, model.prompt_format,
                              scaffold=scaffold))
    return units


def plan_model(
    engine: Engine, model: Model, tasks: list[tuple[Task, list[Prompt]]],
    request: IngestRequest, renderer: Renderer,
) -> ModelPlan:
    """Enqueue one model's units (rendered by ``renderer``); report what was there."""
    units = plan_units(renderer, model, tasks, request)
    keys = [u.key for u in units]
    before = _statuses(engine, keys)
    result = ModelPlan(model.name)
    with open_queue(engine) as queue:
        result.new = queue.enqueue([_pending_row(u, request) for u in units
                                    if u.key not in before])
        after = _statuses(engine, keys)
        failed = [run_id for run_id, status, _ in after.values() if status == "failed"]
        result.requeued = queue.requeue_failed(failed)
        _fill_rendered_prompts(queue, [u for u in units if after[u.key][2] is None])
    for unit in units:
        run_id, status, _ = after[unit.key]
        unit.run_id = run_id
        result.run_ids.append(run_id)
        if status == "done":
            result.done += 1
        else:
            result.todo.append(run_id)
            if unit.key in before and status != "failed":
                result.already_planned += 1
    return result


def all_done(engine: Engine, model: Model, tasks, request: IngestRequest) -> bool:
    """Cheap check before rendering or loading anything: does every (task, prompt) have a
    done run with these exact parameters? (The unit key, which needs the rendered prompt,
    decides otherwise.)"""
    wanted = {p.id for _, prompts in tasks for p in prompts}
    return wanted <= set(done_runs(engine, model, tasks, request))


def done_runs(engine: Engine, model: Model, tasks, request: IngestRequest) -> dict[int, int]:
    """Prompt id -> a done run of ``model`` for it with the request's parameters and seed."""
    params = params_for(model, request)
    wanted_sampling = params.to_dict() if params is not None else {}
    wanted_seed = request.seed if params is not None else None
    prompt_ids = [p.id for _, prompts in tasks for p in prompts]
    conditions = {task.id: unit_condition(request, task_scaffold(request, task)).key
                  for task, _ in tasks}
    with session_scope(engine) as session:
        rows = session.execute(
            select(Run.id, Run.prompt_id, Run.task_id, Run.condition_key, Run.sampling,
                   Run.seed).where(
                Run.model_id == model.id, Run.status == "done", Run.mode == request.mode,
                Run.origin == "ingest", Run.prompt_id.in_(prompt_ids),
            ).order_by(Run.id)
        ).all()
    return {r.prompt_id: r.id for r in rows
            if r.sampling == wanted_sampling and r.seed == wanted_seed
            and r.condition_key == conditions.get(r.task_id)}


def _statuses(engine: Engine, keys: list[str]) -> dict[str, tuple[int, str, str | None]]:
    """Unit key -> (run id, status, rendered prompt hash) of the stored units."""
    found: dict[str, tuple[int, str, str | None]] = {}
    with session_scope(engine) as session:
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = session.execute(
                select(Run.unit_key, Run.id, Run.status, Run.rendered_prompt_hash)
                .where(Run.unit_key.in_(chunk))
            )
            found.update((row.unit_key, tuple(row[1:])) for row in rows)
    return found


def _fill_rendered_prompts(queue: WorkQueue, units: list[Unit]) -> None:
    """Pending units stored by the catalog before the planner existed have no rendered
    prompt (it was written when done): store it, so any worker can run them."""
    if not units:
        return
    runs = Run.__table__
    with queue.transaction() as conn:
        conn.execute(
            update(runs).where(runs.c.unit_key == bindparam("key"),
                               runs.c.rendered_prompt.is_(None))
            .values(rendered_prompt=bindparam("text"), rendered_prompt_hash=bindparam("hash")),
            [{"key": u.key, "text": u.rendered, "hash": text_hash(u.rendered)} for u in units],
        )


def _pending_row(unit: Unit, request: IngestRequest) -> dict:
    """A pending run holding everything a worker needs to sample the unit."""
    params = unit.params
    condition = unit_condition(request, unit.scaffold)
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
        "rendered_prompt": unit.rendered,
        "rendered_prompt_hash": text_hash(unit.rendered),
        "n_invalid": 0,
        "attempts": 0,
        "library_versions": {},
        "created_at": utcnow(),
    }


# ------------------------------------------------------------------------------ experiment files

# The [plan] table of an experiment file: the names of `catalog plan`'s options.
PLAN_KEYS = {
    "models", "families", "tasks", "prompts", "samples", "seed", "temperature", "top_p",
    "top_k", "max_new_tokens", "stop", "mode", "scaffold",
}


def experiment_plan(engine: Engine, path: str | Path) -> dict[str, Any]:
    """Register an experiment file's families (as ``catalog models load``, their backend
    options checked) and return its
    ``[plan]`` table, whose keys are the option names of ``catalog plan`` (families default
    to the file's own)."""
    path = experiment_path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("plan", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the experiment file ({exc})") from None
    if not isinstance(table, Mapping):
        raise InvalidInput(f"{path}: [plan] must be a table")
    unknown = sorted(set(table) - PLAN_KEYS)
    if unknown:
        raise InvalidInput(f"{path}: [plan] has unknown key(s) {', '.join(unknown)}; "
                           f"allowed: {', '.join(sorted(PLAN_KEYS))}")
    with session_scope(engine) as session:
        models = load_experiment(session, path, check_backend=check_backend_options)
        families = list(dict.fromkeys(m.family.name for m in models))
    plan_table = dict(table)
    if not plan_table.get("models"):
        plan_table.setdefault("families", families)
    return plan_table
