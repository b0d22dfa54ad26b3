"""Loading models safely through transformers' Auto classes, and the transformers backend.

Loading rules (every refusal is a :class:`ModelLoadError` with a one-line message):

- ``source`` is a local directory (it exists, or it looks like a path: starts with ``/``,
  ``.`` or ``~``, or has more than one ``/``) or else a Hugging Face Hub id, loaded at
  ``revision``; the commit the hub resolves it to is recorded as the model revision. Local
  directories are recorded as ``sha256:<hash of their files>`` (``stat:<hash of names, sizes
  and times>`` above 2 GiB, where hashing would take too long).
- Weights must be safetensors. A checkpoint with only pickle weights (``pytorch_model.bin``),
  which can run arbitrary code when loaded, needs ``allow_pickle=True`` (``--allow-pickle``).
- ``trust_remote_code`` is honoured only with a pinned 40-hex commit ``revision``, so the code
  that runs is the code that was reviewed.
- ``gguf_file`` loads a GGUF file in ``source`` through transformers (dequantized), which
  needs the ``gguf`` extra (``pip install 'catalog[gguf]'``).
- ``device``: auto|cpu|cuda (auto = cuda if available). ``dtype``: auto|float32|bfloat16|
  float16 (auto = bfloat16 on a GPU that computes it natively, else float32; never float16,
  which a bfloat16-trained model can overflow: :func:`auto_dtype`).

torch and transformers are imported inside functions, never at module import.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from catalog import prompting
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
)
from ingest.exact import option_probabilities
from ingest.sampling import TreeSampler

PINNED_REVISION = re.compile(r"[0-9a-f]{40}")
FULL_HASH_LIMIT = 2 * 1024**3
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer and the facts recorded as provenance."""

    model: Any
    tokenizer: Any
    device: str
    dtype: str
    revision: str | None

    @property
    def eos_token_ids(self) -> list[int]:
        """End-of-sequence ids: the generation config's (all of them), else the tokenizer's."""
        return eos_token_ids(self.model.generation_config, self.model.config, self.tokenizer)


