"""Draw the completions to label from the sampled pool (``sample_completions.py``).

For every (model, task), ``--per-cell`` distinct completion texts are drawn without
replacement, each with probability proportional to how many samples gave it (so the drawn
texts stand for the samples, as the counts do), with a fixed seed. Each drawn text is then
assigned to the ``dev`` split (the rules were written and tuned on it) or the ``holdout``
split (labelled by a separate coder, never looked at while writing rules), ``--holdout`` of
each cell::

    python tests/data/normalization/draw_items.py pool-smol.jsonl pool-gemma.jsonl \\
        --out items.jsonl [--per-cell 21] [--holdout 7] [--seed 2026]

A second, independent set is drawn from what is left of the pool, all of it one split::

    python tests/data/normalization/draw_items.py pool.jsonl --exclude labels.jsonl \\
        --per-cell 10 --split second --seed 2026-second --out second.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pools", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-cell", type=int, default=21)
    parser.add_argument("--holdout", type=int, default=7)
    parser.add_argument("--seed", default="2026")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: all)")
    parser.add_argument("--exclude", type=Path, default=None, help="items already drawn")
    parser.add_argument("--split", default=None, help="put every drawn item in this split")
    args = parser.parse_args()
    drawn_before = set()
    if args.exclude is not None:
        for line in args.exclude.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            drawn_before.add((row["model"], row["task"], row["prompt"], row["text"]))
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for pool in args.pools:
        for line in pool.read_text().splitlines():
            row = json.loads(line)
            if (row["model"], row["task"], row["prompt"], row["text"]) in drawn_before:
                continue
            if args.tasks is None or row["task"] in args.tasks.split(","):
                cells[row["model"], row["task"]].append(row)
    items = []
    for (model, task), rows in sorted(cells.items()):
        rng = random.Random(f"{args.seed}:{model}:{task}")  # each cell drawn on its own
        # Efraimidis-Spirakis: the k largest u ** (1 / count) are a weighted draw.
        keyed = sorted(rows, key=lambda r: rng.random() ** (1 / r["count"]), reverse=True)
        drawn = keyed[: args.per_cell]
        for i, row in enumerate(drawn):
            if args.split is not None:
                split, key = args.split, f"{args.split}-{model[:5]}-{task}-{i:02d}"
            else:
                split, key = ("holdout" if i < args.holdout else "dev"), f"{model[:5]}-{task}-{i:02d}"
            items.append({"id": key, "split": split, **row})
    args.out.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    print(f"{len(items)} items from {len(cells)} (model, task) cells")


if __name__ == "__main__":
    main()
