"""One engine factory, one session scope, and the schema-version gate.

``open_catalog(url)`` is what every command uses: it builds the engine, brings a brand-new
empty database to the current schema (under a lock, so several workers may start at once),
and refuses a database whose schema is behind or ahead of this version of the catalog.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import re

from alembic import command
from alembic.util import CommandError
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from catalog.config import database_url, masked
from catalog.errors import DatabaseUnreachable, InvalidInput, NoCatalog, SchemaOutOfDate
from catalog.limits import shown

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Any constant works: it only has to be the same for every catalog process.
_PG_UPGRADE_LOCK = 7_321_004_211


def make_engine(url: str | URL | None = None, *, create: bool = True) -> Engine:
    """Build the engine for a catalog URL (SQLite pragmas; PostgreSQL pool settings).

    ``create=False`` (read-only commands): a SQLite file that does not exist is an error,
    not a new database in new folders (a mistyped path would otherwise report an empty
    catalog)."""
    if not isinstance(url, URL):
        url = database_url(url)
    try:
        url.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError):
        raise DatabaseUnreachable(
            f"{masked(url)}: unsupported database; use sqlite:///path/catalog.db or "
            "postgresql://user@host:5432/dbname (--db or $CATALOG_DATABASE_URL)"
        ) from None
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            path = Path(url.database).expanduser()
            if not create and not path.is_file():
                raise NoCatalog(
                    f"{masked(url)}: no such database file; check --db (this command only "
                    "reads, so it creates none)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # No server-side prepared statements (psycopg prepares a query run 5 times): they
        # belong to one server connection, which PgBouncer's transaction pooling swaps.
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                               connect_args={"prepare_threshold": None})
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the ingest writer
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = sessionmaker(engine, expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the shipped migrations (and at ``engine`` if given)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"migrations have {len(heads)} heads"
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the database (None for an empty database)."""
    with _connect(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step, revision: str) -> None:
    """Run an Alembic command; an unknown revision, or one on the wrong side of the current
    one, is one line listing the revisions."""
    script = ScriptDirectory.from_config(alembic_config())
    known = [s.revision for s in reversed(list(script.walk_revisions()))]
    relative = re.fullmatch(r"[+-][0-9]+", revision or "")
    if revision not in (*known, "head", "base") and not relative:
        raise InvalidInput(
            f"unknown schema revision {shown(revision)}; give one of {', '.join(known)}, head, "
            "base, or a relative step such as -1"
        )
    try:
        with _upgrade_lock(engine):
            step(alembic_config(engine), revision)
    except CommandError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise InvalidInput(
            f"cannot migrate to {revision} ({reason}); `catalog db current` shows where the "
            "database is"
        ) from None


def open_catalog(url: str | URL | None = None, *, create: bool = True) -> Engine:
    """Engine for a ready-to-use catalog: create the schema if empty, refuse if stale.

    ``create=False`` (read-only commands) creates nothing: a missing SQLite file or an
    empty database is an error saying how to create the catalog."""
    engine = make_engine(url, create=create)
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return engine
    if current is None and not _has_tables(engine):
        if not create:
            engine.dispose()
            raise NoCatalog(
                f"{masked(engine.url)} holds no catalog yet; create it with `catalog db "
                "upgrade` and the same --db (this command only reads)"
            )
        upgrade(engine)  # a brand-new database: safe to create everything
        return engine
    engine.dispose()
    if current is None:
        raise SchemaOutOfDate(
            f"{masked(engine.url)} has tables but no catalog schema version; "
            "point --db at a catalog database or an empty one"
        )
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current not in known:
        raise SchemaOutOfDate(
            f"database schema {current} is newer than this catalog ({head}); "
            "upgrade the catalog package"
        )
    raise SchemaOutOfDate(
        f"database schema is at {current} but this catalog needs {head}; "
        f"run `catalog db upgrade --db {masked(engine.url)}`"
    )


def _has_tables(engine: Engine) -> bool:
    """Whether the database has tables (the empty version table that `catalog db downgrade
    base` leaves does not count)."""
    with _connect(engine) as conn:
        return bool(set(inspect(conn).get_table_names()) - {"alembic_version"})


@contextlib.contextmanager
def _connect(engine: Engine):
    try:
        conn = engine.connect()
    except (OperationalError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else "unknown"
        raise DatabaseUnreachable(
            f"cannot connect to {masked(engine.url)} ({reason}); "
            "check --db or $CATALOG_DATABASE_URL"
        ) from None
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _upgrade_lock(engine: Engine) -> Iterator[None]:
    """Serialize schema changes between processes (advisory lock / lock file)."""
    if engine.dialect.name == "postgresql":
        # held by a transaction, not a session: the same through PgBouncer's transaction pooling
        with _connect(engine) as conn, conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_UPGRADE_LOCK})
            yield
    elif engine.url.database and engine.url.database != ":memory:":
        with FileLock(str(Path(engine.url.database).expanduser()) + ".lock", timeout=300):
            yield
    else:
        yield
