"""The tree sampler as a forest: many units in one tree pass against one unit at a time.

Model: the tests' tiny real Llama (tests/tiny_models.py, trained 80 steps so that it
answers its prompts concentratedly: a few answers, then EOS), built once into a temporary
directory and loaded through ``ingest.backends.load_backend`` on the CPU (float32 unless
``--dtype``).

Work: a grid of concentrated units, the tiny model's three chat prompts x seeds (default
180 units, N = 100 samples each, at most 8 new tokens, stop at a newline), sampled

- one unit at a time (``backend.sample`` per unit), and
- as forests of ``--units-per-call`` units (``backend.sample_many``),

in one process, with the same seeds; reports units per second of each, the speed-up (goal
>= 10x), and how many units got exactly the same counts both ways.

    python benchmarks/forest.py [--units 180] [--units-per-call 128] [--threads 1] [--smoke]
                                [--dtype float32|bfloat16]

``--dtype bfloat16`` loads the model in bfloat16 and also times the forests with the model's
own bfloat16 output layer instead of the sampler's float32 one (the cost of the float32
head; on this tiny model, a vocabulary of ~350, not a large model's share).

``--smoke`` runs 12 units (seconds), to check that the script works.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ingest.backends import ModelSpec, SamplingParams, load_backend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_models import PROMPTS, build_tiny_model  # noqa: E402


def grid(backend, units: int, params: SamplingParams):
    rendered = [backend.render(prompt, "chat") for prompt in PROMPTS]
    return [(rendered[i % len(rendered)], params, 1000 + i) for i in range(units)]


def timed(function):
    t0 = time.perf_counter()
    value = function()
    return value, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=180)
    parser.add_argument("--units-per-call", type=int, default=128)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="12 units: check the script runs")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    units = 12 if args.smoke else args.units
    torch.set_num_threads(args.threads)
    params = SamplingParams(n=args.n, max_new_tokens=8, stop=("\n",))
    with tempfile.TemporaryDirectory() as directory:
        path = build_tiny_model(Path(directory) / "tiny", train_steps=80)
        backend = load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu",
                               dtype=args.dtype)
        requests = grid(backend, units, params)
        backend.sample(*requests[0])  # warm-up
        one, one_seconds = timed(lambda: [backend.sample(*r) for r in requests])

        def forests():
            return [
                counts
                for start in range(0, units, args.units_per_call)
                for counts in backend.sample_many(requests[start:start + args.units_per_call])
            ]

        forest, forest_seconds = timed(forests)
        if backend.sampler.float32_head:
            backend.sampler.float32_head = False
            _, own_head_seconds = timed(forests)
    same = sum(dict(a) == dict(b) for a, b in zip(one, forest))
    print(f"{units} concentrated units (N={args.n}, <= 8 tokens, stop at newline), "
          f"{args.threads} torch thread(s)")
    print(f"one unit at a time: {units / one_seconds:8.1f} units/s ({one_seconds:.2f} s)")
    print(f"forests of {args.units_per_call:>3}:      {units / forest_seconds:8.1f} units/s "
          f"({forest_seconds:.2f} s)")
    print(f"speed-up: {one_seconds / forest_seconds:.1f}x; units with identical counts both "
          f"ways: {same}/{units}")
    if args.dtype != "float32":
        print(f"forests with the model's own {args.dtype} head: {own_head_seconds:.2f} s "
              f"(float32 head: {forest_seconds / own_head_seconds - 1:+.0%})")


if __name__ == "__main__":
    main()
