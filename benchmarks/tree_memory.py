"""The tree sampler's memory and stop-string checks on a chatty unit, on a CPU.

Model: the tests' tiny real Llama (tests/tiny_models.py) with random weights (every next
token nearly uniform over ~350 tokens: the frontier fills all N rows within two tokens),
hidden size 512 so that the KV cache (8 KiB per token per row) dominates the process's
other allocations. Unit: N = 1000 samples, 24 new tokens, stop at a newline.

(a) Peak memory: the rise of the process's peak resident memory (VmHWM, reset through
    /proc/self/clear_refs before the unit) while the unit is sampled, against the
    frontier's own KV cache at its largest (each unit's prompt once, its branches'
    generated positions per row: the least any sampler holding that frontier needs).
    ``--copy-prompt``: every branch holds its own copy of the prompt's KV, as before the
    sampler shared it (the frontier's KV then counts the copies). Goal: <= 1.5x.
(b) Stop checks: seconds per depth spent deciding which branches end at a stop string and
    collecting the ended ones, when only the branches whose new token may complete a stop
    string are decoded (now) and when every open branch is decoded again from its start at
    every depth (before).

    python benchmarks/tree_memory.py [--n 1000] [--tokens 24] [--batch-size auto|ROWS]
                                     [--threads 1] [--copy-prompt] [--smoke]

``--smoke``: N = 50, 6 tokens (seconds), to check that the script works.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.prefix_cache import kv_bytes
from ingest.sampling import TreeSampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_models import PROMPTS, build_tiny_model  # noqa: E402


def peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class TimedStops(TreeSampler):
    """The sampler, timing its stop checks and leaf collection; ``every_branch`` decodes
    every open branch at every depth, as the sampler did before."""

    every_branch = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_seconds: list[float] = []
        self.frontier_kv = 0

    def _collect_leaves(self, *args):
        t0 = time.perf_counter()
        super()._collect_leaves(*args)
        self.stop_seconds.append(time.perf_counter() - t0)

    def _may_complete_stop(self, new_tokens, stop):
        if self.every_branch:
            return torch.ones(len(new_tokens), dtype=torch.bool)
        return super()._may_complete_stop(new_tokens, stop)

    def _step(self, *args):
        batches, logits = super()._step(*args)
        self.frontier_kv = max(self.frontier_kv, kv_bytes(*(b.cache for b in batches)))
        return batches, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", default="auto", help="rows per forward pass (auto)")
    parser.add_argument("--copy-prompt", action="store_true",
                        help="a copy of the prompt's KV per branch (share_prompt=False)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    n, tokens = (50, 6) if args.smoke else (args.n, args.tokens)
    torch.set_num_threads(args.threads)
    params = SamplingParams(n=n, max_new_tokens=tokens, stop=("\n",))
    with tempfile.TemporaryDirectory() as directory:
        path = build_tiny_model(Path(directory) / "chatty", hidden_size=512, heads=8)
        backend = load_backend(ModelSpec(str(path), prompt_format="chat"), device="cpu")
    loaded = backend.loaded
    rendered = backend.render(PROMPTS[0], "chat")
    results = {}
    for label, every_branch in (("now", False), ("before", True)):  # now first: a clean heap
        sampler = TimedStops(loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                             batch_size=args.batch_size, share_prompt=not args.copy_prompt)
        sampler.every_branch = every_branch
        sampler.sample(rendered, SamplingParams(n=10, max_new_tokens=2), seed=0)  # warm-up
        sampler.stop_seconds.clear()
        reset_peak_rss()
        base = peak_rss()
        t0 = time.perf_counter()
        tree = sampler.sample(rendered, params, seed=1)
        seconds = time.perf_counter() - t0
        results[label] = (tree, sampler, peak_rss() - base, seconds)
    tree, sampler, rise, seconds = results["now"]
    prompt_kv = "a copy per branch" if args.copy_prompt else "shared"
    print(f"batch size {args.batch_size}, prompt KV {prompt_kv}; chatty unit: N={n}, "
          f"{tokens} tokens, widest depth {max(tree.widths)} rows, "
          f"{len(tree.counts)} distinct completions, {seconds:.1f} s")
    print(f"(a) peak RSS rise {rise / 2**20:.0f} MiB; frontier's own KV at its largest "
          f"{sampler.frontier_kv / 2**20:.0f} MiB; ratio {rise / sampler.frontier_kv:.2f}x")
    for label in ("before", "now"):
        timed = results[label][1].stop_seconds
        print(f"(b) stop checks, {label:6}: {1000 * sum(timed) / len(timed):6.1f} ms per depth "
              f"({sum(timed):.2f} s of {results[label][3]:.1f} s)")
    assert results["before"][0].counts == tree.counts  # the same completions either way


if __name__ == "__main__":
    main()
