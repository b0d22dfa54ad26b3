"""Database faults are the workers', never the units': real ``catalog worker`` processes on
a PostgreSQL cluster of the test's own with few connection slots, restarted mid-run, directly
and through a real PgBouncer in transaction pooling mode. Every unit ends done once (one
attempt), none failed, and the store equals an uninterrupted run's with the same seed.

Also: one connection per worker (heartbeat included) on the shared server, and a worker
that cannot reach its database for ``--db-patience`` seconds exits 1 with one line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from catalog.db import open_catalog
from ingest.worker import run_worker
from own_servers import OwnBouncer, OwnCluster, free_port, own_servers_dir
from table_workers import (
    DIGIT_TABLE, assert_whole_units, counts, finish, plan_grid, scalar, start_worker, statuses,
    table_models, wait_until,
)

MODELS = ["m-base", "m-sft", "m-dpo", "m-rl"]
TASKS = ("digit", "color")  # 64 units
N = 100
SEED = 11
# 10 slots, 2 of them the superuser's (the test's): 8 for the workers, who are 12.
MAX_CONNECTIONS, WORKERS = 10, 12


@pytest.fixture(scope="module")
def servers_dir():
    with own_servers_dir() as folder:
        yield folder


@pytest.fixture(scope="module")
def cluster(servers_dir):
    own = OwnCluster(servers_dir / "cluster", max_connections=MAX_CONNECTIONS)
    yield own
    own.stop()


@pytest.fixture(scope="module")
def bouncer(servers_dir, cluster):
    own = OwnBouncer(servers_dir, cluster, pool_size=4)
    yield own
    own.stop()


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    """Where the models' table lives (its path is part of each unit's key, so of its seed)."""
    return tmp_path_factory.mktemp("table")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, table_dir):
    """What one uninterrupted in-process worker stores for the grid (fresh SQLite)."""
    folder = tmp_path_factory.mktemp("reference")
    engine = open_catalog(f"sqlite:///{folder / 'c.db'}")
    table_models(engine, table_dir, MODELS)
    plan_grid(engine, MODELS, tasks=TASKS, n=N, seed=SEED)
    run_worker(engine)
    expected = counts(engine)
    engine.dispose()
    return expected


def fresh_catalog(cluster: OwnCluster, table_dir):
    """An empty catalog on the own cluster, planned with the grid; the test's engine is
    the superuser's (reserved slots) and holds no connection between statements."""
    cluster.admin("DROP DATABASE IF EXISTS catalog WITH (FORCE)")
    cluster.admin("CREATE DATABASE catalog OWNER worker")
    open_catalog(cluster.url()).dispose()  # the schema, owned by the workers' role
    engine = create_engine(cluster.url(user="postgres"), poolclass=NullPool)
    table_models(engine, table_dir, MODELS, table=dict(DIGIT_TABLE, delay_seconds=0.3))
    plan_grid(engine, MODELS, tasks=TASKS, n=N, seed=SEED)
    return engine


def run_with_a_restart(cluster, engine, url: str, tmp_path) -> str:
    """WORKERS workers at once, the server restarted once a quarter of the units is done;
    returns their logs. Each must exit 0."""
    logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
    workers = [start_worker(url, "--lease-seconds", "60", "--db-patience", "120", log=log)
               for log in logs]
    wait_until(lambda: (statuses(engine).get("done", 0) >= 16), timeout=120)
    cluster.restart()
    for worker in workers:
        worker.wait(timeout=300)
    output = "".join(log.read_text() for log in logs)
    assert [w.returncode for w in workers] == [0] * WORKERS, output
    assert "Traceback" not in output, output
    return output


def assert_each_unit_done_once(engine, reference) -> None:
    assert statuses(engine) == {"done": 64}
    assert scalar(engine, "SELECT COUNT(*) FROM runs WHERE attempts <> 1") == 0
    assert_whole_units(engine, N)
    assert counts(engine) == reference


def test_more_workers_than_slots_and_a_restart_mid_run(
    cluster, reference, table_dir, tmp_path
):
    """12 workers on 8 slots: the last ones wait for a slot (the server refuses them) instead of
    failing; the restart cuts every connection; no unit fails or loses an attempt."""
    engine = fresh_catalog(cluster, table_dir)
    output = run_with_a_restart(cluster, engine, cluster.url(), tmp_path)
    # (with slots reserved for the superuser, "too many clients" reads like this)
    assert "remaining connection slots are reserved" in output
    assert "terminating connection due to administrator command" in output
    assert_each_unit_done_once(engine, reference)


