"""import-completions: raw generations, normalized with their task's normalizer and stored
as completions and option counts (the format: :mod:`catalog.imports`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from catalog import bulk, presets
from catalog.errors import InvalidInput
from catalog.imports.base import CONDITION_COLUMNS, RUN_KEYS, FileImport, ImportSummary, import_file
from catalog.records import LINE, ROW, FieldMap, RecordFile, first_bad, parsed_integer
from catalog.schema import Completion, OptionCount, Run

COMPLETION_REQUIRED = ("family", "stage", "model", "task", "prompt")
COMPLETION_TEXTS = ("completion", "completions")  # one of them
COMPLETION_OPTIONAL = ("count", "stage_order", "step", "prompt_text", "prompt_position",
                       *CONDITION_COLUMNS)
# Field maps of other tools' output files (import-completions --preset; names: enums).
PRESETS = {
    # vLLM: {"prompt": "<text>", "outputs": [{"text": ...}, ...]} per line (or strings).
    "vllm": FieldMap(rename={"prompt": "prompt_text", "outputs": "completions"}),
}
# JSON Lines and CSV. A completions file stores one row per distinct text of a run, far
# fewer than its records: bigger blocks spread the per-chunk lookups over more records
# (measured: 1M JSON lines in 1.25 s with 32 MiB blocks against 1.9 s with 8 MiB, peak
# 500 MiB against 290 MiB).
_BLOCK_BYTES = 32 << 20


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
    return import_file(engine, CompletionsImport, path, fields=fields, block_bytes=_BLOCK_BYTES)


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


class CompletionsImport(FileImport):
    """import-completions: raw texts, normalized here, stored as completions and counts."""

    formats = ("csv", "parquet", "jsonl")
    columns = (*COMPLETION_REQUIRED, *COMPLETION_TEXTS, *COMPLETION_OPTIONAL)
    required = COMPLETION_REQUIRED
    one_of = COMPLETION_TEXTS
    list_columns = ("completions",)
    what = "completions"
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
        """One group per distinct text of a run, with its count (texts as the store holds
        them, catalog.schema.storable_text; normalized as stored)."""
        frame = frame.with_columns(bulk.storable_texts(pl.col("text")))
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
        return frame.group_by(RUN_KEYS).agg(
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
        bulk.insert_rows(self.conn, "completions",
                     texts.select("run_id", "text", "count", "option", "invalid_reason")
                     .sort("run_id"))
        self.texts += texts.height
        self.options = pl.concat([
            self.options, texts.group_by("run_id", "option").agg(pl.col("count").sum()),
        ]).group_by("run_id", "option").agg(pl.col("count").sum())

    def finish_rows(self) -> None:
        spanning = self.runs.filter("spanning")["run_id"].sort().to_list()
        self.texts -= bulk.merge_texts(self.conn, spanning)
        valid = self.options.filter(pl.col("option").is_not_null()).sort("run_id", "option")
        bulk.insert_rows(self.conn, "option_counts", valid.select("run_id", "option", "count"))
        bulk.set_reason_counts(self.conn, self.runs["run_id"].sort().to_list())

    def extra_summary(self) -> dict:
        return {"texts": self.texts}
