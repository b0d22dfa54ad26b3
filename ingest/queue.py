"""The work queue: ``runs`` rows as units that any worker can claim, renew, complete or fail.

A unit is ``pending`` until a worker claims it. A claim is one statement that picks the next
claimable unit (pending, or running under an expired lease), preferring the model the
worker has loaded, and makes it ``running`` with the worker's id, a fresh *claim token*,
a lease and one more attempt. The worker's heartbeat renews the lease; its final write
(counts, provenance, ``done``) is one transaction that first checks the token, so a worker
whose unit was claimed again by someone else (its lease ran out: it died or froze) cannot
write. A failed attempt puts the unit back to ``pending`` with its error, or makes it
``failed`` once its attempts reach the cap; a released unit (the worker was asked to stop)
goes back to ``pending`` without counting the attempt.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` (workers never wait for each other) and
uses the server's clock for leases (workers on many hosts agree on it); SQLite takes the
file's write lock up front (``BEGIN IMMEDIATE``, with WAL and the busy timeout of
:func:`catalog.db.make_engine`) so that concurrent writers queue instead of failing with
"database is locked". :func:`open_queue` picks the implementation.

A queue holds **one connection**, shared by the threads that use it (the worker's loop and
its heartbeat take turns on it), so a worker costs the server one connection; ``close()``
gives it back. No state outlives a transaction (no session ``SET``), so the queue works
through PgBouncer in transaction pooling mode. A database fault (the connection cannot be
opened or is lost: too many clients, a server restart, a network blip) is the worker's, not
the unit's: the operation is retried with exponential backoff and jitter on a new connection
for up to ``patience`` seconds, then :class:`DatabaseLost` is raised. A retried claim first
gives back what the lost attempt may have claimed, and a retried completion that finds its
own earlier attempt committed counts as written. The statements every unit runs are built
once, with bind parameters.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection, Engine, Interval, Text, and_, bindparam, case, cast, func, insert, literal, or_,
    select, update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from catalog.db import make_engine, open_catalog
from catalog.errors import DatabaseUnreachable
from catalog.schema import Run, UTCDateTime, utcnow

# Test hook (the crash tests): with this set to a directory, a worker creates
# ``<dir>/<pid>.<run id>.paused`` after writing a unit's counts and, before committing them,
# waits for as long as that file exists, so that a test can kill it there.
PAUSE_BEFORE_COMMIT_ENV = "CATALOG_TEST_PAUSE_BEFORE_COMMIT"
ERROR_LENGTH = 2000
# How long a worker keeps trying to reach its database before it gives up (--db-patience).
DB_PATIENCE_SECONDS = 300.0
# Backoff between tries: the first wait is up to BACKOFF_FIRST seconds, doubling up to
# BACKOFF_MAX; each wait is drawn uniformly below that bound ("full jitter"), so that
# hundreds of workers cut off together do not come back in one wave.
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 10.0


class DatabaseLost(DatabaseUnreachable):
    """The database stayed unreachable for the queue's whole patience."""


