"""Progress of long jobs: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time

import click
from tqdm import tqdm


class UnitProgress:
    """Counts done units and samples; shows rate and ETA. Call as ``progress(event, info)``."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.bar = None
        self.total = 0
        self.done = 0
        self.samples = 0
        self.sampling_seconds = 0.0  # time spent sampling, without model loading
        self.started = time.monotonic()

    def __call__(self, event: str, info: dict) -> None:
        if event == "plan":
            self._plan(info)
        elif event == "unit":
            self._unit(info)
        elif event == "skip":
            self._log(f"{info['model']}: all {info['units']} units already done, not loaded")
        elif event == "busy":
            self._log(f"{info['model']}: {info['units']} units held by other workers, left to them")

    def _plan(self, info: dict) -> None:
        self.total += info["todo"]
        already = info["units"] - info["todo"]
        self._log(f"{info['model']}: {info['units']} units, {already} already done, "
                  f"{info['todo']} to sample")
        if self.interactive:
            if self.bar is None:
                self.bar = tqdm(total=self.total, unit="unit", file=self.stream, dynamic_ncols=True)
            else:
                self.bar.total = self.total
                self.bar.refresh()

    def _unit(self, info: dict) -> None:
        self.done += 1
        self.samples += info["samples"]
        self.sampling_seconds += info["seconds"]
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.samples / max(self.sampling_seconds, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate:,.0f} samples/s", refresh=False)
            self.bar.update(1)
            return
        remaining = (self.total - self.done) * elapsed / self.done
        self._log(
            f"[{self.done}/{self.total}] {info['model']} {info['unit']}: {info['samples']} samples "
            f"in {info['seconds']:.2f}s ({rate:,.0f} samples/s, ETA {_clock(remaining)})"
        )

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
