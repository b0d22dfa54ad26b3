"""The whole study end to end on a toy family whose seed we know (``catalog demo``).

Trains (or reuses) a toy family with :mod:`catalog.toylab`, registers its stages as an
ordinary family, samples every stage, task and prompt with ``catalog ingest``'s job layer,
analyzes the store and writes the report. With ``checkpoints`` SFT and DPO are registered as
that many checkpoints each, and the analysis follows the metrics over them (trajectories,
with the change point). The analysis stack (Polars) and the toy lab
(tokenizers; torch inside it) are imported when the demo runs, so importing this module (as
``catalog demo``'s option defaults do) stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from catalog.db import session_scope
from ingest.backends import SamplingParams
from ingest.events import Progress, ignore
from ingest.jobs import IngestRequest, run_ingest

CACHE_ENV = "CATALOG_CACHE_DIR"


def cache_dir() -> Path:
    """Where trained toy families are kept: ``$CATALOG_CACHE_DIR``, else ~/.cache/catalog."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "catalog")


@dataclass(frozen=True)
class DemoOptions:
    family: str = "toy"
    seed_prompts: Mapping[str, str] = field(default_factory=dict)  # task -> planted seed key
    samples: int = 1000
    seed: int = 0
    train_seed: int = 0
    prompts_per_task: int | None = 12
    bootstrap: int = 200
    checkpoints: int = 0  # evenly spaced checkpoints of SFT and of DPO to register and sample
    report_dir: Path | None = Path("catalog-report")
    toylab: Mapping[str, Any] = field(default_factory=dict)  # other ToyFamilySettings fields


@dataclass
class DemoResult:
    family: Any  # catalog.toylab.ToyFamily
    ingest: Any  # ingest.jobs.IngestSummary
    analysis: Any  # analysis.results.CrystallizationResult
    report_path: Path | None


def run_demo(
    engine: Engine, options: DemoOptions, *, say: Callable[[str], None] = print,
    progress: Progress = ignore,
) -> DemoResult:
    """Train or reuse the toy family, register it, ingest, analyze and report."""
    from analysis.crystallization import AnalysisOptions, analyze
    from analysis.report import write_report
    from catalog.toylab import ToyFamilySettings, register_family, train_family

    settings = ToyFamilySettings(
        seed_prompts=dict(options.seed_prompts), prompts_per_task=options.prompts_per_task,
        seed=options.train_seed, checkpoints=options.checkpoints, **options.toylab,
    )
    say(f"1/4 toy family {options.family!r}: training or reusing it in {cache_dir()}")
    family = train_family(cache_dir(), settings)
    say(f"    {'reused cached' if family.reused else 'trained'} stages "
        f"{', '.join(_stage_line(s) for s in family.stages)} "
        f"(planted seeds: {_seeds(family)})")
    with session_scope(engine) as session:
        models = len(register_family(session, family, options.family))

    tasks = [task.name for task in settings.resolved_tasks()]
    prompts = sorted({p.key for task in settings.resolved_tasks() for p in task.prompts})
    say(f"2/4 ingest: {models} models x {', '.join(tasks)}, N={options.samples}")
    request = IngestRequest(
        families=[options.family], tasks=tasks, prompts=prompts, seed=options.seed,
        params=SamplingParams(n=options.samples, max_new_tokens=8),
    )
    summary = run_ingest(engine, request, progress=progress)
    say(f"    {summary.done} units sampled, {summary.already_done} already done "
        f"({summary.seconds:.1f}s)")

    say(f"3/4 analyze (bootstrap {options.bootstrap})")
    result = analyze(engine, families=[options.family], tasks=tasks,
                     options=AnalysisOptions(bootstrap=options.bootstrap, seed=options.seed))
    report_path = None
    if options.report_dir is not None:
        say(f"4/4 report -> {options.report_dir}")
        report_path = write_report(result, options.report_dir).path
    return DemoResult(family, summary, result, report_path)


def _stage_line(stage) -> str:
    return stage.name + (f" ({len(stage.checkpoints)} checkpoints)" if stage.checkpoints else "")


def _seeds(family) -> str:
    return ", ".join(f"{task}={planted.seed_key}" for task, planted in family.planted.items())


def planted_vs_found(family, analysis) -> list[dict[str, Any]]:
    """Per task: the planted seed prompt, the one the analysis found, and the verdicts."""
    found = {g["task"]: g for g in analysis.to_dict()["tasks"]}
    rows = []
    for task, planted in family.planted.items():
        group = found.get(task, {})
        verdict = group.get("verdict") or {}
        rows.append({
            "task": task,
            "planted_seed": planted.seed_key,
            "found_seed": group.get("seed_prompt"),
            "liquid": verdict.get("liquid"),
            "nucleated": verdict.get("nucleated"),
            "settled": verdict.get("settled"),
        })
    return rows


def change_points(analysis, metric: str = "liquidity") -> list[dict[str, Any]]:
    """Per task: where the change point of ``metric`` fell over the checkpoints (the
    analysis' trajectory records, with their one-line reading; empty without trajectories)."""
    return [
        record for record in analysis.to_dict().get("trajectories", [])
        if record["metric"] == metric
    ]