def is_connection_fault(exc: BaseException) -> bool:
    """A fault of the connection or the server (worth retrying), not of a statement."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


def fault_reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def retry_on_faults(operation, *, patience: float, on_fault=None, what: str = "the database"):
    """``operation()``, tried again after connection faults (backoff with full jitter)
    until it succeeds or ``patience`` seconds have passed since the first fault; then
    :class:`DatabaseLost`. ``on_fault(reason, wait)`` is told of each retry."""
    first_fault = None
    bound = BACKOFF_FIRST
    while True:
        try:
            return operation()
        except (DBAPIError, DatabaseUnreachable) as exc:
            if isinstance(exc, DBAPIError) and not is_connection_fault(exc):
                raise
            if isinstance(exc, DatabaseLost):
                raise
            reason = fault_reason(exc)
        now = time.monotonic()
        first_fault = first_fault or now
        left = patience - (now - first_fault)
        if left <= 0:
            raise DatabaseLost(
                f"cannot reach {what} for {patience:g}s (--db-patience): {reason}") from None
        wait = min(random.uniform(0, bound), left)
        bound = min(bound * 2, BACKOFF_MAX)
        if on_fault is not None:
            on_fault(reason, wait)
        time.sleep(wait)


def open_catalog_patiently(url, *, patience: float = DB_PATIENCE_SECONDS, on_fault=None):
    """:func:`catalog.db.open_catalog`, waiting out connection faults (a worker starting
    while the server is full or restarting). A URL that cannot work fails at once."""
    make_engine(url).dispose()  # an unsupported or malformed URL: no point in waiting
    return retry_on_faults(lambda: open_catalog(url), patience=patience, on_fault=on_fault)


@dataclass(frozen=True)
class Scope:
    """Which units a worker takes: of these models / runs (None: any), not of these models,
    of one mode (None: any)."""

    model_ids: tuple[int, ...] | None = None
    run_ids: tuple[int, ...] | None = None
    exclude_models: tuple[int, ...] = ()
    mode: str | None = None

    def conditions(self) -> list:
        conditions = [Run.origin == "ingest"]
        if self.mode is not None:
            conditions.append(Run.mode == self.mode)
        if self.model_ids is not None:
            conditions.append(Run.model_id.in_(self.model_ids))
        if self.run_ids is not None:
            conditions.append(Run.id.in_(self.run_ids))
        if self.exclude_models:
            conditions.append(Run.model_id.not_in(self.exclude_models))
        return conditions


ANY_UNIT = Scope()


@dataclass(frozen=True)
class Claim:
    """A unit held by one worker; ``token`` fences its writes. ``unit`` holds what the
    planner stored for it (:data:`UNIT_COLUMNS`)."""

    run_id: int
    model_id: int
    token: str
    attempts: int
    unit: Mapping[str, Any] = field(default_factory=dict, compare=False)


# What a claim returns of the unit: all a worker needs to sample it.
UNIT_COLUMNS = (Run.unit_key, Run.task_id, Run.prompt_id, Run.mode, Run.sampling, Run.seed,
                Run.rendered_prompt, Run.condition)


def new_worker_id() -> str:
    """``host:pid:token``: the host and pid let a worker on the same host spot a dead one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claimant_is_dead(claimed_by: str | None) -> bool:
    """True if ``claimed_by`` names a process on this host that no longer exists."""
    host, _, rest = (claimed_by or "").partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's worker: only its lease tells
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class WorkQueue:
    """The queue over one catalog database (see the module docstring for the semantics)."""

    def __init__(self, engine: Engine, *, patience: float = DB_PATIENCE_SECONDS,
                 on_fault=None) -> None:
        self.engine = engine
        self.patience, self.on_fault = patience, on_fault
        # The queue's one connection, and the lock the threads take turns on it with.
        self._conn: Connection | None = None
        self._lock = threading.RLock()
        # The statements of every unit are built once (building them costs more than running
        # them); their varying parts are bind parameters.
        self._statements: dict[tuple, Any] = {}

    def close(self) -> None:
        """Give back the queue's connection."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(DBAPIError):
                    conn.close()

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction on the queue's connection, committed on success; a
        connection that failed is dropped (the next transaction opens a new one)."""
        with self._read() as conn:
            self._begin_write(conn)
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._lock:
            try:
                conn = self._conn
                if conn is None or conn.closed or conn.invalidated:
                    conn = self._conn = self.engine.connect()
                with conn.begin():
                    yield conn
            except DBAPIError:
                self.close()
                raise

    def patiently(self, operation):
        """``operation()`` (one or more of this queue's transactions), retried after
        connection faults for up to the queue's patience (see :func:`retry_on_faults`)."""
        return retry_on_faults(operation, patience=self.patience, on_fault=self.on_fault)

    def read(self, reader):
        """``reader(connection)`` in a transaction of the queue's connection, patiently
        (what a worker reads besides its claims goes over the same one connection)."""
        def attempt():
            with self._read() as conn:
                return reader(conn)
        return self.patiently(attempt)

    # -------------------------------------------------------------- what differs by dialect

    def _begin_write(self, conn: Connection) -> None:
        """Statements that open a write transaction."""

    def now(self) -> Any:
        """The clock leases are measured on, as a value or SQL expression."""
        return utcnow()

    def _clock_sql(self) -> tuple[Any, Any]:
        """(now, the lease's end) in SQL, with bind parameters :meth:`_clock_params` fills."""
        return bindparam("now", type_=UTCDateTime()), bindparam("until", type_=UTCDateTime())

    def _clock_params(self, lease_seconds: float) -> dict[str, Any]:
        now = utcnow()
        return {"now": now, "until": now + timedelta(seconds=lease_seconds)}

    def _lease_until(self, seconds: float) -> Any:
        return utcnow() + timedelta(seconds=seconds)

    def _lock_candidates(self, query):
        return query

    def _insert(self):
        raise NotImplementedError

    # -------------------------------------------------------------- planning side

    def enqueue(self, rows: Sequence[dict]) -> int:
        """Insert pending units; a unit whose key is stored already is kept as it is.
        Returns how many were new."""
        if not rows:
            return 0
        statement = self._insert().on_conflict_do_nothing(index_elements=["unit_key"])

        def attempt():  # a retried insert skips what a lost attempt may have stored
            with self.transaction() as conn:
                return len(conn.execute(statement.returning(Run.id), list(rows)).all())
        return self.patiently(attempt)

    def requeue_failed(self, run_ids: Sequence[int]) -> int:
        """Give failed units a fresh set of attempts (planning them again retries them)."""
        if not run_ids:
            return 0
        def attempt():
            with self.transaction() as conn:
                return conn.execute(
                    update(Run).where(Run.id.in_(list(run_ids)), Run.status == "failed")
                    .values(status="pending", attempts=0, claim_token=None,
                            lease_expires_at=None)
                ).rowcount
        return self.patiently(attempt)

    # -------------------------------------------------------------- worker side

    def claim_next(
        self, worker: str, *, lease_seconds: float, max_attempts: int,
        prefer_model: int | None = None, scope: Scope = ANY_UNIT,
    ) -> Claim | None:
        """Claim the next unit in ``scope``, or None.

        Order: units of ``prefer_model`` first (the loaded model), then fewer attempts (fresh
        units before retries), then planning order. A unit running under an expired lease
        whose attempts already reached ``max_attempts`` is not claimed: :meth:`fail_exhausted`
        makes it ``failed``.
        """
        claims = self.claim_batch(worker, 1, lease_seconds=lease_seconds,
                                  max_attempts=max_attempts, prefer_model=prefer_model,
                                  scope=scope)
        return claims[0] if claims else None

    def claim_batch(
        self, worker: str, count: int, *, lease_seconds: float, max_attempts: int,
        prefer_model: int | None = None, scope: Scope = ANY_UNIT,
    ) -> list[Claim]:
        """Claim up to ``count`` units in one statement, in :meth:`claim_next`'s order (a
        backend that samples several units in one call takes them together). Each claim
        has its own token and is renewed, completed or failed on its own."""
        params = {**self._clock_params(lease_seconds), "c_worker": worker,
                  "c_token": uuid.uuid4().hex, "c_host": socket.gethostname(),
                  "c_max_attempts": max_attempts, "c_prefer": prefer_model}
        statement = self._claim_statement(scope, prefer_model is not None, count)
        tries = 0

        def attempt():
            nonlocal tries
            tries += 1
            with self.transaction() as conn:
                if tries > 1:  # the lost attempt may have committed: give its units back
                    conn.execute(self._unclaim_statement(), {"h_token": params["c_token"]})
                return conn.execute(statement, params).all()
        rows = self.patiently(attempt)
        # The units share the statement's token: a claim is its (run id, token) pair, and a
        # unit claimed again later gets a new token, so each unit is still fenced on its own.
        return [
            Claim(row.id, row.model_id, row.claim_token, row.attempts,
                  {column.key: row._mapping[column.key] for column in UNIT_COLUMNS})
            for row in sorted(rows, key=lambda row: row.id)  # planning order
        ]

    def _claim_statement(self, scope: Scope, prefer: bool, count: int):
        key = ("claim", scope, prefer, count)
        if key not in self._statements:
            now, until = self._clock_sql()
            claimable = _claimable(now, bindparam("c_max_attempts"))
            loaded_first = [case((Run.model_id == bindparam("c_prefer"), 0), else_=1)]
            candidates = (
                select(Run.id).where(claimable, *scope.conditions())
                .order_by(*(loaded_first if prefer else []), Run.attempts, Run.id).limit(count)
            )
            self._statements[key] = (
                update(Run)
                .where(Run.id.in_(self._lock_candidates(candidates)))
                .values(
                    status="running", claimed_by=bindparam("c_worker"),
                    claim_token=bindparam("c_token"), host=bindparam("c_host"),
                    heartbeat_at=now, lease_expires_at=until, started_at=now,
                    attempts=Run.attempts + 1,
                )
                .returning(Run.id, Run.model_id, Run.claim_token, Run.attempts, *UNIT_COLUMNS)
            )
        return self._statements[key]

    def _unclaim_statement(self):
        if "unclaim" not in self._statements:
            self._statements["unclaim"] = (
                update(Run).where(Run.claim_token == bindparam("h_token"),
                                  Run.status == "running")
                .values(status="pending", attempts=Run.attempts - 1, claim_token=None,
                        lease_expires_at=None)
            )
        return self._statements["unclaim"]

    def fail_exhausted(self, max_attempts: int, scope: Scope = ANY_UNIT) -> int:
        """Units running under an expired lease whose attempts reached ``max_attempts`` (their
        workers died or froze that often) become ``failed``. Returns how many."""
        exhausted = select(Run.id).where(
            Run.status == "running", Run.lease_expires_at < self.now(),
            Run.attempts >= max_attempts, *scope.conditions(),
        )
        failed_error = (literal("its worker stopped renewing the lease (it died or froze) on "
                                "attempt ") + cast(Run.attempts, Text)
                        + literal("; the error before: ")
                        + func.coalesce(Run.error, literal("none")))

        def attempt():
            with self.transaction() as conn:
                return conn.execute(
                    update(Run).where(Run.id.in_(self._lock_candidates(exhausted)))
                    .values(status="failed", claim_token=None, lease_expires_at=None,
                            error=failed_error)
                ).rowcount
        return self.patiently(attempt)

    def has_claimable(self, max_attempts: int, scope: Scope = ANY_UNIT) -> bool:
        """Is any unit claimable? (A claim can come back empty while one is: another worker
        held it locked for an instant.)"""
        query = select(Run.id).where(_claimable(self.now(), max_attempts), *scope.conditions())
        return self.read(lambda conn: conn.execute(query.limit(1)).first() is not None)

    def expire_dead_local_claims(self, scope: Scope = ANY_UNIT) -> int:
        """End the leases of units whose claimant was a process on this host that is gone
        (killed, crashed), so they are claimable at once. Returns how many."""
        host = socket.gethostname()
        held = self.read(lambda conn: conn.execute(
            select(Run.id, Run.claimed_by, Run.claim_token).where(
                Run.status == "running", Run.claimed_by.like(f"{host}:%"), *scope.conditions(),
            )
        ).all())
        dead = [(row.id, row.claim_token) for row in held if claimant_is_dead(row.claimed_by)]
        def expire(run_id, token):
            with self.transaction() as conn:
                return conn.execute(
                    update(Run).where(Run.id == run_id, Run.claim_token == token,
                                      Run.status == "running")
                    .values(lease_expires_at=self._lease_until(-1))
                ).rowcount
        return sum(self.patiently(lambda: expire(*row)) for row in dead)

    def heartbeat(self, claim: Claim, lease_seconds: float) -> bool:
        """Renew the claim's lease; False if the unit is no longer this claim's. Tried
        once: a missed renewal only shortens the lease, and the next one comes soon."""
        if "heartbeat" not in self._statements:
            now, until = self._clock_sql()
            self._statements["heartbeat"] = (
                update(Run).where(*_HELD).values(heartbeat_at=now, lease_expires_at=until)
            )
        params = {**self._clock_params(lease_seconds), **_held_params(claim)}
        with self.transaction() as conn:
            return conn.execute(self._statements["heartbeat"], params).rowcount == 1

    def complete(self, claim: Claim, values: dict, children: Sequence[tuple[Any, list]]) -> bool:
        """Write a unit's result and make it ``done``, in one transaction, only while the
        claim holds; False (nothing written) if another worker has claimed it since.
        Retried after connection faults; the claim's fence still decides.

        ``values``: run columns to set; ``children``: ``(table, rows)`` to insert.
        """
        statement = self._complete_statement(tuple(sorted(values)))
        params = {**{f"v_{k}": v for k, v in values.items()}, "v_finished_at": utcnow(),
                  **_held_params(claim)}

        def attempt() -> bool:
            with self.transaction() as conn:
                # The fenced update comes first: it locks the row (PostgreSQL) and proves
                # the claim.
                if conn.execute(statement, params).rowcount != 1:
                    # done under this very claim: an earlier attempt committed, its
                    # acknowledgement was lost with the connection
                    return conn.execute(
                        select(Run.status).where(Run.id == claim.run_id,
                                                 Run.claim_token == claim.token)
                    ).scalar() == "done"
                for table, rows in children:
                    if rows:
                        conn.execute(insert(table), rows)
                _pause_before_commit(claim.run_id)
                return True
        return self.patiently(attempt)

    def _complete_statement(self, columns: tuple[str, ...]):
        key = ("complete", columns)
        if key not in self._statements:
            self._statements[key] = update(Run).where(*_HELD).values(
                {column: bindparam(f"v_{column}", type_=Run.__table__.c[column].type)
                 for column in (*columns, "finished_at")}
                | {"status": "done", "lease_expires_at": None},
            )
        return self._statements[key]

    def fail(self, claim: Claim, error: str, max_attempts: int) -> str | None:
        """Record a failed attempt: back to ``pending``, or ``failed`` at ``max_attempts``.
        Returns the new status (None if the claim was lost)."""
        new_status = case((Run.attempts >= max_attempts, "failed"), else_="pending")

        def attempt():
            with self.transaction() as conn:
                return conn.execute(
                    update(Run).where(*_held(claim))
                    .values(status=new_status, error=error[:ERROR_LENGTH], claim_token=None,
                            lease_expires_at=None, finished_at=utcnow())
                    .returning(Run.status)
                ).first()
        row = self.patiently(attempt)
        return None if row is None else row.status

    def release(self, claim: Claim) -> bool:
        """Give a unit back untried (the worker is stopping): ``pending``, attempt not counted."""
        def attempt():
            with self.transaction() as conn:
                return conn.execute(
                    update(Run).where(*_held(claim))
                    .values(status="pending", attempts=Run.attempts - 1, claim_token=None,
                            lease_expires_at=None)
                ).rowcount == 1
        return self.patiently(attempt)

    def clock(self) -> datetime:
        """The queue's current time (the database server's on PostgreSQL)."""
        return utcnow()


