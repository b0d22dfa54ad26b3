"""``catalog worker``: claim and sample planned units until none is left."""

from __future__ import annotations

import click

from catalog.cli import types
from catalog.cli.common import dataclass_defaults, db_option
from catalog.cli.ingest import backend_options, split_names
from catalog.cli.progress import UnitProgress
from ingest.events import DatabaseFault
from ingest.queue import open_catalog_patiently
from ingest.worker import WorkerOptions, run_worker, stop_on_signals

_WORKER = dataclass_defaults(WorkerOptions)


@click.command("worker")
@click.option("--lease-seconds", type=types.POSITIVE, show_default=True,
              default=_WORKER["lease_seconds"],
              help="A claimed unit is this worker's for this long; a heartbeat renews it.")
@click.option("--max-attempts", type=types.StoredInt("runs.attempts", least=1), show_default=True,
              default=_WORKER["max_attempts"],
              help="A unit failing this many times becomes failed, with its last error.")
@click.option("--idle-exit", type=types.NON_NEGATIVE, default=_WORKER["idle_exit"],
              show_default=True, metavar="SECONDS",
              help="With nothing to claim, wait this long for new units or an expiring "
              "lease before exiting.")
@click.option("--max-units", type=click.IntRange(min=1), default=_WORKER["max_units"],
              help="Exit after this many units.")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Only units of this model (repeatable).")
@click.option("--db-patience", type=types.NON_NEGATIVE, default=_WORKER["db_patience"],
              show_default=True, metavar="SECONDS",
              help="Keep retrying an unreachable database (full, restarting, failing over) "
              "this long before exiting 1; a unit never fails for it.")
@backend_options
@db_option
def worker_command(models, db_url, **options) -> None:
    """Claim the next planned unit, sample it, store it; repeat until none is left.

    Any number of workers may run at once against one database (see `catalog plan`), one
    connection each. Units of the model already loaded come first. SIGTERM (or Ctrl-C)
    releases the unit being sampled and exits 0. Failures are recorded with the units:
    `catalog status`. Database faults are retried with backoff for --db-patience seconds.

    Example: catalog worker --db postgresql://worker@db-host/catalog --device cuda --idle-exit 300
    """
    options = WorkerOptions(models=split_names(models), **options)
    with UnitProgress() as progress:
        engine = open_catalog_patiently(
            db_url, patience=options.db_patience,
            on_fault=lambda error, wait: progress(DatabaseFault(error, wait)))
        try:
            with stop_on_signals() as stop:
                summary = run_worker(engine, options, progress=progress, stop=stop)
        finally:
            engine.dispose()
    click.echo(summary.line())


COMMANDS = [worker_command]
