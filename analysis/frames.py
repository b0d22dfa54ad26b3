"""Counts from the store as lean Polars frames, and the dense arrays the metrics work on.

``read_counts`` reads one mode's counts (sampled counts by default; ``mode="exact"`` reads
exact probabilities instead, the two are never mixed) for the selected families, tasks and
sampling conditions through the public views, in four queries:

- ``v_runs``: one row per done run, for the (family, stage, step, task, prompt, condition)
  of each run, its invalid count (a run whose samples are all invalid has no ``v_counts``
  rows, so validity must come from here) and its ``stale`` flag;
- ``v_counts`` (sampled) or ``v_distributions`` (exact): the option counts, read as just
  ``run_id, option, count`` so that millions of rows stay small (no repeated names);
- ``tasks``: each task's kind and closed option list;
- ``runs``: the readable JSON of each condition in the selection (one run per condition).

Several done runs of the same (model, task, prompt, mode) **in one condition** are pooled
into one *unit*: their counts are added (exact probabilities are averaged by
``v_distributions``). Runs in different conditions are different units, never pooled
(docs/metrics.md, section 11). A model is one checkpoint: (family, stage, step).

``CountData`` holds the result; ``counts_from_frame`` builds the same thing from an
import-style long frame (family, stage, stage_order, task, prompt, prompt_id, option,
count; optionally step and the condition columns), which is how the metrics are tested
without a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from sqlalchemy import Engine, column, func, literal_column, select, table

from analysis.options import ConditionSelection
from catalog.conditions import Condition
from catalog.enums import RUN_MODES
from catalog.errors import InvalidInput, NotFound
from catalog.schema import Run, Task
from catalog.views import read_sql

UNIT_KEYS = [
    "family", "stage", "stage_order", "step", "task", "prompt", "prompt_id", "condition_key",
]
# The keys an import-style frame must have (step and the condition are optional).
FRAME_KEYS = ["family", "stage", "stage_order", "task", "prompt", "prompt_id"]
# The condition's parameters that are columns of the views (and may select runs).
CONDITION_FIELDS = ("temperature", "top_p", "top_k", "max_new_tokens")
# Token entropy sums by unit and generated position (docs/metrics.md, section 13).
_ENTROPY_SCHEMA = {"unit": pl.UInt32, "position": pl.Int64, "bits": pl.Float64,
                   "tokens": pl.Int64, "estimate": pl.String}


def _no_entropy() -> pl.DataFrame:
    return pl.DataFrame(schema=_ENTROPY_SCHEMA)


@dataclass(frozen=True)
class CountData:
    """One mode's counts for a selection of families and tasks.

    - ``units``: one row per pooled (family, stage, step, task, prompt, condition):
      ``unit`` (UInt32 row number), family, stage, stage_order, step (null: the stage's one
      model), task, prompt (key), prompt_id, condition_key, ``n_invalid`` (summed over the
      pooled runs), ``covered_mass`` (mean over exact runs, else null).
    - ``counts``: ``unit``, ``option``, ``value`` (a sample count, or an exact probability);
      only rows with a positive value.
    - ``tasks``: ``task``, ``kind`` ("closed"/"open"), ``options`` (the closed option list;
      empty for open tasks).
    - ``conditions``: {condition_key: the condition's JSON} (``Condition.to_dict()``).
    - ``stale_runs``: how many of the selected runs are stale (``runs.stale``).
    - ``token_entropy``: ``unit, position, bits, tokens, estimate``: the units' token
      entropy sums by generated position (docs/metrics.md, section 13); no rows for units
      without them (imports, exact mode).
    """

    mode: str
    units: pl.DataFrame
    counts: pl.DataFrame
    tasks: pl.DataFrame
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stale_runs: int = 0
    token_entropy: pl.DataFrame = field(default_factory=_no_entropy)


def read_counts(
    engine: Engine,
    *,
    families: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    mode: str = "sampled",
    conditions: ConditionSelection | None = None,
) -> CountData:
    """Read the store's done runs of one mode for the selected families, tasks and
    conditions (``conditions``: runs with these sampling parameters; None: all).

    Raises NotFound when the selection has no runs at all, or names a family, task or
    condition parameter that has none, saying what the store holds.
    """
    _check_mode(mode)
    filters = {"mode": [mode], "family": families, "task": tasks}
    runs = read_sql(
        engine,
        select_sql(
            engine,
            "v_runs",
            [*UNIT_KEYS, *CONDITION_FIELDS, "run_id", "n_invalid", "covered_mass", "stale"],
            filters,
        ),
    )
    _check_selection(engine, runs, families, tasks, mode)
    runs = runs.with_columns(
        pl.col("stage_order", "step", "prompt_id", "top_k", "max_new_tokens").cast(pl.Int64),
        pl.col("temperature", "top_p").cast(pl.Float64),
        pl.col("n_invalid").fill_null(0).cast(pl.Int64),
        pl.col("covered_mass").cast(pl.Float64),
        pl.col("stale").cast(pl.Boolean).fill_null(False),
    )
    runs = _select_conditions(runs, conditions or ConditionSelection(), mode)
    units = _pool_units(runs)
    run_to_unit = runs.join(units.select(*UNIT_KEYS, "unit"), on=UNIT_KEYS, nulls_equal=True)
    if mode == "sampled":
        counts = read_sql(
            engine, select_sql(engine, "v_counts", ["run_id", "option", "count"], filters)
        )
        counts = (
            _typed(counts, {"run_id": pl.Int64, "option": pl.String, "count": pl.Int64})
            .lazy()
            .filter(pl.col("count") > 0)
            .join(run_to_unit.lazy().select("run_id", "unit"), on="run_id")
            .select("unit", "option", pl.col("count").cast(pl.Int64).alias("value"))
            .collect()
        )
    else:
        # Repeated exact runs of one condition are averaged and renormalized by the view.
        keys = ["family", "stage", "step", "task", "prompt_id", "condition_key"]
        exact = read_sql(
            engine,
            select_sql(engine, "v_distributions", [*keys, "option", "probability"], filters),
        )
        exact = _typed(exact, {**dict.fromkeys(keys, pl.String), "step": pl.Int64,
                               "prompt_id": pl.Int64, "option": pl.String,
                               "probability": pl.Float64})
        counts = (
            exact
            .filter(pl.col("probability") > 0)
            .join(units.select(*keys, "unit"), on=keys, nulls_equal=True)
            .select("unit", "option", pl.col("probability").cast(pl.Float64).alias("value"))
        )
    task_names = units["task"].unique().sort().to_list()
    keys = units["condition_key"].unique().sort().to_list()
    entropy = read_token_entropy(engine, run_to_unit) if mode == "sampled" else None
    return CountData(
        mode, units, counts, read_task_info(engine, task_names),
        conditions=read_conditions(engine, keys), stale_runs=int(runs["stale"].sum()),
        token_entropy=_no_entropy() if entropy is None else entropy,
    )


_ID_BATCH = 5_000


def read_token_entropy(engine: Engine, run_to_unit: pl.DataFrame) -> pl.DataFrame:
    """The runs' token entropy sums (``runs.token_entropy``), pooled per unit and position:
    ``unit, position`` (1-based), ``bits``, ``tokens``, ``estimate`` (null: exact)."""
    ids = run_to_unit["run_id"].to_list()
    unit_of = dict(zip(ids, run_to_unit["unit"].to_list()))
    rows = []
    with engine.connect() as conn:
        for start in range(0, len(ids), _ID_BATCH):
            query = select(Run.id, Run.token_entropy).where(
                Run.id.in_(ids[start : start + _ID_BATCH]), Run.token_entropy.is_not(None)
            )
            for run_id, entropy in conn.execute(query):
                for t, (bits, tokens) in enumerate(zip(entropy["bits"], entropy["tokens"])):
                    rows.append((unit_of[run_id], t + 1, float(bits), int(tokens),
                                 entropy.get("estimate")))
    frame = pl.DataFrame(rows, schema=_ENTROPY_SCHEMA, orient="row")
    return frame.group_by("unit", "position").agg(
        pl.col("bits").sum(), pl.col("tokens").sum(), pl.col("estimate").drop_nulls().first()
    ).sort("unit", "position")


def _typed(frame: pl.DataFrame, types: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """``frame`` with these column types: an empty result (a selection whose answers are all
    invalid has no count rows) comes back with untyped (null) columns, which joins refuse."""
    return frame.with_columns(pl.col(name).cast(dtype) for name, dtype in types.items())


def read_conditions(engine: Engine, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{condition_key: the condition's JSON} of the done runs with these keys (one run per
    key is read: every run of a condition stores the same JSON)."""
    first = (
        select(func.min(Run.id))
        .where(Run.status == "done", Run.condition_key.in_(list(keys)))
        .group_by(Run.condition_key)
    )
    with engine.connect() as conn:
        rows = conn.execute(select(Run.condition_key, Run.condition).where(Run.id.in_(first)))
        return {key: dict(condition or {}) for key, condition in rows}


def read_task_info(engine: Engine, names: Sequence[str]) -> pl.DataFrame:
    """Kind and closed option list of the named tasks (a few rows; read with SQLAlchemy)."""
    query = select(Task.name, Task.kind, Task.options).where(Task.name.in_(list(names)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return task_frame(
        {name: (list(options or []) if kind == "closed" else None) for name, kind, options in rows}
    )


def task_frame(closed_options: Mapping[str, Sequence[str] | None]) -> pl.DataFrame:
    """A ``tasks`` frame from {task: closed option list, or None for an open task}."""
    names = sorted(closed_options)
    return pl.DataFrame(
        {
            "task": names,
            "kind": ["open" if closed_options[n] is None else "closed" for n in names],
            "options": [[str(o) for o in (closed_options[n] or [])] for n in names],
        },
        schema={"task": pl.String, "kind": pl.String, "options": pl.List(pl.String)},
    )


def counts_from_frame(
    frame: pl.DataFrame,
    closed_options: Mapping[str, Sequence[str] | None] | None = None,
    mode: str = "sampled",
) -> CountData:
    """``CountData`` from a long frame like the import format (no database involved).

    Columns: family, stage, stage_order, task, prompt, prompt_id, option and ``count``
    (sampled) or ``probability`` (exact); optional ``n_invalid`` per row of a (family,
    stage, task, prompt), ``step`` (the checkpoint; null: the stage's one model) and the
    condition columns temperature, top_p, top_k, max_new_tokens, scaffold (a row without
    any is in the "imported" condition, as imported counts are). A null option with a count stands
    for invalid samples only. ``closed_options`` maps a task to its option list (None or
    absent: open task).
    """
    _check_mode(mode)
    value = "count" if mode == "sampled" else "probability"
    missing = [c for c in [*FRAME_KEYS, "option", value] if c not in frame.columns]
    if missing:
        raise InvalidInput(f"the counts frame lacks column(s) {', '.join(missing)}")
    types = {"n_invalid": pl.Int64, "step": pl.Int64, "temperature": pl.Float64,
             "top_p": pl.Float64, "top_k": pl.Int64, "max_new_tokens": pl.Int64,
             "scaffold": pl.String}
    frame = frame.with_columns(
        (pl.col(name) if name in frame.columns else pl.lit(0 if name == "n_invalid" else None))
        .cast(dtype)
        .alias(name)
        for name, dtype in types.items()
    )
    frame, conditions = _with_condition_keys(frame, mode)
    runs = frame.with_columns(
        pl.col("stage_order", "prompt_id").cast(pl.Int64),
        covered_mass=pl.lit(None, pl.Float64),
    )
    # n_invalid is per (model, prompt): take it once per unit, not once per option row.
    units = _pool_units(runs.unique(subset=UNIT_KEYS, keep="first", maintain_order=True))
    counts = (
        runs.filter(pl.col("option").is_not_null() & (pl.col(value) > 0))
        .join(units.select(*UNIT_KEYS, "unit"), on=UNIT_KEYS, nulls_equal=True)
        .select("unit", pl.col("option").cast(pl.String), pl.col(value).alias("value"))
    )
    if mode == "sampled":
        counts = counts.with_columns(pl.col("value").cast(pl.Int64))
    else:
        counts = counts.with_columns(pl.col("value").cast(pl.Float64))
    names = units["task"].unique().to_list()
    closed_options = closed_options or {}
    tasks = task_frame({n: closed_options.get(n) for n in names})
    return CountData(mode, units, counts, tasks, conditions=conditions)


def _with_condition_keys(frame: pl.DataFrame, mode: str) -> tuple[pl.DataFrame, dict]:
    """Add ``condition_key`` from the condition columns; returns {key: condition JSON}."""
    columns = [*CONDITION_FIELDS, "scaffold"]
    combos = frame.select(columns).unique()
    conditions, keys = {}, []
    for row in combos.iter_rows(named=True):
        if all(v is None for v in row.values()):
            condition = Condition(mode, imported=True)
        else:
            condition = Condition(mode, **row)
        conditions[condition.key] = condition.to_dict()
        keys.append(condition.key)
    combos = combos.with_columns(condition_key=pl.Series(keys, dtype=pl.String))
    return frame.join(combos, on=columns, nulls_equal=True), conditions


def option_sets(data: CountData) -> pl.DataFrame:
    """The option set ``O_t`` of every task: ``task, option, option_index`` (text order).

    Closed task: its option list. Open task: the union of options observed with a positive
    value for that task across every family and stage in ``data``. Options are indexed in
    text (code point) order within their task, the tie order of the seed support.
    """
    observed = (
        data.counts.lazy()
        .join(data.units.lazy().select("unit", "task"), on="unit")
        .select("task", "option")
        .unique()
        .join(data.tasks.lazy().filter(pl.col("kind") == "open").select("task"), on="task")
    )
    closed = (
        data.tasks.lazy()
        .filter(pl.col("kind") == "closed")
        .explode("options")
        .select("task", pl.col("options").alias("option"))
        .drop_nulls()
        .unique()
    )
    return (
        pl.concat([observed, closed])
        .sort("task", "option")
        .with_columns(option_index=pl.int_range(pl.len(), dtype=pl.Int64).over("task"))
        .collect()
    )


def _pool_units(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per (family, stage, step, task, prompt, condition), runs pooled, numbered in
    a stable order."""
    return (
        runs.group_by(UNIT_KEYS)
        .agg(pl.col("n_invalid").sum(), pl.col("covered_mass").mean())
        .sort(
            "family", "task", "condition_key", "stage_order", "stage", "step", "prompt_id",
            nulls_last=True,
        )
        .with_row_index("unit")
    )


def _select_conditions(
    runs: pl.DataFrame, selection: ConditionSelection, mode: str
) -> pl.DataFrame:
    """The runs whose sampling parameters are among the selected values; NotFound (saying
    which values the selection holds) when none is."""
    wanted = selection.filters()
    if not wanted:
        return runs
    kept = runs
    for name, values in wanted.items():
        chosen = pl.col(name).is_in([v for v in values if not (name == "top_k" and v == 0)])
        if name == "top_k" and 0 in values:  # top-k 0 is "off", stored as null
            chosen = chosen | pl.col(name).is_null()
        kept = kept.filter(chosen.fill_null(False))
    if kept.is_empty():
        asked = "; ".join(f"{n} {', '.join(f'{v:g}' for v in vs)}" for n, vs in wanted.items())
        held = "; ".join(
            f"{n} " + (", ".join(f"{v:g}" for v in runs[n].drop_nulls().unique().sort()) or "none")
            for n in wanted
        )
        raise NotFound(
            f"no done {mode} runs with {asked} in the selection; it holds {held} "
            "(imported counts without condition columns have none)"
        )
    return kept


def select_sql(
    engine: Engine, view: str, columns: Iterable[str], filters: Mapping[str, Sequence[str] | None]
) -> str:
    """A SELECT of ``columns`` from ``view`` with IN filters, values rendered as literals.

    connectorx takes no bound parameters; SQLAlchemy quotes the literal values.
    """
    query = select(*(literal_column(c) for c in columns)).select_from(table(view))
    for name, values in filters.items():
        if values is not None:
            query = query.where(column(name).in_(list(values)))
    return str(query.compile(engine, compile_kwargs={"literal_binds": True}))


def _check_mode(mode: str) -> None:
    if mode not in RUN_MODES:
        raise InvalidInput(f"unknown mode {mode!r}; use one of {', '.join(RUN_MODES)}")


def _check_selection(
    engine: Engine,
    runs: pl.DataFrame,
    families: Sequence[str] | None,
    tasks: Sequence[str] | None,
    mode: str,
) -> None:
    """Refuse a selection that matches nothing, naming what is missing and what exists."""
    for label, wanted, column_name in (("family", families, "family"), ("task", tasks, "task")):
        if wanted is None:
            continue
        missing = sorted(set(wanted) - set(runs[column_name].to_list()))
        if missing:
            query = (
                select(column(column_name))
                .select_from(table("v_runs"))
                .where(column("mode") == mode)
                .distinct()
            )
            with engine.connect() as conn:
                present = sorted(conn.execute(query).scalars().all())
            known = ", ".join(present) if present else "none"
            raise NotFound(
                f"no done {mode} runs for {label} {', '.join(missing)}; "
                f"{label} names with {mode} runs: {known}"
            )
    if runs.is_empty():
        raise NotFound(
            f"the store has no done {mode} runs to analyze; import counts with "
            "`catalog import-counts FILE` or sample with `catalog ingest`"
            + ("" if mode == "exact" else " (or try --mode exact)")
        )

