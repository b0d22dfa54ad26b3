"""Query results as Polars DataFrames: any read-only SQL (``read_sql``) and the catalog's views
(``read_view``).

File SQLite and PostgreSQL are read through connectorx (``pl.read_database_uri``), which
streams Arrow straight from the database without Python objects per row; queries with bound
parameters and in-memory SQLite go through an SQLAlchemy connection.

SQLite is read by connectorx in a child process, never in this one: connectorx bundles its
own copy of SQLite, and two SQLite libraries in one process break each other's POSIX locks.
Measured here: closing connectorx's connection deleted the -wal/-shm files under a live
sqlite3 connection of the same process, whose later commits then went to an unlinked WAL that
no other connection (or process) could see. Across processes, SQLite's locking is correct.

Every query is read-only by construction, so ``catalog sql`` cannot change the store: SQLite
connections run it under ``PRAGMA query_only``; PostgreSQL connections (connectorx's and
SQLAlchemy's) are opened with ``default_transaction_read_only``, so even a ``COMMIT`` inside
the statement leaves the next one read-only. A statement that tries to write is refused with
one line. (On a shared database the reader role of :mod:`catalog.roles` is the guarantee:
a session can switch the setting off on purpose.)

Column dtypes are made the same on both databases: integers become Int64, floating point and
NUMERIC (PostgreSQL's ``SUM`` of integers) become Float64, timestamps are UTC. ``read_view``
also fixes each view's column dtypes, so an empty result has the same schema as a full one.
"""

from __future__ import annotations

import contextlib
import datetime
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl
from sqlalchemy import (
    Connection, Engine, column, create_engine, event, literal_column, select, table, text,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from catalog.db import make_engine
from catalog.errors import InvalidInput
from catalog.limits import shown

_TEXT, _INT, _FLOAT = pl.String, pl.Int64, pl.Float64
_UTC = pl.Datetime("us", "UTC")
_RUN_COLUMNS = {
    "family": _TEXT,
    "stage": _TEXT,
    "stage_order": _INT,
    "step": _INT,
    "model": _TEXT,
    "task": _TEXT,
    "prompt": _TEXT,
    "prompt_id": _INT,
    "prompt_text": _TEXT,
}
# The sampling condition's columns (catalog.conditions), in every view.
_CONDITION_COLUMNS = {
    "temperature": _FLOAT,
    "top_p": _FLOAT,
    "top_k": _INT,
    "max_new_tokens": _INT,
    "condition_key": _TEXT,
}
# Column dtypes of each public view (migrations/versions/, the latest that defines each).
VIEW_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "v_runs": {
        **_RUN_COLUMNS,
        "mode": _TEXT,
        "origin": _TEXT,
        "run_id": _INT,
        "n_samples": _INT,
        "n_valid": _INT,
        "n_invalid": _INT,
        "n_no_answer": _INT,
        "n_ambiguous": _INT,
        "n_off_category": _INT,
        "n_out_of_range": _INT,
        "normalizer_version": _TEXT,
        "covered_mass": _FLOAT,
        "seed": _INT,
        **_CONDITION_COLUMNS,
        "stale": pl.Boolean,
        "backend": _TEXT,
        "finished_at": _UTC,
    },
    "v_counts": {
        **_RUN_COLUMNS,
        "option": _TEXT,
        "count": _INT,
        "mode": _TEXT,
        "n_invalid": _INT,
        "run_id": _INT,
        **_CONDITION_COLUMNS,
    },
    "v_distributions": {
        **_RUN_COLUMNS,
        "option": _TEXT,
        "count": _INT,
        "mode": _TEXT,
        "probability": _FLOAT,
        **_CONDITION_COLUMNS,
    },
}
VIEWS = tuple(VIEW_SCHEMAS)
# Up to this many rows, reading SQLite in this process is quicker than a connectorx child.
_SMALL_RESULT_ROWS = 20_000
_READ_ONLY_OPTION = "-c default_transaction_read_only=on"
_PG_READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction
_PG_CANCELLED = "57014"  # query_canceled: statement_timeout
READ_ONLY_REFUSAL = (
    "catalog sql is read-only: the statement tries to write "
    "(use the library or a writer role to change data)"
)