class PostgresQueue(WorkQueue):
    """PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims, the server's clock, asynchronous commits.

    The queue's write transactions do not wait for their WAL flush (``SET LOCAL
    synchronous_commit``: this transaction only, so nothing is left on a pooled connection): a server crash can undo the last fraction of a second
    of claims and completions, each whole (never half a unit), and the units undone are
    claimed and sampled again with the same seeds, so the counts stored are the same. It
    takes the disk's flush latency out of every unit.
    """

    def _begin_write(self, conn: Connection) -> None:
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

    def now(self):
        return func.now()

    def _lease_until(self, seconds: float):
        return func.now() + timedelta(seconds=seconds)

    def _clock_sql(self) -> tuple[Any, Any]:
        return func.now(), func.now() + bindparam("lease", type_=Interval())

    def _clock_params(self, lease_seconds: float) -> dict[str, Any]:
        return {"lease": timedelta(seconds=lease_seconds)}

    def _lock_candidates(self, query):
        return query.with_for_update(skip_locked=True)

    def _insert(self):
        return postgresql.insert(Run)

    def clock(self) -> datetime:
        return self.read(lambda conn: conn.execute(select(func.now())).scalar_one())


class SqliteQueue(WorkQueue):
    """SQLite: every write transaction takes the write lock first (``BEGIN IMMEDIATE``)."""

    def _begin_write(self, conn: Connection) -> None:
        # A deferred transaction that reads, then writes, can fail at once with "database
        # is locked" when another writer got in between; taking the write lock before
        # reading lets the busy timeout queue the writers instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _insert(self):
        return sqlite.insert(Run)