def eos_token_ids(generation_config, config, tokenizer) -> list[int]:
    """The ids that end a completion: the generation config's EOS ids (all of them), else the
    model config's, else the tokenizer's. Every backend ends completions at exactly these."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(ids))


@dataclass
class ModelFiles:
    """What a model's source holds besides the weights, resolved once: where it lives, its
    config and tokenizer, and the revision recorded as provenance."""

    spec: ModelSpec
    location: str  # the local directory or the hub id
    local: Path | None
    config: Any
    tokenizer: Any
    commit: str | None  # the hub commit the requested revision resolved to

    @cached_property
    def revision(self) -> str | None:
        if self.local is None:
            return self.commit
        return local_fingerprint(self.local, self.spec.gguf_file)

    @property
    def options(self) -> dict[str, Any]:
        """Loading options that pin later loads to the same files."""
        return {
            "trust_remote_code": self.spec.trust_remote_code,
            "gguf_file": self.spec.gguf_file,
            "revision": self.commit or self.spec.revision,
        }


def load_model_files(
    spec: ModelSpec, *, allow_pickle: bool = False, weights: bool = True
) -> ModelFiles:
    """Check ``spec`` by the rules of this module and load its config and tokenizer
    (``weights=False``: only the tokenizer is wanted, as for planning; the weight files are
    not checked)."""
    check_remote_code(spec)
    local = local_directory(spec.source)
    if local is not None and weights:
        check_local_weights(local, spec, allow_pickle)
    if spec.gguf_file and importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("GGUF models need the gguf extra: pip install 'catalog[gguf]'")

    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # transformers' own loading bars would interleave with the catalog's progress output.
    transformers_logging.disable_progress_bar()
    location = str(local) if local is not None else spec.source
    options = {"trust_remote_code": spec.trust_remote_code, "gguf_file": spec.gguf_file}
    try:
        config = AutoConfig.from_pretrained(location, revision=spec.revision, **options)
        # Load the tokenizer (and later the weights) from the very commit the config resolved to.
        commit = getattr(config, "_commit_hash", None)
        tokenizer = AutoTokenizer.from_pretrained(
            location, revision=commit or spec.revision, **options
        )
    except Exception as exc:  # noqa: BLE001 - any failure inside transformers means "cannot load"
        raise ModelLoadError(_load_failure(spec, local, exc, allow_pickle)) from None
    return ModelFiles(spec, location, local, config, tokenizer, commit)


def load_model(
    spec: ModelSpec, load: LoadOptions = LoadOptions(), *,
    max_memory: Mapping[int | str, str] | None = None,
) -> LoadedModel:
    """Load ``spec`` by the rules of this module (on ``load.device`` in ``load.dtype``);
    return the model in eval mode.

    ``max_memory`` (device -> size, e.g. ``{0: "70GiB", "cpu": "120GiB"}``) spreads the model
    over those devices with accelerate's ``device_map="auto"`` (a model larger than one GPU,
    or a GPU shared with other work); without it the model sits whole on ``device``."""
    allow_pickle = load.allow_pickle
    files = load_model_files(spec, allow_pickle=allow_pickle)
    torch_device = resolve_device(load.device)
    torch_dtype = resolve_dtype(load.dtype, torch_device)
    placement = (
        {"device_map": "auto", "max_memory": dict(max_memory)} if max_memory
        else {"device_map": torch_device}
    )
    if max_memory and importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError(
            "max_memory spreads the model with accelerate, which is not installed: "
            "pip install accelerate"
        )

    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            files.location,
            config=files.config,
            dtype=torch_dtype,
            **placement,
            # gguf_file is its own format; otherwise pickles only when explicitly allowed
            use_safetensors=None if (allow_pickle or spec.gguf_file) else True,
            **files.options,
        )
    except Exception as exc:  # noqa: BLE001 - any failure inside transformers means "cannot load"
        raise ModelLoadError(_load_failure(spec, files.local, exc, allow_pickle)) from None
    if "disk" in (getattr(model, "hf_device_map", None) or {}).values():
        raise ModelLoadError(
            f"model {spec.source!r} does not fit in max_memory {dict(max_memory or {})} "
            "(part of it would run from disk); allow more memory or more devices"
        )
    model.eval()
    return LoadedModel(
        model,
        files.tokenizer,
        describe_device(model.device),
        str(torch_dtype).removeprefix("torch."),
        files.revision,
    )


def render_prompt(tokenizer, spec: ModelSpec, prompt_text: str, prompt_format: str | None,
                  scaffold: str | None = None) -> str:
    """The text the model sees (every backend of a tokenizer-based model renders with this);
    plain prompts inside ``scaffold`` (:mod:`catalog.prompting`, default ``qa@1``)."""
    prompt_format = prompt_format or spec.prompt_format
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(
            f"model {spec.source!r} has no chat template; register it with prompt format plain"
        )
    return prompting.render(tokenizer, prompt_text, prompt_format, scaffold)


@dataclass
class TokenizerRenderer:
    """Renders prompts exactly as :class:`TransformersBackend` does, from the tokenizer alone
    (what ``catalog plan`` renders with: no weights are read)."""

    spec: ModelSpec
    tokenizer: Any

    def render(self, prompt_text: str, prompt_format: str | None = None, *,
               scaffold: str | None = None) -> str:
        return render_prompt(self.tokenizer, self.spec, prompt_text, prompt_format, scaffold)


def check_remote_code(spec: ModelSpec) -> None:
    if spec.trust_remote_code and not PINNED_REVISION.fullmatch(spec.revision or ""):
        raise ModelLoadError(
            f"trust_remote_code for {spec.source!r} needs a pinned 40-hex commit revision "
            f"(got {spec.revision!r}); pin the commit whose code you have reviewed"
        )


def looks_like_path(source: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else path-shaped is meant as a directory."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def local_directory(source: str) -> Path | None:
    """The local directory ``source`` names, None for a hub id; error if a path is missing."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if looks_like_path(source):
        if path.exists():
            raise ModelLoadError(
                f"model source {source!r} is a file, not a directory; give its directory "
                "(and the file name as the GGUF file, if it is one)"
            )
        raise ModelLoadError(f"model directory {source!r} does not exist")
    return None


