"""import-counts: counts sampled elsewhere, one row per (run, option) with its count (the
format: :mod:`catalog.imports`)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from sqlalchemy import Engine, select, tuple_
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from catalog import bulk
from catalog.enums import COUNT_FILE_FORMATS
from catalog.errors import InvalidInput
from catalog.imports.base import (
    CONDITION_COLUMNS,
    RUN_KEYS,
    FileImport,
    ImportSummary,
    import_file,
    stripped,
)
from catalog.limits import shown
from catalog.records import LINE, ROW, FieldMap, RecordFile, first_bad, parsed_integer
from catalog.schema import OptionCount, Run

REQUIRED_COLUMNS = ("family", "stage", "model", "task", "prompt", "option", "count")
OPTIONAL_COLUMNS = ("stage_order", "step", "prompt_text", "prompt_position", "n_invalid",
                    *CONDITION_COLUMNS)
_BLOCK_BYTES = 8 << 20  # CSV: about 170,000 short rows


def import_counts(
    engine: Engine, path: str | Path, *, fields: FieldMap | None = None
) -> ImportSummary:
    """Check a counts file (CSV or Parquet) chunk by chunk and store it in one transaction."""
    return import_file(engine, CountsImport, path, fields=fields, block_bytes=_BLOCK_BYTES)


class CountsImport(FileImport):
    """import-counts: one row per (run, option) with its count."""

    formats = COUNT_FILE_FORMATS
    columns = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    required = REQUIRED_COLUMNS
    what = "counts"
    bulk_tables = (Run, OptionCount)

    def __init__(self, session: Session, source: RecordFile) -> None:
        super().__init__(session, source)
        self.written: set[int] = set()  # runs with counts from an earlier chunk

    def checked(self, raw: pl.DataFrame) -> pl.DataFrame:
        frame = raw.with_columns(stripped("option")) if "option" in raw.columns else raw
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
            RUN_KEYS, keep="first", maintain_order=True).select(*RUN_KEYS, "n_invalid")
        self._consistent(frame, self.runs, RUN_KEYS, meaning)
        self._consistent(frame, given, RUN_KEYS, meaning)
        return (
            frame.group_by(RUN_KEYS).agg(pl.col("__count").sum().alias("n_valid"))
            .join(given, on=RUN_KEYS, how="left")
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
                bulk.insert_rows(self.conn, "option_counts", rows)
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
        for part in spanning.iter_slices(bulk.IN_BATCH):
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
