"""Start K ``catalog worker`` processes against one database through submitit: a Slurm job
array, or the same jobs on this machine (submitit's local executor).

Each job runs ``python -m catalog.cli worker [WORKER_ARGS]`` with the launching Python, so
the nodes need the same environment (a virtualenv on a shared filesystem). The database URL
travels in the jobs' environment (``$CATALOG_DATABASE_URL``, which ``catalog worker``
reads), never on a command line, in a log or in submitit's pickles: a command line is
visible to every user in ``ps`` and in Slurm's accounting, and the pickles sit in the log
folder. Workers share the queue in the database, so any number of them, started by any
scheduler, cooperate; a worker killed at its time limit loses only its current unit, which
another worker takes over when the lease expires.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from catalog.config import ENV_VAR, masked
from catalog.db import open_catalog
from catalog.enums import LAUNCH_EXECUTORS
from catalog.errors import InvalidInput

_TIME = re.compile(r"(\d+):([0-5]\d):([0-5]\d)")
_SLURM_KEY = re.compile(r"[a-z][a-z0-9-]*")
# sbatch options that launch sets itself (its own options, or what submitit needs to find
# its jobs' logs and results) and that would cut the workers off their database (export).
_RESERVED_SLURM_KEYS = {
    "partition": "--partition", "time": "--time", "gpus-per-node": "--gpus-per-worker",
    "array": "--workers", "nodes": None, "ntasks": None, "ntasks-per-node": None,
    "output": "--log-dir", "error": "--log-dir", "open-mode": None, "signal": None,
    "wrap": None, "export": None,
}


@dataclass(frozen=True)
class LaunchOptions:
    """How many workers, where, and with what resources (``catalog launch``'s options)."""

    executor: str  # slurm or local: no default, so a login node is never filled by mistake
    workers: int = 1
    gpus_per_worker: int = 0
    partition: str | None = None
    time: str = "4:00:00"  # each worker's limit, H:MM:SS
    slurm_args: tuple[str, ...] = ()  # KEY=VALUE, passed to sbatch as --KEY=VALUE
    log_dir: Path = Path("catalog-workers")
    worker_args: tuple[str, ...] = ()  # options of `catalog worker`
    wait: bool = False  # until every worker has exited


@dataclass(frozen=True)
class WorkerCommand:
    """One job's work: ``catalog worker ARGS`` in the job's environment; the job fails when
    the worker does. Output goes straight to the job's log, as it comes."""

    args: tuple[str, ...]

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "catalog.cli", "worker", *self.args]

    def __call__(self) -> None:
        with subprocess.Popen(self.argv()) as worker:
            try:
                code = worker.wait()
            except BaseException:
                # submitit's signal before the time limit (or a cancel) interrupts the wait:
                # SIGTERM lets the worker release its unit at once instead of by lease expiry.
                worker.terminate()
                worker.wait()
                raise
        if code != 0:
            raise RuntimeError(f"catalog worker exited with code {code} (its log is above)")


@dataclass(frozen=True)
class Launched:
    executor: str
    job_ids: list[str]
    log_dir: Path
    database: str  # masked
    failed: list[str]  # with --wait: the jobs whose worker failed, and why

    def summary(self) -> str:
        lines = [
            f"launched {len(self.job_ids)} catalog worker(s) ({self.executor}) on "
            f"{self.database}: job id(s) {', '.join(self.job_ids)}",
            f"database connections: {len(self.job_ids)} (one per worker, its heartbeat "
            "included; behind PgBouncer, its pool's size on the server)",
            f"logs: {self.log_dir}/",
            f"progress: catalog status --db {self.database}",
        ]
        return "\n".join(lines + [f"failed: {failure}" for failure in self.failed])


def launch_workers(url: URL, options: LaunchOptions) -> Launched:
    """Submit ``options.workers`` worker jobs against the catalog at ``url``.

    Everything is checked before anything is submitted: the options, and the database
    (reachable, at the current schema). With ``options.wait``, returns once every worker
    has exited, listing those that failed.
    """
    _check(options)
    url = _worker_url(url, options.executor)
    executor = _executor(options)
    open_catalog(url).dispose()
    command = WorkerCommand(tuple(options.worker_args))
    with _database_in_environment(url):
        jobs = _submit(executor, command, options)
    failed = _wait(jobs) if options.wait else []
    return Launched(options.executor, [job.job_id for job in jobs], options.log_dir,
                    masked(url), failed)


