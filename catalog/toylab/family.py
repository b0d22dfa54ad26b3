"""A trained toy family on disk: train or reuse it (cached by settings hash), register it."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from filelock import FileLock

from catalog import registry
from catalog.toylab.settings import (
    STAGES,
    TOYLAB_VERSION,
    PlantedTask,
    ToyFamily,
    ToyFamilySettings,
    ToyStage,
    plant,
)
from catalog.toylab.training import _train_stages, checkpoint_steps

MANIFEST = "manifest.json"


def family_dir(out_dir: str | os.PathLike, settings: ToyFamilySettings) -> Path:
    """Where the family for these settings lives (or will live) under ``out_dir``."""
    return Path(out_dir) / f"toy-{settings.settings_hash()[:12]}"


def train_family(
    out_dir: str | os.PathLike,
    settings: ToyFamilySettings | None = None,
    *,
    checkpoints: int | None = None,
) -> ToyFamily:
    """Train the toy family for ``settings`` under ``out_dir``, or reuse the cached one.

    The family lives in ``out_dir/toy-<settings hash>``: one directory per stage (loadable
    with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained``; with ``checkpoints``,
    which overrides the settings' field, SFT and DPO also hold that many ``checkpoint-<step>/``
    directories) and ``manifest.json`` with the settings, the planted ground truth and the
    training times. A file lock keeps two processes from training the same family at once;
    training happens in a scratch directory that is renamed into place when complete, so a
    crash never leaves a family that looks finished.
    """
    settings = settings or ToyFamilySettings()
    if checkpoints is not None:
        settings = replace(settings, checkpoints=checkpoints)
    root = family_dir(out_dir, settings)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        cached = _read_family(root, settings)
        if cached is not None:
            return cached
        planted = plant(settings)
        scratch = root.with_name(root.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        seconds = _train_stages(settings, planted, scratch)
        _write_manifest(scratch, settings, planted, seconds)
        os.replace(scratch, root)
        return _family(root, settings, planted, seconds, reused=False)


def _family(root, settings, planted, seconds, reused: bool) -> ToyFamily:
    stages = tuple(
        ToyStage(name, order, prompt_format, root / name, _stage_checkpoints(settings, name))
        for order, (name, prompt_format) in enumerate(STAGES)
    )
    return ToyFamily(
        root=root,
        settings=settings,
        settings_hash=settings.settings_hash(),
        stages=stages,
        planted=planted,
        train_seconds=seconds,
        reused=reused,
    )


def _stage_checkpoints(settings: ToyFamilySettings, stage: str) -> tuple[int, ...]:
    steps = {"sft": settings.sft_steps, "dpo": settings.dpo_steps}.get(stage)
    return () if steps is None else checkpoint_steps(steps, settings.checkpoints)


def _write_manifest(root: Path, settings, planted, seconds) -> None:
    import torch
    import transformers

    manifest = {
        "toylab_version": TOYLAB_VERSION,
        "settings_hash": settings.settings_hash(),
        "settings": settings.to_dict(),
        "stages": [
            {"name": n, "order": i, "prompt_format": f,
             "checkpoints": list(_stage_checkpoints(settings, n))}
            for i, (n, f) in enumerate(STAGES)
        ],
        "planted": {name: p.to_dict() for name, p in planted.items()},
        "train_seconds": seconds,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _read_family(root: Path, settings: ToyFamilySettings) -> ToyFamily | None:
    """The cached family at ``root`` if it was trained with exactly these settings."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("settings_hash") != settings.settings_hash():
        return None
    planted = {
        name: PlantedTask.from_dict(name, data) for name, data in manifest["planted"].items()
    }
    return _family(root, settings, planted, manifest["train_seconds"], reused=True)


def register_family(session, family: ToyFamily, name: str | None = None) -> list:
    """Register the toy family's stages in the catalog as an ordinary family.

    Models are named ``<family name>-<stage>`` with the stage directory as source; the family
    name defaults to :attr:`ToyFamily.name`. A stage with checkpoints is registered as its
    checkpoints instead (``<family name>-<stage>-step<step>``, through
    :func:`catalog.registry.add_checkpoints`; its last one is the stage's final model).
    Registering the same family again changes nothing; another family under a name already
    taken is an InvalidInput. Tasks are not registered here (sync them with
    :func:`catalog.registry.sync_task`).
    """
    family_name = name or family.name
    seeds = ", ".join(f"{task}={p.seed_key}" for task, p in sorted(family.planted.items()))
    registry.ensure_family(
        session, family_name, description=f"Toy family from the catalog's toy lab ({family.root})"
    )
    models = []
    for stage in family.stages:
        fields = dict(
            family=family_name, stage=stage.name, stage_order=stage.order, source=str(stage.path),
            prompt_format=stage.prompt_format,
            notes=f"toy lab stage; planted seed prompts: {seeds}",
        )
        if stage.checkpoints:
            models += registry.add_checkpoints(session, **fields)
        else:
            models.append(registry.add_model(session, name=f"{family_name}-{stage.name}", **fields))
    return models
