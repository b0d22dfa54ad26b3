"""What every import shares: one import of a file in one transaction (:class:`FileImport`,
with the steps every chunk goes through; :mod:`catalog.imports.counts` and
:mod:`catalog.imports.completions` fill in what their records say), its summary, and the
unit keys of imported runs. The file formats are described in :mod:`catalog.imports`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from catalog import __version__, bulk, registry
from catalog.conditions import Condition
from catalog.db import session_scope
from catalog.errors import InvalidInput, NotFound
from catalog.limits import integer_max, shown, text_max
from catalog.records import FieldMap, RecordFile, first_bad, parsed_float, parsed_integer
from catalog.schema import Model, Prompt, Run, Task, utcnow

CONDITION_COLUMNS = ("temperature", "top_p", "top_k", "max_new_tokens", "scaffold")
CHUNK_ROWS = 250_000  # Parquet: rows per chunk
# Longest values the schema stores; a scaffold is stored in the run's condition (JSON), as
# long as a name.
_MAX_LENGTHS = {"family": text_max("families.name"), "stage": text_max("models.stage"),
                "model": text_max("models.name"), "task": text_max("tasks.name"),
                "prompt": text_max("prompts.key"), "option": text_max("option_counts.option"),
                "scaffold": 200}
_NAME_COLUMNS = ("family", "stage", "model", "task", "prompt")
RUN_KEYS = ["model", "task", "prompt", "condition_key"]
_STAGE = "__stage"  # the stage name lower-cased: stages match case-insensitively
# A file this big loads without row-by-row foreign-key checks (see bulk.bulk_load): as
# records in its first chunk, or as bytes (a completions file writes far fewer rows than
# records).
_DROP_FOREIGN_KEY_ROWS = 100_000
_DROP_FOREIGN_KEY_BYTES = 4 << 20
_MOST_SAMPLES = integer_max("runs.n_samples")


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


def import_file(engine: Engine, kind: type[FileImport], path: str | Path, *,
                fields: FieldMap | None, block_bytes: int) -> ImportSummary:
    """Check the file's header against what ``kind`` reads, then store its records chunk by
    chunk in one transaction."""
    source = RecordFile(path, formats=kind.formats, columns=kind.columns, fields=fields,
                        chunk_rows=CHUNK_ROWS, block_bytes=block_bytes,
                        list_columns=kind.list_columns, what=kind.what)
    _check_header(source, kind.required, [c for c in kind.columns if c not in kind.required],
                  kind.one_of)
    with session_scope(engine) as session:
        importer = kind(session, source)
        for chunk in _read_ahead(source.chunks()):
            importer.add(chunk)
        return importer.finish()


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


def _read_ahead(chunks: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """The chunks, the next one read in a thread while this one is checked and written
    (Polars parses without holding the GIL); one chunk is read ahead, no more."""
    done = object()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
        upcoming = reader.submit(next, chunks, done)
        while (chunk := upcoming.result()) is not done:
            upcoming = reader.submit(next, chunks, done)
            yield chunk


def stripped(column: str, *, strip: bool = True) -> pl.Expr:
    """The column as text without surrounding blanks (names), an empty value as null."""
    text = pl.col(column).cast(pl.String)
    text = text.str.strip_chars() if strip else text
    return pl.when(text.str.len_bytes() > 0).then(text).alias(column)



@dataclass
class TaskInfo:
    id: int
    kind: str
    options: tuple[str, ...]
    normalize: registry.TaskNormalizer
    prompt_keys: dict[str, str] = field(default_factory=dict)  # stored text -> key


class FileImport:
    """One import in one transaction: what earlier chunks established (models, tasks,
    prompts, conditions, runs and their totals) and the steps every chunk goes through."""

    # What the files hold: their formats, every column read, those every record needs, one
    # of which it needs, those that hold lists, and what a record is called in messages.
    formats: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    list_columns: tuple[str, ...] = ()
    what: str = "records"
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
        self.tasks: dict[str, TaskInfo] = {}
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
            **dict.fromkeys(RUN_KEYS, pl.String), "run_id": pl.Int64, "n_valid": pl.Int64,
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
            self._foreign_keys.enter_context(bulk.bulk_load(self.conn, self.bulk_tables))
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
            *(stripped(c) for c in (*_NAME_COLUMNS, "scaffold")),
            stripped("prompt_text", strip=False),
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

    def _task(self, name: str) -> TaskInfo:
        """The stored or bundled task (bundled tasks keep their options), else a new open one."""
        if self.session.scalar(select(Task.id).where(Task.name == name)) is None:
            self.created["new_tasks"] += 1
        try:
            task = registry.task_by_name(self.session, name)
        except NotFound:
            task = registry.ensure_open_task(self.session, name)
        keys = {p.template: p.key for p in task.prompts if p.template is not None}
        return TaskInfo(task.id, task.kind, tuple(task.options), registry.TaskNormalizer(task),
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
            stored = bulk.stored_value(self.conn, Run.__table__.c.condition, condition.to_dict())
            rows.append((*values, condition.key, stored, condition.top_k))
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
        seen = totals.join(self.runs, on=RUN_KEYS, how="semi")
        if seen.height:
            self.runs = self.runs.join(
                seen.select(*RUN_KEYS, pl.col("n_valid").alias("__valid"),
                            pl.col("n_invalid").alias("__invalid")),
                on=RUN_KEYS, how="left",
            ).with_columns(
                pl.col("n_valid") + pl.col("__valid").fill_null(0),
                self.merged_invalid(pl.col("n_invalid"), pl.col("__invalid")),
                pl.col("spanning") | pl.col("__valid").is_not_null(),
            ).drop("__valid", "__invalid")
        new = totals.join(self.runs, on=RUN_KEYS, how="anti")
        self._check_samples(frame, pl.concat([self.runs.select(totals.columns), new],
                                             how="vertical_relaxed"))
        if new.height:
            first = frame.unique(RUN_KEYS, keep="first", maintain_order=True).select(
                *RUN_KEYS, "model_id", "task_id", "prompt_id", *CONDITION_COLUMNS[:4]
            )
            inserted = self._insert_runs(new.join(first, on=RUN_KEYS))
            self.runs = self.runs.vstack(inserted.select(self.runs.columns))
        return frame.join(self.runs.select(*RUN_KEYS, "run_id"), on=RUN_KEYS)

    def _check_samples(self, frame: pl.DataFrame, runs: pl.DataFrame) -> None:
        """A run's samples (valid and invalid) must fit its n_samples column."""
        over = runs.filter(pl.col("n_valid") + pl.col("n_invalid").fill_null(0) > _MOST_SAMPLES)
        if over.height:
            record = first_bad(frame.join(over.select(RUN_KEYS), on=RUN_KEYS, how="semi"),
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
        keys = [import_unit_key(*key) for key in new.select(RUN_KEYS).iter_rows()]
        new = new.with_columns(pl.Series("unit_key", keys, dtype=pl.String))
        replaceable = new.filter(pl.col("model_id").is_in(list(self.imported_before)))
        if replaceable.height:
            old = bulk.run_ids(self.conn, replaceable["unit_key"].to_list())
            self.replaced += bulk.delete_runs(self.conn, old.values())
        now = utcnow()
        new = new.with_columns(
            n_samples=pl.when(pl.col("n_valid") + pl.col("n_invalid").fill_null(0) > 0)
            .then(pl.col("n_valid") + pl.col("n_invalid").fill_null(0)),
        )
        postgres = self.conn.dialect.name == "postgresql"
        if postgres:  # ids drawn from the sequence, so COPY can write them
            new = new.with_columns(bulk.allocate_run_ids(self.conn, new.height))
        rows = new.join(
            self.conditions.select("condition_key", "condition", "top_k_condition")
            .unique("condition_key"),
            on="condition_key",
        ).select(
            *([pl.col("run_id").alias("id")] if postgres else []), "unit_key", "model_id",
            "task_id", "prompt_id", "condition_key", "condition", "temperature", "top_p",
            pl.col("top_k_condition").alias("top_k"), "max_new_tokens", "n_samples",
            pl.col("n_invalid").fill_null(0), normalizer_version=self.normalizer_version(),
        )
        bulk.insert_rows(
            self.conn, "runs", rows, mode="sampled", origin="import", status="done",
            attempts=0, stale=False, catalog_version=__version__,
            source_file=str(self.source.path), sampling={}, library_versions={},
            created_at=now, finished_at=now,
        )
        if postgres:
            return new.with_columns(spanning=pl.lit(False))
        ids = bulk.run_ids(self.conn, keys)
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
        bulk.update_runs(self.conn, runs.filter("spanning"))
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

