"""A PostgreSQL cluster and a PgBouncer of the test's own, on loopback ports of their own.

The fault tests restart a server and fill its connection slots, which they must never do to
the shared server the rest of the suite uses. Both run as the ``postgres`` system user (they
refuse to run as root) from Debian's packages (``postgresql``, ``pgbouncer``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
# Workers connect as this role (no superuser): the reserved slots stay free for the test.
WORKER_ROLE = "worker"
DATABASE = "catalog"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def own_servers_dir() -> Iterator[Path]:
    """A folder the ``postgres`` user can reach (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="catalog-own-servers-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_postgres(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def owned_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


class OwnCluster:
    """A throwaway PostgreSQL cluster: ``max_connections`` slots, of which
    ``superuser_reserved`` only the superuser (the test) may take."""

    def __init__(self, root: Path, *, max_connections: int, superuser_reserved: int = 2):
        self.data = owned_dir(root / "data")
        self.port = free_port()
        self.log = owned_dir(root / "log") / "server.log"
        as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                     "-U", "postgres", "--no-sync"])
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.data}'\n"
                f"max_connections = {max_connections}\n"
                f"superuser_reserved_connections = {superuser_reserved}\n"
                "fsync = off\nshared_buffers = 16MB\n"
            )
        self.start()
        self.admin(f"CREATE ROLE {WORKER_ROLE} LOGIN")
        self.admin(f"CREATE DATABASE {DATABASE} OWNER {WORKER_ROLE}")

    def url(self, user: str = WORKER_ROLE, port: int | None = None,
            database: str = DATABASE) -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{port or self.port}/{database}"

    def admin(self, sql: str) -> str:
        return as_postgres([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-d", "postgres", "-Atc", sql]).stdout

    def _ctl(self, *args: str) -> None:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                     "-w", "-t", "60", *args])

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        """What ``pg_ctlcluster ... restart`` does: a fast shutdown (every session cut
        off), then a start."""
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")


class OwnBouncer:
    """PgBouncer in transaction pooling mode in front of ``cluster``: at most
    ``pool_size`` server connections for any number of clients."""

    def __init__(self, root: Path, cluster: OwnCluster, *, pool_size: int):
        folder = owned_dir(root / "pgbouncer")
        self.port = free_port()
        self.log = folder / "pgbouncer.log"
        users = folder / "users.txt"
        users.write_text(f'"{WORKER_ROLE}" ""\n"postgres" ""\n')
        ini = folder / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={cluster.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {folder}\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 1000\n"
            f"logfile = {self.log}\npidfile = {folder / 'pgbouncer.pid'}\n"
            # a restarted server: pooled server connections are checked before reuse
            "server_check_delay = 0\n"
        )
        for path in (users, ini):
            if os.geteuid() == 0:
                shutil.chown(path, "postgres", "postgres")
        self.pidfile = folder / "pgbouncer.pid"
        as_postgres(["pgbouncer", "-d", str(ini)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"pgbouncer did not start: {self.log.read_text()}")

    def stop(self) -> None:
        pid = int(self.pidfile.read_text())
        os.kill(pid, 15)