def test_through_pgbouncer_in_transaction_pooling_with_a_restart(
    cluster, bouncer, reference, table_dir, tmp_path
):
    """The same 12 workers through PgBouncer (4 server connections for all of them), the
    server restarted under it: the queue keeps no state across transactions."""
    engine = fresh_catalog(cluster, table_dir)
    output = run_with_a_restart(cluster, engine, cluster.url(port=bouncer.port), tmp_path)
    assert "remaining connection slots" not in output and "too many clients" not in output
    assert_each_unit_done_once(engine, reference)
    # The other commands through PgBouncer: export, then into a new catalog (its schema
    # created through PgBouncer too) import, status, analysis, export again: the same file.
    cluster.admin("DROP DATABASE IF EXISTS copy WITH (FORCE)")
    cluster.admin("CREATE DATABASE copy OWNER worker")
    source = cluster.url(port=bouncer.port)
    copy = cluster.url(port=bouncer.port, database="copy")
    catalog_cli("export", str(tmp_path / "counts.csv"), "--db", source)
    catalog_cli("import-counts", str(tmp_path / "counts.csv"), "--db", copy)
    catalog_cli("status", "--db", copy)
    analysis = json.loads(catalog_cli("analyze", "--format", "json", "--bootstrap", "20",
                                      "--db", copy))
    assert analysis
    catalog_cli("export", str(tmp_path / "again.csv"), "--db", copy)
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "counts.csv").read_text()


def test_slurm_workers_through_pgbouncer_with_a_restart(
    cluster, bouncer, reference, table_dir, tmp_path
):
    """`catalog launch --executor slurm`: a job array of 4 workers on the one-node cluster
    of scripts/slurm-up, through PgBouncer, the server restarted mid-run."""
    engine = fresh_catalog(cluster, table_dir)
    url = cluster.url(port=bouncer.port)
    launch = subprocess.Popen(
        [sys.executable, "-m", "catalog.cli", "launch", "--executor", "slurm", "--workers", "4",
         "--wait", "--time", "0:20:00", "--log-dir", str(tmp_path / "logs"), "--db", url,
         "--", "--lease-seconds", "60", "--db-patience", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: statuses(engine).get("done", 0) >= 16, timeout=300)
    cluster.restart()
    out, err = launch.communicate(timeout=600)
    assert launch.returncode == 0, (out, err)
    assert "launched 4 catalog worker(s) (slurm)" in out and "Traceback" not in err
    assert "Bypassing sacct error" not in err  # accounting is off here: see _quiet_sacct
    assert_each_unit_done_once(engine, reference)


def catalog_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "catalog.cli", *args], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out)
    return out.stdout


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_worker_holds_one_connection_heartbeat_included(db_url, engine, tmp_path):
    """Four workers on 1-second leases (a heartbeat every third of a second) sampling
    half-second units: the server never sees more than four connections to the database."""
    table_models(engine, tmp_path, ["m-x"], table=dict(DIGIT_TABLE, delay_seconds=0.5))
    plan_grid(engine, ["m-x"], n=N)
    def connections() -> int:
        return scalar(engine, "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = "
                      "current_database()")
    own = connections()  # the test's (its engine's pool)
    workers = [start_worker(db_url, "--lease-seconds", "1") for _ in range(4)]
    seen = []
    while any(w.poll() is None for w in workers):
        seen.append(connections() - own)
    for worker in workers:
        code, output = finish(worker)
        assert code == 0, output
    assert statuses(engine) == {"done": 8}
    assert max(seen) >= 2 and max(seen) <= 4, seen


def test_no_database_for_the_patience_exits_1_with_one_line():
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/catalog"
    out = subprocess.run([sys.executable, "-m", "catalog.cli", "worker", "--db", url,
                          "--db-patience", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    *retries, last = out.stderr.strip().splitlines()
    assert last.startswith("Error: cannot reach ") and "(--db-patience)" in last, last
    assert retries and all(line.startswith("database unreachable (") for line in retries)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_patience_is_a_usage_error(value):
    out = subprocess.run([sys.executable, "-m", "catalog.cli", "worker", "--db",
                          "sqlite:///unused.db", "--db-patience", value],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "--db-patience" in out.stderr and "Traceback" not in out.stderr