def parse_time(value: str) -> int:
    """Whole minutes, rounded up, of an ``H:MM:SS`` limit (what submitit takes)."""
    match = _TIME.fullmatch(value)
    if match is None:
        raise InvalidInput(f"--time {value!r} is not H:MM:SS; use e.g. 4:00:00 or 0:30:00")
    hours, minutes, seconds = map(int, match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total == 0:
        raise InvalidInput("--time is zero; give each worker some time, e.g. 0:30:00")
    return math.ceil(total / 60)


def parse_slurm_args(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs as sbatch's long options (``account=lab`` -> ``--account=lab``)."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("_", "-")
        if not sep or not _SLURM_KEY.fullmatch(key) or not value:
            raise InvalidInput(
                f"--slurm-arg {pair!r} is not KEY=VALUE; use e.g. account=lab or mem=64G"
            )
        if not value.isprintable():  # a newline would start a new line of the sbatch script
            raise InvalidInput(f"--slurm-arg {key}: the value has a control character")
        if key in _RESERVED_SLURM_KEYS:
            instead = _RESERVED_SLURM_KEYS[key]
            hint = f"use {instead}" if instead else "catalog launch sets it (one worker per job)"
            raise InvalidInput(f"--slurm-arg {key} is not allowed: {hint}")
        if key in parsed:
            raise InvalidInput(f"--slurm-arg {key} is given twice")
        parsed[key] = value
    return parsed


def slurm_parameters(options: LaunchOptions) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` keywords: one worker per array task, all at once."""
    parameters: dict[str, Any] = {
        "job_name": "catalog-worker",
        "time": parse_time(options.time),
        "nodes": 1,
        "ntasks_per_node": 1,
        "array_parallelism": options.workers,
        "stderr_to_stdout": True,
        "additional_parameters": parse_slurm_args(options.slurm_args),
    }
    if options.gpus_per_worker:
        parameters["gpus_per_node"] = options.gpus_per_worker
    if options.partition:
        parameters["partition"] = options.partition
    return parameters


def local_parameters(options: LaunchOptions, worker: int) -> dict[str, Any]:
    """``LocalExecutor.update_parameters`` keywords for worker number ``worker``: GPUs of
    its own (worker i sees GPUs i*G .. i*G+G-1), none when G is 0."""
    gpus = options.gpus_per_worker
    return {
        "timeout_min": parse_time(options.time),
        "gpus_per_node": gpus,
        "visible_gpus": tuple(range(worker * gpus, (worker + 1) * gpus)),
        "stderr_to_stdout": True,
    }


def _check(options: LaunchOptions) -> None:
    if options.executor not in LAUNCH_EXECUTORS:
        raise InvalidInput(
            f"unknown executor {options.executor!r}; use one of {', '.join(LAUNCH_EXECUTORS)}"
        )
    if options.workers < 1:
        raise InvalidInput(f"--workers {options.workers}: start at least one worker")
    if options.gpus_per_worker < 0:
        raise InvalidInput(f"--gpus-per-worker {options.gpus_per_worker} is negative")
    if options.executor == "local" and (options.partition or options.slurm_args):
        raise InvalidInput("--partition and --slurm-arg are for --executor slurm")
    if any(arg == "--db" or arg.startswith("--db=") for arg in options.worker_args):
        raise InvalidInput(
            "leave --db out of the worker options: the workers use catalog launch's database"
        )
    parse_time(options.time)
    parse_slurm_args(options.slurm_args)


def _executor(options: LaunchOptions):
    """The submitit executor, configured (submitit is the `slurm` extra)."""
    try:
        import submitit
    except ImportError:
        raise InvalidInput(
            "catalog launch needs submitit: pip install 'catalog[slurm]'"
        ) from None
    if options.executor == "local":
        return submitit.LocalExecutor(folder=options.log_dir)
    try:
        executor = submitit.SlurmExecutor(folder=options.log_dir)
    except RuntimeError:  # no srun on this machine
        raise InvalidInput(
            "no Slurm here (srun not found); run catalog launch on a Slurm login node, or use "
            "--executor local"
        ) from None
    executor.update_parameters(**slurm_parameters(options))
    return executor


def _worker_url(url: URL, executor: str) -> URL:
    """The URL as the workers must see it: a SQLite path made absolute (jobs may start
    elsewhere); SQLite refused on Slurm, whose nodes share no reliable file locks."""
    if url.get_backend_name() != "sqlite":
        return url
    if executor == "slurm":
        raise InvalidInput(
            "Slurm workers need a shared PostgreSQL database (--db postgresql://...): a SQLite "
            "file on a network filesystem does not lock reliably"
        )
    if not url.database or url.database == ":memory:":
        raise InvalidInput("workers cannot share an in-memory database; give a SQLite file")
    return url.set(database=str(Path(url.database).expanduser().resolve()))


@contextlib.contextmanager
def _database_in_environment(url: URL) -> Iterator[None]:
    """Submit with the URL in ``$CATALOG_DATABASE_URL``: sbatch exports the submitting
    environment to the job, and the local executor copies it to its processes."""
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = url.render_as_string(hide_password=False)
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = before


def _submit(executor, command: WorkerCommand, options: LaunchOptions) -> list:
    if options.executor == "slurm":
        with executor.batch():  # one job array
            jobs = [executor.submit(command) for _ in range(options.workers)]
        return jobs
    jobs = []
    for worker in range(options.workers):
        executor.update_parameters(**local_parameters(options, worker))
        jobs.append(executor.submit(command))
    return jobs


def _wait(jobs: list) -> list[str]:
    failed = []
    with _quiet_sacct():
        for job in jobs:
            try:
                job.result()
            except Exception as exc:  # noqa: BLE001 - submitit re-raises the job's own error
                reason = str(exc).strip().splitlines()
                failed.append(
                    f"job {job.job_id}: {reason[-1] if reason else type(exc).__name__}")
    return failed


def _drop_sacct_bypass(record: logging.LogRecord) -> bool:
    return "Bypassing sacct error" not in record.getMessage()


@contextlib.contextmanager
def _quiet_sacct() -> Iterator[None]:
    """Where Slurm's accounting is off, submitit's status polls through ``sacct`` fail and
    it warns on every poll; waiting does not need them (each job's result file tells when
    it ended), so those warnings are dropped while waiting."""
    logger = logging.getLogger("submitit")
    logger.addFilter(_drop_sacct_bypass)
    try:
        yield
    finally:
        logger.removeFilter(_drop_sacct_bypass)
