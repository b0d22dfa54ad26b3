"""Normalizer throughput: distinct completion texts normalized per second, per bundled task.

Ingest normalizes each distinct completion text once, so this bounds how much normalizing
can cost a unit. The texts are each task's options (or a few open answers) inside chatty
wrappers and base-model run-ons, all distinct.

    python benchmarks/normalize_throughput.py [--seconds 0.5] [--smoke]

``--smoke``: 0.01 s per task, to check that the script works.
"""

from __future__ import annotations

import argparse
import time

from catalog.normalize import get_normalizer
from catalog.tasks import bundled_tasks

WRAPPERS = [
    "{x}",
    " {x}\nQuestion: Pick again.\nAnswer:",
    "Sure! Here's a random pick: {x}",
    "I'll pick **{x}**.",
    "Sure! Here's one:\n\n{x}\n\nLet me know if you would like another one.",
    '```json\n{{"answer": "{x}"}}\n```',
    "I can't be truly random, but here's one: {x}. Hope that helps!",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time spent per task")
    parser.add_argument("--smoke", action="store_true", help="0.01 s per task")
    args = parser.parse_args()
    if args.smoke:
        args.seconds = 0.01
    print(f"{'task':14} {'normalizer':10} {'texts/s':>9} {'us/text':>8}")
    for task in bundled_tasks():
        normalizer = get_normalizer(task.normalizer)
        answers = task.options or ("lion", "Red Panda", "mango", "Olivia")
        texts = [wrapper.format(x=answer) for wrapper in WRAPPERS for answer in answers]
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            for text in texts:
                normalizer(text, task)
            done += len(texts)
        elapsed = time.perf_counter() - start
        print(f"{task.name:14} {task.normalizer:10} {done / elapsed:9.0f} {elapsed / done * 1e6:8.1f}")


if __name__ == "__main__":
    main()
