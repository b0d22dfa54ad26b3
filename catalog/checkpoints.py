"""Finding the checkpoints of a training run: ``checkpoint-<step>/`` folders, hub branches.

A local training run keeps its checkpoints in the Trainer layout, ``<run dir>/checkpoint-<step>/``
(each a loadable model directory). A hub repository keeps them as branches whose names carry
the step, such as OLMo's ``stage1-step1000-tokens5B`` or Pythia's ``step1000``. Both give a
list of :class:`Checkpoint` in step order, which :func:`catalog.registry.add_checkpoints`
registers as models of one stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from catalog.errors import InvalidInput, NotFound

CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)\Z")
# "step1000" as a word of a ref name ("stage1-step1000-tokens5B", "step1000"): the step.
_REF_STEP = re.compile(r"(?:\A|[^0-9A-Za-z])step[-_]?(\d+)(?![0-9])")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: its step and where to load it from (a directory, or hub id + branch)."""

    step: int
    source: str
    revision: str | None = None


def checkpoint_dirs(run_dir: str | Path) -> list[Checkpoint]:
    """Every ``checkpoint-<step>/`` folder directly inside ``run_dir``, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotFound(f"{run_dir} is not a directory; give the training run's output directory")
    found = [
        Checkpoint(int(match.group(1)), str(path.resolve()))
        for path in run_dir.iterdir()
        if path.is_dir() and (match := CHECKPOINT_DIR.match(path.name))
    ]
    if not found:
        raise NotFound(f"{run_dir} has no checkpoint-<step>/ folders (the Trainer layout)")
    return _distinct_steps(sorted(found, key=lambda c: c.step), str(run_dir))


def ref_step(name: str, pattern: re.Pattern[str] | None = None) -> int | None:
    """The step in a ref name: the ``step`` group of ``pattern`` if it has one (for names
    that count tokens only, e.g. ``tokens(?P<step>\\d+)B``), else the number after ``step``
    (``stage1-step1000-tokens5B`` -> 1000). None when the name carries no step."""
    if pattern is not None and "step" in pattern.groupindex:
        match = pattern.search(name)
        value = match.group("step") if match else None
        return int(value) if value and value.isdigit() else None
    match = _REF_STEP.search(name)
    return int(match.group(1)) if match else None


def ref_checkpoints(hub_id: str, refs: list[str], revisions: str) -> list[Checkpoint]:
    """The refs (branch names) matching the regex ``revisions`` as checkpoints, by step.

    A matching ref without a step, or two refs with one step, is an InvalidInput: narrow the
    regex (or give it a ``(?P<step>...)`` group).
    """
    try:
        pattern = re.compile(revisions)
    except re.error as exc:
        raise InvalidInput(
            f"--revisions {revisions!r} is not a regular expression ({exc})"
        ) from None
    found = []
    for ref in sorted(r for r in refs if pattern.search(r)):
        step = ref_step(ref, pattern)
        if step is None:
            raise InvalidInput(
                f"branch {ref!r} of {hub_id} matches --revisions {revisions!r} but names no step "
                "(such as step1000); narrow the regex or give it a (?P<step>...) group"
            )
        found.append(Checkpoint(step, hub_id, ref))
    if not found:
        shown = ", ".join(sorted(refs)[:5]) + (", ..." if len(refs) > 5 else "")
        raise NotFound(
            f"no branch of {hub_id} matches --revisions {revisions!r} "
            f"({len(refs)} branches: {shown or 'none'})"
        )
    return _distinct_steps(sorted(found, key=lambda c: c.step), hub_id)


def hub_branches(hub_id: str) -> list[str]:
    """The branch names of a hub model repository (needs the hub; a failure is one line)."""
    from huggingface_hub import list_repo_refs

    try:
        refs = list_repo_refs(hub_id)
    # Offline, unknown or gated repository, or an HTTP client error (their classes vary
    # across huggingface_hub versions): all mean the branches cannot be listed.
    except Exception as exc:  # noqa: BLE001
        raise NotFound(
            f"cannot list the branches of {hub_id!r} on the hub ({type(exc).__name__}: {exc}); "
            "check the repository id, your network and HF_TOKEN"
        ) from None
    return [branch.name for branch in refs.branches]


def _distinct_steps(found: list[Checkpoint], where: str) -> list[Checkpoint]:
    for previous, current in zip(found, found[1:]):
        if previous.step == current.step:
            raise InvalidInput(
                f"{where}: {previous.revision or previous.source} and "
                f"{current.revision or current.source} are both step {current.step}; "
                "each checkpoint of a stage needs its own step"
            )
    return found
