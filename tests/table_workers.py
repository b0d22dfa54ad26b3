"""Helpers for the queue and worker tests: table models (a fixed answer distribution, no
torch), planning a grid, starting real ``catalog worker`` processes, reading the outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from catalog.db import session_scope
from catalog.registry import add_model
from ingest.backends import SamplingParams, check_backend_options
from ingest.planning import IngestRequest, plan
from ingest.queue import PAUSE_BEFORE_COMMIT_ENV

DIGIT_TABLE = {
    "default": {"7": 0.5, " 3": 0.2, "Sure! Here's a random digit: 4": 0.2, "banana": 0.1},
    "prompts": {},
}
DIGIT_PROMPTS = ("plain", "terse", "polite", "only", "roleplay", "json", "answer", "listed")


def table_models(engine, tmp_path: Path, names, table: dict | None = None,
                 family: str = "fam", backend_options: dict | None = None) -> Path:
    """Register ``names`` as table-backend models of one family (one stage each), all
    answering from one table file; returns the file."""
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table or DIGIT_TABLE))
    stages = ["base", "sft", "dpo", "rl"]
    with session_scope(engine) as session:
        for i, name in enumerate(names):
            add_model(session, name=name, family=family, stage=stages[i], source=str(path),
                      backend="table", prompt_format="chat",
                      backend_options=backend_options, check_backend=check_backend_options)
    return path


def grid(models, tasks=("digit",), prompts=DIGIT_PROMPTS, n: int = 200, seed: int = 3,
         mode: str = "sampled") -> IngestRequest:
    return IngestRequest(models=list(models), tasks=list(tasks), prompts=list(prompts), seed=seed,
                         mode=mode, params=SamplingParams(n=n, max_new_tokens=8))


def plan_grid(engine, *args, **kwargs):
    return plan(engine, grid(*args, **kwargs))


def worker_argv(db_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "catalog.cli", "worker", "--db", db_url, *args]


def start_worker(db_url: str, *args: str, pause_dir: Path | None = None,
                 log: Path | None = None) -> subprocess.Popen:
    """A real ``catalog worker`` process (stdout and stderr to ``log`` if given)."""
    env = dict(os.environ)
    env.pop(PAUSE_BEFORE_COMMIT_ENV, None)
    if pause_dir is not None:
        env[PAUSE_BEFORE_COMMIT_ENV] = str(pause_dir)
    out = open(log, "ab") if log is not None else subprocess.PIPE  # noqa: SIM115
    try:
        return subprocess.Popen(worker_argv(db_url, *args), env=env, stdout=out,
                                stderr=subprocess.STDOUT if log is not None else subprocess.PIPE)
    finally:
        if log is not None:
            out.close()


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, (out or b"").decode() + (err or b"").decode()


def wait_until(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def statuses(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT status, COUNT(*) FROM runs WHERE origin = 'ingest' GROUP BY status"
        )).all())


def counts(engine) -> dict[tuple[str, str, str, str], int]:
    """(model, task, prompt, option) -> count of the done runs."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT model, task, prompt, option, count FROM v_counts"))
        return {(r.model, r.task, r.prompt, r.option): r.count for r in rows}


def assert_whole_units(engine, n: int) -> None:
    """Every unit is done once, complete: its valid and invalid samples add up to N, and
    its completions too, with each distinct text stored once."""
    with engine.connect() as conn:
        runs = conn.execute(text(
            "SELECT r.id, r.status, r.n_invalid + COALESCE((SELECT SUM(oc.count) FROM "
            "option_counts oc WHERE oc.run_id = r.id), 0) AS total, (SELECT SUM(c.count) FROM "
            "completions c WHERE c.run_id = r.id) AS raw, (SELECT COUNT(*) - COUNT(DISTINCT "
            "c.text) FROM completions c WHERE c.run_id = r.id) AS repeated FROM runs r"
        )).all()
    assert runs
    assert {(r.status, r.total, r.raw, r.repeated) for r in runs} == {("done", n, n, 0)}, runs
