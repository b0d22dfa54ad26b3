"""The ``catalog`` command line: a thin click layer over the library.

Each command lives in a module of this package and calls one library function; library
errors (:class:`catalog.errors.CatalogError`) become ``Error: <one line>`` and exit code 1.
Heavy libraries (torch, transformers, matplotlib) are imported inside the commands that
need them, so ``catalog --help`` and ``catalog db ...`` stay fast.
"""

from __future__ import annotations

import click

from catalog import __version__
from catalog.cli.common import DB_HELP
from catalog.errors import CatalogError


class CatalogGroup(click.Group):
    """A group that turns library errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CatalogError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=CatalogGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="catalog")
@click.option("--db", "db_url", default=None, metavar="URL", help=DB_HELP)
def main(db_url: str | None) -> None:
    """A results catalog for randomness-crystallization studies.

    Store sample counts of every stage of a model family on random tasks, then measure
    how post-training crystallizes the answer distribution.

    \b
    Start here:
      catalog demo                      # the whole study on a toy family, on this laptop
      catalog tasks list                # the bundled random tasks
      catalog import-counts counts.csv  # counts sampled elsewhere
      catalog analyze --format table    # crystallization metrics

    The database is --db URL (before or after the command name), else
    $CATALOG_DATABASE_URL, else sqlite:///catalog.db.
    """


def _register() -> None:
    from catalog.cli import analyze, db, demo, ingest, launch, models, plan, report, status, store, tasks, worker

    for module in (db, tasks, models, store, ingest, plan, worker, launch, status, analyze, report, demo):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
