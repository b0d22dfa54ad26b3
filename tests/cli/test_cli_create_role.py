"""``catalog db create-role``: the password comes from a hidden prompt or an environment
variable and never shows in the output; SQLite and bad usage get one clear line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from catalog import db as catalog_db
from catalog.cli import main

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def pg_url(postgres, migrated_templates) -> Iterator[str]:
    url = postgres.create(template=migrated_templates["postgresql"])
    yield url
    postgres.drop(url)


@pytest.fixture
def role(postgres, pg_url) -> Iterator[str]:
    name = f"{postgres.prefix}_cli"
    yield name
    engine = catalog_db.make_engine(pg_url)
    with engine.begin() as conn:
        if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).first():
            conn.exec_driver_sql(f"DROP OWNED BY {name}")
            conn.exec_driver_sql(f"DROP ROLE {name}")
    engine.dispose()


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def stored_password(pg_url: str, name: str) -> str | None:
    engine = catalog_db.make_engine(pg_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT rolpassword FROM pg_authid WHERE rolname = :n"), {"n": name}
            ).scalar()
    finally:
        engine.dispose()


def test_the_prompted_password_is_never_echoed(pg_url, role):
    result = run("db", "create-role", role, "--writer", "--password", "--db", pg_url,
                 input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    database = make_url(pg_url).database
    assert result.output.splitlines() == [
        f"Password for {role}: ",
        "Repeat for confirmation: ",
        f"created role {role} (writer: SELECT, INSERT, UPDATE, DELETE on the catalog's tables, "
        f"no DROP or ALTER); connect with postgresql://{role}@127.0.0.1:5432/{database}",
    ]
    assert stored_password(pg_url, role).startswith("SCRAM-SHA-256$")


def test_the_password_can_come_from_the_environment(pg_url, role, monkeypatch):
    monkeypatch.setenv("ANALYST_PASSWORD", PASSWORD)
    result = run("db", "create-role", role, "--reader", "--password-env", "ANALYST_PASSWORD",
                 "--db", pg_url)
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output and f"created role {role} (reader:" in result.output
    first = stored_password(pg_url, role)
    # Again, without a password: the role keeps the one it has.
    result = run("db", "create-role", role, "--reader", "--db", pg_url)
    assert result.output.startswith(f"updated role {role} (reader:")
    assert stored_password(pg_url, role) == first


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--reader", "--password-env", "NO_SUCH_VARIABLE_SET"], 1,
         "Error: environment variable NO_SUCH_VARIABLE_SET is not set; export it first"),
        (["--reader", "--password", "--password-env", "X"], 2,
         "Error: give --password or --password-env, not both"),
        ([], 2, "Error: give --reader or --writer"),
        (["--reader", "--writer"], 2, "Error: give one of --reader or --writer"),
    ],
)
def test_bad_usage_is_one_line_and_creates_nothing(pg_url, role, args, code, message):
    result = run("db", "create-role", role, *args, "--db", pg_url)
    assert result.exit_code == code
    assert result.output.splitlines()[-1] == message  # after click's usage lines (exit 2)
    assert stored_password(pg_url, role) is None
    engine = catalog_db.make_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": role}).first() is None
    engine.dispose()


def test_sqlite_has_no_roles(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = run("db", "create-role", "analyst", "--reader", "--db", url)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: roles need PostgreSQL: {url} is a SQLite file, whose access is its file "
        "permissions\n"
    )


def test_a_password_in_the_admin_url_is_masked(postgres, role):
    url = make_url(postgres.admin_url).set(password="admin-s3cret", port=1)
    result = run("db", "create-role", role, "--reader",
                 "--db", url.render_as_string(hide_password=False))
    assert result.exit_code == 1 and "admin-s3cret" not in result.output
    assert ":***@127.0.0.1:1/" in result.output
