"""``catalog db``: schema migrations and the shared database's login roles."""

from __future__ import annotations

import os

import click

from catalog import db as catalog_db
from catalog.cli.common import catalog_engine, db_option
from catalog.config import masked
from catalog.errors import InvalidInput
from catalog.roles import create_role


@click.group("db")
def db_group() -> None:
    """Create, inspect and migrate the catalog's database schema."""


@db_group.command("upgrade", context_settings={"ignore_unknown_options": True})
@click.argument("revision", default="head")
@db_option
def upgrade(revision: str, db_url: str | None) -> None:
    """Migrate the database to REVISION (default: the newest).

    Example: catalog db upgrade --db postgresql://postgres@127.0.0.1/catalog
    """
    engine = catalog_db.make_engine(db_url)
    catalog_db.upgrade(engine, revision)
    click.echo(f"{masked(engine.url)} is at {catalog_db.current_revision(engine)}")


@db_group.command("current")
@db_option
def current(db_url: str | None) -> None:
    """Print the database's schema revision and the one this catalog needs.

    Example: catalog db current
    """
    engine = catalog_db.make_engine(db_url, create=False)
    rev = catalog_db.current_revision(engine) or "empty"
    head = catalog_db.head_revision()
    state = "up to date" if rev == head else "run `catalog db upgrade`"
    click.echo(f"{masked(engine.url)}: schema {rev} (catalog needs {head}: {state})")


@db_group.command("downgrade", context_settings={"ignore_unknown_options": True})
@click.argument("revision")
@db_option
def downgrade(revision: str, db_url: str | None) -> None:
    """Migrate the database back to REVISION ("base" removes every table).

    Example: catalog db downgrade -1
    """
    engine = catalog_db.make_engine(db_url, create=False)
    catalog_db.downgrade(engine, revision)
    click.echo(f"{masked(engine.url)} is at {catalog_db.current_revision(engine) or 'base'}")


@db_group.command("create-role")
@click.argument("name")
@click.option("--reader", is_flag=True,
              help="SELECT on every table and view; changes nothing (analysts).")
@click.option("--writer", is_flag=True,
              help="Also INSERT, UPDATE, DELETE rows; no DROP or ALTER (workers).")
@click.option("--password", "ask_password", is_flag=True,
              help="Prompt for the role's password (hidden, asked twice).")
@click.option("--password-env", metavar="VAR",
              help="Read the role's password from environment variable VAR.")
@db_option
def create_role_command(name: str, reader: bool, writer: bool, ask_password: bool,
                        password_env: str | None, db_url: str | None) -> None:
    """Create a PostgreSQL login role that reads the catalog, or writes runs and counts.

    Run it as the owner of the catalog's tables. Again on an existing role, it gives that
    role exactly the new kind's privileges (and the new password, if one is given).

    Example: catalog db create-role analyst --reader --password --db postgresql://owner@db-host/catalog
    """
    if reader == writer:
        raise click.UsageError("give one of --reader or --writer" if reader
                               else "give --reader or --writer")
    kind = "reader" if reader else "writer"
    password = _password(name, ask_password, password_env)
    with catalog_engine(db_url) as engine:
        click.echo(create_role(engine, name, kind, password))


def _password(name: str, ask: bool, env_var: str | None) -> str | None:
    """The password from a hidden prompt or an environment variable, never from argv."""
    if ask and env_var:
        raise click.UsageError("give --password or --password-env, not both")
    if env_var:
        if env_var not in os.environ:
            raise InvalidInput(f"environment variable {env_var} is not set; export it first")
        return os.environ[env_var]
    if ask:
        return click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    return None


COMMANDS = [db_group]
