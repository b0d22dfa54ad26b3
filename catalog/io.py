"""Counts and raw generations in and out of the catalog.

``import_counts`` stores counts sampled elsewhere (another sampler, an API model, a paper's
released data), from CSV or Parquet. One row is the count of one option for one (model,
task, prompt):

    family,stage,model,task,prompt,option,count
    olmo-2-1124-7b,base,allenai/OLMo-2-1124-7B,digit,plain,7,412

``import_completions`` stores raw generations (CSV, Parquet or JSON Lines): one record per
generation (``completion``, optional ``count``, default 1) or per prompt with a list
(``completions``). Their texts are normalized with the task's normalizer, as ingested
samples are, and stored as completions and option counts, so ``catalog renormalize``
re-derives them like ingested runs.

Optional columns of both: ``stage_order`` (else base=0, sft=1, dpo=2, rl/rlvr/instruct=3),
``step`` (the model is that checkpoint of its stage), ``prompt_text`` (stored with a new
prompt; without a ``prompt`` key the task's prompt of that text is used, else a key made
from the text), ``prompt_position`` (the prompt id of a new prompt key, see below) and the
sampling condition, ``temperature, top_p, top_k, max_new_tokens,
scaffold`` (unknown fields stay null; a record with none of them has the "imported"
condition, see :mod:`catalog.conditions`); import-counts also ``n_invalid`` (samples whose
answer was not an option; one value per run).

Prompt ids (``prompts.position``, which the analysis uses, e.g. for its even/odd held-out
split) do not depend on the order of the file's rows: the prompt keys an import adds to a
task take the positions given in ``prompt_position``, and those without one take the
smallest free positions in key order (code point order). A stored key keeps its position
(a different ``prompt_position`` for it is refused), so bundled tasks keep their file order.

A run is one (model, task, prompt, condition); its unit key is a hash of those and
"import", so importing a file again replaces its runs instead of adding to them (imports
of counts and of completions of one run replace each other).

Files are read in chunks (:mod:`catalog.records`): memory stays bounded however long the
file is. Each chunk is checked with vectorized Polars expressions, then written with bulk
statements (PostgreSQL COPY, SQLite executemany), all in one transaction: a bad record
fails the import with its row or line and column, and nothing from the file is stored.
Values that must agree across the file (a model's family, a prompt's text, a run's
n_invalid) are checked against what earlier chunks said.

``export_counts`` writes the import-counts columns, so an export can be imported elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from sqlalchemy import Connection, Engine, bindparam, delete, func, select, tuple_
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.schema import AddConstraint, DropConstraint

from catalog import __version__, presets, registry
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.enums import COUNT_FILE_FORMATS, INVALID_REASONS
from catalog.errors import InvalidInput, NotFound
from catalog.limits import integer_max, shown
from catalog.records import LINE, ROW, FieldMap, RecordFile, first_bad, parsed_float, parsed_integer
from catalog.schema import (
    INVALID_REASON_COLUMNS,
    Completion,
    ExactProb,
    Family,
    Model,
    OptionCount,
    Prompt,
    Run,
    Task,
    utcnow,
)
from catalog.views import read_view

CONDITION_COLUMNS = ("temperature", "top_p", "top_k", "max_new_tokens", "scaffold")
REQUIRED_COLUMNS = ("family", "stage", "model", "task", "prompt", "option", "count")
OPTIONAL_COLUMNS = ("stage_order", "step", "prompt_text", "prompt_position", "n_invalid",
                    *CONDITION_COLUMNS)
COMPLETION_REQUIRED = ("family", "stage", "model", "task", "prompt")
COMPLETION_TEXTS = ("completion", "completions")  # one of them
COMPLETION_OPTIONAL = ("count", "stage_order", "step", "prompt_text", "prompt_position",
                       *CONDITION_COLUMNS)
EXPORT_COLUMNS = (
    "family", "stage", "stage_order", "step", "model", "task", "prompt", "prompt_text",
    "option", "count", "n_invalid", *CONDITION_COLUMNS,
)
# Field maps of other tools' output files (import-completions --preset; names: enums).
PRESETS = {
    # vLLM: {"prompt": "<text>", "outputs": [{"text": ...}, ...]} per line (or strings).
    "vllm": FieldMap(rename={"prompt": "prompt_text", "outputs": "completions"}),
}
# Longest values the schema stores (catalog/schema.py).
_MAX_LENGTHS = {"family": 200, "stage": 100, "model": 200, "task": 200, "prompt": 200,
                "option": 500, "scaffold": 200}
_NAME_COLUMNS = ("family", "stage", "model", "task", "prompt")
_RUN_KEYS = ["model", "task", "prompt", "condition_key"]
_STAGE = "__stage"  # the stage name lower-cased: stages match case-insensitively
_CHUNK_ROWS = 250_000  # Parquet
_BLOCK_BYTES = 8 << 20  # CSV and JSON Lines: about 170,000 short rows
# A completions file stores one row per distinct text of a run, far fewer than its records:
# bigger blocks spread the per-chunk lookups over more records (measured: 1M JSON lines
# in 1.25 s with 32 MiB blocks against 1.9 s with 8 MiB, peak 500 MiB against 290 MiB).
_COMPLETION_BLOCK_BYTES = 32 << 20
# A file this big loads without row-by-row foreign-key checks (see _bulk_load): as records
# in its first chunk, or as bytes (a completions file writes far fewer rows than records).
_DROP_FOREIGN_KEY_ROWS = 100_000
_MOST_SAMPLES = integer_max("runs.n_samples")
_DROP_FOREIGN_KEY_BYTES = 4 << 20
_IN_BATCH = 5_000  # ids or keys per IN (...) list


@dataclass(frozen=True)
class ImportSummary:
    """What one import stored (``texts``: distinct completion texts, completions only)."""

    path: str
    rows: int
    runs: int
    replaced_runs: int
    samples: int
    new_models: int
    new_tasks: int
    new_prompts: int
    invalid: int = 0
    texts: int | None = None

    def __str__(self) -> str:
        new = (f"new: {self.new_models} models, {self.new_tasks} tasks, "
               f"{self.new_prompts} prompts")
        if self.texts is None:
            return (
                f"{self.path}: imported {self.rows:,} rows as {self.runs:,} runs "
                f"({self.replaced_runs:,} replaced), {self.samples:,} valid samples; {new}"
            )
        return (
            f"{self.path}: imported {self.rows:,} records ({self.texts:,} distinct texts) as "
            f"{self.runs:,} runs ({self.replaced_runs:,} replaced), {self.samples:,} valid "
            f"and {self.invalid:,} invalid samples; {new}"
        )


_UNKNOWN_CONDITION = Condition.unknown_import().key


def import_unit_key(model: str, task: str, prompt: str, condition_key: str | None = None) -> str:
    """The unit key of an imported run: the same (model, task, prompt, condition) is the
    same run. Runs of the "imported" (unknown) condition keep the key they had before
    conditions existed, so re-importing an old file replaces its runs."""
    parts = ["import", model, task, prompt]
    if condition_key is not None and condition_key != _UNKNOWN_CONDITION:
        parts.append(condition_key)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def import_counts(
    engine: Engine, path: str | Path, *, fields: FieldMap | None = None
) -> ImportSummary:
    """Check a counts file (CSV or Parquet) chunk by chunk and store it in one transaction."""
    source = RecordFile(path, formats=COUNT_FILE_FORMATS, columns=(*REQUIRED_COLUMNS,
                        *OPTIONAL_COLUMNS), fields=fields, chunk_rows=_CHUNK_ROWS,
                        block_bytes=_BLOCK_BYTES, what="counts")
    _check_header(source, REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    return _import(engine, source, _CountsImport)


def import_completions(
    engine: Engine, path: str | Path, *, fields: FieldMap | None = None, preset: str | None = None
) -> ImportSummary:
    """Normalize and store raw generations (CSV, Parquet or JSON Lines) in one transaction.

    ``preset`` names a field map of another tool's output (:data:`PRESETS`), or a log
    format that :mod:`catalog.presets` reads (``lm-eval``, ``inspect``); ``fields`` adds
    to it.
    """
    if preset in presets.READERS:  # another tool's log format: read as completion records
        return _import_converted(engine, path, fields, preset)
    if preset is not None and preset not in PRESETS:
        raise InvalidInput(f"unknown preset {preset!r}; the presets are: "
                           f"{', '.join([*PRESETS, *presets.READERS])}")
    if preset is not None:
        fields = PRESETS[preset].merged(fields or FieldMap())
    source = RecordFile(
        path, formats=("csv", "parquet", "jsonl"),
        columns=(*COMPLETION_REQUIRED, *COMPLETION_TEXTS, *COMPLETION_OPTIONAL), fields=fields,
        chunk_rows=_CHUNK_ROWS, block_bytes=_COMPLETION_BLOCK_BYTES,
        list_columns=("completions",),
        what="completions",
    )
    _check_header(source, COMPLETION_REQUIRED, (*COMPLETION_TEXTS, *COMPLETION_OPTIONAL),
                  one_of=COMPLETION_TEXTS)
    return _import(engine, source, _CompletionsImport)


def _import_converted(engine: Engine, path: str | Path, fields: FieldMap | None,
                      preset: str) -> ImportSummary:
    """Import a file that lm-eval or inspect wrote, as its completion records
    (:mod:`catalog.presets`); errors name the file and the record."""
    with presets.converted(preset, path) as flat:
        try:
            summary = import_completions(engine, flat, fields=fields)
        except InvalidInput as exc:
            message = str(exc).replace(f"{flat}: line ", f"{path}: {preset} record ")
            raise InvalidInput(message.replace(str(flat), str(path))) from None
    return dataclasses.replace(summary, path=str(path))


def _check_header(source: RecordFile, required, optional, one_of=()) -> None:
    columns = source.header()
    if columns is None:  # JSON Lines: each record is checked
        return
    if "prompt" not in columns and "prompt_text" in columns:
        columns = [*columns, "prompt"]  # keys are found or made from the texts
    missing = [c for c in required if c not in columns]
    if one_of and not set(one_of) & set(columns):
        missing.append(" or ".join(one_of))
    if missing:
        raise InvalidInput(
            f"{source.path}: missing column(s) {', '.join(missing)}; required: "
            f"{', '.join((*required, *([' or '.join(one_of)] if one_of else [])))} "
            f"(optional: {', '.join(c for c in optional if c not in one_of)})"
        )


def _import(engine: Engine, source: RecordFile, kind: type[_Import]) -> ImportSummary:
    with session_scope(engine) as session:
        importer = kind(session, source)
        for chunk in _read_ahead(source.chunks()):
            importer.add(chunk)
        return importer.finish()


def _read_ahead(chunks: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """The chunks, the next one read in a thread while this one is checked and written
    (Polars parses without holding the GIL); one chunk is read ahead, no more."""
    done = object()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
        upcoming = reader.submit(next, chunks, done)
        while (chunk := upcoming.result()) is not done:
            upcoming = reader.submit(next, chunks, done)
            yield chunk


# ---------------------------------------------------------------------------- export


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


# ---------------------------------------------------------------------------- the import


@dataclass
class _TaskInfo:
    id: int
    kind: str
    options: tuple[str, ...]
    normalize: registry.TaskNormalizer
    prompt_keys: dict[str, str] = field(default_factory=dict)  # stored text -> key


class _Import:
    """One import in one transaction: what earlier chunks established (models, tasks,
    prompts, conditions, runs and their totals) and the steps every chunk goes through."""

    columns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    # Tables whose foreign keys a big PostgreSQL import drops while it loads.
    bulk_tables: tuple[type, ...] = (Run,)

    def __init__(self, session: Session, source: RecordFile) -> None:
        self.session, self.source = session, source
        self.conn = session.connection()
        self.models = pl.DataFrame(schema={
            "model": pl.String, "family": pl.String, _STAGE: pl.String,
            "stage_order": pl.Int64, "step": pl.Int64, "model_id": pl.Int64,
        })
        self.imported_before: set[int] = set()  # models with imported runs from earlier files
        self.tasks: dict[str, _TaskInfo] = {}
        self.prompts = pl.DataFrame(schema={
            "task": pl.String, "prompt": pl.String, "prompt_id": pl.Int64,
            "prompt_text": pl.String,
        })
        self.conditions = pl.DataFrame(schema={
            **dict.fromkeys(("temperature", "top_p"), pl.Float64),
            **dict.fromkeys(("top_k", "max_new_tokens"), pl.Int64),
            "scaffold": pl.String, "condition_key": pl.String, "condition": pl.String,
            "top_k_condition": pl.Int64,
        })
        # Every run of this import; ``spanning``: rows of it came in more than one chunk.
        self.runs = pl.DataFrame(schema={
            **dict.fromkeys(_RUN_KEYS, pl.String), "run_id": pl.Int64, "n_valid": pl.Int64,
            "n_invalid": pl.Int64, "spanning": pl.Boolean,
        })
        # Positions the file gives its prompt keys; the prompts this import created.
        self.positions = pl.DataFrame(schema={"task": pl.String, "prompt": pl.String,
                                              "prompt_position": pl.Int64})
        self.created_prompts: dict[str, set[str]] = {}
        self.rows = 0
        self.replaced = 0
        self.created = {"new_models": 0, "new_tasks": 0, "new_prompts": 0}
        self._foreign_keys = contextlib.ExitStack()

    # ------------------------------------------------------------------------ per chunk

    def add(self, raw: pl.DataFrame) -> None:
        if raw.height == 0:
            return
        if not self.rows and (raw.height >= _DROP_FOREIGN_KEY_ROWS
                              or self.source.path.stat().st_size >= _DROP_FOREIGN_KEY_BYTES):
            self._foreign_keys.enter_context(_bulk_load(self.conn, self.bulk_tables))
        self.rows += raw.height
        frame = self.checked(raw)
        # What records say about their model, prompt, condition and run is checked and
        # resolved once per group of records that say the same (a group reports its first
        # record, so the first bad record is still the one reported), not once per row.
        groups = self.described(self.grouped(frame))
        groups = self._with_models(groups)
        groups = self._with_prompts(groups)
        groups = self._with_conditions(groups)
        groups = self.prepared(groups)
        groups = self._with_runs(groups)
        self.write(frame, groups)

    def checked(self, raw: pl.DataFrame) -> pl.DataFrame:
        """Every column, checked where a record's own value is (subclasses add theirs)."""
        frame = raw.with_columns(
            pl.lit(None, pl.String).alias(c) for c in self.columns if c not in raw.columns
        )
        for column in self.columns:
            nested = isinstance(frame.schema[column], (pl.List, pl.Struct, pl.Array))
            if column != "completions" and nested:
                bad = first_bad(frame, pl.col(column).is_not_null())
                raise self.source.fail(bad, column, "must be one value, not a list or an object")
        return frame

    def described(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The groups' names, numbers and condition typed and checked."""
        source = self.source
        frame = frame.with_columns(
            *(_stripped(c) for c in (*_NAME_COLUMNS, "scaffold")),
            _stripped("prompt_text", strip=False),
        )
        missing = {column: pl.col(column).is_null() for column in self.required
                   if column in frame.columns}
        missing["prompt"] = missing["prompt"] & pl.col("prompt_text").is_null()
        if frame.select(pl.any_horizontal(*missing.values()).any()).item():
            for column, empty in missing.items():
                bad = first_bad(frame, empty)
                if bad:
                    need = "a prompt key or a prompt_text" if column == "prompt" else "a value"
                    raise source.fail(bad, column, f"empty; every record needs {need}")
        frame = frame.with_columns(
            parsed_integer(source, frame, "stage_order", stored_in="models.stage_order"),
            parsed_integer(source, frame, "step", stored_in="models.step"),
            parsed_integer(source, frame, "prompt_position", stored_in="prompts.position"),
            parsed_integer(source, frame, "top_k", stored_in="runs.top_k"),
            parsed_integer(source, frame, "max_new_tokens", least=1,
                           stored_in="runs.max_new_tokens"),
            parsed_float(source, frame, "temperature"),
            parsed_float(source, frame, "top_p"),
        )
        self._require(frame, pl.col("temperature") <= 0, "temperature", "must be > 0")
        self._require(frame, (pl.col("top_p") <= 0) | (pl.col("top_p") > 1), "top_p",
                      "must be in (0, 1]")
        longest = frame.select(
            pl.col(c).cast(pl.String).str.len_chars().max() for c in _MAX_LENGTHS
            if c in frame.columns
        ).row(0, named=True)
        for column, length in longest.items():
            if length is not None and length > _MAX_LENGTHS[column]:
                self._require(frame, pl.col(column).str.len_chars() > _MAX_LENGTHS[column],
                              column, f"longer than {_MAX_LENGTHS[column]} characters", show=False)
        return self._with_stage_orders(frame)

    def _require(self, frame: pl.DataFrame, bad: pl.Expr, column: str, problem: str,
                 show: bool = True) -> None:
        """Fail at the first record where ``bad`` holds."""
        record = first_bad(frame, bad)
        if record:
            value = f"{shown(record[column])} " if show else ""
            raise self.source.fail(record, column, f"{value}{problem}")

    def _with_stage_orders(self, frame: pl.DataFrame) -> pl.DataFrame:
        defaults = pl.col("stage").str.to_lowercase().replace_strict(
            registry.DEFAULT_STAGE_ORDERS, default=None, return_dtype=pl.Int64
        )
        frame = frame.with_columns(
            pl.coalesce("stage_order", defaults).alias("stage_order"),
            pl.col("stage").str.to_lowercase().alias(_STAGE),
        )
        record = first_bad(frame, pl.col("stage_order").is_null())
        if record:
            raise self.source.fail(
                record, "stage",
                f"unknown stage name {record['stage']!r} with no stage_order; add a "
                "stage_order column (base=0, sft=1, dpo=2, rl/rlvr/instruct=3)",
            )
        return frame

    def _consistent(self, frame: pl.DataFrame, known: pl.DataFrame, group: list[str],
                    checks: Sequence[tuple[str, str]]) -> None:
        """Every record's value of each (column, meaning) agrees with what ``known`` says
        for its group (null: nothing said)."""
        checks = [(c, m) for c, m in checks if frame[c].null_count() < frame.height]
        if not checks or not known.height:
            return
        joined = frame.join(
            known.select(*group, *(pl.col(c).alias(f"{c}__known") for c, _ in checks)),
            on=group, nulls_equal=True,
        )
        for column, meaning in checks:
            record = first_bad(joined, pl.col(column).is_not_null()
                               & pl.col(f"{column}__known").is_not_null()
                               & (pl.col(column) != pl.col(f"{column}__known")))
            if record:
                name = column.removeprefix("__")
                raise self.source.fail(
                    record, name, f"{shown(record[name])} differs from an earlier row ({meaning})"
                )

    def _with_models(self, frame: pl.DataFrame) -> pl.DataFrame:
        new = frame.unique("model", keep="first", maintain_order=True).join(
            self.models, on="model", how="anti"
        )
        for record in new.iter_rows(named=True):
            same_stage = self.models.filter(
                pl.col("family") == record["family"], pl.col(_STAGE) == record[_STAGE],
                pl.col("step").eq_missing(record["step"]),
            )
            if same_stage.height:
                raise self.source.fail(
                    record, "model", f"{record['model']!r} differs from an earlier row (one "
                    "stage of a family, or one step of it, is one model)",
                )
            model_id = self._model(record)
            self.models = self.models.vstack(pl.DataFrame([{
                **{c: record[c] for c in self.models.columns if c != "model_id"},
                "model_id": model_id,
            }], schema=self.models.schema))
        self._consistent(frame, self.models, ["model"], (
            ("family", "one model belongs to one family"),
            (_STAGE, "one model is one stage"),
            ("stage_order", "one model has one stage order"),
        ))
        joined = frame.join(
            self.models.select("model", "model_id", pl.col("step").alias("__step")), on="model"
        )
        self._require(joined, ~pl.col("step").eq_missing(pl.col("__step")), "step",
                      "differs from an earlier row (one model is one checkpoint)")
        return joined.drop("__step")

    def _model(self, record: dict) -> int:
        """The id of the record's model, registered if new (with its first record's values)."""
        model = self.session.scalar(select(Model).where(Model.name == record["model"]))
        if model is not None:
            stored = (model.family.name, model.stage.lower(), model.stage_order, model.step)
            given = (record["family"], record[_STAGE], record["stage_order"], record["step"])
            if stored != given:
                step = lambda s: "" if s is None else f", step {s}"  # noqa: E731
                raise self.source.fail(
                    record, "model",
                    f"{record['model']!r} is registered as family {stored[0]!r}, stage "
                    f"{model.stage!r}, stage_order {stored[2]}{step(stored[3])}; the file says "
                    f"{record['family']!r}, {record['stage']!r}, {record['stage_order']}"
                    f"{step(record['step'])}",
                )
            earlier = select(Run.id).where(Run.model_id == model.id, Run.origin == "import")
            if self.session.scalar(earlier.limit(1)) is not None:
                self.imported_before.add(model.id)
            return model.id
        try:
            model = registry.add_model(
                self.session, name=record["model"], family=record["family"],
                stage=record["stage"], stage_order=record["stage_order"], step=record["step"],
                prompt_format="plain" if record["stage_order"] == 0 else "chat",
            )
        except InvalidInput as exc:
            raise self.source.fail(record, "model", str(exc)) from None
        self.created["new_models"] += 1
        return model.id

    def _with_prompts(self, frame: pl.DataFrame) -> pl.DataFrame:
        for name in frame["task"].unique(maintain_order=True):
            if name not in self.tasks:
                self.tasks[name] = self._task(name)
        frame = self._with_prompt_keys(frame)
        texts = (
            frame.filter(pl.col("prompt_text").is_not_null())
            .unique(["task", "prompt"], keep="first", maintain_order=True)
            .select("task", "prompt", "prompt_text")
        )
        meaning = (("prompt_text", "one prompt key has one text"),)
        self._consistent(frame, self.prompts, ["task", "prompt"], meaning)
        self._consistent(frame, texts, ["task", "prompt"], meaning)
        self._collect_positions(frame)
        # New keys, and stored keys whose text this chunk gives first.
        todo = (
            frame.unique(["task", "prompt"], keep="first", maintain_order=True)
            .select("task", "prompt")
            .join(texts, on=["task", "prompt"], how="left")
            .join(self.prompts.select("task", "prompt", "prompt_id",
                                      pl.col("prompt_text").alias("__known")),
                  on=["task", "prompt"], how="left")
            .filter(pl.col("prompt_id").is_null()
                    | (pl.col("__known").is_null() & pl.col("prompt_text").is_not_null()))
        )
        if todo.height:
            self._store_prompts(todo)
        task_ids = pl.DataFrame(
            [(name, info.id) for name, info in self.tasks.items()],
            schema={"task": pl.String, "task_id": pl.Int64}, orient="row",
        )
        return (
            frame.join(self.prompts.select("task", "prompt", "prompt_id"), on=["task", "prompt"])
            .join(task_ids, on="task")
        )

    def _collect_positions(self, frame: pl.DataFrame) -> None:
        """Remember the ``prompt_position`` of each key (one key, one position)."""
        given = frame.filter(pl.col("prompt_position").is_not_null())
        if not given.height:
            return
        meaning = (("prompt_position", "one prompt key has one position"),)
        self._consistent(given, self.positions, ["task", "prompt"], meaning)
        firsts = given.unique(["task", "prompt"], keep="first", maintain_order=True)
        self._consistent(given, firsts.select(self.positions.columns), ["task", "prompt"],
                         meaning)
        self.positions = pl.concat([self.positions, firsts.select(self.positions.columns)]
                                   ).unique(["task", "prompt"], keep="first", maintain_order=True)

    def _number_new_prompts(self) -> None:
        """Give the prompts this import created positions that the data alone determine:
        their ``prompt_position``, else the smallest free positions in key order."""
        given = {(t, k): p for t, k, p in self.positions.iter_rows()}
        table = Prompt.__table__
        moves = []
        for name, created in self.created_prompts.items():
            task_id = self.tasks[name].id
            stored = dict(self.conn.execute(
                select(table.c.key, table.c.position).where(table.c.task_id == task_id)
            ).all())
            ids = dict(self.conn.execute(
                select(table.c.key, table.c.id).where(table.c.task_id == task_id)
            ).all())
            kept = {key: pos for key, pos in stored.items() if key not in created}
            for key, pos in kept.items():
                if given.get((name, key), pos) != pos:
                    raise InvalidInput(
                        f"{self.source.path}: prompt {key!r} of task {name!r} is stored at "
                        f"position {pos}, not {given[name, key]} (prompt_position)"
                    )
            owners = {pos: key for key, pos in kept.items()}
            final = {}
            for key in sorted(created):
                pos = given.get((name, key))
                if pos is None:
                    continue
                if pos in owners:
                    raise InvalidInput(
                        f"{self.source.path}: prompt_position {pos} of task {name!r} is given "
                        f"to {key!r} but taken by prompt {owners[pos]!r}"
                    )
                owners[pos] = final[key] = pos
            free = (pos for pos in itertools.count() if pos not in owners)
            final.update((key, next(free)) for key in sorted(created) if key not in final)
            moves += [(ids[key], stored[key], pos) for key, pos in final.items()
                      if stored[key] != pos]
        if not moves:
            return
        # Two passes past every position in use, so the unique (task, position) holds after
        # each statement.
        above = 1 + max(max(old, new) for _, old, new in moves) + len(moves)
        self.conn.execute(
            table.update().where(table.c.id == bindparam("prompt_id")).values(
                position=bindparam("new_position")),
            [{"prompt_id": i, "new_position": above + n} for n, (i, _, _) in enumerate(moves)],
        )
        self.conn.execute(
            table.update().where(table.c.id == bindparam("prompt_id")).values(
                position=bindparam("new_position")),
            [{"prompt_id": i, "new_position": new} for i, _, new in moves],
        )

    def _task(self, name: str) -> _TaskInfo:
        """The stored or bundled task (bundled tasks keep their options), else a new open one."""
        if self.session.scalar(select(Task.id).where(Task.name == name)) is None:
            self.created["new_tasks"] += 1
        try:
            task = registry.task_by_name(self.session, name)
        except NotFound:
            task = registry.ensure_open_task(self.session, name)
        keys = {p.template: p.key for p in task.prompts if p.template is not None}
        return _TaskInfo(task.id, task.kind, tuple(task.options), registry.TaskNormalizer(task),
                         keys)

    def _with_prompt_keys(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Records without a prompt key take the key of their text: the task's stored prompt
        with that text, else ``text-`` and the start of the text's SHA-256."""
        if not frame["prompt"].null_count():
            return frame
        pairs = frame.filter(pl.col("prompt").is_null()).unique(["task", "prompt_text"])
        derived = pl.DataFrame(
            [
                (task, text, self.tasks[task].prompt_keys.get(
                    text, "text-" + hashlib.sha256(text.encode()).hexdigest()[:12]))
                for task, text in pairs.select("task", "prompt_text").iter_rows()
            ],
            schema={"task": pl.String, "prompt_text": pl.String, "__key": pl.String},
            orient="row",
        )
        return (
            frame.join(derived, on=["task", "prompt_text"], how="left", nulls_equal=True)
            .with_columns(pl.coalesce("prompt", "__key").alias("prompt"))
            .drop("__key")
        )

    def _store_prompts(self, todo: pl.DataFrame) -> None:
        """Register new prompt keys (and texts given for stored keys), task by task."""
        for (name,), rows in todo.group_by("task", maintain_order=True):
            task = self.session.get(Task, self.tasks[name].id)
            stored = {p.key for p in task.prompts}
            try:
                prompts = registry.ensure_prompts(
                    self.session, task, rows.select("prompt", "prompt_text").iter_rows()
                )
            except InvalidInput as exc:
                raise InvalidInput(f"{self.source.path}: {exc}") from None
            self.created["new_prompts"] += len(prompts.keys() - stored)
            self.created_prompts.setdefault(name, set()).update(prompts.keys() - stored)
            self.session.expire(task, ["prompts"])
            stored_now = pl.DataFrame(
                [(name, key, p.id, p.template) for key, p in prompts.items()],
                schema=self.prompts.schema, orient="row",
            )
            self.prompts = pl.concat([
                self.prompts.join(stored_now, on=["task", "prompt"], how="anti"), stored_now
            ])

    def _with_conditions(self, frame: pl.DataFrame) -> pl.DataFrame:
        columns = list(CONDITION_COLUMNS)
        new = frame.select(columns).unique().join(self.conditions, on=columns, how="anti",
                                                   nulls_equal=True)
        rows = []
        for values in new.iter_rows():
            if all(value is None for value in values):
                condition = Condition.unknown_import()
            else:
                condition = Condition.sampled(**dict(zip(columns, values)))
            rows.append((*values, condition.key, json.dumps(condition.to_dict()), condition.top_k))
        if rows:
            self.conditions = self.conditions.vstack(
                pl.DataFrame(rows, schema=self.conditions.schema, orient="row")
            )
        return frame.join(self.conditions.select(*columns, "condition_key"), on=columns,
                          nulls_equal=True)

    def grouped(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The chunk's records grouped by everything but what each row alone says."""
        raise NotImplementedError

    def prepared(self, groups: pl.DataFrame) -> pl.DataFrame:
        """Completions: the groups' texts normalized."""
        return groups

    def run_totals(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The chunk's (run key, n_valid, n_invalid); n_invalid null: not said."""
        raise NotImplementedError

    def _with_runs(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows with their run ids: new runs are inserted with this chunk's totals, the
        totals of runs seen before are added up (and written at the end)."""
        totals = self.run_totals(frame)
        seen = totals.join(self.runs, on=_RUN_KEYS, how="semi")
        if seen.height:
            self.runs = self.runs.join(
                seen.select(*_RUN_KEYS, pl.col("n_valid").alias("__valid"),
                            pl.col("n_invalid").alias("__invalid")),
                on=_RUN_KEYS, how="left",
            ).with_columns(
                pl.col("n_valid") + pl.col("__valid").fill_null(0),
                self.merged_invalid(pl.col("n_invalid"), pl.col("__invalid")),
                pl.col("spanning") | pl.col("__valid").is_not_null(),
            ).drop("__valid", "__invalid")
        new = totals.join(self.runs, on=_RUN_KEYS, how="anti")
        self._check_samples(frame, pl.concat([self.runs.select(totals.columns), new],
                                             how="vertical_relaxed"))
        if new.height:
            first = frame.unique(_RUN_KEYS, keep="first", maintain_order=True).select(
                *_RUN_KEYS, "model_id", "task_id", "prompt_id", *CONDITION_COLUMNS[:4]
            )
            inserted = self._insert_runs(new.join(first, on=_RUN_KEYS))
            self.runs = self.runs.vstack(inserted.select(self.runs.columns))
        return frame.join(self.runs.select(*_RUN_KEYS, "run_id"), on=_RUN_KEYS)

    def _check_samples(self, frame: pl.DataFrame, runs: pl.DataFrame) -> None:
        """A run's samples (valid and invalid) must fit its n_samples column."""
        over = runs.filter(pl.col("n_valid") + pl.col("n_invalid").fill_null(0) > _MOST_SAMPLES)
        if over.height:
            record = first_bad(frame.join(over.select(_RUN_KEYS), on=_RUN_KEYS, how="semi"),
                               pl.lit(True))
            raise self.source.fail(
                record, "count", f"the samples of this model, task and prompt add up to more "
                f"than {_MOST_SAMPLES:,}, the most a run holds; split them into runs of "
                "different conditions or scale them down")

    def merged_invalid(self, stored: pl.Expr, chunk: pl.Expr) -> pl.Expr:
        return (stored + chunk.fill_null(0)).alias("n_invalid")

    def _insert_runs(self, new: pl.DataFrame) -> pl.DataFrame:
        """Insert one done 'import' run per new run key, replacing earlier imports of it;
        returns them as rows of ``self.runs``."""
        keys = [import_unit_key(*key) for key in new.select(_RUN_KEYS).iter_rows()]
        new = new.with_columns(pl.Series("unit_key", keys, dtype=pl.String))
        replaceable = new.filter(pl.col("model_id").is_in(list(self.imported_before)))
        if replaceable.height:
            old = _run_ids(self.conn, replaceable["unit_key"].to_list())
            self.replaced += _delete_runs(self.conn, old.values())
        now = utcnow()
        new = new.with_columns(
            n_samples=pl.when(pl.col("n_valid") + pl.col("n_invalid").fill_null(0) > 0)
            .then(pl.col("n_valid") + pl.col("n_invalid").fill_null(0)),
        )
        postgres = self.conn.dialect.name == "postgresql"
        if postgres:  # ids drawn from the sequence, so COPY can write them
            new = new.with_columns(_allocate_run_ids(self.conn, new.height))
        rows = new.join(
            self.conditions.select("condition_key", "condition", "top_k_condition")
            .unique("condition_key"),
            on="condition_key",
        ).select(
            *(["run_id"] if postgres else []), "unit_key", "model_id", "task_id", "prompt_id", "condition_key", "condition",
            "temperature", "top_p", pl.col("top_k_condition").alias("top_k"), "max_new_tokens",
            "n_samples", pl.col("n_invalid").fill_null(0),
            mode=pl.lit("sampled"), origin=pl.lit("import"), status=pl.lit("done"),
            attempts=pl.lit(0), stale=pl.lit(False), catalog_version=pl.lit(__version__),
            source_file=pl.lit(str(self.source.path)),
            normalizer_version=self.normalizer_version(),
        )
        if postgres:
            _copy(self.conn, "runs", rows.rename({"run_id": "id"}).with_columns(
                sampling=pl.lit("{}"), library_versions=pl.lit("{}"),
                created_at=pl.lit(now.isoformat()), finished_at=pl.lit(now.isoformat()),
            ))
            return new.with_columns(spanning=pl.lit(False))
        # SQLite: JSON as its text and timestamps as SQLAlchemy writes them (UTC, no zone).
        stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        _insert_rows(self.conn, "runs", rows.with_columns(
            pl.col("stale").cast(pl.Int64), sampling=pl.lit("{}"), library_versions=pl.lit("{}"),
            created_at=pl.lit(stamp), finished_at=pl.lit(stamp),
        ))
        ids = _run_ids(self.conn, keys)
        return new.with_columns(
            pl.col("unit_key").replace_strict(ids, return_dtype=pl.Int64).alias("run_id"),
            spanning=pl.lit(False),
        )

    def normalizer_version(self) -> pl.Expr:
        """The runs' ``normalizer_version``: None for counts normalized elsewhere."""
        return pl.lit(None, pl.String)

    def write(self, frame: pl.DataFrame, groups: pl.DataFrame) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------ the end

    def finish(self) -> ImportSummary:
        if not self.rows:
            raise InvalidInput(f"{self.source.path}: no rows to import")
        self.finish_rows()
        self._number_new_prompts()
        runs = self.runs.with_columns(pl.col("n_invalid").fill_null(0))
        _update_runs(self.conn, runs.filter("spanning"))
        self._foreign_keys.close()
        return ImportSummary(
            path=str(self.source.path), rows=self.rows, runs=runs.height,
            replaced_runs=self.replaced, samples=int(runs["n_valid"].sum()),
            invalid=int(runs["n_invalid"].sum()), **self.created, **self.extra_summary(),
        )

    def finish_rows(self) -> None:
        """Write what could only be written once every chunk was read."""

    def extra_summary(self) -> dict:
        return {}


class _CountsImport(_Import):
    """import-counts: one row per (run, option) with its count."""

    columns = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    required = REQUIRED_COLUMNS
    bulk_tables = (Run, OptionCount)

    def __init__(self, session: Session, source: RecordFile) -> None:
        super().__init__(session, source)
        self.written: set[int] = set()  # runs with counts from an earlier chunk

    def checked(self, raw: pl.DataFrame) -> pl.DataFrame:
        frame = raw.with_columns(_stripped("option")) if "option" in raw.columns else raw
        frame = super().checked(frame)
        for column in ("option", "count"):
            self._require(frame, pl.col(column).is_null(), column,
                          "empty; every record needs a value", show=False)
        return frame.with_columns(parsed_integer(self.source, frame, "count"))

    def described(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = super().described(frame)
        return frame.with_columns(parsed_integer(self.source, frame, "n_invalid",
                                                 stored_in="runs.n_invalid"))

    def grouped(self, frame: pl.DataFrame) -> pl.DataFrame:
        described = [c for c in frame.columns if c not in (ROW, LINE, "option", "count")]
        return frame.with_row_index("__i").group_by(described, maintain_order=True).agg(
            pl.col("__i"), pl.col(ROW).first(), pl.col(LINE).first(),
            pl.col("count").sum().alias("__count"),
        )

    def check_options(self, frame: pl.DataFrame) -> None:
        closed = {name: info for name, info in self.tasks.items() if info.kind == "closed"}
        if not closed:
            return
        allowed = pl.DataFrame(
            [(name, option) for name, info in closed.items() for option in info.options],
            schema={"task": pl.String, "option": pl.String}, orient="row",
        )
        bad = first_bad(
            frame.filter(pl.col("task").is_in(list(closed))).join(
                allowed, on=["task", "option"], how="anti"),
            pl.lit(True),
        )
        if bad:
            raise self.source.fail(
                bad, "option",
                f"{shown(bad['option'])} is not an option of the closed task {bad['task']!r} "
                f"(options: {', '.join(closed[bad['task']].options)})",
            )

    def run_totals(self, frame: pl.DataFrame) -> pl.DataFrame:
        meaning = (("n_invalid", "n_invalid is one number per (model, task, prompt)"),)
        given = frame.filter(pl.col("n_invalid").is_not_null()).unique(
            _RUN_KEYS, keep="first", maintain_order=True).select(*_RUN_KEYS, "n_invalid")
        self._consistent(frame, self.runs, _RUN_KEYS, meaning)
        self._consistent(frame, given, _RUN_KEYS, meaning)
        return (
            frame.group_by(_RUN_KEYS).agg(pl.col("__count").sum().alias("n_valid"))
            .join(given, on=_RUN_KEYS, how="left")
        )

    def merged_invalid(self, stored: pl.Expr, chunk: pl.Expr) -> pl.Expr:
        return pl.coalesce(stored, chunk).alias("n_invalid")  # one number, said once or more

    def write(self, frame: pl.DataFrame, groups: pl.DataFrame) -> None:
        rows = groups.select("run_id", "task", "__i").explode("__i").sort("__i")
        frame = frame.with_columns(rows["run_id"], rows["task"])
        self.check_options(frame)
        repeated = first_bad(frame, ~pl.struct("run_id", "option").is_first_distinct())
        if repeated:
            raise self._repeats(repeated)
        # In primary-key order, so that the index grows at its end.
        rows = frame.select("run_id", "option", "count").sort("run_id", "option")
        integrity = self.conn.dialect.loaded_dbapi.IntegrityError
        try:
            with self.conn.begin_nested():
                _insert_rows(self.conn, "option_counts", rows)
        except (integrity, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not isinstance(exc.orig, integrity):
                raise
            raise self._repeats(self._repeated_in_store(frame)) from None
        self.written.update(frame["run_id"].unique().to_list())

    def _repeats(self, record: dict) -> InvalidInput:
        return self.source.fail(
            record, "option",
            f"{shown(record['option'])} repeats an earlier row of the same model, task and prompt",
        )

    def _repeated_in_store(self, frame: pl.DataFrame) -> dict:
        """The first record whose (run, option) an earlier chunk stored (the chunk's own rows
        were rolled back to the savepoint)."""
        spanning = frame.filter(pl.col("run_id").is_in(list(self.written))).sort(ROW)
        for part in spanning.iter_slices(_IN_BATCH):
            pairs = list(part.select("run_id", "option").iter_rows())
            stored = pl.DataFrame(
                self.conn.execute(
                    select(OptionCount.run_id, OptionCount.option)
                    .where(tuple_(OptionCount.run_id, OptionCount.option).in_(pairs))
                ).all(),
                schema={"run_id": pl.Int64, "option": pl.String}, orient="row",
            )
            found = first_bad(part.join(stored, on=["run_id", "option"], how="semi"), pl.lit(True))
            if found:
                return found
        raise AssertionError("the store refused a repeated option that is not there")


class _CompletionsImport(_Import):
    """import-completions: raw texts, normalized here, stored as completions and counts."""

    columns = (*COMPLETION_REQUIRED, *COMPLETION_TEXTS, *COMPLETION_OPTIONAL)
    required = COMPLETION_REQUIRED
    bulk_tables = (Run, Completion, OptionCount)

    def __init__(self, session: Session, source: RecordFile) -> None:
        super().__init__(session, source)
        self.options = pl.DataFrame(schema={"run_id": pl.Int64, "option": pl.String,
                                            "count": pl.Int64})
        self.texts = 0

    def checked(self, raw: pl.DataFrame) -> pl.DataFrame:
        frame = super().checked(raw)
        frame = frame.with_columns(parsed_integer(self.source, frame, "count", least=1))
        frame = frame.with_columns(self._text_lists(frame))
        lists, single = pl.col("completions").is_not_null(), pl.col("completion").is_not_null()
        self._require(frame, lists & single, "completions",
                      "a record has completion or completions, not both", show=False)
        self._require(frame, lists & pl.col("count").is_not_null(), "count",
                      "goes with completion; each text of a completions list counts once",
                      show=False)
        self._require(frame, ~lists & ~single, "completion",
                      "empty; every record needs a completion text or a completions list",
                      show=False)
        rest = pl.exclude("completion", "completions", "count")
        texts = frame.select(rest, pl.col("completion").cast(pl.String).alias("text"),
                             pl.col("count").fill_null(1))
        if frame["completions"].null_count() == frame.height:  # one record per generation
            return texts
        self._require(frame, pl.col("completions").list.len() == 0, "completions",
                      "an empty list; give at least one text", show=False)
        self._require(frame, pl.col("completions").list.eval(pl.element().is_null()).list.any(),
                      "completions", 'holds a null; every text is a string ("" for an empty one)',
                      show=False)
        return pl.concat([
            texts.filter(frame["completion"].is_not_null()),
            frame.filter(lists).explode("completions").select(
                rest, pl.col("completions").alias("text"), pl.lit(1, pl.Int64).alias("count")),
        ])

    def _text_lists(self, frame: pl.DataFrame) -> pl.Expr:
        """The completions column as lists of texts: vLLM's objects give their "text", a
        CSV cell holds a JSON list."""
        dtype, column = frame.schema["completions"], pl.col("completions")
        inner = dtype.inner if isinstance(dtype, pl.List) else None
        empty = frame["completions"].null_count() == frame.height
        if empty or dtype == pl.Null or inner == pl.String or inner == pl.Null:
            return column.cast(pl.List(pl.String))
        if isinstance(inner, pl.Struct) and "text" in [f.name for f in inner.fields]:
            return column.list.eval(pl.element().struct.field("text").cast(pl.String))
        if dtype == pl.String:
            return self._json_lists(frame)
        bad = first_bad(frame, column.is_not_null())
        raise self.source.fail(bad, "completions", "must be a list of texts (or of objects "
                               'with a "text", as vLLM writes them)')

    def _json_lists(self, frame: pl.DataFrame) -> pl.Expr:
        """CSV: each cell a JSON list of texts."""
        values = frame["completions"]
        for index, value in enumerate(values):
            if value is None:
                continue
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if not isinstance(parsed, list) or not all(isinstance(t, str) for t in parsed):
                raise self.source.fail(frame.row(index, named=True), "completions",
                                       'must be a JSON list of texts, e.g. ["7", " 3"]')
        return pl.col("completions").str.json_decode(pl.List(pl.String))

    def grouped(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One group per distinct text of a run, with its count (NUL stored as U+FFFD, as
        catalog.schema.storable_text stores it; normalized as stored)."""
        frame = frame.with_columns(pl.col("text").str.replace_all("\x00", "\ufffd", literal=True))
        described = [c for c in frame.columns if c not in (ROW, LINE, "count")]
        return frame.group_by(described, maintain_order=True).agg(
            pl.col("count").sum(), pl.col(ROW).first(), pl.col(LINE).first()
        )

    def prepared(self, texts: pl.DataFrame) -> pl.DataFrame:
        pairs = texts.select("task", "text").unique()
        options = pl.DataFrame(
            [(task, text, *self.tasks[task].normalize.read(text))
             for task, text in pairs.iter_rows()],
            schema={"task": pl.String, "text": pl.String, "option": pl.String,
                    "invalid_reason": pl.String}, orient="row",
        )
        return texts.join(options, on=["task", "text"])

    def run_totals(self, frame: pl.DataFrame) -> pl.DataFrame:
        valid = pl.col("option").is_not_null()
        return frame.group_by(_RUN_KEYS).agg(
            pl.col("count").filter(valid).sum().alias("n_valid"),
            pl.col("count").filter(~valid).sum().alias("n_invalid"),
        )

    def normalizer_version(self) -> pl.Expr:
        versions = {name: info.normalize.version for name, info in self.tasks.items()}
        return pl.col("task_id").replace_strict(
            {self.tasks[name].id: v for name, v in versions.items()}, return_dtype=pl.String
        )

    def write(self, frame: pl.DataFrame, texts: pl.DataFrame) -> None:
        # Groups that differ only in what a run does not keep (prompt_text...) are one text.
        texts = texts.group_by("run_id", "text", "option", "invalid_reason").agg(
            pl.col("count").sum())
        _insert_rows(self.conn, "completions",
                     texts.select("run_id", "text", "count", "option", "invalid_reason")
                     .sort("run_id"))
        self.texts += texts.height
        self.options = pl.concat([
            self.options, texts.group_by("run_id", "option").agg(pl.col("count").sum()),
        ]).group_by("run_id", "option").agg(pl.col("count").sum())

    def finish_rows(self) -> None:
        spanning = self.runs.filter("spanning")["run_id"].sort().to_list()
        self.texts -= _merge_texts(self.conn, spanning)
        valid = self.options.filter(pl.col("option").is_not_null()).sort("run_id", "option")
        _insert_rows(self.conn, "option_counts", valid.select("run_id", "option", "count"))
        _set_reason_counts(self.conn, self.runs["run_id"].sort().to_list())

    def extra_summary(self) -> dict:
        return {"texts": self.texts}


def _stripped(column: str, *, strip: bool = True) -> pl.Expr:
    """The column as text without surrounding blanks (names), an empty value as null."""
    text = pl.col(column).cast(pl.String)
    text = text.str.strip_chars() if strip else text
    return pl.when(text.str.len_bytes() > 0).then(text).alias(column)


# ---------------------------------------------------------------------------- bulk writes


@contextlib.contextmanager
def _bulk_load(conn: Connection, tables: Sequence[type]) -> Iterator[None]:
    """Load without row-by-row foreign-key checks where that pays and is allowed.

    PostgreSQL checks a table's foreign keys once per row, which measured 4x slower than
    the COPY itself for option_counts and 3x for runs (three keys). A big import drops those
    keys and adds them back at its end (validated by one join each) in the same transaction,
    so the tables stay locked for other sessions until the import commits. The ids it writes
    come from its own lookups, so the keys hold by construction. A user who does not own the
    tables keeps the checks.
    """
    dropped = []
    if conn.dialect.name == "postgresql":
        for foreign_key in (k for t in tables for k in t.__table__.foreign_key_constraints):
            try:
                with conn.begin_nested():
                    conn.execute(DropConstraint(foreign_key))
                dropped.append(foreign_key)
            except DBAPIError:
                pass
    yield
    for foreign_key in dropped:
        conn.execute(AddConstraint(foreign_key))


def _run_ids(conn: Connection, unit_keys: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for start in range(0, len(unit_keys), _IN_BATCH):
        chunk = unit_keys[start : start + _IN_BATCH]
        ids.update(conn.execute(select(Run.unit_key, Run.id).where(Run.unit_key.in_(chunk))).all())
    return ids


def _delete_runs(conn: Connection, run_ids: Iterable[int]) -> int:
    """Delete runs with everything stored under them (foreign keys may be dropped, so the
    children are deleted explicitly); returns how many."""
    run_ids = list(run_ids)
    for start in range(0, len(run_ids), _IN_BATCH):
        chunk = run_ids[start : start + _IN_BATCH]
        for table in (OptionCount, Completion, ExactProb):
            conn.execute(delete(table).where(table.run_id.in_(chunk)))
        conn.execute(delete(Run).where(Run.id.in_(chunk)))
    return len(run_ids)


def _insert_rows(conn: Connection, table: str, rows: pl.DataFrame) -> None:
    if not rows.height:
        return
    if conn.dialect.name == "postgresql":
        _copy(conn, table, rows)
        return
    cursor = conn.connection.driver_connection.cursor()
    marks = ", ".join("?" * rows.width)
    sql = f"INSERT INTO {table} ({', '.join(rows.columns)}) VALUES ({marks})"
    for chunk in rows.iter_slices(_CHUNK_ROWS):
        cursor.executemany(sql, chunk.iter_rows())


def _copy(conn: Connection, table: str, rows: pl.DataFrame) -> None:
    """PostgreSQL COPY of a frame, as CSV written by Polars (no Python object per row)."""
    columns = ", ".join(rows.columns)
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as copy:
        for chunk in rows.iter_slices(_CHUNK_ROWS):
            buffer = io.BytesIO()
            chunk.write_csv(buffer, include_header=False)
            copy.write(buffer.getvalue())


def _update_runs(conn: Connection, runs: pl.DataFrame) -> None:
    """Set the final n_invalid and n_samples of runs whose rows came in several chunks."""
    if not runs.height:
        return
    total = pl.col("n_valid") + pl.col("n_invalid")
    rows = runs.select("run_id", "n_invalid", pl.when(total > 0).then(total).alias("n_samples"))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE import_totals (run_id BIGINT, n_invalid BIGINT, "
            "n_samples BIGINT) ON COMMIT DROP"
        )
        _copy(conn, "import_totals", rows)
        conn.exec_driver_sql(
            "UPDATE runs SET n_invalid = t.n_invalid, n_samples = t.n_samples "
            "FROM import_totals t WHERE runs.id = t.run_id"
        )
        conn.exec_driver_sql("DROP TABLE import_totals")
        return
    cursor = conn.connection.driver_connection.cursor()
    cursor.executemany(
        "UPDATE runs SET n_invalid = ?, n_samples = ? WHERE id = ?",
        rows.select("n_invalid", "n_samples", "run_id").iter_rows(),
    )


def _allocate_run_ids(conn: Connection, n: int) -> pl.Series:
    """``n`` new ids from the runs' id sequence (PostgreSQL), for a COPY that sets them."""
    ids = conn.exec_driver_sql(
        "SELECT nextval(pg_get_serial_sequence('runs', 'id')) FROM generate_series(1, %s)",
        (n,),
    ).scalars().all()
    return pl.Series("run_id", ids, dtype=pl.Int64)


def _set_reason_counts(conn: Connection, run_ids: Sequence[int]) -> None:
    """Set the runs' invalid counts by reason from their stored completions."""
    completions = Completion.__table__
    runs = Run.__table__
    for start in range(0, len(run_ids), _IN_BATCH):
        chunk = list(run_ids[start : start + _IN_BATCH])
        conn.execute(runs.update().where(runs.c.id.in_(chunk)).values({
            column: select(func.coalesce(func.sum(completions.c.count), 0))
            .where(completions.c.run_id == runs.c.id, completions.c.invalid_reason == reason)
            .scalar_subquery()
            for reason, column in zip(INVALID_REASONS, INVALID_REASON_COLUMNS, strict=True)
        }))


def _merge_texts(conn: Connection, run_ids: Sequence[int]) -> int:
    """Merge the completion rows of one text that chunks stored separately (a run whose
    records were split between chunks) into its first row; returns how many rows were merged
    away. Two set-based statements per batch of runs, on both databases."""
    merged = 0
    table = Completion.__table__
    for start in range(0, len(run_ids), _IN_BATCH):
        chunk = list(run_ids[start : start + _IN_BATCH])
        first_rows = (select(func.min(table.c.id)).where(table.c.run_id.in_(chunk))
                      .group_by(table.c.run_id, table.c.text))
        same_text = table.alias("same_text")
        total = (select(func.sum(same_text.c.count))
                 .where(same_text.c.run_id == table.c.run_id, same_text.c.text == table.c.text)
                 .scalar_subquery())
        conn.execute(table.update().where(table.c.run_id.in_(chunk),
                                          table.c.id.in_(first_rows)).values(count=total))
        merged += conn.execute(delete(table).where(table.c.run_id.in_(chunk),
                                                   table.c.id.not_in(first_rows))).rowcount
    return merged
