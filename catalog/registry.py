"""The model and task registry: families with their ordered stages, tasks with their prompts.

Every function takes an open :class:`~sqlalchemy.orm.Session` and flushes what it creates,
so callers decide the transaction (``with session_scope(engine) as session: ...``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from catalog import checkpoints
from catalog.enums import PROMPT_FORMATS
from catalog.errors import InvalidInput, NotFound
from catalog.limits import check_name, check_text
from catalog.normalize import get_normalizer
from catalog.prompting import text_hash
from catalog.schema import Completion, ExactProb, Family, Model, OptionCount, Prompt, Run, Task
from catalog.tasks import TaskSpec, bundled_task

# Stage orders used when none is given; base must be 0. Stage names are matched
# case-insensitively everywhere ("SFT" and "sft" are one stage of a family).
DEFAULT_STAGE_ORDERS = {"base": 0, "sft": 1, "dpo": 2, "rl": 3, "rlvr": 3, "instruct": 3}
OPEN_TASK_NORMALIZER = "open_word"
_PROMPT_TRIES = 5
_PINNED_REVISION = re.compile(r"[0-9a-f]{40}\Z")
# Fields a model row is compared on when the same name is registered again.
_MODEL_FIELDS = (
    "stage", "stage_order", "step", "source", "revision", "prompt_format", "gguf_file",
    "trust_remote_code", "backend", "backend_options", "notes",
)
# Checks a backend's options, returning them converted (ingest.backends.check_backend_options;
# the core cannot import ingest, so its callers pass it in). Every path that registers a model
# from what a user wrote takes it (a required argument); add_model refuses options without it.
BackendCheck = Callable[[str, Mapping[str, Any]], dict[str, Any]]


def default_stage_order(stage: str) -> int | None:
    """The conventional order of a stage name (base=0, sft=1, dpo=2, rl/rlvr/instruct=3)."""
    return DEFAULT_STAGE_ORDERS.get(stage.strip().lower())


def stage_order_for(stage: str, stage_order: int | None) -> int:
    """``stage_order`` if given, else the stage's default order (InvalidInput if it has none)."""
    if stage_order is not None:
        if stage_order < 0:
            raise InvalidInput(f"stage order of {stage!r} must be >= 0, got {stage_order}")
        return stage_order
    order = default_stage_order(stage)
    if order is None:
        known = ", ".join(f"{name}={n}" for name, n in DEFAULT_STAGE_ORDERS.items())
        raise InvalidInput(
            f"unknown stage name {stage!r}: pass --stage-order (a stage_order) to place it "
            f"among the family's stages (defaults: {known})"
        )
    return order


# ---------------------------------------------------------------------------- families, models


def ensure_family(session: Session, name: str, description: str | None = None) -> Family:
    """The family called ``name``, created if new (a missing description is filled in)."""
    family = session.scalar(select(Family).where(Family.name == name))
    if family is None:
        check_name(name, "families.name", "family name")
        _insert_if_absent(session, Family, [{"name": name, "description": description}])
        family = session.scalar(select(Family).where(Family.name == name))
    elif description and not family.description:
        family.description = description
    return family


