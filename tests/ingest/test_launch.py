"""A launched job's worker process (ingest/launch.py WorkerCommand), run for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from table_workers import DIGIT_TABLE, plan_grid, statuses, table_models, wait_until

from catalog.config import ENV_VAR
from catalog.db import open_catalog

JOB = "from ingest.launch import WorkerCommand; WorkerCommand(('--lease-seconds', '600'))()"


def test_an_interrupted_job_stops_its_worker_which_releases_its_unit(tmp_path):
    """submitit interrupts a job before its time limit (and on cancel) by raising in the
    job's main thread; the job must pass that on to its worker, which then gives its unit
    back at once rather than when the 600-second lease runs out."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    engine = open_catalog(url)
    try:
        table_models(engine, tmp_path, ["m-sft"], table={**DIGIT_TABLE, "delay_seconds": 300})
        plan_grid(engine, ["m-sft"], n=10)
        units = statuses(engine)["pending"]
        job = subprocess.Popen([sys.executable, "-c", JOB], env={**os.environ, ENV_VAR: url},
                               stderr=subprocess.PIPE)
        try:
            wait_until(lambda: statuses(engine).get("running") == 1, timeout=120)
            job.send_signal(signal.SIGINT)  # to the job alone, not to its worker
            _, err = job.communicate(timeout=120)
        finally:
            job.kill()
        assert job.returncode != 0 and b"KeyboardInterrupt" in err
        assert b"released (stopping)" in err  # the worker's own log line
        assert statuses(engine) == {"pending": units}
    finally:
        engine.dispose()
