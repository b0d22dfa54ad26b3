"""The ``catalog`` command line: a thin click layer over the library.

Each command lives in a module of this package and calls one library function. The group
below is the one error boundary: library errors (:class:`catalog.errors.CatalogError`),
database errors (permission, constraint, connection, timeout, serialization) and OS errors on
a path become ``Error: <one line>`` and exit code 1 (``--debug`` or ``CATALOG_DEBUG=1`` shows
the traceback instead); usage errors exit 2; Ctrl-C exits 130. No message shows a password.
Heavy libraries (torch, transformers, matplotlib) are imported inside the commands that
need them, so ``catalog --help`` and ``catalog db ...`` stay fast.
"""

from __future__ import annotations

import click

from catalog import __version__
from catalog.cli.common import DB_HELP
from catalog.cli.errors import Interrupted, describe, without_secrets
from catalog.errors import CatalogError


class CatalogGroup(click.Group):
    """A group that turns every expected failure into one clear line (see the module doc)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as exc:
            exc.message = without_secrets(exc.message)
            raise

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug", False)
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:  # usage errors echo argv, which may hold --db
            exc.message = without_secrets(exc.message)
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            if debug:
                raise
            raise Interrupted("interrupted (Ctrl-C); the unfinished transaction was rolled "
                              "back, nothing of it is stored") from None
        except Exception as exc:
            message = describe(exc)
            if message is None or debug:
                raise
            raise click.ClickException(without_secrets(message)) from None


@click.group(cls=CatalogGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="catalog")
@click.option("--db", "db_url", default=None, metavar="URL", help=DB_HELP)
@click.option("--debug", is_flag=True, envvar="CATALOG_DEBUG",
              help="On an error, show the traceback (for bug reports) instead of one line.")
def main(db_url: str | None, debug: bool) -> None:
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
    from catalog.cli import (analyze, db, demo, ingest, launch, models, plan, report, serve, status,
                             store, tasks, worker)

    for module in (db, tasks, models, store, ingest, plan, worker, launch, status, analyze, report,
                   serve, demo):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
