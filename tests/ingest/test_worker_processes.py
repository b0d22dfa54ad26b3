"""Real ``catalog worker`` processes on one database: fan-out, SIGKILL at random moments
(between the counts write and the commit too), a frozen worker whose lease runs out, a long
unit that keeps its heartbeat, and several workers on one SQLite file.

Models are table-backend models (a fixed answer distribution, no torch), so the time goes
to the queue, not to sampling; ``delay_seconds`` makes a unit take a known time.
"""

from __future__ import annotations

import random
import re
import signal
import time

import pytest
from sqlalchemy import select, text

from catalog.db import open_catalog
from catalog.schema import Run
from ingest.worker import run_worker
from table_workers import (
    DIGIT_TABLE, assert_whole_units, counts, finish, plan_grid, scalar, start_worker, statuses,
    table_models, wait_until,
)

MODELS = ["m-base", "m-sft", "m-dpo", "m-rl"]
TASKS = ("digit", "color")  # 8 prompts each of table_workers.DIGIT_PROMPTS: 64 units
N = 200
DONE = re.compile(r"worker \S+: (\d+) units done")


def reference_counts(tmp_path_factory, table_path, models, **grid) -> dict:
    """What one uninterrupted in-process worker stores for the same grid (fresh SQLite)."""
    engine = open_catalog(f"sqlite:///{tmp_path_factory.mktemp('reference') / 'c.db'}")
    table_models(engine, table_path.parent, models)
    plan_grid(engine, models, **grid)
    run_worker(engine)
    expected = counts(engine)
    engine.dispose()
    return expected


def run_workers(db_url: str, k: int, *args: str) -> list[int]:
    """Start ``k`` workers at once, wait for all; each one's number of units done."""
    workers = [start_worker(db_url, "--lease-seconds", "30", *args) for _ in range(k)]
    outcomes = [finish(w) for w in workers]
    for code, output in outcomes:
        assert code == 0, output
        assert "database is locked" not in output and "Traceback" not in output, output
    return [int(DONE.search(output).group(1)) for _, output in outcomes]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_fan_out_64_units_over_1_2_4_and_8_workers_each_done_once(db_url, engine, tmp_path):
    table_models(engine, tmp_path, MODELS, table=dict(DIGIT_TABLE, delay_seconds=0.02))
    for k in (1, 2, 4, 8):
        ids = [i for m in plan_grid(engine, MODELS, tasks=TASKS, n=N, seed=k).models
               for i in m.run_ids]
        assert len(ids) == 64
        done = run_workers(db_url, k)
        assert sum(done) == 64, (k, done)
        assert scalar(engine, "SELECT COUNT(*) FROM runs WHERE status = 'done' AND attempts = 1 "
                      f"AND id IN ({','.join(map(str, ids))})") == 64
    assert_whole_units(engine, N)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_several_workers_on_one_sqlite_file_store_the_exact_counts(
    db_url, engine, tmp_path, tmp_path_factory
):
    """Four workers writing one SQLite file: each unit once, no "database is locked" (the
    write lock is taken up front and waited for), the counts of one uninterrupted worker."""
    path = table_models(engine, tmp_path, MODELS, table=dict(DIGIT_TABLE, delay_seconds=0.02))
    plan_grid(engine, MODELS, tasks=TASKS, n=N)
    assert sum(run_workers(db_url, 4)) == 64
    assert_whole_units(engine, N)
    assert counts(engine) == reference_counts(tmp_path_factory, path, MODELS, tasks=TASKS, n=N)


KILLS = 20


