"""Write the coders' batches: one markdown file per coder, for the items of some tasks.

Each batch gives, per task, its options and aliases (closed tasks) or its kind (open
tasks), then every item: its id, which model and the exact text it continued, and the
completion as a Python string literal. A coder gets only ``coder-instructions.md``, the
coding rules (docs/normalization.md) and one batch::

    python tests/data/normalization/make_batches.py sixth.jsonl batches/ t6 \\
        animal,coin,color@gemma animal,coin,color@smol ...

Each group is comma-separated tasks, optionally ``@`` a model name's prefix; batch k is
written to ``batches/<prefix>-<k>.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from catalog.prompting import render_plain
from catalog.tasks import bundled_tasks


def task_header(task) -> str:
    lines = [f"\n## Task `{task.name}`: {task.description}\n"]
    if task.kind == "closed":
        lines.append(f"Closed task. Options (canonical forms): {', '.join(task.options)}\n")
        if task.aliases:
            lines.append("Aliases (other surface forms of an option): " + "; ".join(
                f"{k}: {', '.join(v)}" for k, v in task.aliases.items()) + "\n")
    else:
        lines.append(f"Open task. The answer must be of the task's kind ({task.description}). "
                     "Label: the canonical answer (lower case, singular, no article).\n")
    return "".join(lines)


def item_text(item: dict, prompt: str) -> str:
    if item["model"].startswith("smol"):
        seen = f"SmolLM2-135M-Instruct (chat model); its user message was:\n    {prompt!r}"
    else:
        seen = ("Gemma 3 270M base (pretrained, no chat); the text it continued was:\n"
                f"    {render_plain(prompt, None)!r}")
    return (f"\n### {item['id']}\nModel: {seen}\nCompletion (a Python string literal, "
            f"exactly what it wrote):\n    {item['text']!r}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("prefix")
    parser.add_argument("groups", nargs="+", help="tasks[,tasks...][@model prefix]")
    args = parser.parse_args()
    items = [json.loads(line) for line in args.items.read_text(encoding="utf-8").splitlines()]
    tasks = {task.name: task for task in bundled_tasks()}
    args.out.mkdir(parents=True, exist_ok=True)
    for k, group in enumerate(args.groups, 1):
        names, _, model = group.partition("@")
        parts = [f"# Coder batch {args.prefix}-{k}\n"]
        for name in names.split(","):
            task = tasks[name]
            prompts = {p.key: p.text for p in task.prompts}
            parts.append(task_header(task))
            parts += [item_text(item, prompts[item["prompt"]]) for item in items
                      if item["task"] == name and item["model"].startswith(model)]
        (args.out / f"{args.prefix}-{k}.md").write_text("".join(parts), encoding="utf-8")


if __name__ == "__main__":
    main()
