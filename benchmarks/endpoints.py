"""The openai backend on vLLM's OpenAI-compatible server, against vLLM in-process and the tree
sampler: the same model, prompts and parameters, in one run.

Run it in the vLLM venv (``scripts/setup-vllm``)::

    .venv-vllm/bin/python benchmarks/endpoints.py [--n 256] [--units 16] [--max-new-tokens 8]
        [--max-n 64] [--json out.json]
    .venv-vllm/bin/python benchmarks/endpoints.py --smoke      # a few seconds of sampling

Model: the tests' tiny chat model (tests/tiny_models.py: a 2-layer Llama, hidden size 128,
trained briefly), built in a temporary directory. It is small enough that the forward pass
costs little, so the table shows what serving adds (HTTP, JSON, the server's tokenizing and
detokenizing): the worst case for the endpoint backend.

Workload: ``--units`` units (the digit task's prompts through the chat template, each with its
own seed), ``--n`` samples each, at most ``--max-new-tokens`` new tokens, temperature 1, as a
worker runs them: ``units_per_call`` units per ``sample_many`` call. Measured (samples per
second, start-up and model loading excluded, after one warm-up call):

- the openai backend against vLLM's server (``tests/vllm_server.py``: the CPU build with
  whole prefills), at ``concurrency`` 1, 4 and 16 and ``units_per_call`` 1 and 16, requests
  of at most ``--max-n`` completions, the catalog rendering the chat template (token ids);
- the vllm backend in-process (``seeding=engine``), ``units_per_call`` 1 and 16;
- the tree sampler (transformers backend), unit by unit;

and the chi-square homogeneity p-value between the endpoint's pooled counts (concurrency 16,
16 units per call) and the tree sampler's, per unit pooled over units (a sanity check that
the fast path draws from the same distribution).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from stat_checks import homogeneity_pvalue  # noqa: E402  (the tests' chi-square test)
from tiny_models import build_tiny_model  # noqa: E402
from vllm_server import VLLMServer  # noqa: E402

from catalog.tasks import bundled_task  # noqa: E402
from ingest.backends import ModelSpec, SampleRequest, SamplingParams, load_backend  # noqa: E402

KEY = "benchmark-key"
KEY_VARIABLE = "CATALOG_BENCHMARK_KEY"
SERVED_NAME = "tiny-bench"


def units(backend, count: int, params: SamplingParams) -> list[SampleRequest]:
    prompts = [prompt.text for prompt in bundled_task("digit").prompts]
    return [SampleRequest(backend.render(prompts[i % len(prompts)], "chat"), params, 1000 + i)
            for i in range(count)]


def run_calls(backend, requests: list[SampleRequest], per_call: int) -> tuple[float, list]:
    """Seconds to sample every request, ``per_call`` units per sample_many call."""
    backend.sample_many(requests[:1])  # warm-up: connections, compiled graphs, caches
    start = time.perf_counter()
    counts = []
    for first in range(0, len(requests), per_call):
        counts += backend.sample_many(requests[first:first + per_call])
    return time.perf_counter() - start, counts


def row(name: str, settings: str, requests, seconds: float) -> dict:
    samples = sum(r.params.n for r in requests)
    result = {"backend": name, "settings": settings, "samples": samples, "seconds": seconds,
              "samples_per_second": samples / seconds}
    print(f"{name:>16}  {settings:<32} {result['samples_per_second']:9.1f} samples/s "
          f"({seconds:.2f} s)", flush=True)
    return result


def pooled(counts: list[dict[str, int]]) -> Counter:
    total: Counter = Counter()
    for unit in counts:
        total.update(unit)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="samples per unit")
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--max-n", type=int, default=64, help="completions per request")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (n=32, 4 units)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.units = 32, 4
    concurrencies, per_calls = (1, 4, 16), (1, args.units)
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="catalog-endpoints-") as scratch:
        model_dir = build_tiny_model(Path(scratch) / "model", train_steps=80, hidden_size=128,
                                     heads=2)
        print(f"{args.units} units x {args.n} samples, {args.max_new_tokens} new tokens, "
              f"requests of at most {args.max_n}", flush=True)
        os.environ[KEY_VARIABLE] = KEY
        with VLLMServer(model_dir, SERVED_NAME, key=KEY,
                        log_path=Path(scratch) / "server.log") as server:
            for per_call in per_calls:
                for concurrency in concurrencies:
                    options = {"base_url": server.url, "api_key_env": KEY_VARIABLE,
                               "tokenizer": str(model_dir), "concurrency": concurrency,
                               "max_n": args.max_n, "units_per_call": per_call}
                    spec = ModelSpec(SERVED_NAME, backend="openai", backend_options=options)
                    with load_backend(spec) as backend:
                        requests = units(backend, args.units, params)
                        seconds, served = run_calls(backend, requests, per_call)
                    rows.append(row("openai (server)", f"concurrency={concurrency}, "
                                    f"units_per_call={per_call}", requests, seconds))
        spec = ModelSpec(str(model_dir), backend="vllm")
        with load_backend(spec, device="cpu") as backend:
            requests = units(backend, args.units, params)
            for per_call in per_calls:
                seconds, _ = run_calls(backend, requests, per_call)
                rows.append(row("vllm (in-process)", f"units_per_call={per_call}", requests,
                                seconds))
        with load_backend(ModelSpec(str(model_dir)), device="cpu") as backend:
            requests = units(backend, args.units, params)
            seconds, tree = run_calls(backend, requests, 1)
            rows.append(row("transformers", "tree sampler, unit by unit", requests, seconds))
    try:
        pvalue = homogeneity_pvalue(pooled(served), pooled(tree))
    except AssertionError:  # too few samples for three categories (--smoke)
        pvalue = None
    best_endpoint = max(r["samples_per_second"] for r in rows if r["backend"].startswith("openai"))
    best_vllm = max(r["samples_per_second"] for r in rows if r["backend"].startswith("vllm"))
    print(f"best endpoint / best in-process vLLM: {best_endpoint / best_vllm:.2f}x; "
          "chi-square p (endpoint vs tree, pooled) = "
          + ("n/a" if pvalue is None else f"{pvalue:.3f}"))
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows, "chi_square_p": pvalue}, indent=2))


if __name__ == "__main__":
    main()
