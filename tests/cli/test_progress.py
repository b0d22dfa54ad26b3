"""The one renderer of job events (catalog/cli/progress.py) that ``catalog ingest``,
``catalog worker`` and the demo share: log lines in a file, a bar on a terminal (a real
pseudo-terminal here), a unit's failure one line as it happens in both."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import termios

from catalog.cli.progress import UnitProgress
from ingest.events import (
    DatabaseFault,
    ModelLoading,
    UnitClaimed,
    UnitDone,
    UnitFailed,
    UnitLost,
    UnitReleased,
    UnitsPlanned,
)

FAILED = UnitFailed("m-a", "digit/terse", error="no distribution for 'x'", final=True)


def test_log_lines_count_planned_units_and_show_each_failure():
    stream = io.StringIO()
    with UnitProgress(stream) as progress:
        for event in (UnitsPlanned("m-a", units=4, todo=3), ModelLoading("m-a"),
                      UnitClaimed("m-a", "digit/plain"),
                      UnitDone("m-a", "digit/plain", samples=100, seconds=0.5),
                      UnitFailed("m-a", "digit/terse", error="no distribution for 'x'",
                                 final=False),
                      FAILED, UnitLost("m-a", "digit/only"), UnitReleased("m-a", "digit/json"),
                      DatabaseFault("connection refused", 1.5)):
            progress(event)
    lines = stream.getvalue().splitlines()
    assert lines[2].startswith("[1/3] m-a digit/plain: 100 samples in 0.50s (200 samples/s, ETA ")
    assert lines[:2] + lines[3:] == [
        "m-a: 4 units, 1 already done, 3 to sample",
        "loading m-a",
        "m-a digit/terse: will retry: no distribution for 'x'",
        "m-a digit/terse: failed: no distribution for 'x'",
        "m-a digit/only: another worker claimed it after this one's lease ran out; "
        "result discarded",
        "m-a digit/json: released (stopping)",
        "database unreachable (connection refused); trying again in 1.5s",
    ]
    assert (progress.finished, progress.failed, progress.samples) == (2, 1, 100)


def test_a_worker_without_a_plan_logs_units_without_a_count():
    stream = io.StringIO()
    UnitProgress(stream)(UnitDone("m-a", "digit/plain", samples=40, seconds=0.25))
    assert stream.getvalue() == "m-a digit/plain: 40 samples in 0.25s\n"


def test_on_a_terminal_the_bar_counts_finished_units_and_failures_are_lines():
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with os.fdopen(terminal, "w") as stream:
        progress = UnitProgress(stream)
        assert progress.interactive
        progress(UnitsPlanned("m-a", units=3, todo=3))
        progress(UnitDone("m-a", "digit/plain", samples=100, seconds=0.5))
        progress(FAILED)
        assert (progress.bar.n, progress.bar.total) == (2, 3)
        assert "1 failed" in progress.bar.postfix
        progress.close()
    shown = b""
    while chunk := _read(controller):
        shown += chunk
    os.close(controller)
    assert b"m-a digit/terse: failed: no distribution for 'x'" in shown
    assert b"2/3" in shown


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal side is closed and everything was read
        return b""
