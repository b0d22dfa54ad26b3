"""Record files (CSV, Parquet, JSON Lines) read in bounded chunks, and the per-record checks
that the imports (:mod:`catalog.imports`) share.

A :class:`RecordFile` yields the file as Polars frames of about ``block_bytes`` of text
(CSV, JSON Lines: blocks of whole records) or ``chunk_rows`` records (Parquet), so an
import's memory does not grow with the file. Every chunk carries each record's 1-based number (:data:`ROW`) and, for JSON
Lines, its line (:data:`LINE`), so a bad record is reported by where it is:
``counts.csv: row 3 (line 4), column count: ...``, ``gens.jsonl: line 7, field completion:
...``. A CSV record's line is counted only when a record is reported (quoted newlines
inside fields push later records down).

Field names are matched case-insensitively. A :class:`FieldMap` renames a file's fields to
the catalog's columns (``--map n=count``) and gives columns one value for
every record (``--set family=olmo``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from catalog.errors import InvalidInput
from catalog.limits import INT64_MAX, integer_max, shown

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
           ".ndjson": "jsonl"}
ROW = "__row"  # 1-based record number
LINE = "__line"  # JSON Lines: the record's line number


@dataclass(frozen=True)
class FieldMap:
    """``rename``: a file's field -> the catalog column it fills; ``constants``: a column ->
    the value every record gets (a file that has the column too is refused)."""

    rename: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, maps: Iterable[str] = (), sets: Iterable[str] = ()) -> FieldMap:
        """From ``FIELD=COLUMN`` (``--map``) and ``COLUMN=VALUE`` (``--set``) strings."""
        return cls(_pairs(maps, "--map", "FIELD=COLUMN"), _pairs(sets, "--set", "COLUMN=VALUE"))

    def merged(self, other: FieldMap) -> FieldMap:
        """This map with ``other``'s entries added (``other`` wins)."""
        return FieldMap({**self.rename, **other.rename}, {**self.constants, **other.constants})


