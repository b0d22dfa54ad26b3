"""Progress of long jobs (``catalog ingest``, ``catalog worker``, the demo): a tqdm bar on a
terminal, plain log lines otherwise; what happens to a unit other than success (a failure,
a lost result, a release) and database faults are one line each, as they happen."""

from __future__ import annotations

import sys
import time

import click
from tqdm import tqdm

from ingest.events import (
    DatabaseFault,
    Event,
    ModelLoading,
    ModelSkipped,
    UnitClaimed,
    UnitDone,
    UnitFailed,
    UnitLost,
    UnitReleased,
    UnitsBusy,
    UnitsPlanned,
)


class UnitProgress:
    """Renders :mod:`ingest.events`: counts finished units (done, or failed for good) and
    samples, shows rate and ETA when the job planned its units (``catalog ingest``; a
    worker does not know the queue's total). Call as ``progress(event)``."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.bar = None
        self.total = 0  # planned units to sample (0: not known)
        self.finished = 0  # done or failed for good
        self.failed = 0
        self.samples = 0
        self.sampling_seconds = 0.0  # time spent sampling, without model loading
        self.started = time.monotonic()

    def __call__(self, event: Event) -> None:
        match event:
            case UnitsPlanned():
                self._planned(event)
            case UnitDone():
                self._done(event)
            case UnitFailed():
                self._failed(event)
            case UnitClaimed():
                if self.bar is not None:
                    self.bar.set_description_str(event.model, refresh=False)
            case ModelLoading():
                self._log(f"loading {event.model}")
            case ModelSkipped():
                self._log(f"{event.model}: all {event.units} units already done, not loaded")
            case UnitsBusy():
                self._log(f"{event.model}: {event.units} units held by other workers, left "
                          "to them")
            case UnitLost():
                self._log(f"{event.model} {event.unit}: another worker claimed it after this "
                          "one's lease ran out; result discarded")
            case UnitReleased():
                self._log(f"{event.model} {event.unit}: released (stopping)")
            case DatabaseFault():
                self._log(f"database unreachable ({event.error}); trying again in "
                          f"{event.wait:.1f}s")

    def _planned(self, event: UnitsPlanned) -> None:
        self.total += event.todo
        self._log(f"{event.model}: {event.units} units, {event.units - event.todo} already "
                  f"done, {event.todo} to sample")
        if self.interactive:
            self._bar().total = self.total
            self.bar.refresh()

    def _done(self, event: UnitDone) -> None:
        self.finished += 1
        self.samples += event.samples
        self.sampling_seconds += event.seconds
        rate = self.samples / max(self.sampling_seconds, 1e-9)
        if self.interactive:
            self._advance()
            return
        line = f"{event.model} {event.unit}: {event.samples} samples in {event.seconds:.2f}s"
        if self.total:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            remaining = (self.total - self.finished) * elapsed / self.finished
            line = (f"[{self.finished}/{self.total}] {line} ({rate:,.0f} samples/s, "
                    f"ETA {_clock(remaining)})")
        self._log(line)

    def _failed(self, event: UnitFailed) -> None:
        self._log(f"{event.model} {event.unit}: {'failed' if event.final else 'will retry'}: "
                  f"{event.error}")
        if event.final:  # finished too: the bar and the ETA count it
            self.finished += 1
            self.failed += 1
            if self.interactive:
                self._advance()

    def _bar(self) -> tqdm:
        if self.bar is None:
            self.bar = tqdm(total=self.total or None, unit="unit", file=self.stream,
                            dynamic_ncols=True)
        return self.bar

    def _advance(self) -> None:
        """One more unit finished on the bar, with the sampling rate and the failures."""
        bar = self._bar()
        postfix = f"{self.samples / max(self.sampling_seconds, 1e-9):,.0f} samples/s"
        bar.set_postfix_str(postfix + (f", {self.failed} failed" if self.failed else ""),
                            refresh=False)
        bar.update(1)

    def _log(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            click.echo(line, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> UnitProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
