"""Test fixtures: real databases, on SQLite and on PostgreSQL.

Every test that takes ``db_url`` (or ``engine``) runs twice: once on a fresh SQLite file and
once on a fresh PostgreSQL database. The PostgreSQL server is the one on this machine
(``$CATALOG_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``);
a session creates its own databases and drops them at the end. PostgreSQL is never skipped:
if it cannot be reached, the session fails (start it, see README "Tests").
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from catalog import db as catalog_db

# The vLLM tests run in the vLLM venv (scripts/test-vllm; CI runs them after the main suite):
# vLLM pins its own torch and transformers, so the main venv has no vLLM and never imports it.
if importlib.util.find_spec("vllm") is None:
    collect_ignore = ["ingest/test_vllm_backend.py", "ingest/test_openai_vllm_server.py"]

BACKENDS = ("sqlite", "postgresql")
ADMIN_URL = os.environ.get(
    "CATALOG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


class PostgresServer:
    """Creates and drops uniquely named databases on the test PostgreSQL server."""

    def __init__(self, admin_url: str) -> None:
        url = make_url(admin_url)
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        self.admin_url = url
        self.admin = create_engine(url, isolation_level="AUTOCOMMIT")
        self.prefix = f"catalog_test_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self.numbers = itertools.count()  # never reused: a dropped name may come back otherwise

    def check(self) -> None:
        try:
            with self.admin.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means no PostgreSQL
            pytest.exit(
                f"PostgreSQL at {self.admin_url.render_as_string(hide_password=True)} is not "
                f"reachable ({type(exc).__name__}); start it (README, Tests) or set "
                "CATALOG_TEST_POSTGRES_URL",
                returncode=1,
            )

    def create(self, template: str | None = None) -> str:
        name = f"{self.prefix}_{next(self.numbers)}"
        clause = f" TEMPLATE {template}" if template else ""
        with self.admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}{clause}"))
        self.created.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            with self.admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        self.created.clear()
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(ADMIN_URL)
    server.check()
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def migrated_templates(postgres: PostgresServer, tmp_path_factory) -> dict[str, str]:
    """One migrated database per backend, copied for each test (much faster than migrating)."""
    sqlite_path = tmp_path_factory.mktemp("template") / "template.db"
    sqlite_url = f"sqlite:///{sqlite_path}"
    pg_url = postgres.create()
    for url in (sqlite_url, pg_url):
        engine = catalog_db.open_catalog(url)
        engine.dispose()
    return {"sqlite": str(sqlite_path), "postgresql": make_url(pg_url).database}


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def empty_db_url(backend: str, postgres: PostgresServer, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty (unmigrated) database."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        url = postgres.create()
        yield url
        postgres.drop(url)


@pytest.fixture
def db_url(
    backend: str, postgres: PostgresServer, migrated_templates: dict[str, str], tmp_path: Path
) -> Iterator[str]:
    """URL of a fresh catalog database at the current schema."""
    if backend == "sqlite":
        path = tmp_path / "catalog.db"
        shutil.copy(migrated_templates["sqlite"], path)
        yield f"sqlite:///{path}"
    else:
        url = postgres.create(template=migrated_templates["postgresql"])
        yield url
        postgres.drop(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = catalog_db.open_catalog(db_url)
    yield engine
    engine.dispose()
