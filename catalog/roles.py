"""Login roles for a shared PostgreSQL catalog: readers (analysts) and writers (workers).

A reader may connect and SELECT every table and view, and change nothing. A writer may also
INSERT, UPDATE and DELETE rows (runs, counts, the queue) and draw ids from the sequences,
but owns nothing, so it cannot DROP, ALTER or TRUNCATE a table, nor move ``alembic_version``:
schema changes stay with the tables' owner, who runs ``catalog db upgrade`` and this module.
Both kinds get the same rights on tables that later migrations create (default privileges
of the tables' owner).

A password is sent as a SCRAM-SHA-256 verifier computed here (as psql's ``\\password``
does), so the plain text never reaches the server, its logs or this module's output.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from catalog.config import masked
from catalog.enums import ROLE_KINDS
from catalog.errors import InvalidInput

_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_VERIFIER = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")
_TABLE_PRIVILEGES = {"reader": "SELECT", "writer": "SELECT, INSERT, UPDATE, DELETE"}
_WHAT_IT_MAY = {
    "reader": "SELECT on the catalog's tables and views, nothing else",
    "writer": "SELECT, INSERT, UPDATE, DELETE on the catalog's tables, no DROP or ALTER",
}


def create_role(engine: Engine, name: str, kind: str, password: str | None = None) -> str:
    """Create the login role ``name`` as a reader or writer of the engine's catalog, or give
    an existing one exactly that kind's privileges; return a one-line summary.

    ``engine`` connects as the owner of the catalog's tables (or a superuser).
    """
    if engine.dialect.name != "postgresql":
        raise InvalidInput(
            f"roles need PostgreSQL: {masked(engine.url)} is a SQLite file, whose access is "
            "its file permissions"
        )
    if not _ROLE_NAME.fullmatch(name):
        raise InvalidInput(
            f"role name {name!r} is not allowed; use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    if kind not in ROLE_KINDS:
        raise InvalidInput(f"unknown role kind {kind!r}; use one of {', '.join(ROLE_KINDS)}")
    with engine.begin() as conn:
        owner = _tables_owner(conn)
        existed = _check_existing(conn, name, owner)
        role = conn.dialect.identifier_preparer.quote(name)
        conn.exec_driver_sql(f"{'ALTER' if existed else 'CREATE'} ROLE {role} LOGIN")
        if password is not None:
            verifier = _scram_verifier(conn, name, password)
            conn.exec_driver_sql(f"ALTER ROLE {role} PASSWORD '{verifier}'")
        _grant(conn, role, kind, owner)
    action = "updated" if existed else "created"
    return (
        f"{action} role {name} ({kind}: {_WHAT_IT_MAY[kind]}); "
        f"connect with {_login_url(engine.url, name)}"
    )


def _tables_owner(conn: Connection) -> str:
    owner = conn.execute(
        text("SELECT tableowner FROM pg_tables "
             "WHERE schemaname = current_schema() AND tablename = 'alembic_version'")
    ).scalar()
    if owner is None:  # open_catalog creates the schema first, so only a foreign database
        raise InvalidInput("the database has no catalog schema; run `catalog db upgrade` first")
    return owner


def _check_existing(conn: Connection, name: str, owner: str) -> bool:
    """Whether the role exists; refuses one that could change the schema whatever it is
    granted (a superuser, or the tables' owner and its members)."""
    row = conn.execute(
        text("SELECT rolsuper, pg_has_role(rolname, :owner, 'MEMBER') AS owns "
             "FROM pg_roles WHERE rolname = :name"),
        {"name": name, "owner": owner},
    ).first()
    if row is None:
        return False
    if row.rolsuper or row.owns:
        what = "a superuser" if row.rolsuper else f"the owner of the catalog's tables ({owner})"
        raise InvalidInput(
            f"role {name} exists and is {what}, so no grant can restrict it; "
            "choose another name for the reader or writer"
        )
    return True


def _grant(conn: Connection, role: str, kind: str, owner: str) -> None:
    """Exactly ``kind``'s privileges on the current schema's tables, now and for tables the
    owner creates later: everything is revoked first, so a writer made a reader loses its
    writes."""
    preparer = conn.dialect.identifier_preparer
    schema = preparer.quote(conn.execute(text("SELECT current_schema()")).scalar())
    database = preparer.quote(conn.execute(text("SELECT current_database()")).scalar())
    defaults = f"ALTER DEFAULT PRIVILEGES FOR ROLE {preparer.quote(owner)} IN SCHEMA {schema}"
    statements = [
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}",
        f"{defaults} REVOKE ALL ON TABLES FROM {role}",
        f"{defaults} REVOKE ALL ON SEQUENCES FROM {role}",
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        # Temporary tables are a database privilege every role has through PUBLIC: a reader
        # creates nothing, so only the owner and writers (imports use one) keep it.
        f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC",
        f"REVOKE TEMPORARY ON DATABASE {database} FROM {role}",
        f"GRANT TEMPORARY ON DATABASE {database} TO {preparer.quote(owner)}",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT {_TABLE_PRIVILEGES[kind]} ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"{defaults} GRANT {_TABLE_PRIVILEGES[kind]} ON TABLES TO {role}",
    ]
    if kind == "writer":
        statements += [
            f"REVOKE INSERT, UPDATE, DELETE ON {schema}.alembic_version FROM {role}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            f"GRANT TEMPORARY ON DATABASE {database} TO {role}",
            f"{defaults} GRANT USAGE ON SEQUENCES TO {role}",
        ]
    for statement in statements:
        conn.exec_driver_sql(statement)


def _scram_verifier(conn: Connection, name: str, password: str) -> str:
    """libpq's SCRAM-SHA-256 verifier of the password (a salted hash, never the text)."""
    if not password:
        raise InvalidInput("the password is empty; give one, or none for a role without")
    pgconn = conn.connection.driver_connection.pgconn
    verifier = pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256").decode()
    # Only base64, digits and separators: safe inside a SQL string literal.
    assert _VERIFIER.fullmatch(verifier), "libpq returned an unexpected verifier"
    return verifier


def _login_url(url: URL, name: str) -> str:
    return url.set(drivername="postgresql", username=name, password=None).render_as_string()
