"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import click

from catalog.config import ENV_VAR

db_option = click.option(
    "--db",
    "db_url",
    envvar=ENV_VAR,
    default=None,
    metavar="URL",
    help=f"Database URL (default: ${ENV_VAR}, else sqlite:///catalog.db).",
)
