"""How much a conclusion depends on parsing: the analysis under the strict and the lenient
reading of the same stored completions.

The strict reading is the normalizers' (docs/normalization.md); the lenient one is the
rules before version 2 (an echo "heads or tails" counts for the first option it names,
several values count as the first). Both are computed from the completions stored with the
runs, so no model is loaded. Units without stored completions (imported counts) keep their
stored counts under both readings.

Example::

    frame = sensitivity(engine, data)      # data: analysis.frames.read_counts(...)
    frame.filter(pl.col("metric") == "liquidity")
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl
from sqlalchemy import Engine, select

from analysis.crystallization import analyze_data
from analysis.frames import UNIT_KEYS, CountData, select_sql
from analysis.options import AnalysisOptions
from catalog.db import session_scope
from catalog.normalize import get_normalizer
from catalog.registry import normalization_spec
from catalog.schema import Completion, Run, Task
from catalog.views import read_sql

# The stage metrics compared, and the task-level ones.
STAGE_METRICS = ("validity", "entropy_pooled", "liquidity", "mse_to_seed", "probmass")
TASK_METRICS = ("nucleation_ratio", "seed_prompt")


def sensitivity(engine: Engine, data: CountData,
                options: AnalysisOptions | None = None) -> pl.DataFrame:
    """One row per (family, task, condition, stage, metric) with its value under the
    ``strict`` and the ``lenient`` reading (task-level metrics with stage null)."""
    options = replace(options or AnalysisOptions(), bootstrap=0)
    texts = _unit_texts(engine, data)
    if data.mode != "sampled" or not texts.height:
        return pl.DataFrame()
    strict, lenient = (analyze_data(_reread(engine, data, texts, flag), options)
                       for flag in (False, True))
    return _compare(strict, lenient)


def _unit_texts(engine: Engine, data: CountData) -> pl.DataFrame:
    """(unit, task, text, count) of the stored completions of the data's units."""
    tasks = data.units["task"].unique().to_list()
    runs = read_sql(engine, select_sql(engine, "v_runs", [*UNIT_KEYS, "run_id"],
                                        {"mode": ["sampled"], "task": tasks}))
    runs = runs.with_columns(pl.col("stage_order", "step", "prompt_id").cast(pl.Int64))
    units = data.units.select(*UNIT_KEYS, "unit")
    run_units = (runs.join(units, on=UNIT_KEYS, nulls_equal=True)
                 .select(pl.col("run_id").cast(pl.Int64), "unit", "task"))
    if not run_units.height:
        return pl.DataFrame()
    query = (select(Completion.run_id, Completion.text, Completion.count)
             .join(Run, Run.id == Completion.run_id).join(Task, Task.id == Run.task_id)
             .where(Run.status == "done", Run.mode == "sampled", Task.name.in_(tasks)))
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    texts = read_sql(engine, sql)
    if not texts.height:
        return pl.DataFrame()
    texts = texts.with_columns(pl.col("run_id").cast(pl.Int64))
    return texts.join(run_units, on="run_id").select(
        "unit", "task", "text", pl.col("count").cast(pl.Int64))


def _reread(engine: Engine, data: CountData, texts: pl.DataFrame, lenient: bool) -> CountData:
    """``data`` with the counts of units that have completions read again."""
    with session_scope(engine) as session:
        specs = {task.name: normalization_spec(task) for task in session.scalars(
            select(Task).where(Task.name.in_(texts["task"].unique().to_list())))}
    readings = {
        (task, text): get_normalizer(specs[task].normalizer).read(text, specs[task], lenient)
        for task, text in texts.select("task", "text").unique().iter_rows()
    }
    read = texts.with_columns(option=pl.Series(
        [readings[task, text].option for task, text in texts.select("task", "text").iter_rows()],
        dtype=pl.String))
    counts = (read.filter(pl.col("option").is_not_null())
              .group_by("unit", "option").agg(pl.col("count").sum().alias("value")))
    invalid = (read.group_by("unit")
               .agg(pl.col("count").filter(pl.col("option").is_null()).sum().alias("n_new")))
    reread_units = invalid["unit"]
    units = (data.units.join(invalid, on="unit", how="left")
             .with_columns(pl.coalesce("n_new", "n_invalid").cast(pl.Int64).alias("n_invalid"))
             .drop("n_new"))
    kept = data.counts.filter(~pl.col("unit").is_in(reread_units.implode()))
    counts = pl.concat([kept, counts.select(kept.columns).cast(kept.schema)])
    return replace(data, units=units, counts=counts)


def _compare(strict, lenient) -> pl.DataFrame:
    keys = ["family", "task", "condition_key", "stage"]
    stages = [
        frame.select(*keys, *(pl.col(m).cast(pl.Float64).round(4).cast(pl.String)
                              for m in STAGE_METRICS))
        .unpivot(index=keys, variable_name="metric", value_name=name)
        for frame, name in ((strict.stages, "strict"), (lenient.stages, "lenient"))
    ]
    tasks = [
        frame.select(*keys[:3], pl.col("nucleation_ratio").cast(pl.Float64).round(4),
                     "seed_prompt").with_columns(pl.col(*TASK_METRICS).cast(pl.String))
        .unpivot(index=keys[:3], variable_name="metric", value_name=name)
        .with_columns(stage=pl.lit(None, pl.String)).select(*keys, "metric", name)
        for frame, name in ((strict.tasks, "strict"), (lenient.tasks, "lenient"))
    ]
    joined = [a.join(b, on=[*keys, "metric"], how="full", coalesce=True, nulls_equal=True)
              for a, b in (stages, tasks)]
    return pl.concat(joined)