def _pairs(items: Iterable[str], option: str, shape: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{option} {item!r}: expected {shape}")
        pairs[key.strip().lower()] = value.strip() if option == "--map" else value
    return pairs


class RecordFile:
    """One file of records; :meth:`chunks` reads it, :meth:`fail` reports a bad record."""

    def __init__(
        self,
        path: str | Path,
        *,
        formats: Sequence[str],
        columns: Sequence[str],
        fields: FieldMap | None = None,
        chunk_rows: int = 250_000,
        block_bytes: int = 32 << 20,
        list_columns: Sequence[str] = (),
        what: str = "records",
    ) -> None:
        self.path = Path(path)
        self.format = FORMATS.get(self.path.suffix.lower())
        if self.format not in formats:
            suffixes = sorted({s for s, f in FORMATS.items() if f in formats and s != ".pq"})
            listed = ", ".join(suffixes[:-1]) + " or " + suffixes[-1]
            raise InvalidInput(f"{self.path}: {what} files are {listed}")
        if not self.path.is_file():
            raise InvalidInput(f"{self.path}: no such file")
        self.fields = fields or FieldMap()
        unknown = sorted(set(self.fields.rename.values()) - set(columns))
        unknown += sorted(set(self.fields.constants) - set(columns))
        if unknown:
            raise InvalidInput(
                f"{self.path}: {unknown[0]!r} is not a column of these imports (columns: "
                f"{', '.join(columns)})"
            )
        self.columns = tuple(columns)
        self.list_columns = tuple(list_columns)
        self._seen_keys: set[str] = set()
        self.chunk_rows, self.block_bytes = chunk_rows, block_bytes

    # ------------------------------------------------------------------------ reading

    def header(self) -> list[str] | None:
        """The catalog columns the file has (after renaming and constants); None for JSON
        Lines, whose records may differ."""
        if self.format == "jsonl":
            return None
        names = self._names()
        have = {name.strip().lower() for name in names}
        absent = [name for name in self.fields.rename if name not in have]
        if absent:
            raise InvalidInput(
                f"{self.path}: --map {absent[0]}={self.fields.rename[absent[0]]}: the file has "
                f"no field {shown(absent[0])} (its fields: {shown(', '.join(names))[1:-1]})"
            )
        return self._frame_columns(names)

    def chunks(self) -> Iterator[pl.DataFrame]:
        """The records in order, as frames of the catalog's columns plus :data:`ROW` (and
        :data:`LINE`); the file's other fields are left out."""
        if self.format == "jsonl":
            yield from self._jsonl_chunks()
            return
        if self.format == "csv":
            yield from self._csv_chunks()
            return
        names = self._names()
        wanted = [n for n in names if self._column(n) in self.columns]
        lazy = (
            self._scan()
            .select(wanted)
            .rename({n: self._column(n) for n in wanted})
            .with_row_index(ROW, offset=1)
        )
        batches = lazy.collect_batches(chunk_size=self.chunk_rows)
        while True:
            try:
                chunk = next(batches)
            except StopIteration:
                return
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise self._unreadable(exc) from None
            yield self._with_constants(chunk.with_columns(
                pl.col(ROW).cast(pl.Int64), pl.lit(None, pl.Int64).alias(LINE)
            ))

    def _csv_chunks(self) -> Iterator[pl.DataFrame]:
        """Blocks of whole records, each parsed by Polars (its streaming reader held ~450 MiB
        for a 470 MB file; a block holds one block's worth). A block ends at a newline
        outside quotes: one after an even number of quote characters (RFC 4180 doubles a
        quote inside a quoted field)."""
        names = self._names()
        wanted = [i for i, n in enumerate(names) if self._column(n) in self.columns]
        rows = 0
        with self.path.open("rb") as file:
            rest = _skip_header(file, self.block_bytes)
            while True:
                data = file.read(self.block_bytes)
                block = rest + data
                cut = len(block) if not data else _last_record_end(block)
                block, rest = block[:cut], block[cut:]
                if not block or block.isspace():
                    if not data:
                        return
                    continue
                try:
                    frame = pl.read_csv(block, has_header=False, columns=wanted,
                                        new_columns=[self._column(names[i]) for i in wanted],
                                        infer_schema=False)
                except (pl.exceptions.PolarsError, OSError) as exc:
                    raise self._ragged_record(len(names)) or self._unreadable(exc) from None
                yield self._with_constants(frame.with_columns(
                    pl.int_range(rows + 1, rows + frame.height + 1, dtype=pl.Int64).alias(ROW),
                    pl.lit(None, pl.Int64).alias(LINE),
                ))
                rows += frame.height

    def _names(self) -> list[str]:
        try:
            return self._scan().collect_schema().names()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._unreadable(exc) from None

    def _scan(self) -> pl.LazyFrame:
        try:
            if self.format == "csv":
                # Everything as text: numbers are parsed by the checks, which locate a bad one.
                return pl.scan_csv(self.path, infer_schema=False, raise_if_empty=False)
            return pl.scan_parquet(self.path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._unreadable(exc) from None

    def _frame_columns(self, names: Iterable[str]) -> list[str]:
        found = [self._column(n) for n in names if self._column(n) in self.columns]
        clash = sorted(set(found) & set(self.fields.constants))
        if clash:
            raise InvalidInput(
                f"{self.path}: the file has a {clash[0]} column and --set gives it too; "
                "drop one of them"
            )
        return found + list(self.fields.constants)

    def _column(self, name: str) -> str:
        name = name.strip().lower()
        return self.fields.rename.get(name, name)

    def _with_constants(self, chunk: pl.DataFrame) -> pl.DataFrame:
        self._frame_columns(c for c in chunk.columns if c not in (ROW, LINE))
        if not self.fields.constants:
            return chunk
        return chunk.with_columns(
            pl.lit(value, pl.String).alias(column)
            for column, value in self.fields.constants.items()
        )

    def _ragged_record(self, fields: int) -> InvalidInput | None:
        """The first CSV record whose number of fields is not the header's (Polars says
        only that one is), with its row and line."""
        with self.path.open(newline="", encoding="utf-8", errors="replace") as file:
            reader = csv.reader(file)
            next(reader, None)
            for row, record in enumerate(reader, start=1):
                if record and len(record) != fields:
                    return InvalidInput(
                        f"{self.path}: row {row} (line {reader.line_num}): {len(record)} "
                        f"fields, but the header has {fields}"
                    )
        return None

    def _unreadable(self, exc: Exception) -> InvalidInput:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return InvalidInput(f"{self.path}: cannot read it as {self.format} ({reason})")

    def _jsonl_chunks(self) -> Iterator[pl.DataFrame]:
        """Blocks of whole lines, each parsed by Polars; blank lines are skipped."""
        records = 0
        with self.path.open("rb") as file:
            rest, first_line = b"", 1
            while True:
                block = file.read(self.block_bytes)
                if not block:
                    break
                block = rest + block
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
                if block:
                    chunk = self._jsonl_block(block, first_line, records)
                    first_line += block.count(b"\n")
                    if chunk is not None:
                        records += chunk.height
                        yield chunk
            if rest.strip():
                chunk = self._jsonl_block(rest, first_line, records)
                if chunk is not None:
                    yield chunk

    def _jsonl_block(self, block: bytes, first_line: int, records: int) -> pl.DataFrame | None:
        if block.isspace():
            return None
        lines = block.count(b"\n") + (not block.endswith(b"\n"))
        numbers: Sequence[int] = range(first_line, first_line + lines)
        frame = self._read_ndjson(block, numbers)
        if frame.height != lines:  # Polars skips blank lines: number the records again
            numbers = [first_line + i for i, line in enumerate(block.split(b"\n"))
                       if line.strip()]
            if not numbers:
                return None
        frame = frame.with_columns(
            pl.Series(ROW, range(records + 1, records + len(numbers) + 1), dtype=pl.Int64),
            pl.Series(LINE, numbers, dtype=pl.Int64),
        )
        return self._with_constants(frame)

    def _read_ndjson(self, block: bytes, numbers: Sequence[int]) -> pl.DataFrame:
        """The block's records with an explicit schema (inferring one from the first lines
        would drop a field that only later lines have): scalars as text, which the checks
        parse; lists of texts, or of objects whose "text" is taken."""
        try:
            probe = pl.read_ndjson(block[: _nth_newline(block, 200)], infer_schema_length=None)
        except (pl.exceptions.PolarsError, ValueError) as exc:
            raise self._bad_json(block, numbers, exc) from None
        keys = {key for key in probe.columns if self._column(key) in self.columns}
        keys |= set(self.columns) | {k for k, c in self.fields.rename.items() if c in self.columns}
        # Every key a record may have is read: an absent one is a column of nulls, which
        # costs Polars less than searching the block for it. A key that --set also gives is
        # read only where the block has it (its opening quote and name): having one is a
        # clash with --set. A key once seen is kept.
        keys = {key for key in keys if self._column(key) not in self.fields.constants
                or key in self._seen_keys or json.dumps(key).encode()[:-1] in block}
        self._seen_keys |= keys
        lists = {key for key in keys if self._column(key) in self.list_columns}
        objects = {key for key in lists if isinstance(probe.schema.get(key), pl.List)
                   and isinstance(probe.schema[key].inner, pl.Struct)}
        for attempt in range(2):
            schema = {
                key: (pl.List(pl.Struct({"text": pl.String})) if (key in objects) != bool(attempt)
                      else pl.List(pl.String)) if key in lists else pl.String
                for key in keys
            }
            try:
                frame = pl.read_ndjson(block, schema=schema)
            except (pl.exceptions.PolarsError, ValueError) as exc:
                if attempt or not lists:
                    raise self._bad_json(block, numbers, exc) from None
                continue
            break
        frame = frame.with_columns(
            pl.col(key).list.eval(pl.element().struct.field("text"))
            for key in keys if isinstance(frame.schema[key], pl.List)
            and isinstance(frame.schema[key].inner, pl.Struct)
        )
        # Several spellings of one column (Count, count): the first one given.
        spellings: dict[str, list[str]] = {}
        for key in frame.columns:
            spellings.setdefault(self._column(key), []).append(key)
        return frame.select(pl.coalesce(names).alias(column) for column, names in spellings.items())

    def _bad_json(self, block: bytes, numbers: Sequence[int], exc: Exception) -> InvalidInput:
        """The first line that is not a JSON object (Polars says only that one is not)."""
        numbered = [(n, line) for n, line in zip(numbers, block.split(b"\n")) if line.strip()]
        for number, line in numbered:
            try:
                record = json.loads(line)
            except ValueError as error:
                return InvalidInput(f"{self.path}: line {number}: not valid JSON ({error})")
            if not isinstance(record, dict):
                return InvalidInput(
                    f"{self.path}: line {number}: a record must be a JSON object, got "
                    f"{type(record).__name__}"
                )
        first, last = numbered[0][0], numbered[-1][0]
        for number, line in numbered:
            record = json.loads(line)
            for key, value in record.items():
                texts = isinstance(value, list) and all(
                    isinstance(v, str) or (isinstance(v, dict) and isinstance(v.get("text"), str))
                    for v in value)
                if self._column(key) in self.list_columns and value is not None and not texts:
                    return self.fail({ROW: 0, LINE: number}, self._column(key),
                                     'must be a list of texts (or of objects with a "text")')
        return InvalidInput(f"{self.path}: lines {first}-{last}: cannot read the records "
                            f"({str(exc).strip().splitlines()[0]})")

    # ------------------------------------------------------------------------ reporting

    def where(self, record: Mapping[str, Any]) -> str:
        """``row R (line L)`` (CSV), ``line L`` (JSON Lines) or ``row R`` (Parquet)."""
        row = record[ROW]
        if self.format == "jsonl":
            return f"line {record[LINE]}"
        if self.format == "csv":
            return f"row {row} (line {self._csv_line(row)})"
        return f"row {row}"

    def fail(self, record: Mapping[str, Any], column: str, problem: str) -> InvalidInput:
        """A bad record: the file, where the record is, the column and what is wrong."""
        label = "field" if self.format == "jsonl" else "column"
        return InvalidInput(f"{self.path}: {self.where(record)}, {label} {column}: {problem}")

    def _csv_line(self, row: int) -> int:
        """The line a CSV record starts on: the header, the records before it, and the
        newlines inside their quoted fields (counted only for an error)."""
        before = (
            pl.scan_csv(self.path, infer_schema=False)
            .head(row - 1)
            .select(pl.sum_horizontal(
                pl.all().str.count_matches("\n", literal=True).fill_null(0)
            ).sum())
            .collect()
            .item()
        )
        return row + 1 + int(before or 0)


def _skip_header(file, block_bytes: int) -> bytes:
    """Read past a CSV file's header record; returns what was read after it."""
    read = b""
    while True:
        data = file.read(block_bytes)
        read += data
        end = _first_record_end(read)
        if end or not data:
            return read[end:] if end else b""


def _first_record_end(block: bytes) -> int:
    """Just after the first newline outside quotes (0 if there is none yet)."""
    end = block.find(b"\n")
    while end >= 0 and block.count(b'"', 0, end) % 2:
        end = block.find(b"\n", end + 1)
    return end + 1


def _last_record_end(block: bytes) -> int:
    """Just after the last newline outside quotes (0 if there is none)."""
    end = block.rfind(b"\n")
    if b'"' not in block:
        return end + 1
    quotes = block.count(b'"', 0, max(end, 0))
    while end >= 0 and quotes % 2:
        previous = block.rfind(b"\n", 0, end)
        quotes -= block.count(b'"', max(previous, 0), end)
        end = previous
    return end + 1


def _nth_newline(block: bytes, n: int) -> int:
    """The end of the block's first ``n`` lines."""
    end = 0
    for _ in range(n):
        end = block.find(b"\n", end) + 1
        if end == 0:
            return len(block)
    return end


# ---------------------------------------------------------------------------- checks


def first_bad(frame: pl.DataFrame, bad: pl.Expr) -> dict | None:
    """The first record (by :data:`ROW`) where ``bad`` holds, as a dict, or None."""
    rows = frame.filter(bad).sort(ROW).head(1).to_dicts()
    return rows[0] if rows else None


def parsed_integer(source: RecordFile, frame: pl.DataFrame, column: str, *,
                   least: int = 0, stored_in: str | None = None) -> pl.Series:
    """The column as Int64 (text, integers or whole floats; nulls stay null); the first
    record that is not a whole number >= ``least`` fails, and one that the schema column
    ``stored_in`` (``table.column``) cannot hold on both databases."""
    dtype, value = frame.schema[column], pl.col(column)
    if frame[column].null_count() == frame.height:
        return frame[column].cast(pl.Int64)
    if dtype.is_integer():
        parsed = value.cast(pl.Int64)
    elif dtype == pl.Boolean:
        parsed = value.cast(pl.String).cast(pl.Int64, strict=False)  # never a whole number
    elif dtype.is_float():
        whole = value.is_finite() & (value == value.floor())
        parsed = pl.when(whole).then(value).cast(pl.Int64, strict=False)
    elif dtype == pl.Null:
        parsed = value.cast(pl.Int64)
    else:
        parsed = value.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)
    checked = frame.select(ROW, LINE if LINE in frame.columns else pl.lit(None).alias(LINE),
                           column, parsed.alias("__parsed"))
    bad = first_bad(checked, value.is_not_null() & pl.col("__parsed").is_null())
    if bad:
        digits = str(bad[column]).strip().lstrip("+-").isdigit()
        problem = "is too large; the store holds at most 64-bit integers" if digits \
            else "is not a whole number"
        raise source.fail(bad, column, f"{shown(bad[column])} {problem}")
    bad = first_bad(checked, pl.col("__parsed") < least)
    if bad:
        problem = "is negative" if least == 0 else "is too small"
        raise source.fail(bad, column, f"{bad['__parsed']} {problem}; use a number >= {least}")
    most = integer_max(stored_in) if stored_in else INT64_MAX
    bad = first_bad(checked, pl.col("__parsed") > most)
    if bad:
        raise source.fail(bad, column, f"{bad['__parsed']} is too large; the store holds at "
                                       f"most {most:,}")
    return checked["__parsed"].alias(column)


def parsed_float(source: RecordFile, frame: pl.DataFrame, column: str) -> pl.Series:
    """The column as Float64 (text or numbers; nulls stay null); the first record that is
    not a finite number fails."""
    value = pl.col(column)
    if frame[column].null_count() == frame.height:
        return frame[column].cast(pl.Float64)
    text = value.cast(pl.String).str.strip_chars() if frame.schema[column] == pl.String else value
    checked = frame.select(ROW, LINE if LINE in frame.columns else pl.lit(None).alias(LINE),
                           column, text.cast(pl.Float64, strict=False).alias("__parsed"))
    bad = first_bad(checked, value.is_not_null() & (pl.col("__parsed").is_null()
                                                    | ~pl.col("__parsed").is_finite()))
    if bad:
        raise source.fail(bad, column, f"{shown(bad[column])} is not a number")
    return checked["__parsed"].alias(column)
