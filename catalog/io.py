"""Counts in and out of the catalog as CSV or Parquet files.

``import_counts`` stores counts sampled elsewhere (another sampler, an API model, a paper's
released data). One row is the count of one option for one (model, task, prompt):

    family,stage,model,task,prompt,option,count
    olmo-2-1124-7b,base,allenai/OLMo-2-1124-7B,digit,plain,7,412

Optional columns: ``stage_order`` (else base=0, sft=1, dpo=2, rl/rlvr/instruct=3),
``prompt_text`` (stored with a new prompt) and ``n_invalid`` (samples whose answer was not
an option; one value per (model, task, prompt)).

The whole file is validated with vectorized Polars checks before anything is written, and
written in one transaction: a bad row fails the import with its row number and column, and
nothing from the file is stored. Each (model, task, prompt) becomes one done 'sampled' run
whose unit key is a hash of ("import", model, task, prompt), so importing a file again
replaces those runs' counts instead of adding to them. Counts are bulk-loaded (PostgreSQL
COPY, SQLite executemany in large chunks), never one ORM object per row.

``export_counts`` writes the same columns, so an export can be imported elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.schema import AddConstraint, DropConstraint

from catalog import __version__, registry
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.enums import COUNT_FILE_FORMATS
from catalog.errors import InvalidInput, NotFound
from catalog.schema import Model, OptionCount, Prompt, Run, Task, utcnow
from catalog.views import read_view

REQUIRED_COLUMNS = ("family", "stage", "model", "task", "prompt", "option", "count")
OPTIONAL_COLUMNS = ("stage_order", "prompt_text", "n_invalid")
EXPORT_COLUMNS = (
    "family", "stage", "stage_order", "model", "task", "prompt", "prompt_text", "option",
    "count", "n_invalid",
)
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Longest values the schema stores (catalog/schema.py).
_MAX_LENGTHS = {"family": 200, "stage": 100, "model": 200, "task": 200, "prompt": 200, "option": 500}
_NAME_COLUMNS = ("family", "stage", "model", "task", "prompt", "option")
_INT_COLUMNS = ("count", "stage_order", "n_invalid")
_RUN_KEYS = ["model", "task", "prompt"]
_ROW = "__row"  # 1-based data row number, for error messages
_CHUNK_ROWS = 500_000
_DROP_FOREIGN_KEY_ROWS = 100_000


@dataclass(frozen=True)
class ImportSummary:
    """What one import stored."""

    path: str
    rows: int
    runs: int
    replaced_runs: int
    samples: int
    new_models: int
    new_tasks: int
    new_prompts: int

    def __str__(self) -> str:
        return (
            f"{self.path}: imported {self.rows:,} rows as {self.runs:,} runs "
            f"({self.replaced_runs:,} replaced), {self.samples:,} valid samples; "
            f"new: {self.new_models} models, {self.new_tasks} tasks, {self.new_prompts} prompts"
        )


def import_unit_key(model: str, task: str, prompt: str) -> str:
    """The unit key of imported counts: the same (model, task, prompt) is the same run."""
    return hashlib.sha256(json.dumps(["import", model, task, prompt]).encode()).hexdigest()


def import_counts(engine: Engine, path: str | Path) -> ImportSummary:
    """Validate a counts file (CSV or Parquet) and store it in one transaction."""
    path = Path(path)
    checker = _Checker(path)
    frame = checker.validated(_read_counts_file(path))
    with session_scope(engine) as session:
        ids, created = _registered(session, frame, checker)
        frame = frame.join(ids.models, on="model").join(ids.prompts, on=["task", "prompt"])
        runs = _runs(frame)
        conn = session.connection()
        with _bulk_load(conn, frame.height):
            replaced = _delete_imported(conn, runs)
            run_ids = _insert_runs(conn, runs, str(path))
            _insert_option_counts(conn, frame.join(run_ids, on=_RUN_KEYS))
    return ImportSummary(
        path=str(path),
        rows=frame.height,
        runs=runs.height,
        replaced_runs=replaced,
        samples=int(frame["count"].sum()),
        **created,
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

    Sampled runs of the same (model, task, prompt) are pooled, as the metrics pool them.
    """
    path = Path(path)
    format = format or FORMATS.get(path.suffix.lower())
    if format not in COUNT_FILE_FORMATS:
        raise InvalidInput(
            f"{path}: cannot tell the format; use --format {' or '.join(COUNT_FILE_FORMATS)}"
        )
    keys = ["family", "stage", "stage_order", "model", "task", "prompt", "prompt_text"]
    if mode == "sampled":
        counts = read_view(engine, "v_counts", family=family, task=task, mode="sampled")
        invalid = (
            counts.unique("run_id")
            .group_by(_RUN_KEYS)
            .agg(pl.col("n_invalid").sum())
        )
        frame = (
            counts.group_by([*keys, "prompt_id", "option"])
            .agg(pl.col("count").sum())
            .join(invalid, on=_RUN_KEYS)
            .sort("family", "stage_order", "model", "task", "prompt_id", "option")
            .select(EXPORT_COLUMNS)
        )
    elif mode == "exact":
        frame = (
            read_view(engine, "v_distributions", family=family, task=task, mode="exact")
            .sort("family", "stage_order", "model", "task", "prompt_id", "option")
            .select(*keys, "option", "probability")
        )
    else:
        raise InvalidInput(f"mode must be 'sampled' or 'exact', got {mode!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return frame.height


# ---------------------------------------------------------------------------- reading, checks


def _read_counts_file(path: Path) -> pl.DataFrame:
    format = FORMATS.get(path.suffix.lower())
    if format is None:
        raise InvalidInput(f"{path}: counts files are .csv or .parquet")
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    try:
        if format == "csv":
            # Everything as text: numbers are parsed below, where a bad one can be located.
            frame = pl.read_csv(path, infer_schema=False, raise_if_empty=False)
        else:
            frame = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{path}: cannot read it as {format} ({reason})") from None
    return frame.rename({name: name.strip().lower() for name in frame.columns})


class _Checker:
    """Vectorized checks of a counts frame; each failure names file, row, line and column."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_csv = FORMATS.get(path.suffix.lower()) == "csv"

    def fail(self, row: int, column: str, problem: str) -> InvalidInput:
        line = f" (line {row + 1})" if self.is_csv else ""
        return InvalidInput(f"{self.path}: row {row}{line}, column {column}: {problem}")

    def first(self, frame: pl.DataFrame, bad: pl.Expr) -> dict | None:
        """The first row where ``bad`` holds, as a dict, or None."""
        rows = frame.filter(bad).sort(_ROW).head(1).to_dicts()
        return rows[0] if rows else None

    def validated(self, raw: pl.DataFrame) -> pl.DataFrame:
        missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
        if missing:
            raise InvalidInput(
                f"{self.path}: missing column(s) {', '.join(missing)}; required: "
                f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})"
            )
        if raw.height == 0:
            raise InvalidInput(f"{self.path}: no rows to import")
        frame = raw.select(
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(_ROW),
            *(c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in raw.columns),
        )
        for column in OPTIONAL_COLUMNS:
            if column not in frame.columns:
                frame = frame.with_columns(pl.lit(None, pl.String).alias(column))
        frame = frame.with_columns(
            pl.col(_NAME_COLUMNS).cast(pl.String).str.strip_chars().replace("", None),
            pl.col("prompt_text").cast(pl.String).replace("", None),
        )
        for column in REQUIRED_COLUMNS:
            bad = self.first(frame, pl.col(column).is_null())
            if bad:
                raise self.fail(bad[_ROW], column, "empty; every row needs a value")
        frame = frame.with_columns(
            self._parsed_integer(frame, column) for column in _INT_COLUMNS
        )
        for column, longest in _MAX_LENGTHS.items():
            bad = self.first(frame, pl.col(column).str.len_chars() > longest)
            if bad:
                raise self.fail(bad[_ROW], column, f"longer than {longest} characters")
        frame = self._with_stage_orders(frame)
        self._check_consistency(frame)
        return frame.with_columns(pl.col("n_invalid").max().over(_RUN_KEYS).fill_null(0))

    def _parsed_integer(self, frame: pl.DataFrame, column: str) -> pl.Series:
        """The column as Int64 (text, integers or whole floats); the first bad row fails."""
        dtype, value = frame.schema[column], pl.col(column)
        if dtype.is_integer():
            parsed = value.cast(pl.Int64)
        elif dtype.is_float():
            whole = value.is_finite() & (value == value.floor())
            parsed = pl.when(whole).then(value).cast(pl.Int64, strict=False)
        else:
            parsed = value.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)
        checked = frame.with_columns(parsed.alias("__parsed"))
        bad = self.first(checked, pl.col(column).is_not_null() & pl.col("__parsed").is_null())
        if bad:
            raise self.fail(bad[_ROW], column, f"{bad[column]!r} is not a whole number")
        bad = self.first(checked, pl.col("__parsed") < 0)
        if bad:
            raise self.fail(bad[_ROW], column, f"{bad['__parsed']} is negative; use a number >= 0")
        return checked["__parsed"].alias(column)

    def _with_stage_orders(self, frame: pl.DataFrame) -> pl.DataFrame:
        defaults = pl.col("stage").str.to_lowercase().replace_strict(
            registry.DEFAULT_STAGE_ORDERS, default=None, return_dtype=pl.Int64
        )
        frame = frame.with_columns(pl.coalesce("stage_order", defaults).alias("stage_order"))
        bad = self.first(frame, pl.col("stage_order").is_null())
        if bad:
            raise self.fail(
                bad[_ROW], "stage",
                f"unknown stage name {bad['stage']!r} with no stage_order; add a stage_order "
                "column (base=0, sft=1, dpo=2, rl/rlvr/instruct=3)",
            )
        return frame

    def _check_consistency(self, frame: pl.DataFrame) -> None:
        # A value that must be the same on every row of a group: report the first row
        # that differs from its group's first row.
        frame = frame.with_columns(pl.col("stage").str.to_lowercase().alias("__stage"))
        for group, column, meaning in (
            (["model"], "family", "one model belongs to one family"),
            (["model"], "__stage", "one model is one stage"),
            (["model"], "stage_order", "one model has one stage order"),
            (["family", "__stage"], "model", "one stage of a family is one model"),
            (_RUN_KEYS, "n_invalid", "n_invalid is one number per (model, task, prompt)"),
            (["task", "prompt"], "prompt_text", "one prompt key has one text"),
        ):
            first = pl.col(column).drop_nulls().first().over(group)
            bad = self.first(frame, pl.col(column).is_not_null() & (pl.col(column) != first))
            if bad:
                name = column.removeprefix("__")
                raise self.fail(bad[_ROW], name, f"{bad[name]!r} differs from an earlier row ({meaning})")
        keys = [*_RUN_KEYS, "option"]
        bad = self.first(frame, ~pl.struct(keys).is_first_distinct())
        if bad:
            raise self.fail(
                bad[_ROW], "option",
                f"{bad['option']!r} repeats an earlier row of the same model, task and prompt",
            )


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Ids:
    models: pl.DataFrame  # model, model_id
    prompts: pl.DataFrame  # task, prompt, task_id, prompt_id


def _registered(session: Session, frame: pl.DataFrame, checker: _Checker) -> tuple[_Ids, dict]:
    """Check the file against the catalog and create its unknown families, models, tasks
    and prompts (a few hundred rows at most; the counts themselves are never looped over)."""
    created = {"new_models": 0, "new_tasks": 0, "new_prompts": 0}
    firsts = lambda keys: frame.sort(_ROW).unique(keys, keep="first", maintain_order=True)  # noqa: E731

    models = {}
    for row in firsts(["model"]).iter_rows(named=True):
        model = session.scalar(select(Model).where(Model.name == row["model"]))
        if model is not None:
            stored = (model.family.name, model.stage, model.stage_order)
            if (stored[0], stored[1].lower(), stored[2]) != (
                row["family"], row["stage"].lower(), row["stage_order"]
            ):
                raise checker.fail(
                    row[_ROW], "model",
                    f"{row['model']!r} is registered as family {stored[0]!r}, stage "
                    f"{stored[1]!r}, stage_order {stored[2]}; the file says {row['family']!r}, "
                    f"{row['stage']!r}, {row['stage_order']}",
                )
        else:
            try:
                model = registry.add_model(
                    session, name=row["model"], family=row["family"], stage=row["stage"],
                    stage_order=row["stage_order"],
                    prompt_format="plain" if row["stage_order"] == 0 else "chat",
                )
            except InvalidInput as exc:
                raise checker.fail(row[_ROW], "model", str(exc)) from None
            created["new_models"] += 1
        models[row["model"]] = model.id

    prompt_rows = []
    for row in firsts(["task"]).iter_rows(named=True):
        if session.scalar(select(Task.id).where(Task.name == row["task"])) is None:
            created["new_tasks"] += 1
        task = _import_task(session, row["task"])
        task_rows = frame.filter(pl.col("task") == row["task"])
        if task.kind == "closed":
            allowed = pl.DataFrame({"option": list(task.options)}, schema={"option": pl.String})
            bad = checker.first(task_rows.join(allowed, on="option", how="anti"), pl.lit(True))
            if bad:
                raise checker.fail(
                    bad[_ROW], "option",
                    f"{bad['option']!r} is not an option of the closed task {task.name!r} "
                    f"(options: {', '.join(task.options)})",
                )
        keys = task_rows.group_by("prompt", maintain_order=True).agg(
            pl.col("prompt_text").drop_nulls().first()
        )
        stored = set(session.scalars(select(Prompt.key).where(Prompt.task_id == task.id)))
        try:
            prompts = registry.ensure_prompts(
                session, task, keys.select("prompt", "prompt_text").iter_rows()
            )
        except InvalidInput as exc:
            raise InvalidInput(f"{checker.path}: {exc}") from None
        created["new_prompts"] += len(prompts.keys() - stored)
        prompt_rows += [(task.name, key, task.id, p.id) for key, p in prompts.items()]

    return (
        _Ids(
            models=pl.DataFrame(
                list(models.items()), schema={"model": pl.String, "model_id": pl.Int64},
                orient="row",
            ),
            prompts=pl.DataFrame(
                prompt_rows,
                schema={"task": pl.String, "prompt": pl.String, "task_id": pl.Int64,
                        "prompt_id": pl.Int64},
                orient="row",
            ),
        ),
        created,
    )


def _import_task(session: Session, name: str) -> Task:
    """The stored or bundled task of that name (bundled tasks keep their closed options),
    else a new open task."""
    try:
        return registry.task_by_name(session, name)
    except NotFound:
        return registry.ensure_open_task(session, name)


# ---------------------------------------------------------------------------- bulk writes


def _runs(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, task, prompt): its ids, unit key and sample numbers."""
    runs = frame.group_by(_RUN_KEYS, maintain_order=True).agg(
        pl.col("model_id", "task_id", "prompt_id", "n_invalid").first(),
        pl.col("count").sum().alias("n_valid"),
    )
    keys = [import_unit_key(*key) for key in runs.select(_RUN_KEYS).iter_rows()]
    return runs.with_columns(pl.Series("unit_key", keys, dtype=pl.String))


@contextlib.contextmanager
def _bulk_load(conn: Connection, rows: int) -> Iterator[None]:
    """Load without row-by-row foreign-key checks where that pays and is allowed.

    PostgreSQL checks option_counts' foreign key once per row, which measured 4x slower than
    the COPY itself. A big import drops that key and adds it back afterwards (validated by
    one join) in the same transaction, so option_counts stays locked for other sessions until
    the import commits. A user who does not own the table keeps the row-by-row checks.
    """
    foreign_key = next(iter(OptionCount.__table__.foreign_key_constraints))
    dropped = False
    if conn.dialect.name == "postgresql" and rows >= _DROP_FOREIGN_KEY_ROWS:
        try:
            with conn.begin_nested():
                conn.execute(DropConstraint(foreign_key))
            dropped = True
        except DBAPIError:
            pass
    yield
    if dropped:
        conn.execute(AddConstraint(foreign_key))


def _delete_imported(conn: Connection, runs: pl.DataFrame) -> int:
    """Delete earlier imports of these units with their counts; returns how many."""
    old = _import_run_ids(conn, runs["model_id"].unique().to_list())
    old_ids = old.join(runs.select("unit_key"), on="unit_key")["run_id"].to_list()
    for start in range(0, len(old_ids), 10_000):
        chunk = old_ids[start : start + 10_000]
        conn.execute(OptionCount.__table__.delete().where(OptionCount.run_id.in_(chunk)))
        conn.execute(Run.__table__.delete().where(Run.id.in_(chunk)))
    return len(old_ids)


def _insert_runs(conn: Connection, runs: pl.DataFrame, source_file: str) -> pl.DataFrame:
    """Insert one done 'import' run per row; returns (model, task, prompt, run_id)."""
    now = utcnow()
    condition = Condition.unknown_import()
    rows = runs.select(
        "unit_key", "model_id", "task_id", "prompt_id",
        condition_key=pl.lit(condition.key),
        mode=pl.lit("sampled"),
        origin=pl.lit("import"),
        status=pl.lit("done"),
        n_samples=pl.when(pl.col("n_valid") + pl.col("n_invalid") > 0).then(
            pl.col("n_valid") + pl.col("n_invalid")
        ),
        n_invalid="n_invalid",
        attempts=pl.lit(0),
        catalog_version=pl.lit(__version__),
        source_file=pl.lit(source_file),
    )
    if conn.dialect.name == "postgresql":
        stamped = rows.with_columns(
            sampling=pl.lit("{}"),
            condition=pl.lit(json.dumps(condition.to_dict())),
            library_versions=pl.lit("{}"),
            created_at=pl.lit(now.isoformat()),
            finished_at=pl.lit(now.isoformat()),
        )
        _copy(conn, "runs", stamped)
    else:
        extra = {"sampling": {}, "condition": condition.to_dict(), "library_versions": {},
                 "created_at": now, "finished_at": now}
        for chunk in rows.iter_slices(_CHUNK_ROWS):
            conn.execute(insert(Run.__table__), [{**row, **extra} for row in chunk.iter_rows(named=True)])
    ids = _import_run_ids(conn, runs["model_id"].unique().to_list())
    return runs.join(ids, on="unit_key").select(*_RUN_KEYS, "run_id")


def _import_run_ids(conn: Connection, model_ids: list[int]) -> pl.DataFrame:
    """(run_id, unit_key) of the imported runs of these models."""
    query = select(Run.id, Run.unit_key).where(Run.origin == "import", Run.model_id.in_(model_ids))
    return pl.DataFrame(
        conn.execute(query).all(),
        schema={"run_id": pl.Int64, "unit_key": pl.String},
        orient="row",
    )


def _insert_option_counts(conn: Connection, frame: pl.DataFrame) -> None:
    # In primary-key order, so that the index grows at its end.
    rows = frame.select("run_id", "option", "count").sort("run_id", "option")
    if conn.dialect.name == "postgresql":
        _copy(conn, "option_counts", rows)
    elif conn.dialect.name == "sqlite":
        cursor = conn.connection.driver_connection.cursor()
        for chunk in rows.iter_slices(_CHUNK_ROWS):
            cursor.executemany(
                "INSERT INTO option_counts (run_id, option, count) VALUES (?, ?, ?)",
                chunk.iter_rows(),
            )
    else:
        for chunk in rows.iter_slices(_CHUNK_ROWS):
            conn.execute(insert(OptionCount.__table__), chunk.to_dicts())


def _copy(conn: Connection, table: str, rows: pl.DataFrame) -> None:
    """PostgreSQL COPY of a frame, as CSV written by Polars (no Python object per row)."""
    columns = ", ".join(rows.columns)
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as copy:
        for chunk in rows.iter_slices(_CHUNK_ROWS):
            buffer = io.BytesIO()
            chunk.write_csv(buffer, include_header=False)
            copy.write(buffer.getvalue())