def _insert_if_absent(session: Session, table: type, rows: list[dict]) -> int:
    """Insert the rows that violate no unique constraint; returns how many were inserted.

    Get-or-create goes through here: two processes creating the same new family, model,
    task or prompt at once both succeed (one inserts it, the other finds it), where a plain
    INSERT fails one of them with a unique-constraint error."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.flush()
    result = session.connection().execute(insert(table.__table__).on_conflict_do_nothing(), rows)
    return result.rowcount


def add_model(
    session: Session,
    *,
    name: str,
    family: str,
    stage: str,
    stage_order: int | None = None,
    step: int | None = None,
    source: str | None = None,
    revision: str | None = None,
    prompt_format: str = "chat",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    backend: str = "transformers",
    backend_options: Mapping[str, Any] | None = None,
    notes: str | None = None,
    check_backend: BackendCheck | None = None,
) -> Model:
    """Register one stage of a family, or with ``step`` one checkpoint of a stage.

    A stage's checkpoints share its stage order and have distinct steps; at most one model
    of a stage has no step (it is the stage's final model). Adding an identical model again
    changes nothing.

    ``backend`` names the sampling backend (``transformers``, ``vllm``, ``table`` or a
    registered one) and ``backend_options`` its options; ``check_backend(backend, options)``
    validates them and returns them converted (an unknown backend or a bad option is
    refused before anything is stored). Options are never stored unchecked: without
    ``check_backend``, only a model with no backend options registers (a TypeError
    otherwise: the caller forgot the check).
    """
    check_name(name, "models.name", "model name")
    check_name(family, "families.name", "family name")
    check_name(stage, "models.stage", "stage name")
    for column, value in (("source", source), ("revision", revision), ("gguf_file", gguf_file)):
        if value is not None:
            check_text(value, f"models.{column}", column)
    backend_options = _backend_options(name, backend, backend_options, check_backend)
    if step is not None and step < 0:
        raise InvalidInput(f"model {name!r}: step must be >= 0, got {step}")
    if prompt_format not in PROMPT_FORMATS:
        raise InvalidInput(
            f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}"
        )
    if trust_remote_code and not (revision and _PINNED_REVISION.match(revision)):
        raise InvalidInput(
            f"model {name!r}: --trust-remote-code runs the repository's Python code, so it "
            "needs --revision pinned to a full 40-character commit hash"
        )
    wanted = {
        "stage": stage,
        "stage_order": stage_order_for(stage, stage_order),
        "step": step,
        "source": source,
        "revision": revision,
        "prompt_format": prompt_format,
        "gguf_file": gguf_file,
        "trust_remote_code": trust_remote_code,
        "backend": backend,
        "backend_options": backend_options,
        "notes": notes,
    }
    existing = session.scalar(select(Model).where(Model.name == name))
    if existing is not None:
        differences = [
            f"{field} {getattr(existing, field)!r} (not {wanted[field]!r})"
            for field in _MODEL_FIELDS
            if _comparable(field, getattr(existing, field)) != _comparable(field, wanted[field])
        ]
        if existing.family.name != family:
            differences.insert(0, f"family {existing.family.name!r} (not {family!r})")
        if differences:
            raise InvalidInput(
                f"model {name!r} is already registered with {', '.join(differences)}; "
                "register the new one under another name"
            )
        return existing
    family_row = ensure_family(session, family)
    _check_checkpoint(session, family_row, name, wanted)
    inserted = _insert_if_absent(session, Model, [{"name": name, "family_id": family_row.id,
                                                   **wanted}])
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise InvalidInput(
            f"model {name!r}: another process registered stage {stage!r} of family "
            f"{family!r} at the same time; run `catalog models list --family {family}`"
        )
    if not inserted:  # registered by another process meanwhile: the same one, or refused
        return add_model(session, name=name, family=family, stage=stage,
                         stage_order=stage_order, step=step, source=source, revision=revision,
                         prompt_format=prompt_format, gguf_file=gguf_file,
                         trust_remote_code=trust_remote_code, backend=backend,
                         backend_options=backend_options, notes=notes,
                         check_backend=check_backend)
    return model


def _check_checkpoint(session: Session, family: Family, name: str, wanted: dict) -> None:
    """A new model may join its stage's other checkpoints if its step is new there and its
    stage order is theirs; it takes the stage's spelling ("SFT" joins "sft")."""
    siblings = stage_models(session, family, wanted["stage"])
    if not siblings:
        return
    stage = wanted["stage"] = siblings[0].stage
    taken = next((m for m in siblings if m.step == wanted["step"]), None)
    if taken is not None and taken.name == name:
        return  # registered by another process meanwhile: add_model compares it
    if taken is not None and taken.step is None:
        raise InvalidInput(
            f"family {family.name!r} already has a {stage!r} stage without a step (model "
            f"{taken.name!r}); register another checkpoint of it with its own --step"
        )
    if taken is not None:
        raise InvalidInput(
            f"family {family.name!r} already has step {taken.step} of stage {stage!r} (model "
            f"{taken.name!r}); each checkpoint of a stage needs its own step"
        )
    if siblings[0].stage_order != wanted["stage_order"]:
        raise InvalidInput(
            f"model {name!r}: stage {stage!r} of family {family.name!r} has stage order "
            f"{siblings[0].stage_order} (model {siblings[0].name!r}), not "
            f"{wanted['stage_order']}; the checkpoints of a stage share its order"
        )


def add_checkpoints(
    session: Session,
    *,
    family: str,
    stage: str,
    source: str,
    revisions: str | None = None,
    **fields: Any,
) -> list[Model]:
    """Register every checkpoint of a training run as a model of one stage, by step.

    ``source`` is the run's output directory (its ``checkpoint-<step>/`` folders), or with
    ``revisions`` (a regex) a hub id whose matching branches are the checkpoints (their names
    give the steps, see :func:`catalog.checkpoints.ref_step`). Models are named
    ``<family>-<stage>-step<step>``; ``fields`` are :func:`add_model`'s other arguments.
    """
    if revisions is None:
        found = checkpoints.checkpoint_dirs(source)
    elif Path(source).is_dir():
        raise InvalidInput(
            f"{source} is a local directory: its checkpoints are its checkpoint-<step>/ "
            "folders, so drop --revisions (which selects branches of a hub repository)"
        )
    else:
        found = checkpoints.ref_checkpoints(source, checkpoints.hub_branches(source), revisions)
    return [
        add_model(
            session, name=f"{family}-{stage}-step{c.step}", family=family, stage=stage,
            step=c.step, source=c.source, revision=c.revision, **fields,
        )
        for c in found
    ]


def _backend_options(
    name: str, backend: str, options: Mapping[str, Any] | None, check: BackendCheck | None
) -> dict[str, Any]:
    if not isinstance(backend, str) or not backend:
        raise InvalidInput(f"model {name!r}: backend must be a backend's name, got {backend!r}")
    if options is not None and not isinstance(options, Mapping):
        raise InvalidInput(
            f"model {name!r}: backend options must be a table of KEY = VALUE, got {options!r}"
        )
    options = dict(options or {})
    if check is None:
        if options:
            raise TypeError(f"model {name!r}: backend options are stored only once checked "
                            "(pass check_backend=ingest.backends.check_backend_options)")
        return options
    try:
        return check(backend, options)
    except InvalidInput as exc:
        raise InvalidInput(f"model {name!r}: {exc}") from None


def _comparable(field: str, value: Any) -> Any:
    # Stage names are matched case-insensitively ("SFT" is "sft"), as their default orders are.
    return value.lower() if field == "stage" and isinstance(value, str) else value


def get_model(session: Session, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFound(
            f"no model named {name!r}; run `catalog models list` to see the registered models"
        )
    return model


# Fields `catalog models update` may change. Every one but the notes changes what a done run
# of the model means, so they are refused while it has done runs unless forced.
UPDATABLE_FIELDS = (
    "source", "revision", "prompt_format", "gguf_file", "trust_remote_code", "backend",
    "backend_options", "notes",
)


def model_units(session: Session, model: Model) -> dict[str, int]:
    """How many of the model's runs are in each status (pending, running, done, failed)."""
    rows = session.execute(
        select(Run.status, func.count()).where(Run.model_id == model.id).group_by(Run.status)
    )
    return dict(rows.all())


def _what_is_lost(units: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(units.items()) if n) or "no"


def remove_model(session: Session, name: str, *, force: bool = False) -> str:
    """Remove a model with its runs and their counts (and its family, if it was the last
    one); refused while the model has done or running units unless ``force``. Returns what
    was removed, in one line; the caller's transaction makes it all or nothing."""
    model = get_model(session, name)
    units = model_units(session, model)
    kept = {s: n for s, n in units.items() if s in ("done", "running") and n}
    if kept and not force:
        raise InvalidInput(
            f"model {name!r} has {_what_is_lost(kept)} units whose runs and counts would be "
            "lost; add --force to remove them with the model"
        )
    runs = select(Run.id).where(Run.model_id == model.id).scalar_subquery()
    for child in (Completion, OptionCount, ExactProb):
        session.execute(delete(child).where(child.run_id.in_(runs)))
    session.execute(delete(Run).where(Run.model_id == model.id))
    family = model.family
    session.delete(model)
    session.flush()
    gone = ""
    if session.scalar(select(func.count()).where(Model.family_id == family.id)) == 0:
        session.delete(family)
        session.flush()
        gone = f"; family {family.name!r} had no other model and is removed too"
    return f"removed model {name!r} and its {_what_is_lost(units)} units{gone}"


def update_model(
    session: Session, name: str, *, check_backend: BackendCheck, force: bool = False,
    **changes: Any,
) -> list[str]:
    """Change a registered model's fields (:data:`UPDATABLE_FIELDS`); returns the changed
    ones as ``field: old -> new``. A change other than the notes is refused while the model
    has done units unless ``force`` (their counts were sampled from what it was)."""
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise InvalidInput(f"cannot update {', '.join(sorted(unknown))} of a model")
    model = get_model(session, name)
    if "backend" in changes or "backend_options" in changes:
        changes["backend_options"] = _backend_options(
            name, changes.get("backend", model.backend),
            changes.get("backend_options", model.backend_options), check_backend)
    changed = {field: value for field, value in changes.items()
               if getattr(model, field) != value}
    revision = changed.get("revision", model.revision)
    if changed.get("trust_remote_code", model.trust_remote_code) and not (
            revision and _PINNED_REVISION.match(revision)):
        raise InvalidInput(
            f"model {name!r}: --trust-remote-code needs --revision pinned to a full "
            "40-character commit hash")
    done = model_units(session, model).get("done", 0)
    meaningful = sorted(set(changed) - {"notes"})
    if meaningful and done and not force:
        raise InvalidInput(
            f"model {name!r} has {done} done units sampled with its {', '.join(meaningful)}; "
            "changing them would misdescribe those counts: add --force to change them anyway, "
            "or register the new one under another name"
        )
    described = [f"{field} {getattr(model, field)!r} -> {value!r}"
                 for field, value in changed.items()]
    for field, value in changed.items():
        setattr(model, field, value)
    session.flush()
    return described


# Checkpoint order within a family: by stage, then step, the step-less (final) model last.
_CHECKPOINT_ORDER = (Model.stage_order, Model.step.is_(None), Model.step, Model.id)


def get_family(session: Session, name: str) -> Family:
    family = session.scalar(select(Family).where(Family.name == name))
    if family is None:
        raise NotFound(f"no family named {name!r}; run `catalog models list` to see the families")
    return family


def family_models(session: Session, family_name: str) -> list[Model]:
    """The family's models, every checkpoint of every stage, in (stage order, step) order."""
    family = get_family(session, family_name)
    query = select(Model).where(Model.family_id == family.id).order_by(*_CHECKPOINT_ORDER)
    return list(session.scalars(query))


def stage_models(session: Session, family: Family, stage: str) -> list[Model]:
    """The checkpoints of one stage (matched case-insensitively), by step, the final last."""
    return list(
        session.scalars(
            select(Model)
            .where(Model.family_id == family.id, func.lower(Model.stage) == stage.lower())
            .order_by(*_CHECKPOINT_ORDER)
        )
    )


def stage_model(session: Session, family_name: str, stage: str, step: int | None = None) -> Model:
    """The model of a family's stage: the checkpoint at ``step``, or else the stage's final
    checkpoint (the one without a step, else the highest step)."""
    models = stage_models(session, get_family(session, family_name), stage)
    if step is not None:
        models = [m for m in models if m.step == step]
    if not models:
        at = "" if step is None else f" at step {step}"
        raise NotFound(
            f"family {family_name!r} has no {stage!r} model{at}; run `catalog models list "
            f"--family {family_name}` to see its stages and steps"
        )
    return models[-1]


def list_models(session: Session, family: str | None = None) -> list[Model]:
    """Registered models, by family name then (stage order, step)."""
    query = select(Model).join(Family).order_by(Family.name, *_CHECKPOINT_ORDER)
    if family is not None:
        query = query.where(Family.name == family)
    return list(session.scalars(query))


# ---------------------------------------------------------------------------- experiments

_FAMILY_KEYS = {"name", "description", "stages"}
_STAGE_KEYS = {
    "stage", "name", "stage_order", "step", "source", "revision", "prompt_format", "gguf_file",
    "trust_remote_code", "backend", "backend_options", "notes",
}


def shipped_experiments() -> list[str]:
    """Names of the experiment files shipped in catalog/experiments/."""
    folder = resources.files("catalog").joinpath("experiments")
    return sorted(e.name.removesuffix(".toml") for e in folder.iterdir() if e.name.endswith(".toml"))


def experiment_path(name_or_path: str | Path) -> Path:
    """A path to an experiment file, or the shipped experiment of that name (e.g. ``study``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = resources.files("catalog").joinpath("experiments", f"{name_or_path}.toml")
    if shipped.is_file():
        return Path(str(shipped))
    raise NotFound(
        f"{name_or_path}: no such experiment file, nor a shipped experiment "
        f"(shipped: {', '.join(shipped_experiments())})"
    )


def load_experiment(
    session: Session, path: str | Path, *, check_backend: BackendCheck
) -> list[Model]:
    """Register the families and ordered stages of an experiment file (TOML).

    Each ``[[families]]`` has a name, a description and ``[[families.stages]]`` in pipeline
    order; a stage's order is its ``stage_order`` or else its position in that list. A
    stage's model ``name`` defaults to its ``source``. Checkpoints of a stage are entries
    with the same ``stage`` and their own ``step``; they count as one position. A stage may
    name its ``backend`` and ``backend_options`` (a table, e.g. ``backend_options =
    { tensor_parallel_size = 2 }``), checked by ``check_backend`` as in :func:`add_model`.
    See catalog/experiments/study.toml.
    """
    path = experiment_path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the experiment file ({exc})") from None
    families = data.get("families")
    if not isinstance(families, list) or not families:
        raise InvalidInput(f"{path}: no [[families]] tables; see catalog/experiments/study.toml")
    models = []
    for i, entry in enumerate(families):
        where = f"{path}: families[{i}]"
        _check_keys(entry, _FAMILY_KEYS, where)
        if not isinstance(entry.get("name"), str) or not entry.get("stages"):
            raise InvalidInput(f"{where}: a family needs a name and at least one [[families.stages]]")
        ensure_family(session, entry["name"], entry.get("description"))
        positions: dict[str, int] = {}  # stage name -> its position among the distinct stages
        for index, stage in enumerate(entry["stages"]):
            stage_where = f"{where}.stages[{index}]"
            _check_keys(stage, _STAGE_KEYS, stage_where)
            if not stage.get("stage") or not (stage.get("name") or stage.get("source")):
                raise InvalidInput(f"{stage_where}: a stage needs `stage` and a `source` or `name`")
            fields = {key: value for key, value in stage.items() if key != "name"}
            position = positions.setdefault(str(stage["stage"]).lower(), len(positions))
            fields.setdefault("stage_order", position)
            try:
                models.append(
                    add_model(
                        session, name=stage.get("name") or stage["source"], family=entry["name"],
                        check_backend=check_backend, **fields,
                    )
                )
            except InvalidInput as exc:
                raise InvalidInput(f"{stage_where}: {exc}") from None
    return models


def _check_keys(entry: Any, allowed: set[str], where: str) -> None:
    if not isinstance(entry, Mapping):
        raise InvalidInput(f"{where}: expected a table")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise InvalidInput(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


# ---------------------------------------------------------------------------- tasks, prompts


def sync_task(session: Session, spec: TaskSpec) -> Task:
    """Store (insert or update) a task and its prompts.

    New tasks number their prompts in file order. An existing task keeps the position of
    every key it already has (runs refer to them) and appends new keys after them.
    """
    task = session.scalar(select(Task).where(Task.name == spec.name))
    if task is None:
        _insert_if_absent(session, Task, [_new_task(spec.name, spec.kind, spec.normalizer)])
        task = session.scalar(select(Task).where(Task.name == spec.name))
    _set_spec(session, task, spec)
    ensure_prompts(session, task, [(p.key, p.text) for p in spec.prompts], replace_text=True)
    return task


@dataclass(frozen=True)
class StoredTask:
    """What storing a task file did: ``changed`` names the normalization fields it replaced
    (then ``stale_runs`` runs of the task were marked stale)."""

    name: str
    created: bool
    prompts: int
    new_prompts: int
    changed: tuple[str, ...] = ()
    stale_runs: int = 0


def store_task(session: Session, spec: TaskSpec, *, update: bool = False) -> StoredTask:
    """Store a task file's task (``catalog tasks add``).

    A stored task keeps its prompts: every key its file had must stay, with its text (its
    runs were sampled with it); new keys are appended. Its kind, options, aliases, normalizer
    or normalizer parameters are replaced only with ``update``, which marks every run of the
    task stale: ``catalog renormalize`` re-derives their counts from their completions.
    """
    task = session.scalar(select(Task).where(Task.name == spec.name))
    if task is None:
        task = sync_task(session, spec)
        return StoredTask(spec.name, True, len(task.prompts), len(task.prompts))
    _check_prompts_kept(task, spec)
    old, new = normalization_spec(task).normalization(), spec.normalization()
    changed = tuple(key for key in new if old[key] != new[key])
    runs = select(func.count()).select_from(Run).where(Run.task_id == task.id)
    if changed and not update:
        raise InvalidInput(
            f"task {spec.name!r} is stored with other {', '.join(changed)}; add the file with "
            f"--update to replace them (the task's {session.scalar(runs)} stored runs become "
            "stale until `catalog renormalize` re-derives their counts)"
        )
    stored_keys = {p.key for p in task.prompts}
    _set_spec(session, task, spec)
    prompts = ensure_prompts(session, task, [(p.key, p.text) for p in spec.prompts])
    stale = 0
    if changed:
        stale = session.execute(
            Run.__table__.update().where(Run.task_id == task.id).values(stale=True)
        ).rowcount
    session.expire(task, ["prompts"])
    return StoredTask(
        spec.name, False, len(task.prompts), len(prompts.keys() - stored_keys), changed, stale
    )


def _set_spec(session: Session, task: Task, spec: TaskSpec) -> None:
    """Write the spec's fields into the stored task (its prompts are stored apart)."""
    task.kind = spec.kind
    task.options = list(spec.options)
    task.normalizer = spec.normalizer
    task.normalizer_version = _normalizer_version(spec.normalizer)
    task.description = spec.description or None
    task.spec = spec.to_dict()
    session.flush()


def _check_prompts_kept(task: Task, spec: TaskSpec) -> None:
    texts = {p.key: p.text for p in spec.prompts}
    for key in (p["key"] for p in task.spec.get("prompts", [])):
        if key not in texts:
            raise InvalidInput(
                f"task {task.name!r}: prompt {key!r} is stored (its runs refer to it) but "
                "missing from the file; keep every stored prompt and append new ones"
            )
    for prompt in task.prompts:
        stored = prompt.template
        if stored is not None and texts.get(prompt.key, stored) != stored:
            raise InvalidInput(
                f"task {task.name!r}: prompt {prompt.key!r} is stored with a different text "
                "(its runs were sampled with it); give the new text a new prompt key"
            )


def normalization_spec(task: Task) -> TaskSpec:
    """A stored task as its normalizer needs it: options, aliases and parameters as stored
    (no prompts; tasks created by imports have none in their spec)."""
    data = task.spec or {}
    return TaskSpec(
        name=task.name,
        kind=task.kind,
        normalizer=task.normalizer,
        prompts=(),
        options=tuple(task.options),
        description=task.description or "",
        aliases={option: tuple(forms) for option, forms in (data.get("aliases") or {}).items()},
        params=dict(data.get("params") or {}),
        scaffold=data.get("scaffold"),
    )


class TaskNormalizer:
    """A stored task's normalizer as a function of the text alone, remembering the readings
    of the texts it has seen (completions repeat across runs and records)."""

    _REMEMBERED = 200_000

    def __init__(self, task: Task) -> None:
        self.spec = normalization_spec(task)
        self.normalizer = get_normalizer(task.normalizer)
        self.version = self.normalizer.version
        self._seen: dict[str, Reading] = {}

    def read(self, text: str) -> Reading:
        """The option the text gives, or why it gives none."""
        reading = self._seen.get(text)
        if reading is None:
            if len(self._seen) >= self._REMEMBERED:
                self._seen.clear()
            reading = self._seen[text] = self.normalizer.read(text, self.spec)
        return reading

    def __call__(self, text: str) -> str | None:
        return self.read(text).option


def ensure_open_task(session: Session, name: str) -> Task:
    """The task called ``name``, created as an open task (options as observed) if new."""
    task = session.scalar(select(Task).where(Task.name == name))
    if task is None:
        check_name(name, "tasks.name", "task name")
        _insert_if_absent(session, Task, [_new_task(name, "open", OPEN_TASK_NORMALIZER)])
        task = session.scalar(select(Task).where(Task.name == name))
    return task


def _new_task(name: str, kind: str, normalizer: str) -> dict:
    return {"name": name, "kind": kind, "options": [], "normalizer": normalizer,
            "normalizer_version": _normalizer_version(normalizer),
            "spec": {"name": name, "kind": kind, "normalizer": normalizer}}


def task_by_name(session: Session, name: str) -> Task:
    """The stored task, or the bundled task of that name (stored on first use)."""
    task = session.scalar(select(Task).where(Task.name == name))
    if task is not None:
        return task
    try:
        spec = bundled_task(name)
    except NotFound:
        raise NotFound(
            f"no task named {name!r}; run `catalog tasks list` to see the tasks, or "
            "`catalog tasks add FILE` to add your own"
        ) from None
    return sync_task(session, spec)


def ensure_prompt(session: Session, task: Task, key: str, text: str | None = None) -> Prompt:
    """The task's prompt ``key``, appended to its prompts if new."""
    return ensure_prompts(session, task, [(key, text)])[key]


def ensure_prompts(
    session: Session,
    task: Task,
    keys: Iterable[tuple[str, str | None]],
    *,
    replace_text: bool = False,
) -> dict[str, Prompt]:
    """The task's prompts for (key, text) pairs, new keys appended in the given order.

    A stored prompt without text gets the given one. A different text for a stored key is
    refused (the key's runs were sampled with the old text) unless ``replace_text``.
    """
    stored = {p.key: p for p in session.scalars(select(Prompt).where(Prompt.task_id == task.id))}
    next_position = session.scalar(
        select(func.coalesce(func.max(Prompt.position) + 1, 0)).where(Prompt.task_id == task.id)
    )
    result: dict[str, Prompt] = {}
    new: dict[str, dict] = {}  # inserted by one executemany: imports add thousands at once
    for key, text in keys:
        prompt = stored.get(key)
        if prompt is None:
            if key not in new:
                new[key] = {"task_id": task.id, "key": key, "position": next_position,
                            "template": None, "text_hash": None}
                next_position += 1
            row = new[key]
            if text is not None and (row["template"] is None or replace_text):
                row.update(template=text, text_hash=text_hash(text))
            continue
        if text is not None and prompt.template is not None and prompt.template != text:
            if not replace_text:
                raise InvalidInput(
                    f"prompt {key!r} of task {task.name!r} is stored with a different text; "
                    "give the new text a new prompt key"
                )
        if text is not None and (prompt.template is None or replace_text):
            prompt.template = text
            prompt.text_hash = text_hash(text)
        result[key] = prompt
    session.flush()
    for _ in range(_PROMPT_TRIES):
        if not new:
            break
        # Another process may add prompts to the task at once: a key it added is found,
        # a key whose position it took gets the next free one.
        _insert_if_absent(session, Prompt, list(new.values()))
        session.expire(task, ["prompts"])
        result.update((p.key, p) for p in session.scalars(
            select(Prompt).where(Prompt.task_id == task.id, Prompt.key.in_(list(new)))
        ))
        new = {key: row for key, row in new.items() if key not in result}
        next_position = session.scalar(
            select(func.max(Prompt.position) + 1).where(Prompt.task_id == task.id))
        for row in new.values():
            row["position"] = next_position
            next_position += 1
    if new:
        raise InvalidInput(f"task {task.name!r}: other processes keep adding prompts; run again")
    return result


def _normalizer_version(name: str) -> str:
    return get_normalizer(name).version