def query(engine: Engine, sql: str, *, timeout: float) -> pl.DataFrame:
    """``catalog sql``: one read-only query that stops. It runs at most ``timeout`` seconds
    (PostgreSQL: ``statement_timeout`` for its transaction; SQLite: a progress handler) and
    Ctrl-C stops it, cancelling it on the server. On SQLite, ``ATTACH``, ``VACUUM INTO`` and
    a ``PRAGMA`` that sets a value are refused (they write files or change the store's mode
    while ``query_only`` holds). Every column prints: a type Polars has no dtype for
    (PostgreSQL's money, void, ranges...) comes back as its text."""
    with _read_only_connection(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, round(timeout * 1000))}")
            frame = _fetch(conn, sql, None, timeout=timeout)
        else:
            with _sqlite_guard(conn.connection.driver_connection, timeout):
                frame = _fetch(conn, sql, None)
    return _stable_dtypes(frame)


# Pragmas that only read (with an argument naming what to read), and are allowed.
_READING_PRAGMAS = {
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
    "function_list", "pragma_list", "table_list", "collation_list", "module_list",
}


@contextlib.contextmanager
def _sqlite_guard(dbapi: sqlite3.Connection, timeout: float) -> Iterator[None]:
    """Refuse what ``query_only`` lets through, and stop the query at the deadline or on
    Ctrl-C (the SIGINT handler only sets a flag: the progress handler interrupts SQLite,
    then KeyboardInterrupt is raised here)."""
    deadline = time.monotonic() + timeout
    interrupted: list[int] = []
    refused: list[str] = []

    def authorize(action, arg1, arg2, _db, _trigger):
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            refused.append("ATTACH and VACUUM INTO (they write another file)")
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and arg2 is not None and (
                (arg1 or "").lower() not in _READING_PRAGMAS):
            refused.append(f"PRAGMA {arg1} = ... (it changes the store)")
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def progress():
        return 1 if interrupted or time.monotonic() > deadline else 0

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
    dbapi.set_authorizer(authorize)
    dbapi.set_progress_handler(progress, 10_000)
    try:
        yield
    except InvalidInput:
        if interrupted:
            raise KeyboardInterrupt from None
        if refused:
            raise InvalidInput(f"catalog sql refuses {refused[0]}") from None
        if time.monotonic() > deadline:
            raise _past_timeout(timeout) from None
        raise
    finally:
        dbapi.set_progress_handler(None, 0)
        dbapi.set_authorizer(None)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


