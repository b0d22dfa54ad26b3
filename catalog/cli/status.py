"""``catalog status``: the work queue's progress."""

from __future__ import annotations

import json
import time

import click

from catalog.cli import types
from catalog.cli.common import catalog_engine, db_option
from catalog.enums import STATUS_FORMATS


@click.command("status")
@click.option("--format", "fmt", type=click.Choice(STATUS_FORMATS), default="table",
              show_default=True)
@click.option("--minutes", type=types.FiniteFloat(at_least=0.1, at_most=5_256_000), default=10.0,
              show_default=True,
              help="Throughput over this many recent minutes.")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds (Ctrl-C ends).")
@click.option("--interval", type=types.FiniteFloat(at_least=0.5, at_most=86_400), default=5.0,
              show_default=True)
@db_option
def status_command(fmt, minutes, watch, interval, db_url) -> None:
    """Units by state per family, model and task; running units; throughput, ETA; errors.

    Example: catalog status --db postgresql://postgres@db-host/catalog --watch
    """
    from ingest.status import queue_status, render_status

    with catalog_engine(db_url, read_only=True) as engine:
        while True:
            status = queue_status(engine, minutes)
            text = (json.dumps(status.to_dict(), indent=2) if fmt == "json"
                    else render_status(status))
            if watch:
                click.clear()
            click.echo(text)
            if not watch:
                return
            try:
                time.sleep(interval)
            except KeyboardInterrupt:  # how --watch ends
                return


COMMANDS = [status_command]
