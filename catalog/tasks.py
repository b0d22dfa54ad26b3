"""Task definitions: the bundled suite (catalog/tasks/*.toml) and users' own task files.

A task file is TOML (see catalog/tasks/coin.toml for a commented example). This module
parses and validates it into a :class:`TaskSpec`; storing specs in the database is done by
:mod:`catalog.registry`, turning completions into options by :mod:`catalog.normalize`.

Every problem with a file is an :class:`~catalog.errors.InvalidInput` whose one-line message
names the file and the field, e.g. ``my_task.toml: prompts[3].text: empty prompt text``.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from catalog.enums import TASK_KINDS
from catalog.errors import InvalidInput, NotFound
from catalog.lexicon import read_vocabulary_text
from catalog.normalize import NORMALIZERS
from catalog.prompting import get_scaffold
from catalog.taskspec import PromptSpec, TaskSpec

FILE_KEYS = (
    "name", "description", "kind", "options", "normalizer", "aliases", "params", "scaffold",
    "prompts",
)
PROMPT_KEYS = ("key", "text")
# Names and keys are used on the command line (--task, --prompt) and in file names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def spec_from_dict(data: Mapping[str, Any], *, source: str = "task") -> TaskSpec:
    """Validate a dict in the task-file layout (:meth:`TaskSpec.to_dict`; InvalidInput names
    ``source`` and the field)."""
    return _spec_from_mapping(data, source)


def load_task_file(path: str | Path) -> TaskSpec:
    """Read and validate one task file (TOML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such task file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the task file ({exc})") from None
    return parse_task_text(text, source=str(path), folder=path.parent)


def parse_task_text(text: str, *, source: str = "task file",
                    folder: Path | Traversable | None = None) -> TaskSpec:
    """Parse and validate the TOML text of a task file; ``source`` names it in errors and
    ``folder`` is where a vocabulary file it names is read from."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)".
        raise InvalidInput(f"{source}: TOML syntax error: {exc}") from None
    return _spec_from_mapping(_with_vocabulary(data, source, folder), source)


# Params that may name a word list file next to the task file (one term a line).
WORD_LIST_PARAMS = ("vocabulary", "english_words", "common_words")


def _with_vocabulary(data: Any, source: str, folder: Path | Traversable | None) -> Any:
    """The task's data with each word list param (``params.vocabulary``, ...) that names a
    file (relative to the task file, e.g. "vocabularies/animal.txt") replaced by the file's
    terms."""
    params = data.get("params") if isinstance(data, Mapping) else None
    if not isinstance(params, Mapping):
        return data
    read = {}
    for key in WORD_LIST_PARAMS:
        name = params.get(key)
        if not isinstance(name, str):
            continue
        if folder is None:
            raise InvalidInput(f"{source}: params.{key}: a word list file ({name!r}) needs "
                               "a task file to be found next to; give the terms as a list "
                               "instead")
        try:
            read[key] = read_vocabulary_text(folder.joinpath(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{source}: params.{key}: cannot read {name!r} next to the "
                               f"task file ({type(exc).__name__})") from None
    return {**data, "params": {**params, **read}} if read else data


@functools.cache
def _bundled() -> dict[str, TaskSpec]:
    folder = resources.files("catalog").joinpath("tasks")
    specs = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            text = entry.read_text(encoding="utf-8")
            spec = parse_task_text(text, source=f"catalog/tasks/{entry.name}", folder=folder)
            specs[spec.name] = spec
    return dict(sorted(specs.items()))


def bundled_tasks() -> list[TaskSpec]:
    """The bundled task suite, sorted by name."""
    return list(_bundled().values())


def bundled_task(name: str) -> TaskSpec:
    """One bundled task by name (NotFound says how to list them)."""
    try:
        return _bundled()[name]
    except KeyError:
        raise NotFound(
            f"no bundled task named {name!r}; run `catalog tasks list` to see the tasks"
        ) from None


def _spec_from_mapping(data: Mapping[str, Any], source: str) -> TaskSpec:
    def fail(where: str, problem: str) -> InvalidInput:
        return InvalidInput(f"{source}: {where}: {problem}")

    if not isinstance(data, Mapping):
        raise InvalidInput(f"{source}: a task must be a table of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise fail(unknown[0], f"unknown field (the fields are: {', '.join(FILE_KEYS)})")
    for required in ("name", "kind", "normalizer", "prompts"):
        if required not in data:
            raise fail(required, "missing required field")

    name = _string(data, "name", fail)
    if not NAME_PATTERN.match(name):
        raise fail("name", f"{name!r} must be letters, digits, '_', '-' or '.' (no spaces)")
    description = _string(data, "description", fail, default="", allow_empty=True)
    kind = _string(data, "kind", fail)
    if kind not in TASK_KINDS:
        raise fail("kind", f"{kind!r} is not one of: {', '.join(TASK_KINDS)}")

    options = _string_list(data.get("options", []), "options", fail)
    if kind == "closed" and not options:
        raise fail("options", "a closed task needs a non-empty option list")
    if kind == "open" and options:
        raise fail("options", "an open task takes no options (its options are what models answer)")
    _check_unique(options, "options", "option", fail)

    aliases = _aliases(data.get("aliases", {}), kind, options, fail)
    params = data.get("params", {})
    if not isinstance(params, Mapping):
        raise fail("params", "must be a table of normalizer parameters")

    prompts_data = data["prompts"]
    if not isinstance(prompts_data, list) or not prompts_data:
        raise fail("prompts", "a task needs at least one [[prompts]] entry")
    prompts = tuple(_prompt(i, entry, fail) for i, entry in enumerate(prompts_data))
    _check_unique([p.key for p in prompts], "prompts", "prompt key", fail)

    scaffold = data.get("scaffold")
    if scaffold is not None:
        scaffold = _string(data, "scaffold", fail)
        try:
            scaffold = get_scaffold(scaffold).id
        except InvalidInput as exc:
            raise fail("scaffold", str(exc)) from None

    spec = TaskSpec(
        name=name,
        kind=kind,  # type: ignore[arg-type]  # checked against TASK_KINDS above
        normalizer=_string(data, "normalizer", fail),
        prompts=prompts,
        options=tuple(options),
        description=description,
        aliases=aliases,
        params=dict(params),
        scaffold=scaffold,
    )
    normalizer = NORMALIZERS.get(spec.normalizer)
    if normalizer is None:
        known = ", ".join(NORMALIZERS)
        raise fail("normalizer", f"unknown normalizer {spec.normalizer!r} (known: {known})")
    problem = normalizer.check(spec)
    if problem:
        raise InvalidInput(f"{source}: {problem}")
    return spec


def _string(data, key, fail, *, default=None, allow_empty=False) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise fail(key, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise fail(key, "must not be empty")
    return value if allow_empty else value.strip()


def _string_list(value, where, fail) -> list[str]:
    if not isinstance(value, list):
        raise fail(where, f"must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise fail(f"{where}[{i}]", f"must be a non-empty string, got {item!r}")
    return [item.strip() for item in value]


def _check_unique(items: list[str], where: str, what: str, fail) -> None:
    seen: set[str] = set()
    for item in items:
        folded = item.casefold()
        if folded in seen:
            raise fail(where, f"duplicate {what} {item!r}")
        seen.add(folded)


def _aliases(value, kind, options, fail) -> dict[str, tuple[str, ...]]:
    """Validate ``[aliases]``: keys are options (closed tasks) or canonical answers (open)."""
    if not isinstance(value, Mapping):
        raise fail("aliases", "must be a table mapping an option to a list of other forms")
    known = {option.casefold(): option for option in options}
    # Every surface form (case-folded) must mean exactly one option.
    owner = {option.casefold(): option for option in options}
    aliases: dict[str, tuple[str, ...]] = {}
    for key, forms in value.items():
        if kind == "closed" and key.casefold() not in known:
            raise fail(f"aliases.{key}", f"{key!r} is not one of the task's options")
        option = known.get(key.casefold(), key)
        if kind == "open":
            owner.setdefault(option.casefold(), option)
        forms = _string_list(forms, f"aliases.{key}", fail)
        for form in forms:
            previous = owner.setdefault(form.casefold(), option)
            if previous != option:
                raise fail(f"aliases.{key}", f"{form!r} already means {previous!r}")
        aliases[option] = tuple(forms)
    return aliases


def _prompt(index: int, entry, fail) -> PromptSpec:
    where = f"prompts[{index}]"
    if not isinstance(entry, Mapping):
        raise fail(where, "must be a table with key and text")
    unknown = sorted(set(entry) - set(PROMPT_KEYS))
    if unknown:
        raise fail(f"{where}.{unknown[0]}", "unknown field (a prompt has: key, text)")
    for required in PROMPT_KEYS:
        if required not in entry:
            raise fail(f"{where}.{required}", "missing required field")
    key = entry["key"]
    if not isinstance(key, str) or not NAME_PATTERN.match(key):
        raise fail(f"{where}.key", f"{key!r} must be letters, digits, '_', '-' or '.' (no spaces)")
    text = entry["text"]
    if not isinstance(text, str):
        raise fail(f"{where}.text", f"must be a string, got {type(text).__name__}")
    if not text.strip():
        raise fail(f"{where}.text", f"empty prompt text (prompt {key!r})")
    return PromptSpec(key=key, text=text.strip())
