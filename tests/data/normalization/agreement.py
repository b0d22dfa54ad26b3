"""Agreement of the catalog's normalizers with the hand-coded labels (labels.jsonl).

For each split (``dev``: the rules were tuned on it; ``holdout``: labelled by separate
coders and never read while writing rules; ``second`` and ``third``: coded later by other
coders, each scored once with the rules frozen) and each task:

- ``outcome``: the normalizer and the coder agree on the option, or both say invalid;
- ``exact``: they also agree on the reason of an invalid one;
- ``valid_correct``: of the completions the normalizer counts valid, the share whose option
  is the coded answer (how much of what is counted is right).

    .venv/bin/python tests/data/normalization/agreement.py [--lenient] [--show-misses SPLIT]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from catalog.normalize import read
from catalog.tasks import bundled_task

LABELS = Path(__file__).with_name("labels.jsonl")
REASONS = ("no_answer", "ambiguous", "off_category", "out_of_range")


def load(path: Path = LABELS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def compare(item: dict, lenient: bool = False) -> dict:
    """The normalizer's reading of one labelled item next to the coder's label."""
    reading = read(bundled_task(item["task"]), item["text"], lenient)
    label = item["label"]
    coded = None if label in REASONS else label
    ours = reading.option if reading.option is not None else reading.reason
    return {
        "outcome": reading.option == coded,
        "exact": ours == label,
        "counted": reading.option is not None,
        "counted_right": reading.option is not None and reading.option == coded,
        "ours": ours,
    }


def agreement(items: list[dict], lenient: bool = False) -> dict:
    """{split: {task or "all": {outcome, exact, valid_correct, n, n_counted}}}."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for item in items:
        result = compare(item, lenient)
        for task in (item["task"], "all"):
            cell = table[item["split"]][task]
            cell["n"] += 1
            cell["outcome"] += result["outcome"]
            cell["exact"] += result["exact"]
            cell["n_counted"] += result["counted"]
            cell["counted_right"] += result["counted_right"]
    return {
        split: {
            task: {
                "n": c["n"],
                "outcome": c["outcome"] / c["n"],
                "exact": c["exact"] / c["n"],
                "n_counted": c["n_counted"],
                "valid_correct": c["counted_right"] / c["n_counted"] if c["n_counted"] else None,
            }
            for task, c in sorted(tasks.items())
        }
        for split, tasks in table.items()
    }


def per_class(items: list[dict], lenient: bool = False) -> dict:
    """{split: {coded class: (n, share the normalizer reads the same)}}; the class of a
    coded option is "option"."""
    table: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for item in items:
        kind = item["label"] if item["label"] in REASONS else "option"
        cell = table[item["split"]][kind]
        cell[0] += 1
        cell[1] += compare(item, lenient)["exact"]
    return {split: {k: (n, same / n) for k, (n, same) in sorted(kinds.items())}
            for split, kinds in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lenient", action="store_true", help="the rules before version 2")
    parser.add_argument("--show-misses", metavar="SPLIT", default=None,
                        help="list the items of this split the normalizers read otherwise")
    args = parser.parse_args()
    items = load()
    if args.show_misses and args.show_misses not in {item["split"] for item in items}:
        parser.error(f"no split {args.show_misses!r} in {LABELS.name}")
    for split, tasks in sorted(agreement(items, args.lenient).items()):
        print(f"{split}: task, n, outcome agreement, exact agreement, counted valid, "
              "right among counted")
        for task, c in tasks.items():
            right = "-" if c["valid_correct"] is None else f"{c['valid_correct']:.0%}"
            print(f"  {task:14} {c['n']:4} {c['outcome']:6.0%} {c['exact']:6.0%} "
                  f"{c['n_counted']:4} {right:>6}")
    for split, kinds in sorted(per_class(items, args.lenient).items()):
        print(f"{split} per coded class: " + ", ".join(
            f"{kind} {same:.0%} of {n}" for kind, (n, same) in kinds.items()))
    if args.show_misses:
        for item in items:
            result = compare(item, args.lenient)
            if item["split"] == args.show_misses and not result["exact"]:
                print(f"{item['id']:22} label={item['label']!r:16} ours={result['ours']!r:16} "
                      f"{item['text']!r}")


if __name__ == "__main__":
    main()
