"""``catalog db``: schema migrations."""

from __future__ import annotations

import click

from catalog import db as catalog_db
from catalog.cli.common import db_option
from catalog.config import masked


@click.group("db")
def db_group() -> None:
    """Create, inspect and migrate the catalog's database schema."""


@db_group.command("upgrade")
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
    engine = catalog_db.make_engine(db_url)
    rev = catalog_db.current_revision(engine) or "empty"
    head = catalog_db.head_revision()
    state = "up to date" if rev == head else "run `catalog db upgrade`"
    click.echo(f"{masked(engine.url)}: schema {rev} (catalog needs {head}: {state})")


@db_group.command("downgrade")
@click.argument("revision")
@db_option
def downgrade(revision: str, db_url: str | None) -> None:
    """Migrate the database back to REVISION ("base" removes every table).

    Example: catalog db downgrade 0001
    """
    engine = catalog_db.make_engine(db_url)
    catalog_db.downgrade(engine, revision)
    click.echo(f"{masked(engine.url)} is at {catalog_db.current_revision(engine) or 'base'}")


COMMANDS = [db_group]