def check_local_weights(directory: Path, spec: ModelSpec, allow_pickle: bool) -> None:
    def has(patterns: Sequence[str]) -> bool:
        return any(any(directory.glob(pattern)) for pattern in patterns)

    if spec.gguf_file:
        if not (directory / spec.gguf_file).is_file():
            raise ModelLoadError(f"GGUF file {spec.gguf_file!r} not found in {str(directory)!r}")
    elif has(SAFETENSORS_PATTERNS):
        return
    elif has(PICKLE_PATTERNS):
        if not allow_pickle:
            raise ModelLoadError(
                f"model directory {str(directory)!r} has only pickle weights (pytorch_model.bin), "
                "which can run code when loaded; convert them to safetensors, or pass "
                "--allow-pickle if you trust them"
            )
    else:
        raise ModelLoadError(
            f"model directory {str(directory)!r} has no weights (no *.safetensors, "
            "pytorch_model.bin or GGUF file)"
        )


def _load_failure(spec: ModelSpec, local: Path | None, exc: Exception, allow_pickle: bool) -> str:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if local is None and isinstance(exc, OSError):
        hint = ""
        if "safetensors" in first_line and not allow_pickle:
            hint = "; it may have only pickle weights: pass --allow-pickle if you trust them"
        return (
            f"cannot load model {spec.source!r} (revision {spec.revision or 'main'}): not a local "
            f"directory, and the Hugging Face Hub did not provide it ({first_line}){hint}"
        )
    return f"cannot load model {spec.source!r}: {type(exc).__name__}: {first_line}"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA is not available on this machine; use --device cpu (or auto)")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        native_bf16 = device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return getattr(torch, auto_dtype(device, native_bf16))
    return getattr(torch, dtype)


def auto_dtype(device: str, native_bf16: bool) -> str:
    """What ``--dtype auto`` loads: bfloat16 on a GPU that computes it natively (Ampere and
    later), else float32. Never float16: a model trained in bfloat16 can overflow float16's
    range (65504) and give NaN logits; emulated bfloat16 (V100, T4) is slow and vLLM refuses
    it."""
    return "bfloat16" if device == "cuda" and native_bf16 else "float32"


