"""Reader and writer roles on the test PostgreSQL server, tried by connecting as them.

Roles belong to the whole server, so each test names its own after the session's database
prefix and drops them (with their grants) at the end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator

import polars as pl
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from catalog import db as catalog_db
from catalog.errors import InvalidInput
from catalog.imports import import_counts
from catalog.roles import create_role
from catalog.views import read_view

COUNTS = pl.DataFrame(
    {
        "family": ["fam", "fam", "fam"],
        "stage": ["base", "base", "sft"],
        "model": ["fam-base", "fam-base", "fam-sft"],
        "task": ["coin", "coin", "coin"],
        "prompt": ["plain", "plain", "plain"],
        "option": ["heads", "tails", "heads"],
        "count": [3, 1, 8],
    }
)
INSUFFICIENT_PRIVILEGE = "42501"
# What a role that must not change the schema tries.
SCHEMA_CHANGES = [
    "DROP TABLE option_counts",
    "DROP VIEW v_counts",
    "ALTER TABLE runs ADD COLUMN extra INTEGER",
    "TRUNCATE option_counts",
    "CREATE TABLE scratch (x INTEGER)",
    "UPDATE alembic_version SET version_num = '0001'",
]
# What a reader tries besides.
DATA_CHANGES = [
    "INSERT INTO families (name, created_at) VALUES ('intruder', now())",
    "UPDATE option_counts SET count = count + 1",
    "DELETE FROM option_counts",
    "SELECT nextval('families_id_seq')",
]


@pytest.fixture
def pg_url(postgres, migrated_templates) -> Iterator[str]:
    url = postgres.create(template=migrated_templates["postgresql"])
    yield url
    postgres.drop(url)


@pytest.fixture
def owner(pg_url) -> Iterator[Engine]:
    engine = catalog_db.open_catalog(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def role_names(postgres, owner) -> Iterator[list[str]]:
    """Names for this test's roles; every one of them is dropped afterwards."""
    names = [f"{postgres.prefix}_{kind}" for kind in ("reader", "writer", "other")]
    yield names
    with owner.begin() as conn:
        for name in names:
            exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name})
            if exists.first():
                conn.exec_driver_sql(f"DROP OWNED BY {name}")
                conn.exec_driver_sql(f"DROP ROLE {name}")


def connect_as(pg_url: str, role: str) -> Engine:
    """An engine logged in as the role (the test server trusts local connections)."""
    return catalog_db.make_engine(make_url(pg_url).set(username=role))


def sqlstate(engine: Engine, statement: str) -> str | None:
    """The error code of running the statement as the engine's role (None: it ran)."""
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    except ProgrammingError as exc:
        return exc.orig.sqlstate
    return None


def contents(engine: Engine) -> dict[str, list]:
    with engine.connect() as conn:
        return {
            name: sorted(conn.exec_driver_sql(f"SELECT * FROM {name}").all(), key=repr)
            for name in ("families", "models", "runs", "option_counts", "alembic_version")
        }


def filled(owner: Engine, tmp_path) -> Engine:
    path = tmp_path / "counts.csv"
    COUNTS.write_csv(path)
    import_counts(owner, path)
    return owner


def test_a_reader_reads_the_views_and_tables_and_changes_nothing(pg_url, owner, role_names, tmp_path):
    filled(owner, tmp_path)
    reader = role_names[0]
    summary = create_role(owner, reader, "reader")
    assert summary.startswith(f"created role {reader} (reader: SELECT ")
    assert summary.endswith(f"connect with postgresql://{reader}@127.0.0.1:5432/{make_url(pg_url).database}")
    before = contents(owner)
    engine = connect_as(pg_url, reader)
    try:
        assert read_view(engine, "v_counts")["count"].sum() == COUNTS["count"].sum()
        assert read_view(engine, "v_runs").height == 2
        assert contents(engine) == before  # every table is readable
        for statement in SCHEMA_CHANGES + DATA_CHANGES:
            assert sqlstate(engine, statement) == INSUFFICIENT_PRIVILEGE, statement
    finally:
        engine.dispose()
    assert contents(owner) == before


