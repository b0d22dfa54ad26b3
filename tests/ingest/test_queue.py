"""The work queue (ingest/queue.py): claims, leases, fencing, attempts, release, dead
claimants; and the claim duel between two real processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess

from sqlalchemy import text

from catalog.db import open_catalog
from ingest.queue import ANY_UNIT, Scope, open_queue
from table_workers import plan_grid, scalar, statuses, table_models

LEASE = 60.0


def claim(queue, worker="w1", **kwargs):
    kwargs.setdefault("lease_seconds", LEASE)
    kwargs.setdefault("max_attempts", 3)
    return queue.claim_next(f"{socket.gethostname()}:{os.getpid()}:{worker}", **kwargs)


def run_row(engine, run_id: int):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": run_id}).one()


def test_claims_take_each_unit_once_in_planning_order(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    planned = plan_grid(engine, ["m-a"], prompts=("plain", "terse", "polite"))
    queue = open_queue(engine)
    claims = [claim(queue, f"w{i}") for i in range(4)]
    assert [c.run_id for c in claims[:3]] == planned.models[0].run_ids
    assert claims[3] is None
    row = run_row(engine, claims[0].run_id)
    assert (row.status, row.attempts, row.claim_token) == ("running", 1, claims[0].token)
    assert row.claimed_by.endswith(":w0") and row.host == socket.gethostname()
    assert len({c.token for c in claims[:3]}) == 3
    assert not queue.has_claimable(max_attempts=3)


def test_the_loaded_model_comes_first_and_scopes_narrow_claims(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a", "m-b"])
    planned = plan_grid(engine, ["m-a", "m-b"], prompts=("plain", "terse"))
    a_ids, b_ids = (m.run_ids for m in planned.models)
    model_b = scalar(engine, "SELECT model_id FROM runs WHERE id = :id", id=b_ids[0])
    queue = open_queue(engine)
    assert claim(queue).run_id == a_ids[0]  # nothing preferred: planning order
    assert claim(queue, prefer_model=model_b).run_id == b_ids[0]
    assert claim(queue, scope=Scope(run_ids=(a_ids[1],))).run_id == a_ids[1]
    assert claim(queue, scope=Scope(exclude_models=(model_b,))) is None
    assert claim(queue).run_id == b_ids[1]


def test_a_lost_claim_cannot_write_or_renew(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain",))
    queue = open_queue(engine)
    zombie = claim(queue, "zombie", lease_seconds=-1)  # its lease has run out already
    taker = claim(queue, "taker")
    assert taker is not None and taker.run_id == zombie.run_id and taker.attempts == 2
    assert not queue.heartbeat(zombie, LEASE)
    assert not queue.complete(zombie, {"n_invalid": 99}, [])
    assert queue.fail(zombie, "boom", 3) is None and not queue.release(zombie)
    assert queue.heartbeat(taker, LEASE)
    assert queue.complete(taker, {"n_invalid": 0}, [])
    row = run_row(engine, taker.run_id)
    assert (row.status, row.n_invalid, row.error) == ("done", 0, None)
    assert row.claimed_by.endswith(":taker")


def test_failures_retry_until_the_cap_then_fail_with_the_last_error(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain",))
    queue = open_queue(engine)
    first = claim(queue)
    assert queue.fail(first, "CUDA out of memory", 2) == "pending"
    assert run_row(engine, first.run_id).error == "CUDA out of memory"
    second = claim(queue, max_attempts=2)
    assert second.attempts == 2
    assert queue.fail(second, "CUDA out of memory again", 2) == "failed"
    row = run_row(engine, first.run_id)
    assert (row.status, row.attempts, row.error) == ("failed", 2, "CUDA out of memory again")
    assert claim(queue) is None


def test_a_unit_whose_workers_keep_dying_fails_at_the_cap(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain",))
    queue = open_queue(engine)
    for _ in range(2):  # each worker froze: its lease ran out
        assert claim(queue, lease_seconds=-1, max_attempts=2) is not None
    assert claim(queue, max_attempts=2) is None and not queue.has_claimable(max_attempts=2)
    assert statuses(engine) == {"running": 1}
    assert queue.fail_exhausted(max_attempts=2) == 1
    row = scalar(engine, "SELECT error FROM runs")
    assert statuses(engine) == {"failed": 1}
    assert "stopped renewing the lease" in row and "attempt 2" in row


def test_release_gives_the_unit_back_without_counting_the_attempt(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain",))
    queue = open_queue(engine)
    held = claim(queue)
    assert queue.release(held)
    row = run_row(engine, held.run_id)
    assert (row.status, row.attempts, row.claim_token) == ("pending", 0, None)


def test_a_dead_local_claimant_frees_its_unit_at_once(engine, tmp_path):
    table_models(engine, tmp_path, ["m-a"])
    plan_grid(engine, ["m-a"], prompts=("plain", "terse"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    queue = open_queue(engine)
    alive = queue.claim_next(f"{socket.gethostname()}:{os.getpid()}:me", lease_seconds=LEASE,
                             max_attempts=3)
    gone = queue.claim_next(f"{socket.gethostname()}:{dead.pid}:gone", lease_seconds=LEASE,
                            max_attempts=3)
    assert queue.expire_dead_local_claims(ANY_UNIT) == 1
    retaken = claim(queue, "next")
    assert retaken.run_id == gone.run_id != alive.run_id
    assert queue.expire_dead_local_claims(ANY_UNIT) == 0


# ------------------------------------------------------------------------------ the duel

ROUNDS = 200
TASKS = ("coin", "color", "die", "digit", "letter", "month", "number_1_10", "number_1_100",
         "rps", "suit", "us_state", "weekday", "animal", "fruit", "first_name")


def _duelist(db_url: str, name: str, run_ids: list[int], barrier, results) -> None:
    """One of two processes: each round, wait for the other, then both claim the round's
    unit at the same moment."""
    engine = open_catalog(db_url)
    queue = open_queue(engine)
    worker = f"{socket.gethostname()}:{os.getpid()}:{name}"
    for run_id in run_ids:
        barrier.wait()
        won = queue.claim_next(worker, lease_seconds=LEASE, max_attempts=3,
                               scope=Scope(run_ids=(run_id,)))
        results.put((name, None if won is None else won.run_id))
    engine.dispose()


def test_two_processes_released_together_on_one_unit_have_one_winner(db_url, engine, tmp_path):
    """200 rounds: both processes are released at a barrier onto the same pending unit;
    exactly one of them gets it, and the database names that one as its claimant."""
    table_models(engine, tmp_path, ["m-a"])
    planned = [plan_grid(engine, ["m-a"], tasks=TASKS, prompts=(), seed=s).models[0].run_ids
               for s in (1, 2)]
    run_ids = (planned[0] + planned[1])[:ROUNDS]
    assert len(run_ids) == ROUNDS
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3, timeout=120), context.Queue()
    duelists = [context.Process(target=_duelist, args=(db_url, name, run_ids, barrier, results))
                for name in ("left", "right")]
    for process in duelists:
        process.start()
    winner_of = {}
    try:
        for run_id in run_ids:
            barrier.wait()  # go
            outcome = dict(results.get(timeout=60) for _ in range(2))
            won = [name for name, claimed in outcome.items() if claimed is not None]
            assert len(won) == 1 and outcome[won[0]] == run_id, (run_id, outcome)
            winner_of[run_id] = won[0]
    finally:
        for process in duelists:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert [p.exitcode for p in duelists] == [0, 0]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, claimed_by, attempts FROM runs WHERE status = "
                                 "'running'")).all()
    assert {r.id: r.claimed_by.rsplit(":", 1)[1] for r in rows} == winner_of
    assert {r.attempts for r in rows} == {1}
