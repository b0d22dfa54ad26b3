"""Benchmark: training the toy family of `catalog demo` (catalog/toylab/) on the CPU.

Trains the default family (the bundled digit, coin and color tasks, 12 prompts each) and
the test suite's small one (3 tasks x 4 prompts) into a scratch directory, and prints per
stage the wall time and the CPU time of this process. Training runs on one thread (for
determinism), so on an idle machine wall time ~ CPU time; on a shared machine wall time
grows with the load, which is printed too. Then it checks what was learned, exactly from
the logits: the largest error of each stage against its target (base: the planted
distribution of each prompt; SFT: the seed, for every prompt) and, for DPO, the mass on the
seed support and the distance moved from SFT. Target: the default family well under 2
minutes on 2 CPU cores.

    python benchmarks/toylab_training.py
    python benchmarks/toylab_training.py --prompts 6 --seed 3
    python benchmarks/toylab_training.py --smoke   # 3 prompts, tiny models, 3 steps: seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

# --smoke: families too small to learn anything, trained in seconds (checks the script runs).
SMOKE = dict(prompts_per_task=3, hidden_size=16, intermediate_size=32, num_heads=2,
             base_steps=3, sft_steps=3, dpo_steps=3)


def measure(label: str, settings, out_dir: Path) -> None:
    from catalog.toylab import learned_distributions, train_family

    wall, cpu = time.perf_counter(), time.process_time()
    family = train_family(out_dir, settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in family.train_seconds.items())
    print(f"{label}: wall {wall:.1f} s, CPU {cpu:.1f} s (stages, wall s: {stages})")
    tasks = settings.resolved_tasks()
    learned = {stage.name: learned_distributions(stage, tasks) for stage in family.stages}
    for task in tasks:
        truth = family.planted[task.name]
        seed = np.array(truth.seed)
        base_error = max(
            np.abs(d - truth.base[k]).max() for k, d in learned["base"][task.name].items()
        )
        sft_error = max(np.abs(d - seed).max() for d in learned["sft"][task.name].values())
        sft = np.mean(list(learned["sft"][task.name].values()), axis=0)
        dpo = np.mean(list(learned["dpo"][task.name].values()), axis=0)
        support = [task.options.index(o) for o in truth.support]
        print(
            f"  {task.name:6} base max error {base_error:.3f}"
            f" | SFT max error to seed {sft_error:.3f}"
            f" | DPO mass on seed support {dpo[support].sum():.3f} (SFT {sft[support].sum():.3f}),"
            f" TV(DPO, SFT) {0.5 * np.abs(dpo - sft).sum():.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12, help="prompts per task (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="3 prompts, tiny models, 3 steps")
    args = parser.parse_args()

    from catalog.toylab import ToyFamilySettings
    from catalog.toylab.small import SMALL_FAMILY

    default = ToyFamilySettings(prompts_per_task=args.prompts, seed=args.seed)
    small = replace(SMALL_FAMILY, seed=args.seed)
    if args.smoke:
        default, small = replace(default, **SMOKE), replace(small, **SMOKE)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        measure("default family (bundled digit, coin, color)", default, Path(scratch))
        measure("test family (3 tasks x 4 prompts)", small, Path(scratch))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
