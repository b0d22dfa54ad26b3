"""Benchmark: what ``checkpoints=K`` adds to the toy lab and to ``catalog demo``.

Runs the demo pipeline (train, register, ingest, analyze; no report, no bootstrap) on a
scratch SQLite store twice, without checkpoints and with K checkpoints of SFT and of DPO,
each family trained from scratch, and prints per run the training time, the ingest time
and the number of models sampled, as wall time and CPU time of this process (training runs
on one thread; on a shared machine wall time grows with the load, printed too).

    python benchmarks/toylab_checkpoints.py
    python benchmarks/toylab_checkpoints.py --checkpoints 8 --prompts 4 --samples 200
    python benchmarks/toylab_checkpoints.py --smoke   # tiny models, 2 checkpoints: seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# --smoke: families too small to learn anything, trained in seconds (checks the script runs).
SMOKE = dict(hidden_size=16, intermediate_size=32, num_heads=2, base_steps=3, sft_steps=3,
             dpo_steps=3)


def measure(checkpoints: int, args, scratch: Path) -> None:
    from catalog.db import open_catalog
    from catalog.demo import CACHE_ENV, DemoOptions, run_demo

    os.environ[CACHE_ENV] = str(scratch / f"cache-{checkpoints}")
    engine = open_catalog(f"sqlite:///{scratch / f'demo-{checkpoints}.db'}")
    options = DemoOptions(
        samples=args.samples, prompts_per_task=args.prompts, bootstrap=0, report_dir=None,
        checkpoints=checkpoints, toylab=SMOKE if args.smoke else {},
    )
    marks: dict[str, tuple[float, float]] = {}

    def say(line: str) -> None:  # the demo's progress lines start each phase
        marks[line[:3]] = (time.perf_counter(), time.process_time())

    start = (time.perf_counter(), time.process_time())
    try:
        result = run_demo(engine, options, say=say)
    finally:
        engine.dispose()
    end = (time.perf_counter(), time.process_time())
    phases = [("train", start, marks["2/4"]), ("ingest + analyze", marks["2/4"], end)]
    timings = ", ".join(
        f"{name} {b[0] - a[0]:.1f} s wall / {b[1] - a[1]:.1f} s CPU" for name, a, b in phases
    )
    models = sum(len(stage.checkpoints) or 1 for stage in result.family.stages)
    print(f"checkpoints={checkpoints}: {models} models, {result.ingest.done} units; {timings}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per task (default 4)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models, 2 checkpoints, 3 prompts, 20 samples")
    args = parser.parse_args()
    if args.smoke:
        args.checkpoints, args.prompts, args.samples = 2, 3, 20
    from catalog.toylab import ToyFamilySettings, train_family

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        # A throwaway family first: imports and torch's one-time set-up stay off the clock.
        train_family(scratch, ToyFamilySettings(
            prompts_per_task=3, base_steps=2, sft_steps=2, dpo_steps=2, hidden_size=16,
            intermediate_size=32, num_heads=2,
        ))
        for checkpoints in (0, args.checkpoints):
            measure(checkpoints, args, Path(scratch))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
