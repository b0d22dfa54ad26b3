"""Benchmark: units per second claimed and completed by 1, 2, 4 and 8 (or more) `catalog
worker` processes, directly and through PgBouncer, and the queue's overhead per unit.

    python benchmarks/workers.py                       # PostgreSQL at 127.0.0.1:5432
    python benchmarks/workers.py --backends sqlite,postgresql --json workers.json
    python benchmarks/workers.py --backends postgresql,pgbouncer --workers 1,8,32,100
    python benchmarks/workers.py --smoke    # one worker, a few short units: does it run

``pgbouncer``: the same server through a PgBouncer of the benchmark's own (Debian's package,
transaction pooling, --pool-size server connections, on a free loopback port).

Models are `table`-backend models (a fixed answer distribution, no torch) whose units each
take --unit-seconds (the table's delay_seconds: a worker waiting on its model, as on a GPU),
so what is measured is the queue, not sampling. Scratch databases are created on the server
of --postgres (or as SQLite files) and dropped at the end.

- **overhead**: one worker, units that take no time: (first claim to last completion,
  minus the time spent sampling) / units, in milliseconds: claiming, reading the unit,
  normalizing, the fenced write and the heartbeat.
- **peak connections**: the most connections the server had to the scratch database at once
  (sampled every 0.1 s); **memory per worker**: the workers' peak resident set, averaged.
- **scaling**: at least --units-per-worker x K units are planned, then K workers start;
  rates are units claimed and completed per second over the steady state, from the moment
  the last worker made its first claim to the moment the first one ran out of work (from
  the units' own claim and completion times: process start-up and the tail are left out).

Targets (issue 11): overhead under 5 ms per unit; 8 workers at least 6x one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from catalog.config import database_url  # noqa: E402
from catalog.db import open_catalog, session_scope  # noqa: E402
from catalog.registry import add_model  # noqa: E402
from catalog.schema import Run  # noqa: E402
from ingest.backends import SamplingParams  # noqa: E402
from ingest.planning import IngestRequest, plan  # noqa: E402

TASKS = ["coin", "color", "die", "digit", "letter", "month", "number_1_10", "number_1_100",
         "rps", "suit", "us_state", "weekday", "animal", "fruit", "first_name"]
TABLE = {"default": {"7": 0.5, " 3": 0.2, "Sure! Here's a random digit: 4": 0.2, "banana": 0.1}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="postgresql")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="Server to create the scratch databases on.")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--unit-seconds", type=float, default=0.1)
    parser.add_argument("--units-per-worker", type=int, default=80)
    parser.add_argument("--overhead-units", type=int, default=300)
    parser.add_argument("--pool-size", type=int, default=20,
                        help="PgBouncer's server connections (the pgbouncer backend).")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    parser.add_argument("--smoke", action="store_true",
                        help="one worker, 4 units of 0.05 s, 5 overhead units")
    args = parser.parse_args()
    if args.smoke:
        args.workers, args.unit_seconds = "1", 0.05
        args.units_per_worker, args.overhead_units = 4, 5
    # One grid seed plans every prompt of these tasks (180 units; the coin's 12 in a smoke).
    tasks = TASKS[:1] if args.smoke else TASKS
    figures = {}
    with tempfile.TemporaryDirectory() as workdir:
        Path(workdir).chmod(0o755)
        for backend in args.backends.split(","):
            with Scratch(backend, args.postgres, Path(workdir), args.pool_size) as url:
                figures[backend] = measure(url, Path(workdir), args, tasks)
    print(markdown(figures, args))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def measure(url: str, workdir: Path, args, tasks: list[str]) -> dict:
    engine = open_catalog(url)
    for name, delay in (("instant", 0.0), ("timed", args.unit_seconds)):
        table = workdir / f"{name}-{uuid.uuid4().hex[:6]}.json"
        table.write_text(json.dumps({**TABLE, "delay_seconds": delay}))
        with session_scope(engine) as session:
            add_model(session, name=name, family=name, stage="sft", source=str(table),
                      backend="table")
    result = {"overhead": None if args.skip_overhead else
              run_round(engine, url, "instant", 1, args.overhead_units, tasks, seed=0),
              "scaling": {}}
    for k in map(int, args.workers.split(",")):
        result["scaling"][k] = run_round(engine, url, "timed", k, k * args.units_per_worker,
                                         tasks, seed=k)
    one = result["scaling"].get(1)
    for figures in result["scaling"].values():
        figures["speedup"] = (round(figures["completed_per_s"] / one["completed_per_s"], 2)
                              if one else None)
    engine.dispose()
    return result


def run_round(engine, url: str, model: str, k: int, units: int, tasks: list[str],
              seed: int) -> dict:
    """Plan at least ``units`` units, run k workers on them, time them from the database."""
    ids: list[int] = []
    for grid_seed in range(seed * 1000, seed * 1000 + 1000):
        request = IngestRequest(models=[model], tasks=tasks, seed=grid_seed,
                                params=SamplingParams(n=100))
        ids += [i for m in plan(engine, request).models for i in m.run_ids]
        if len(ids) >= units:
            break
    watch = ConnectionWatch(engine)
    workers = [subprocess.Popen(
        [sys.executable, "-m", "catalog.cli", "worker", "--db", url, "--lease-seconds", "300"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ) for _ in range(k)]
    per_worker, rss_kib = [], []
    for w in workers:
        out = w.stdout.read().decode()
        rss_kib.append(os.wait4(w.pid, 0)[2].ru_maxrss)  # the child's peak resident set
        per_worker.append(int(out.split(": ")[1].split()[0]))
    peak_connections = watch.stop()
    with engine.connect() as conn:
        rows = conn.execute(select(Run.claimed_by, Run.started_at, Run.finished_at,
                                   Run.wall_seconds, Run.attempts).where(Run.id.in_(ids))).all()
    # The steady state: from the moment the last worker got going to the moment the first
    # one ran out of work, every worker was busy (start-up and the tail are left out).
    by_worker: dict[str, list] = {}
    for row in rows:
        by_worker.setdefault(row.claimed_by, []).append(row)
    begin = max(min(r.started_at for r in mine) for mine in by_worker.values())
    end = min(max(r.finished_at for r in mine) for mine in by_worker.values())
    window = (end - begin).total_seconds()
    first_claim = min(r.started_at for r in rows)
    span = (max(r.finished_at for r in rows) - first_claim).total_seconds()
    sampling = sum(r.wall_seconds for r in rows)
    return {
        "workers": k, "units": len(ids), "units_per_worker": per_worker,
        "max_attempts": max(r.attempts for r in rows),
        "peak_connections": peak_connections,
        "mib_per_worker": round(sum(rss_kib) / len(rss_kib) / 1024),
        "window_seconds": round(window, 2),
        "claimed_per_s": round(sum(begin <= r.started_at < end for r in rows) / window, 1),
        "completed_per_s": round(sum(begin < r.finished_at <= end for r in rows) / window, 1),
        # Worker time not spent sampling, per unit (one worker: the queue's own cost).
        "overhead_ms_per_unit": round((span * k - sampling) / len(ids) * 1000, 2),
    }


class ConnectionWatch:
    """Samples the server's connections to the engine's database from a thread (the
    watcher's own excluded); ``stop()`` returns the most seen at once."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with self.engine.connect() as conn:
            while not self._done.wait(0.1):
                seen = conn.execute(text(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()")).scalar()
                conn.rollback()
                self.peak = max(self.peak, seen)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


class Scratch:
    """A fresh SQLite file or PostgreSQL database, dropped afterwards; ``pgbouncer``: the
    PostgreSQL database reached through a PgBouncer of its own."""

    def __init__(self, backend: str, admin_url: str, workdir: Path, pool_size: int) -> None:
        self.backend, self.admin_url, self.workdir = backend, admin_url, workdir
        self.pool_size = pool_size
        self.name = f"catalog_bench_{uuid.uuid4().hex[:8]}"
        self.bouncer: subprocess.Popen | None = None

    def __enter__(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.workdir / (self.name + '.db')}"
        self._admin(f"CREATE DATABASE {self.name}")
        url = make_url(database_url(self.admin_url)).set(database=self.name)
        if self.backend == "pgbouncer":
            url = url.set(host="127.0.0.1", port=self._start_bouncer(url))
        return url.render_as_string(hide_password=False)

    def _start_bouncer(self, server) -> int:
        """PgBouncer in transaction pooling mode in front of ``server`` (trust auth: a
        loopback benchmark), in the foreground of a child process; returns its port."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        folder = self.workdir / "pgbouncer"
        folder.mkdir(exist_ok=True)
        (folder / "users.txt").write_text(f'"{server.username}" ""\n')
        ini = folder / "pgbouncer.ini"
        ini.write_text(
            f"[databases]\n* = host={server.host} port={server.port or 5432}\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {self.pool_size}\n"
            "max_client_conn = 2000\n")
        argv = ["pgbouncer", str(ini)]
        if os.geteuid() == 0:  # it refuses to run as root
            for path in (folder, ini, folder / "users.txt"):
                shutil.chown(path, "postgres", "postgres")
            argv = ["runuser", "-u", "postgres", "--", *argv]
        self.bouncer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return port
            time.sleep(0.1)
        raise RuntimeError("pgbouncer did not start")

    def __exit__(self, *exc) -> None:
        if self.bouncer is not None:
            self.bouncer.terminate()
            self.bouncer.wait()
        if self.backend != "sqlite":
            self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def _admin(self, statement: str) -> None:
        engine = create_engine(database_url(self.admin_url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(statement))
        engine.dispose()


def markdown(figures: dict, args) -> str:
    lines = [f"units of {args.unit_seconds:g} s, {args.units_per_worker} per worker", "",
             "| database | workers | units | claimed/s | completed/s | speedup "
             "| peak connections | MiB per worker |",
             "|---|---|---|---|---|---|---|---|"]
    for backend, result in figures.items():
        for k, f in result["scaling"].items():
            lines.append(f"| {backend} | {k} | {f['units']} | {f['claimed_per_s']} | "
                         f"{f['completed_per_s']} | {f['speedup']} | {f['peak_connections']} "
                         f"| {f['mib_per_worker']} |")
    lines += ["", "| database | overhead per unit (ms) | units | units/s |", "|---|---|---|---|"]
    for backend, result in figures.items():
        o = result["overhead"]
        if o is None:
            continue
        lines.append(f"| {backend} | {o['overhead_ms_per_unit']} | {o['units']} | "
                     f"{o['completed_per_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