def open_queue(engine: Engine, **options) -> WorkQueue:
    """The queue implementation for the engine's database (``options``: patience, on_fault)."""
    if engine.dialect.name == "postgresql":
        return PostgresQueue(engine, **options)
    return SqliteQueue(engine, **options)


def _claimable(now, max_attempts):
    """Pending, or running under a lease that ended before ``now`` with attempts left."""
    return or_(
        Run.status == "pending",
        and_(Run.status == "running", Run.lease_expires_at < now, Run.attempts < max_attempts),
    )


def _held(claim: Claim) -> tuple:
    return Run.id == claim.run_id, Run.claim_token == claim.token, Run.status == "running"


# The same, as bind parameters of a prebuilt statement.
_HELD = (Run.id == bindparam("h_run"), Run.claim_token == bindparam("h_token"),
         Run.status == "running")


def _held_params(claim: Claim) -> dict[str, Any]:
    return {"h_run": claim.run_id, "h_token": claim.token}


def _pause_before_commit(run_id: int) -> None:
    folder = os.environ.get(PAUSE_BEFORE_COMMIT_ENV)
    if not folder:
        return
    marker = Path(folder) / f"{os.getpid()}.{run_id}.paused"
    marker.touch()
    while marker.exists():
        time.sleep(0.01)
