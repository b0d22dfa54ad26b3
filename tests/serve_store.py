"""A small real store for ``catalog serve``'s tests: raw completions of two families (base,
SFT, DPO) on two bundled tasks, imported with ``catalog.imports.import_completions``, with
hostile texts among the base model's answers (model output is untrusted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sqlalchemy import select

from catalog.db import open_catalog, session_scope
from catalog.imports import import_completions
from catalog.schema import Model, Prompt, Run, Task

# The queue's units: planned work on lab-base's digit prompts (a failure's error is
# untrusted text too).
QUEUE = (("pending", None), ("failed", "CUDA out of memory <b>bold</b>"), ("running", None))
HOSTILE = ("<script>window.injected = 1; alert('script')</script>",
           "<img src=x onerror=\"window.injected = 2; alert('img')\">")
TASKS = {"coin": (["heads", "tails"], ["plain", "terse", "polite", "order"]),
         "digit": ([str(d) for d in range(10)], ["plain", "terse", "polite", "order"])}
FAMILIES = ("lab", "zoo")
STAGES = ("base", "sft", "dpo")


def completion_records(n_samples: int = 40, seed: int = 0) -> list[dict]:
    """One record per (family, stage, task, prompt): the base prompts answer each their own
    way, SFT and DPO like the planted seed prompt (the third)."""
    rng = np.random.default_rng(seed)
    records = []
    for family in FAMILIES:
        for task, (options, prompts) in TASKS.items():
            base = rng.dirichlet(np.full(len(options), 0.4), size=len(prompts))
            for order, stage in enumerate(STAGES):
                for p, prompt in enumerate(prompts):
                    dist = base[p] if stage == "base" else base[2]
                    drawn = rng.choice(len(options), size=n_samples, p=dist)
                    texts = [f" {options[k].capitalize()}." for k in drawn]
                    texts.append(" I cannot choose.")
                    if (family, stage, task, p) == ("lab", "base", "coin", 0):
                        texts.extend(HOSTILE)
                    records.append({
                        "family": family, "stage": stage, "stage_order": order,
                        "model": f"{family}-{stage}", "task": task, "prompt": prompt,
                        "completions": texts, "temperature": 1.0, "max_new_tokens": 8,
                    })
    return records


def build_store(db_url: str, folder: Path, n_samples: int = 40) -> None:
    """Create the catalog at ``db_url`` (an empty database) and import the completions."""
    path = folder / "completions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in completion_records(n_samples)))
    engine = open_catalog(db_url)
    try:
        import_completions(engine, path)
        with session_scope(engine) as session:
            model = session.scalar(select(Model).where(Model.name == "lab-base"))
            task = session.scalar(select(Task).where(Task.name == "digit"))
            prompts = session.scalars(select(Prompt).where(Prompt.task_id == task.id)
                                      .order_by(Prompt.position)).all()
            for (state, error), prompt in zip(QUEUE, prompts):
                session.add(Run(unit_key=f"queue-{state}", model_id=model.id, task_id=task.id,
                                prompt_id=prompt.id, status=state, error=error, n_samples=40,
                                attempts=1 if error else 0, claimed_by="worker-7"
                                if state == "running" else None))
    finally:
        engine.dispose()


def checkpoint_records(n_samples: int = 20) -> list[dict]:
    """A checkpoint series: family "ckpt" on coin, a step-less base whose prompts disagree,
    then SFT at step 100 (every prompt answers tails) and step 200 (every prompt heads)."""
    prompts = TASKS["coin"][1]
    records = []
    for stage, order, step, answer in (("base", 0, None, None), ("sft", 1, 100, "Tails"),
                                       ("sft", 1, 200, "Heads")):
        for p, prompt in enumerate(prompts):
            texts = [f" {answer or ('Heads' if k % (p + 2) else 'Tails')}."
                     for k in range(n_samples)]
            records.append({
                "family": "ckpt", "stage": stage, "stage_order": order, "step": step,
                "model": "ckpt-base" if step is None else f"ckpt-sft-{step}", "task": "coin",
                "prompt": prompt, "completions": texts, "temperature": 1.0, "max_new_tokens": 8,
            })
    return records


def build_checkpoint_store(db_url: str, folder: Path) -> None:
    """Create the catalog at ``db_url`` (an empty database) with :func:`checkpoint_records`."""
    path = folder / "checkpoints.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in checkpoint_records()))
    engine = open_catalog(db_url)
    try:
        import_completions(engine, path)
    finally:
        engine.dispose()
