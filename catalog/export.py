"""Counts out of the catalog: ``export_counts`` writes the import-counts columns
(:mod:`catalog.imports`), so an export can be imported elsewhere."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl
from sqlalchemy import Engine, func, select

from catalog.db import session_scope
from catalog.enums import COUNT_FILE_FORMATS
from catalog.errors import InvalidInput, NotFound
from catalog.imports import CONDITION_COLUMNS
from catalog.schema import Family, Run, Task
from catalog.views import read_view

EXPORT_COLUMNS = (
    "family", "stage", "stage_order", "step", "model", "task", "prompt", "prompt_text",
    "option", "count", "n_invalid", *CONDITION_COLUMNS,
)


def export_counts(
    engine: Engine,
    path: str | Path,
    *,
    format: str | None = None,
    family: str | Iterable[str] | None = None,
    task: str | Iterable[str] | None = None,
    mode: str = "sampled",
) -> int:
    """Write counts (mode "sampled") in the import format, or exact probabilities (mode
    "exact", a ``probability`` column instead of count/n_invalid). Returns the row count.

    Sampled runs of the same (model, task, prompt, condition) are pooled, as the metrics
    pool them; each condition's columns are written, so an import keeps them apart.
    """
    path = Path(path)
    format = format or {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(
        path.suffix.lower()
    )
    if format not in COUNT_FILE_FORMATS:
        raise InvalidInput(
            f"{path}: cannot tell the format; use --format {' or '.join(COUNT_FILE_FORMATS)}"
        )
    _check_known(engine, family, task)
    keys = ["family", "stage", "stage_order", "step", "model", "task", "prompt", "prompt_text",
            "temperature", "top_p", "top_k", "max_new_tokens", "condition_key"]
    order = ["family", "stage_order", "step", "model", "task", "prompt_id", "condition_key",
             "option"]
    if mode == "sampled":
        counts = read_view(engine, "v_counts", family=family, task=task, mode="sampled")
        run_keys = ["model", "task", "prompt", "condition_key"]
        invalid = counts.unique("run_id").group_by(run_keys).agg(pl.col("n_invalid").sum())
        frame = (
            counts.group_by([*keys, "prompt_id", "option"])
            .agg(pl.col("count").sum())
            .join(invalid, on=run_keys)
        )
        columns = EXPORT_COLUMNS
    elif mode == "exact":
        frame = read_view(engine, "v_distributions", family=family, task=task, mode="exact")
        columns = (*(c for c in EXPORT_COLUMNS if c not in ("count", "n_invalid")),
                   "probability")
    else:
        raise InvalidInput(f"mode must be 'sampled' or 'exact', got {mode!r}")
    frame = frame.join(_scaffolds(engine), on="condition_key", how="left").sort(order)
    frame = frame.select(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return frame.height


def _check_known(engine: Engine, families, tasks) -> None:
    """A family or task the store does not have is a mistake, not an empty export."""
    for table, given, what in ((Family, families, "family"), (Task, tasks, "task")):
        names = [given] if isinstance(given, str) else list(given or ())
        if not names:
            continue
        with engine.connect() as conn:
            known = set(conn.scalars(select(table.name).where(table.name.in_(names))))
        missing = [name for name in names if name not in known]
        if missing:
            raise NotFound(f"no {what} named {missing[0]!r} in the store; see `catalog "
                           f"{'models' if what == 'family' else 'tasks'} list`")


def _scaffolds(engine: Engine) -> pl.DataFrame:
    """(condition_key, scaffold) of every condition stored (the views show the others)."""
    first_runs = select(Run.condition_key, Run.condition).where(
        Run.id.in_(select(func.min(Run.id)).group_by(Run.condition_key))
    )
    with session_scope(engine) as session:
        rows = session.execute(first_runs).all()
    return pl.DataFrame(
        [(key, (condition or {}).get("scaffold")) for key, condition in rows],
        schema={"condition_key": pl.String, "scaffold": pl.String}, orient="row",
    )