def read_sql(engine: Engine, sql: str, params: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Run one read-only query and return its rows as a DataFrame with backend-independent
    dtypes. A statement that tries to write (INSERT, UPDATE, DELETE, DDL, a data-modifying
    CTE) is refused with :class:`InvalidInput` and changes nothing.

    ``params`` are bound by SQLAlchemy (``:name`` placeholders). Without them, PostgreSQL
    results come through connectorx; SQLite results of more than a few thousand rows too
    (in a child process), smaller ones through this process's own connection, which is
    quicker than starting a process. SQLite keeps timestamps as text: ``read_view`` types
    them, ``read_sql`` returns what SQLite returns.
    """
    uri = connectorx_uri(engine)
    if uri is not None and not params and uri.startswith("postgresql"):
        frame = _read_with_connectorx(sql, uri)
        if frame is not None:
            return _stable_dtypes(frame)
    small = _SMALL_RESULT_ROWS if uri is not None and not params else None
    frame = _read_with_sqlalchemy(engine, sql, params, at_most=small)
    if frame is None:  # a big SQLite result, of a statement that just ran here read-only
        frame = _read_with_connectorx(sql, uri)
    if frame is None:
        frame = _read_with_sqlalchemy(engine, sql, params)
    return _stable_dtypes(frame)


def read_view(
    engine: Engine,
    name: str,
    *,
    family: str | Iterable[str] | None = None,
    task: str | Iterable[str] | None = None,
    model: str | Iterable[str] | None = None,
    mode: str | None = None,
) -> pl.DataFrame:
    """Rows of one catalog view (v_counts, v_distributions or v_runs), optionally filtered.

    Each filter takes one name or a list of names. Example:
    ``read_view(engine, "v_distributions", family="OLMo 2 7B", task=["digit", "coin"])``.
    """
    if name not in VIEW_SCHEMAS:
        raise InvalidInput(f"unknown view {name!r}; the views are {', '.join(VIEWS)}")
    schema = VIEW_SCHEMAS[name]
    query = select(literal_column("*")).select_from(table(name))
    for col, wanted in (("family", family), ("task", task), ("model", model), ("mode", mode)):
        if wanted is not None:
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            query = query.where(column(col).in_(values))
    # connectorx takes no parameters, so the filter values are rendered as quoted literals.
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    frame = read_sql(engine, sql)
    return frame.select(_typed(col, frame.schema[col], dtype) for col, dtype in schema.items())


def _typed(name: str, current: pl.DataType, wanted: pl.DataType) -> pl.Expr:
    if current == pl.String and isinstance(wanted, pl.Datetime):
        # SQLite's text timestamps, written in UTC by the catalog.
        return pl.col(name).str.to_datetime(time_unit="us", time_zone="UTC")
    return pl.col(name).cast(wanted)


def connectorx_uri(engine: Engine) -> str | None:
    """The connectorx URI for the engine's database, or None where connectorx cannot read it."""
    url = engine.url
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            return None
        return "sqlite://" + str(Path(url.database).expanduser().resolve())
    if backend == "postgresql":
        # SQLAlchemy writes a space in a query value as "+", which connectorx keeps as is.
        others = {key: value for key, value in url.query.items() if key != "options"}
        base = url.set(drivername="postgresql", query=others).render_as_string(hide_password=False)
        options = quote(_read_only_options(url), safe="")
        return f"{base}{'&' if others else '?'}options={options}"
    return None


def read_only_engine(url: str | URL) -> Engine:
    """An engine on which no connection can write, for a long-lived reader (``catalog
    serve``): every SQLite connection runs ``PRAGMA query_only`` each time the pool hands it
    out (``read_sql`` switches it off after its own query), every PostgreSQL session starts
    its transactions read-only (as ``catalog sql``'s). Creates no database."""
    engine = make_engine(url, create=False)
    if engine.dialect.name == "postgresql":
        engine.dispose()
        return make_engine(_read_only_url(engine.url), create=False)
    if engine.dialect.name != "sqlite":
        raise InvalidInput(f"a read-only engine needs SQLite or PostgreSQL, not {engine.dialect.name}")

    @event.listens_for(engine, "checkout")
    def _query_only(dbapi_connection, _record, _proxy) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")

    return engine


def _read_only_url(url: URL) -> URL:
    """A PostgreSQL URL whose sessions start every transaction read-only."""
    return url.update_query_dict({"options": _read_only_options(url)})


def _read_only_options(url: URL) -> str:
    return " ".join(filter(None, [url.query.get("options"), _READ_ONLY_OPTION]))


# Runs in a child process for SQLite (see the module docstring): query -> Arrow IPC file.
_CONNECTORX_CHILD = """
import sys, connectorx, pyarrow
table = connectorx.read_sql(sys.argv[1], sys.argv[2], return_type="arrow")
with pyarrow.ipc.new_file(sys.argv[3], table.schema) as writer:
    writer.write_table(table)
"""


def _read_with_connectorx(sql: str, uri: str) -> pl.DataFrame | None:
    """The query's result, or None where connectorx cannot read it (SQLAlchemy then will).

    connectorx cannot type some SQLite results (a NULL in the first row, mixed types), and
    a bad query is better reported by the database driver, so any failure returns None.
    """
    if not uri.startswith("sqlite:"):
        try:
            return pl.read_database_uri(sql, uri, engine="connectorx")
        except RuntimeError:
            return None
    # POSIX keeps a memory-mapped file readable after its directory is removed.
    with tempfile.TemporaryDirectory(prefix="catalog-sql-", ignore_cleanup_errors=True) as tmp:
        path = Path(tmp) / "result.arrow"
        child = subprocess.run(
            [sys.executable, "-c", _CONNECTORX_CHILD, uri, sql, str(path)],
            capture_output=True,
            check=False,
        )
        if child.returncode != 0:
            return None
        return pl.read_ipc(path)


def _read_with_sqlalchemy(
    engine: Engine, sql: str, params: Mapping[str, Any] | None, *, at_most: int | None = None
) -> pl.DataFrame | None:
    """The query's rows through SQLAlchemy, or None if there are more than ``at_most``."""
    with _read_only_connection(engine) as conn:
        return _fetch(conn, sql, params, at_most=at_most)


def _fetch(conn: Connection, sql: str, params: Mapping[str, Any] | None, *,
           at_most: int | None = None, timeout: float | None = None) -> pl.DataFrame | None:
    try:
        if params:
            result = conn.execute(text(sql), dict(params))
        else:  # no parameters: leave a user's ":" and "%" alone
            result = conn.exec_driver_sql(sql)
        if not result.returns_rows:
            raise InvalidInput(
                "the statement returns no rows; give one query that does (e.g. SELECT ...)"
            )
        columns = list(result.keys())
        if at_most is None:
            rows = result.fetchall()
        else:
            rows = result.fetchmany(at_most + 1)
            if len(rows) > at_most:
                return None
    except SQLAlchemyError as exc:
        original = getattr(exc, "orig", None)
        if _tries_to_write(original):
            raise InvalidInput(READ_ONLY_REFUSAL) from None
        if timeout is not None and getattr(original, "sqlstate", None) == _PG_CANCELLED:
            raise _past_timeout(timeout) from None
        reason = str(original or exc).strip().splitlines()[0]
        raise InvalidInput(f"the query failed: {shown(reason)[1:-1]}") from None
    return pl.DataFrame(
        [tuple(map(_printable, row)) for row in rows],
        schema=columns,
        orient="row",
        infer_schema_length=None,
        strict=False,
    )


_PLAIN_VALUES = (bool, int, float, str, bytes, Decimal, datetime.date, datetime.time,
                 datetime.timedelta)


def _printable(value: Any) -> Any:
    """A value Polars can hold: others (PostgreSQL's ranges, an integer past 64 bits...)
    become their text."""
    if value is None or (isinstance(value, _PLAIN_VALUES)
                         and not (isinstance(value, int) and abs(value) >= 2**63)):
        return value
    return str(value)


def _past_timeout(timeout: float) -> InvalidInput:
    return InvalidInput(
        f"the query ran past the statement timeout ({timeout:g} s) and was stopped; give it "
        "more time with --timeout SECONDS, or ask less")


@contextlib.contextmanager
def _read_only_connection(engine: Engine) -> Iterator[Connection]:
    """A connection on which the query cannot write (see the module docstring).

    SQLite's driver runs one statement per call, so the pragma holds for the whole query;
    in-memory databases need this very engine's connection. PostgreSQL gets a connection of
    its own, so the pool's connections are never left read-only.
    """
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA query_only = ON")
            try:
                yield conn
            finally:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA query_only = OFF")
    elif engine.dialect.name == "postgresql":
        read_only = create_engine(_read_only_url(engine.url), poolclass=NullPool)
        try:
            try:
                conn = read_only.connect()
            except OperationalError as exc:
                if "unsupported startup parameter" not in str(exc):
                    raise
                conn = None  # PgBouncer passes no startup options: see below
            if conn is not None:
                with conn:
                    yield conn
                return
        finally:
            read_only.dispose()
        # Through PgBouncer: this transaction alone is read-only (a pooled server connection
        # must not keep a session setting), then rolled back.
        with engine.connect() as conn:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            try:
                yield conn
            finally:
                conn.rollback()
    else:
        raise InvalidInput(f"queries need SQLite or PostgreSQL, not {engine.dialect.name}")


def _tries_to_write(error: BaseException | None) -> bool:
    """Whether a driver error is the database refusing a write in read-only mode."""
    if getattr(error, "sqlstate", None) == _PG_READ_ONLY_SQLSTATE:
        return True
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY


def _stable_dtypes(frame: pl.DataFrame) -> pl.DataFrame:
    casts = []
    for name, dtype in frame.schema.items():
        if dtype.is_integer() and dtype != _INT:
            casts.append(pl.col(name).cast(_INT))
        elif (dtype.is_float() and dtype != _FLOAT) or isinstance(dtype, pl.Decimal):
            casts.append(pl.col(name).cast(_FLOAT))
        elif isinstance(dtype, pl.Datetime) and dtype != _UTC:
            # SQLite keeps no zone; the catalog writes every timestamp in UTC.
            if dtype.time_zone is None:
                casts.append(pl.col(name).dt.replace_time_zone("UTC").dt.cast_time_unit("us"))
            else:
                casts.append(pl.col(name).dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
    return frame.with_columns(casts) if casts else frame