def test_a_writer_imports_counts_but_cannot_change_the_schema(pg_url, owner, role_names, tmp_path):
    filled(owner, tmp_path)
    writer = role_names[1]
    create_role(owner, writer, "writer")
    engine = catalog_db.open_catalog(make_url(pg_url).set(username=writer))
    try:
        more = COUNTS.with_columns(pl.lit("fam-b").alias("family"), pl.col("model") + "-b")
        path = tmp_path / "more.csv"
        more.write_csv(path)
        import_counts(engine, path)  # inserts a family, models, runs and counts
        import_counts(engine, path)  # replaces them: deletes and inserts again
        assert read_view(engine, "v_counts")["count"].sum() == 2 * COUNTS["count"].sum()
        for statement in SCHEMA_CHANGES:
            assert sqlstate(engine, statement) == INSUFFICIENT_PRIVILEGE, statement
    finally:
        engine.dispose()
    assert catalog_db.current_revision(owner) == catalog_db.head_revision()


def test_tables_the_owner_creates_later_get_the_same_privileges(pg_url, owner, role_names):
    reader, writer, _ = role_names
    create_role(owner, reader, "reader")
    create_role(owner, writer, "writer")
    with owner.begin() as conn:  # as a later migration would
        conn.exec_driver_sql("CREATE TABLE later (id SERIAL PRIMARY KEY, x INTEGER)")
    as_writer, as_reader = connect_as(pg_url, writer), connect_as(pg_url, reader)
    try:
        assert sqlstate(as_writer, "INSERT INTO later (x) VALUES (1)") is None
        assert sqlstate(as_reader, "SELECT * FROM later") is None
        assert sqlstate(as_reader, "INSERT INTO later (x) VALUES (2)") == INSUFFICIENT_PRIVILEGE
        assert sqlstate(as_writer, "DROP TABLE later") == INSUFFICIENT_PRIVILEGE
    finally:
        as_writer.dispose()
        as_reader.dispose()


def test_creating_a_role_again_gives_it_exactly_the_new_kind(pg_url, owner, role_names):
    name = role_names[2]
    create_role(owner, name, "writer")
    assert create_role(owner, name, "reader").startswith(f"updated role {name} (reader:")
    engine = connect_as(pg_url, name)
    try:
        assert sqlstate(engine, DATA_CHANGES[0]) == INSUFFICIENT_PRIVILEGE
        assert sqlstate(engine, "SELECT * FROM runs") is None
    finally:
        engine.dispose()


def scram_matches(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (RFC 5802/7677) was made from the password."""
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return (
        method == "SCRAM-SHA-256"
        and hashlib.sha256(client_key).digest() == stored_key
        and hmac.new(salted, b"Server Key", "sha256").digest() == server_key
    )


def test_a_password_is_stored_as_a_verifier_of_that_password(owner, role_names):
    name, password = role_names[2], "correct horse battery staple"
    summary = create_role(owner, name, "reader", password=password)
    assert password not in summary
    with owner.connect() as conn:
        stored = conn.execute(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :n"), {"n": name}
        ).scalar()
    assert password not in stored
    assert scram_matches(stored, password) and not scram_matches(stored, password + "!")


def test_roles_that_no_grant_can_restrict_are_refused(owner, role_names):
    with pytest.raises(InvalidInput, match="postgres exists and is a superuser"):
        create_role(owner, "postgres", "reader")
    with pytest.raises(InvalidInput, match="role name 'Bad-Name' is not allowed"):
        create_role(owner, "Bad-Name", "reader")
    with pytest.raises(InvalidInput, match="unknown role kind 'admin'"):
        create_role(owner, role_names[2], "admin")


def test_roles_need_postgresql(tmp_path):
    engine = catalog_db.open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with pytest.raises(InvalidInput, match="^roles need PostgreSQL: sqlite:///"):
            create_role(engine, "analyst", "reader")
    finally:
        engine.dispose()
