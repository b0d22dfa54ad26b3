"""The model and task registry: families with their ordered stages, tasks with their prompts.

Every function takes an open :class:`~sqlalchemy.orm.Session` and flushes what it creates,
so callers decide the transaction (``with session_scope(engine) as session: ...``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from catalog.enums import PROMPT_FORMATS
from catalog.errors import InvalidInput, NotFound
from catalog.normalize import get_normalizer
from catalog.prompting import text_hash
from catalog.schema import Family, Model, Prompt, Task
from catalog.tasks import TaskSpec, bundled_task

# Stage orders used when none is given; base must be 0. Stage names are matched
# case-insensitively everywhere ("SFT" and "sft" are one stage of a family).
DEFAULT_STAGE_ORDERS = {"base": 0, "sft": 1, "dpo": 2, "rl": 3, "rlvr": 3, "instruct": 3}
OPEN_TASK_NORMALIZER = "open_word"
_PINNED_REVISION = re.compile(r"[0-9a-f]{40}\Z")
# Fields a model row is compared on when the same name is registered again.
_MODEL_FIELDS = (
    "stage", "stage_order", "source", "revision", "prompt_format", "gguf_file",
    "trust_remote_code", "notes",
)


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
        family = Family(name=name, description=description)
        session.add(family)
        session.flush()
    elif description and not family.description:
        family.description = description
    return family


def add_model(
    session: Session,
    *,
    name: str,
    family: str,
    stage: str,
    stage_order: int | None = None,
    source: str | None = None,
    revision: str | None = None,
    prompt_format: str = "chat",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    notes: str | None = None,
) -> Model:
    """Register one stage of a family. Adding an identical model again changes nothing."""
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
        "source": source,
        "revision": revision,
        "prompt_format": prompt_format,
        "gguf_file": gguf_file,
        "trust_remote_code": trust_remote_code,
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
    taken = session.scalar(
        select(Model).where(
            Model.family_id == family_row.id, func.lower(Model.stage) == stage.lower()
        )
    )
    if taken is not None:
        raise InvalidInput(
            f"family {family!r} already has a {stage!r} stage (model {taken.name!r}); "
            "each stage of a family is one model"
        )
    model = Model(name=name, family=family_row, **wanted)
    session.add(model)
    session.flush()
    return model


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


def family_models(session: Session, family_name: str) -> list[Model]:
    """The family's models (stages), in stage order."""
    family = session.scalar(select(Family).where(Family.name == family_name))
    if family is None:
        raise NotFound(
            f"no family named {family_name!r}; run `catalog models list` to see the families"
        )
    return list(
        session.scalars(
            select(Model).where(Model.family_id == family.id).order_by(Model.stage_order, Model.id)
        )
    )


def list_models(session: Session, family: str | None = None) -> list[Model]:
    """Registered models, by family name then stage order."""
    query = select(Model).join(Family).order_by(Family.name, Model.stage_order, Model.id)
    if family is not None:
        query = query.where(Family.name == family)
    return list(session.scalars(query))


# ---------------------------------------------------------------------------- experiments

_FAMILY_KEYS = {"name", "description", "stages"}
_STAGE_KEYS = {
    "stage", "name", "stage_order", "source", "revision", "prompt_format", "gguf_file",
    "trust_remote_code", "notes",
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


def load_experiment(session: Session, path: str | Path) -> list[Model]:
    """Register the families and ordered stages of an experiment file (TOML).

    Each ``[[families]]`` has a name, a description and ``[[families.stages]]`` in pipeline
    order; a stage's order is its ``stage_order`` or else its position in that list. A
    stage's model ``name`` defaults to its ``source``. See catalog/experiments/study.toml.
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
        for position, stage in enumerate(entry["stages"]):
            stage_where = f"{where}.stages[{position}]"
            _check_keys(stage, _STAGE_KEYS, stage_where)
            if not stage.get("stage") or not (stage.get("name") or stage.get("source")):
                raise InvalidInput(f"{stage_where}: a stage needs `stage` and a `source` or `name`")
            fields = {key: value for key, value in stage.items() if key != "name"}
            fields.setdefault("stage_order", position)
            try:
                models.append(
                    add_model(
                        session, name=stage.get("name") or stage["source"], family=entry["name"],
                        **fields,
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
        task = Task(name=spec.name)
        session.add(task)
    task.kind = spec.kind
    task.options = list(spec.options)
    task.normalizer = spec.normalizer
    task.normalizer_version = _normalizer_version(spec.normalizer)
    task.description = spec.description or None
    task.spec = spec.to_dict()
    session.flush()
    ensure_prompts(session, task, [(p.key, p.text) for p in spec.prompts], replace_text=True)
    return task


def ensure_open_task(session: Session, name: str) -> Task:
    """The task called ``name``, created as an open task (options as observed) if new."""
    task = session.scalar(select(Task).where(Task.name == name))
    if task is None:
        task = Task(
            name=name,
            kind="open",
            options=[],
            normalizer=OPEN_TASK_NORMALIZER,
            normalizer_version=_normalizer_version(OPEN_TASK_NORMALIZER),
            spec={"name": name, "kind": "open", "normalizer": OPEN_TASK_NORMALIZER},
        )
        session.add(task)
        session.flush()
    return task


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
    for key, text in keys:
        prompt = stored.get(key)
        if prompt is None:
            prompt = Prompt(task_id=task.id, key=key, position=next_position)
            next_position += 1
            session.add(prompt)
            stored[key] = prompt
        elif text is not None and prompt.template is not None and prompt.template != text:
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
    return result


def _normalizer_version(name: str) -> str:
    return get_normalizer(name).version