def test_sigkill_at_random_moments_leaves_whole_units_and_the_same_counts(
    db_url, engine, tmp_path, tmp_path_factory
):
    """20 workers killed, two per round: one while it holds a unit's counts written but not
    committed (the test hook pauses it there), the other at a random moment of its sampling,
    writing or claiming. Each paused unit is left without counts. Then four workers finish;
    every unit is whole and the store equals an uninterrupted run's with the same seed."""
    path = table_models(engine, tmp_path, MODELS, table=dict(DIGIT_TABLE, delay_seconds=0.2))
    plan_grid(engine, MODELS, tasks=TASKS, n=N, seed=9)
    pause_dir = tmp_path / "pauses"
    pause_dir.mkdir()
    rng = random.Random(20)
    args = ("--lease-seconds", "60", "--max-attempts", "100")
    log = tmp_path / "workers.log"
    for _ in range(KILLS // 2):
        paused = start_worker(db_url, *args, pause_dir=pause_dir, log=log)
        anytime = start_worker(db_url, *args, log=log)
        # On SQLite the paused worker holds the write lock: the other one waits for it.
        marker = wait_until(lambda: next(pause_dir.glob(f"{paused.pid}.*"), None), timeout=60)
        kill(paused)
        run_id = int(marker.name.split(".")[1])
        marker.unlink()
        assert scalar(engine, "SELECT status FROM runs WHERE id = :id", id=run_id) != "done"
        for table in ("option_counts", "completions"):
            assert scalar(engine, f"SELECT COUNT(*) FROM {table} WHERE run_id = :id",
                          id=run_id) == 0
        wait_until(lambda: scalar(engine, "SELECT COUNT(*) FROM runs WHERE claimed_by LIKE :me",
                                  me=f"%:{anytime.pid}:%"), timeout=60)
        time.sleep(rng.uniform(0, 0.3))  # a unit takes 0.2 s, then its write and a claim
        kill(anytime)
    left = statuses(engine)
    assert left.get("pending", 0) + left.get("running", 0) > 0, left
    assert sum(run_workers(db_url, 4)) > 0
    assert_whole_units(engine, N)
    assert counts(engine) == reference_counts(tmp_path_factory, path, MODELS, tasks=TASKS, n=N,
                                              seed=9)


def kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def held_since(engine, run_id: int, pid: int):
    """The unit's last heartbeat while the worker ``pid`` holds it (None otherwise)."""
    return scalar(engine, "SELECT heartbeat_at FROM runs WHERE id = :id AND status = 'running' "
                  "AND claimed_by LIKE :who", id=run_id, who=f"%:{pid}:%")


def test_a_frozen_worker_past_its_lease_cannot_write_and_carries_on(db_url, engine, tmp_path):
    """SIGSTOP a worker while it samples a unit, long enough for its lease to run out;
    another worker takes the unit and finishes it; SIGCONT: the first worker's result is
    refused, the counts stay the other's, and it goes on with the remaining units."""
    table_models(engine, tmp_path, ["m-x", "m-y"], table=dict(DIGIT_TABLE, delay_seconds=1.0))
    unit = plan_grid(engine, ["m-x"], prompts=("plain",), n=N).models[0].run_ids[0]
    plan_grid(engine, ["m-y"], prompts=("plain", "terse"), n=N)
    zombie = start_worker(db_url, "--lease-seconds", "1")
    # Freeze it just after a heartbeat, so never inside one of its transactions.
    first = wait_until(lambda: held_since(engine, unit, zombie.pid))
    wait_until(lambda: held_since(engine, unit, zombie.pid) not in (None, first), interval=0.002)
    zombie.send_signal(signal.SIGSTOP)
    try:
        taker = start_worker(db_url, "--lease-seconds", "1", "--model", "m-x",
                             "--idle-exit", "20", "--max-units", "1")
        code, output = finish(taker)
        assert code == 0 and "1 units done" in output, output
        taken = counts(engine)
    finally:
        zombie.send_signal(signal.SIGCONT)
    code, output = finish(zombie)
    assert code == 0, output
    assert "result discarded" in output and "2 units done" in output and "1 lost" in output
    with engine.connect() as conn:
        row = conn.execute(text("SELECT attempts, claimed_by FROM runs WHERE id = :id"),
                           {"id": unit}).one()
    assert row.attempts == 2 and f":{taker.pid}:" in row.claimed_by
    assert {k: v for k, v in counts(engine).items() if k[0] == "m-x"} == taken
    assert statuses(engine) == {"done": 3}
    assert_whole_units(engine, N)


def test_a_long_unit_that_keeps_its_heartbeat_is_never_taken(db_url, engine, tmp_path):
    """A 4-second unit under a 1-second lease: a second worker waits for work the whole time
    and never gets it, because the heartbeat keeps renewing the lease."""
    table_models(engine, tmp_path, ["m-x"], table=dict(DIGIT_TABLE, delay_seconds=4.0))
    unit = plan_grid(engine, ["m-x"], prompts=("plain",), n=N).models[0].run_ids[0]
    holder = start_worker(db_url, "--lease-seconds", "1")
    wait_until(lambda: held_since(engine, unit, holder.pid))
    rival = start_worker(db_url, "--lease-seconds", "1", "--idle-exit", "3")
    code, output = finish(rival)
    assert code == 0 and "0 units done" in output, output
    code, output = finish(holder)
    assert code == 0 and "1 units done" in output, output
    with engine.connect() as conn:
        row = conn.execute(select(Run.attempts, Run.claimed_by, Run.started_at, Run.heartbeat_at,
                                  Run.finished_at).where(Run.id == unit)).one()
    assert row.attempts == 1 and f":{holder.pid}:" in row.claimed_by
    # renewed until the end: the last heartbeat is within a lease of the finish
    assert (row.heartbeat_at - row.started_at).total_seconds() >= 3
    assert (row.finished_at - row.heartbeat_at).total_seconds() < 1
