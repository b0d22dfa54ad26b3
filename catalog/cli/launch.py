"""``catalog launch``: K ``catalog worker`` processes on one database, through submitit."""

from __future__ import annotations

from pathlib import Path

import click

from catalog.cli.common import dataclass_defaults, db_option
from catalog.cli.worker import worker_command
from catalog.config import database_url
from catalog.enums import LAUNCH_EXECUTORS
from catalog.errors import InvalidInput
from ingest.launch import LaunchOptions, launch_workers

_LAUNCH = dataclass_defaults(LaunchOptions)


@click.command("launch")
@click.option("--executor", type=click.Choice(LAUNCH_EXECUTORS), required=True,
              help="A Slurm job array, or processes on this machine.")
@click.option("--workers", type=click.IntRange(min=1, max=100_000), default=_LAUNCH["workers"],
              show_default=True, help="How many workers.")
@click.option("--gpus-per-worker", type=click.IntRange(min=0, max=1024),
              default=_LAUNCH["gpus_per_worker"], show_default=True,
              help="GPUs of each worker's own (local: worker i gets GPUs i*G to i*G+G-1).")
@click.option("--partition", metavar="P", help="Slurm partition.")
@click.option("--time", "time_limit", metavar="H:MM:SS", default=_LAUNCH["time"],
              show_default=True, help="Each worker's time limit.")
@click.option("--slurm-arg", "slurm_args", multiple=True, metavar="KEY=VALUE",
              help="Another sbatch option, e.g. account=lab or mem=64G (repeatable).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              default=_LAUNCH["log_dir"], show_default=True,
              help="submitit's folder: one log per worker (shared with the nodes).")
@click.option("--wait", is_flag=True, help="Return when every worker has exited.")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- WORKER OPTIONS]")
@db_option
def launch_command(executor, workers, gpus_per_worker, partition, time_limit, slurm_args,
                   log_dir, wait, worker_args, db_url) -> None:
    """Start K `catalog worker` processes against this database: a Slurm job array, or
    the same jobs on this machine. Options after `--` go to every worker. Prints the job
    ids and the `catalog status` command that follows them.

    Example: catalog launch --executor slurm --workers 8 --gpus-per-worker 1 --partition gpu --time 12:00:00 --slurm-arg account=lab -- --device cuda --idle-exit 300
    """
    try:  # a typo in the worker options fails here, not in K jobs
        worker_command.make_context("catalog worker", list(worker_args))
    except click.ClickException as exc:
        raise InvalidInput(f"worker options: {exc.format_message()}") from None
    options = LaunchOptions(
        executor=executor, workers=workers, gpus_per_worker=gpus_per_worker,
        partition=partition, time=time_limit, slurm_args=tuple(slurm_args), log_dir=log_dir,
        worker_args=tuple(worker_args), wait=wait,
    )
    launched = launch_workers(database_url(db_url), options)
    click.echo(launched.summary())
    if launched.failed:
        raise SystemExit(1)


COMMANDS = [launch_command]