def describe_device(device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``: the GPU model is part of the setup."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def local_fingerprint(directory: Path, gguf_file: str | None = None) -> str:
    """A revision for a local checkpoint: a hash of its files (their stats if over 2 GiB)."""
    files = (
        [directory / gguf_file]
        if gguf_file
        else sorted(p for p in directory.iterdir() if p.is_file())
    )
    digest = hashlib.sha256()
    if sum(p.stat().st_size for p in files) > FULL_HASH_LIMIT:
        for p in files:
            stat = p.stat()
            digest.update(f"{p.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        return "stat:" + digest.hexdigest()
    for p in files:
        digest.update(p.name.encode() + b"\0")
        with p.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return "sha256:" + digest.hexdigest()


def chat_template_hash(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        return None
    if not isinstance(template, str):  # several named templates
        template = json.dumps(template, sort_keys=True)
    return prompting.text_hash(template)


def library_versions(gguf: bool = False) -> dict[str, str]:
    names = ["torch", "transformers", "tokenizers", "safetensors"] + (["gguf"] if gguf else [])
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


DEFAULT_UNITS_PER_CALL = 128
MEMORY_SIZE = re.compile(r"\d+(\.\d+)?(GiB|GB|MiB|MB)")


def parse_max_memory(text: str) -> dict[int | str, str] | None:
    """``"0=70GiB,cpu=100GiB"`` as accelerate's ``max_memory`` (``{0: "70GiB", "cpu":
    "100GiB"}``); ``{}`` for empty text, None when it is not of that form."""
    limits: dict[int | str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        device, _, size = (piece.strip() for piece in item.partition("="))
        if not MEMORY_SIZE.fullmatch(size) or not (device.isdigit() or device == "cpu"):
            return None
        limits[int(device) if device.isdigit() else device] = size
    return limits


class TransformersBackend(Backend):
    """A transformers causal LM: the tree sampler (:mod:`ingest.sampling`) and exact mode
    (:mod:`ingest.exact`) over one model loaded by :func:`load_model`.

    :meth:`sample_many` grows the trees of up to ``units_per_call`` units in one forest (one
    forward pass per depth for all their branches); each unit draws from its own seeded
    generator, so its counts do not depend on what it was batched with beyond the floating
    point of a batched forward pass (docs/ingest.md). A unit whose logits are not finite
    fails alone: the call raises its error and the job layer samples the others again alone.
    """

    name = "transformers"
    OPTIONS = {
        "units_per_call": BackendOption(
            int, f"most units sampled in one forest (default {DEFAULT_UNITS_PER_CALL})",
            lambda n: n >= 1, ">= 1",
        ),
        "max_memory": BackendOption(
            str, "spread the model over devices (device_map=auto), at most this much on each: "
            "DEVICE=SIZE,... e.g. 0=70GiB,1=70GiB,cpu=100GiB",
            lambda text: parse_max_memory(text) is not None,
            "like 0=70GiB,cpu=100GiB (GPU index or cpu = a size in GiB, GB, MiB or MB)",
        ),
    }

    def __init__(self, spec: ModelSpec, *, load: LoadOptions = LoadOptions()) -> None:
        super().__init__(spec)
        self.units_per_call = spec.backend_options.get("units_per_call", DEFAULT_UNITS_PER_CALL)
        self.loaded = load_model(
            spec, load, max_memory=parse_max_memory(spec.backend_options.get("max_memory", "")),
        )
        self.sampler = TreeSampler(
            self.loaded.model,
            self.loaded.tokenizer,
            self.loaded.eos_token_ids,
            batch_size=load.batch_size,
        )

    @classmethod
    def renderer(cls, spec: ModelSpec) -> TokenizerRenderer:
        return TokenizerRenderer(spec, load_model_files(spec, weights=False).tokenizer)

    def render(self, prompt_text: str, prompt_format: str | None = None, *,
               scaffold: str | None = None) -> str:
        return render_prompt(self.loaded.tokenizer, self.spec, prompt_text, prompt_format,
                             scaffold)

    def sample(self, rendered: str, params: SamplingParams, seed: int) -> Completions:
        tree = self.sampler.sample(rendered, params, seed)
        return Completions.of(tree.counts, tree.token_entropy())

    def sample_many(self, requests: Sequence[SampleRequest]) -> list[Completions]:
        results = self.sampler.sample_forest(requests)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [Completions.of(tree.counts, tree.token_entropy()) for tree in results]

    def option_probabilities(
        self, rendered: str, options: Mapping[str, Sequence[str]]
    ) -> ExactDistribution:
        return option_probabilities(
            self.loaded.model,
            self.loaded.tokenizer,
            rendered,
            options,
            eos_token_ids=self.loaded.eos_token_ids,
            newline_ends_answer=self.spec.prompt_format == "plain",
        )

    def provenance(self) -> dict[str, Any]:
        return {
            "model_revision": self.loaded.revision,
            "dtype": self.loaded.dtype,
            "device": self.loaded.device,
            "chat_template_hash": chat_template_hash(self.loaded.tokenizer),
            "library_versions": {
                **library_versions(gguf=bool(self.spec.gguf_file)),
                # below float32: the logits from the head applied in float32, or the model's own
                "logits": "float32 head" if self.sampler.float32_head else "model head",
            },
        }

    def close(self) -> None:
        import torch

        self.loaded = self.sampler = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
