"""The sampling backend interface: what the ingest job layer calls to draw samples from a model.

A :class:`Backend` wraps one loaded model. The job layer (work units, database writes, the
``catalog ingest`` CLI) only talks to this interface::

    from ingest.backends import LoadOptions, ModelSpec, SampleRequest, SamplingParams, load_backend

    backend = load_backend(ModelSpec("path/or/hub-id", prompt_format="chat"), LoadOptions())
    rendered = backend.render("Pick a random digit.", "chat")     # store it with the run
    counts = backend.sample(rendered, SamplingParams(n=1000, max_new_tokens=8), seed=1234)
    many = backend.sample_many([SampleRequest(rendered, SamplingParams(n=100), 1), ...])
    exact = backend.option_probabilities(rendered, {"7": ["7"], "3": ["3"]})
    provenance = backend.provenance()                             # columns of the runs table

Backends are registered by name (:func:`registered_backends`, :func:`register_backend`) in
the style of lm-evaluation-harness, and a model spec's ``backend`` selects one:
``transformers`` (:class:`ingest.models.TransformersBackend`, the default: the tree sampler),
``vllm`` (:class:`ingest.vllm_backend.VLLMBackend`, the ``catalog[vllm]`` extra),
``openai`` (:class:`ingest.openai_backend.OpenAIBackend`: any OpenAI-compatible server, the
``catalog[openai]`` extra) and
``table`` (:class:`TableBackend`: a fixed answer distribution given as data, no torch, for
fast tests of the job layer). Other packages add backends through the ``catalog.backends``
entry point group (``name = "package.module:BackendClass"``). A backend declares the options
it takes (:attr:`Backend.OPTIONS`) and validates them (:meth:`Backend.check_options`) before
it loads; how any model loads (device, dtype, pickles, batch size) is one :class:`LoadOptions`,
from the command line through the worker to the backend. Heavy libraries (torch,
transformers, vllm) are imported only when a backend that needs them is loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, Self

import numpy as np

from catalog import prompting
from catalog.enums import DEVICES, DTYPES, PROMPT_FORMATS
from catalog.errors import InvalidInput, ModelLoadError


class DeviceLost(ModelLoadError):
    """The accelerator hit an error that leaves its context unusable (a device-side assert,
    an illegal memory access): every later call in this process would fail too."""


def is_sticky_device_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA error after which the process's CUDA context is dead.
    Every CUDA error but out-of-memory is (torch reports them as ``CUDA error: ...``, an
    AcceleratorError or RuntimeError); retrying the unit in this process cannot help."""
    if type(exc).__name__ == "OutOfMemoryError":
        return False
    message = str(exc)
    return "CUDA error" in message and "out of memory" not in message


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how prompts reach it (one row of the model registry).

    ``source`` is a hub id (``"org/name"``) or a local directory (for the ``table`` backend:
    its JSON file). ``revision`` is a hub branch, tag or commit (a pinned 40-hex commit is
    required with ``trust_remote_code``). ``gguf_file`` names a GGUF file inside ``source``.
    ``prompt_format`` is ``"chat"`` (the tokenizer's chat template) or ``"plain"`` (the plain
    completion scaffold of :mod:`catalog.prompting`). ``backend`` is a registered backend's
    name and ``backend_options`` its options (checked by the backend when it loads).
    """

    source: str
    revision: str | None = None
    gguf_file: str | None = None
    trust_remote_code: bool = False
    prompt_format: str = "chat"
    backend: str = "transformers"
    backend_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.source:
            raise InvalidInput("model source is empty; give a hub id or a local directory")
        if self.prompt_format not in PROMPT_FORMATS:
            raise InvalidInput(
                f"prompt format {self.prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}"
            )
        if not isinstance(self.backend_options, Mapping):
            raise InvalidInput(
                f"backend options must be a table of KEY = VALUE, got {self.backend_options!r}"
            )


@dataclass(frozen=True)
class LoadOptions:
    """How a model loads, whatever its backend (the one definition: ``catalog ingest`` and
    ``catalog worker`` read their option defaults from here, workers pass it to backends).

    ``device``: auto|cpu|cuda (auto = cuda if available); ``dtype``: auto|float32|bfloat16|
    float16 (auto = bfloat16 on a GPU that computes it natively, else float32; never
    float16); ``allow_pickle``: accept pickle (``.bin``) checkpoints, which can run code when
    loaded; ``batch_size``: most rows per forward pass ("auto": start large, halve on
    out-of-memory). A backend uses what applies to it (a server's backend: none of it).
    """

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | str = "auto"
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InvalidInput(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        size = self.batch_size
        if size != "auto" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise InvalidInput(f"batch size must be 'auto' or a positive integer, got {size!r}")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: exactly the user's parameters, nothing taken from the model's defaults.

    ``n`` samples per prompt; ``temperature`` > 0; ``top_p`` in (0, 1] (1 = off); ``top_k``
    None = off (0 is accepted and means off, as in transformers); ``max_new_tokens`` >= 1;
    ``stop``: strings that end a completion (the stored text is cut before the stop string).
    A model's ``generation_config`` defaults (e.g. ``top_k=50``, repetition penalties) never
    apply: what is stored is what was asked for. Greedy decoding is ``top_k=1``.
    The defaults are the study's, and ``catalog ingest``'s option defaults are read from here.
    """

    n: int = 1000
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 24
    stop: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise InvalidInput(f"number of samples must be a positive integer, got {self.n!r}")
        if not self.temperature > 0:
            raise InvalidInput(
                f"temperature must be > 0, got {self.temperature!r} (use top_k=1 for greedy)"
            )
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k == 0:
            object.__setattr__(self, "top_k", None)
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise InvalidInput(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not s for s in stop):
            raise InvalidInput("stop strings must be non-empty")
        object.__setattr__(self, "stop", stop)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stop as a list), e.g. for the runs table's ``sampling`` column."""
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data


class ExactDistribution(NamedTuple):
    """Exact option probabilities: ``probabilities`` renormalized over the options (they sum
    to 1 when ``covered_mass`` > 0), and ``covered_mass``, the model's total probability of
    all the options' surface forms (<= 1). The raw probability of an option is
    ``probabilities[o] * covered_mass``."""

    probabilities: dict[str, float]
    covered_mass: float


@dataclass(frozen=True)
class TokenEntropy:
    """The next-token entropies behind one sampling, by generated position (docs/metrics.md,
    section 13): ``bits[t]`` is the sum over the prefixes the samples passed through at
    depth t of (samples that drew a token there) x (entropy in bits of the distribution
    drawn from), ``tokens[t]`` the number of those samples. ``estimate``: None when the
    entropies are exact, else how they were estimated (e.g. from top-k logprobs)."""

    bits: tuple[float, ...]
    tokens: tuple[int, ...]
    estimate: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"bits": list(self.bits), "tokens": list(self.tokens), "estimate": self.estimate}


def top_logprob_entropy(samples: Iterable[Sequence[Sequence[float]] | None],
                        top_k: int) -> TokenEntropy | None:
    """Token entropies estimated from the top-k logprobs a server returns with each sample:
    ``samples[i][t]`` holds the log-probabilities (natural log) of the most likely tokens at
    sample i's position t. The mass outside them counts as one outcome, so each position's
    entropy is a lower bound of the true one (exact when the top k hold all the mass). None
    when a sample came back without logprobs: no partial estimate is recorded.

    >>> e = top_logprob_entropy([[[math.log(0.5), math.log(0.5)]]] * 3, top_k=2)
    >>> e.bits, e.tokens
    ((3.0,), (3,))
    """
    bits: list[float] = []
    tokens: list[int] = []
    for positions in samples:
        if positions is None:
            return None
        for t, logprobs in enumerate(positions):
            if t == len(bits):
                bits.append(0.0)
                tokens.append(0)
            probabilities = [math.exp(value) for value in logprobs]
            rest = max(0.0, 1.0 - math.fsum(probabilities))
            bits[t] -= math.fsum(p * math.log2(p) for p in (*probabilities, rest) if p > 0)
            tokens[t] += 1
    return TokenEntropy(tuple(bits), tuple(tokens),
                        estimate=f"top-{top_k} logprobs, the rest as one outcome (a lower bound)")


class Completions(dict):
    """``{completion text: count}`` as :meth:`Backend.sample` returns it, with the token
    entropies of the sampling where the backend knows them (``token_entropy``, else None)."""

    token_entropy: TokenEntropy | None = None

    @classmethod
    def of(cls, counts: Mapping[str, int], token_entropy: TokenEntropy | None) -> Completions:
        completions = cls(counts)
        completions.token_entropy = token_entropy
        return completions


class SampleRequest(NamedTuple):
    """One unit's sampling: a rendered prompt, its parameters and its seed (see
    :meth:`Backend.sample_many`)."""

    rendered: str
    params: SamplingParams
    seed: int


_TRUE_WORDS, _FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def at_least_one(value: int) -> bool:
    """A backend option's check for counts (concurrency, units per call, GPUs)."""
    return value >= 1


@dataclass(frozen=True)
class BackendOption:
    """One option a backend takes: its type, what it does, and which values are allowed.

    ``kind`` is ``bool``, ``int``, ``float`` or ``str``; a value may also be given as text
    (``--backend-arg enforce_eager=true``) and is converted. ``allowed(value)`` is False for a
    value of the right type that the backend refuses, described by ``requirement``
    (e.g. ``"in (0, 1]"``); ``choices`` lists the only allowed values of a text option.
    """

    kind: type
    help: str
    allowed: Callable[[Any], bool] = lambda value: True
    requirement: str = ""
    choices: tuple[str, ...] = ()

    def convert(self, name: str, value: Any) -> Any:
        """``value`` as this option's type; InvalidInput (one line) if it is not one."""
        converted = self._typed(value)
        if converted is None or not self.allowed(converted) or (
            self.choices and converted not in self.choices
        ):
            raise InvalidInput(f"backend option {name}={value!r} is invalid: {self.describe()}")
        return converted

    def describe(self) -> str:
        if self.choices:
            return f"use one of {', '.join(self.choices)}"
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(self.kind, "text")
        return f"use {kind}" + (f" {self.requirement}" if self.requirement else "")

    def _typed(self, value: Any) -> Any:
        if isinstance(value, str) and self.kind is not str:
            text = value.strip().lower()
            if self.kind is bool:
                return True if text in _TRUE_WORDS else False if text in _FALSE_WORDS else None
            try:
                return self.kind(text)
            except ValueError:
                return None
        if self.kind is bool:
            return value if isinstance(value, bool) else None
        if isinstance(value, bool):
            return None  # True is an int in Python, never a number of GPUs
        if self.kind is float and isinstance(value, int | float):
            return float(value)
        return value if isinstance(value, self.kind) else None


class Backend(ABC):
    """One loaded model. Every method is deterministic given its arguments.

    Contract:

    - :attr:`OPTIONS` declares the backend options it takes; :meth:`check_options` validates
      a model's options against them (unknown key or bad value: one InvalidInput line) and
      :func:`load_backend` calls it before the backend is constructed.
    - :meth:`render` turns a task's prompt text into the exact string the model sees
      (``"chat"``: the tokenizer's chat template with the generation prompt appended;
      ``"plain"``: the completion scaffold; default: the spec's ``prompt_format``). Store the
      result with the run.
    - :meth:`sample` draws ``params.n`` independent completions of a rendered prompt and
      returns ``{completion text: count}`` with counts summing to exactly ``params.n``
      (distinct texts only; equal texts are merged), as a :class:`Completions` with the
      sampling's token entropies where the backend knows them (a plain dict otherwise).
      The same ``seed`` gives the same counts
      on the same hardware, library versions and batch size. ``seed`` is an integer in
      ``[0, 2**63)``.
    - :meth:`sample_many` does the same for several units at once and returns their counts
      in order; the job layer offers up to :attr:`units_per_call` units per call. The
      default samples them one by one; a backend that batches prompts (vLLM) overrides it and
      states its own reproducibility (a batch's counts may depend on its composition).
    - :meth:`option_probabilities` scores each option's surface forms exactly (no sampling,
      model distribution at temperature 1) and returns an :class:`ExactDistribution`.
      Surface forms are the literal continuation texts (e.g. ``{"heads": ["heads",
      "Heads"]}``); a surface form may belong to one option only.
    - :meth:`provenance` returns the run columns that describe the setup: ``model_revision``,
      ``dtype``, ``device``, ``chat_template_hash`` and ``library_versions`` (a dict);
      :meth:`backend_record` the backend's name, options and its own choices (stored with
      every run as ``library_versions["backend"]``); :meth:`call_records`, optionally, what
      the last :meth:`sample_many` call measured per unit (added to that record).
    - :meth:`close` frees the model (memory, GPU); the backend is unusable afterwards.
    - :meth:`renderer` returns an object whose ``render`` equals a loaded backend's (what
      ``catalog plan`` renders with); a backend that can render without its weights
      overrides it.

    A backend is constructed as ``cls(spec, load=LoadOptions(...))`` by :func:`load_backend`.
    """

    name: str = ""
    OPTIONS: ClassVar[Mapping[str, BackendOption]] = {}
    units_per_call: int = 1

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options converted to their types; InvalidInput for an unknown key or bad value."""
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            known = ", ".join(sorted(cls.OPTIONS)) or "none"
            raise InvalidInput(
                f"backend {cls.name!r} has no option {', '.join(unknown)}; its options: {known}"
            )
        return {key: cls.OPTIONS[key].convert(key, value) for key, value in options.items()}

    @classmethod
    def renderer(cls, spec: ModelSpec) -> Renderer:
        """Renders ``spec``'s prompts as the loaded backend does, for planning; by default
        the backend itself, loaded on the CPU (the transformers backend loads only its
        tokenizer)."""
        checked = replace(spec, backend_options=cls.check_options(spec.backend_options))
        return cls(checked, load=LoadOptions(device="cpu"))

    @abstractmethod
    def render(self, prompt_text: str, prompt_format: str | None = None, *,
               scaffold: str | None = None) -> str: ...

    @abstractmethod
    def sample(self, rendered: str, params: SamplingParams, seed: int) -> dict[str, int]: ...

    def sample_many(self, requests: Sequence[SampleRequest]) -> list[dict[str, int]]:
        """Counts for each request, in order; by default one :meth:`sample` call each."""
        return [self.sample(*request) for request in requests]

    @abstractmethod
    def option_probabilities(
        self, rendered: str, options: Mapping[str, Sequence[str]]
    ) -> ExactDistribution: ...

    @abstractmethod
    def provenance(self) -> dict[str, Any]: ...

    def backend_record(self) -> dict[str, Any]:
        """The backend's name and options as used (stored with every run it samples)."""
        return {"name": self.name, "options": dict(self.spec.backend_options)}

    def call_records(self) -> list[dict[str, Any]]:
        """Facts of the last :meth:`sample_many` call, one dict per request in order (e.g. a
        server's token usage), stored with each unit's run; none by default."""
        return []

    def close(self) -> None:
        """Release the model's memory. The default has nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


ENTRY_POINT_GROUP = "catalog.backends"
# name -> "module:Class" (imported on first use, so torch loads only when needed) or the class
BACKENDS: dict[str, str | type[Backend]] = {
    "transformers": "ingest.models:TransformersBackend",
    "vllm": "ingest.vllm_backend:VLLMBackend",
    "table": "ingest.backends:TableBackend",
    "openai": "ingest.openai_backend:OpenAIBackend",
}


def register_backend(name: str, backend: str | type[Backend]) -> None:
    """Register a :class:`Backend` subclass (or its ``"module:Class"`` path) under ``name``.

    It is constructed as ``cls(spec, load=LoadOptions(...))`` for a model whose ``backend``
    is ``name``. Installed packages register backends without code through the
    ``catalog.backends`` entry point group, e.g. in their pyproject.toml::

        [project.entry-points."catalog.backends"]
        mybackend = "my_package.backend:MyBackend"
    """
    BACKENDS[name] = backend


def registered_backends() -> dict[str, str | type[Backend]]:
    """Every backend name: the built-in and registered ones, then the entry points' (an entry
    point never replaces a name registered here)."""
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BACKENDS}


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; an unknown name is one InvalidInput line."""
    backends = registered_backends()
    if name not in backends:
        raise InvalidInput(
            f"unknown backend {name!r}; registered backends: {', '.join(sorted(backends))} "
            f"(others register through the {ENTRY_POINT_GROUP!r} entry point group)"
        )
    target = backends[name]
    if isinstance(target, str):
        module_name, _, attribute = target.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(f"backend {name!r} ({backends[name]}) cannot be imported: {exc}")
    if not (isinstance(target, type) and issubclass(target, Backend)):
        raise ModelLoadError(f"backend {name!r} is {target!r}, not a Backend subclass")
    return target


def check_backend_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` validated by the backend ``name`` (what ``catalog models add`` stores)."""
    return backend_class(name).check_options(options or {})


def load_backend(spec: ModelSpec, load: LoadOptions | None = None, **settings: Any) -> Backend:
    """Load the model ``spec`` names with its backend, once; sample all its prompts through it.

    ``load``: how (:class:`LoadOptions`; ``settings`` are its fields, for short calls such
    as ``load_backend(spec, device="cpu")``). An unknown backend or a bad backend option is
    :class:`InvalidInput`; a model that cannot be loaded :class:`ModelLoadError`, each with
    a one-line message.
    """
    load = replace(load or LoadOptions(), **settings)
    cls = backend_class(spec.backend)
    spec = replace(spec, backend_options=cls.check_options(spec.backend_options))
    return cls(spec, load=load)


class Renderer(Protocol):
    """Renders prompts exactly as a loaded backend of the same spec does."""

    def render(self, prompt_text: str, prompt_format: str | None = None, *,
               scaffold: str | None = None) -> str: ...


def render_with(renderer: Renderer, prompt_text: str, prompt_format: str | None,
                scaffold: str = prompting.DEFAULT_SCAFFOLD) -> str:
    """``renderer.render``, passing the scaffold only when it is not the default: backends
    written before scaffolds existed keep working with the default one."""
    if scaffold == prompting.DEFAULT_SCAFFOLD:
        return renderer.render(prompt_text, prompt_format)
    return renderer.render(prompt_text, prompt_format, scaffold=scaffold)


def load_renderer(spec: ModelSpec) -> Renderer:
    """What the planner renders prompts with (:meth:`Backend.renderer` of ``spec``'s backend);
    its ``render`` equals the loaded backend's."""
    return backend_class(spec.backend).renderer(spec)


class TableBackend(Backend):
    """A model given as data: fixed completion distributions, no torch (for fast tests).

    The table is a JSON file (``ModelSpec("path/to/table.json", backend="table")``)::

        {"default": {"7": 0.6, " 3": 0.3, "I pick 5.": 0.1},
         "prompts": {"Pick a random digit.": {"4": 1.0}},
         "delay_seconds": 0.0}

    ``prompts`` maps a task's prompt text (before rendering) to the completion distribution
    for it; other prompts get ``default``. Probabilities are renormalized. ``sample`` draws
    ``Multinomial(n, p)`` with numpy (seeded), sleeping ``delay_seconds`` first (lets a test
    kill a job mid-way); sampling parameters other than ``n`` are ignored. Exact mode sums the
    probability of completions equal to a surface form. The backend option ``units_per_call``
    makes the job layer offer it that many units per :meth:`sample_many` call (each still
    drawn with its own seed, so the counts do not depend on the batching).
    """

    name = "table"
    CHAT_TEMPLATE = "<|user|>\n{prompt}\n<|assistant|>\n"
    OPTIONS = {
        "units_per_call": BackendOption(
            int, "units offered per sample_many call (default 1)", lambda n: n >= 1, ">= 1"
        ),
    }

    def __init__(self, spec: ModelSpec, **_: Any) -> None:
        super().__init__(spec)
        self.units_per_call = spec.backend_options.get("units_per_call", 1)
        path = Path(spec.source).expanduser()
        try:
            raw = path.read_bytes()
            table = json.loads(raw)
        except OSError as exc:
            raise ModelLoadError(f"cannot read table model {str(path)!r}: {exc.strerror}") from None
        except ValueError as exc:
            raise ModelLoadError(f"table model {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(table, dict) or not isinstance(table.get("default", {}), dict):
            raise ModelLoadError(f"table model {str(path)!r} must be an object with 'default'")
        self.revision = "sha256:" + hashlib.sha256(raw).hexdigest()
        self.delay_seconds = float(table.get("delay_seconds", 0.0))
        self.tables = {
            prompt: self._normalized(dist, path)
            for prompt, dist in table.get("prompts", {}).items()
        }
        self.default = (
            self._normalized(table.get("default", {}), path) if "default" in table else None
        )
        self._prompt_of: dict[str, str] = {}

    @staticmethod
    def _normalized(dist: Mapping[str, float], path: Path) -> dict[str, float]:
        total = sum(dist.values())
        if not dist or total <= 0 or any(p < 0 for p in dist.values()):
            raise ModelLoadError(f"table model {str(path)!r} has an empty or negative distribution")
        return {text: p / total for text, p in dist.items()}

    def render(self, prompt_text: str, prompt_format: str | None = None, *,
               scaffold: str | None = None) -> str:
        if (prompt_format or self.spec.prompt_format) == "chat":
            rendered = self.CHAT_TEMPLATE.format(prompt=prompt_text)
        else:
            rendered = prompting.render_plain(prompt_text, scaffold)
        self._prompt_of[rendered] = prompt_text
        return rendered

    def _distribution(self, rendered: str) -> dict[str, float]:
        prompt = self._prompt_of.get(rendered, rendered)
        dist = self.tables.get(prompt, self.default)
        if dist is None:
            raise InvalidInput(f"table model has no distribution for prompt {prompt!r}")
        return dist

    def sample(self, rendered: str, params: SamplingParams, seed: int) -> dict[str, int]:
        dist = self._distribution(rendered)
        time.sleep(self.delay_seconds)
        draws = np.random.default_rng(seed).multinomial(params.n, list(dist.values()))
        return {text: int(c) for text, c in zip(dist, draws) if c > 0}

    def option_probabilities(
        self, rendered: str, options: Mapping[str, Sequence[str]]
    ) -> ExactDistribution:
        dist = self._distribution(rendered)
        raw = {
            option: sum(dist.get(form, 0.0) for form in dict.fromkeys(forms))
            for option, forms in check_surface_forms(options).items()
        }
        return renormalize(raw)

    def provenance(self) -> dict[str, Any]:
        return {
            "model_revision": self.revision,
            "dtype": None,
            "device": "cpu",
            "chat_template_hash": prompting.text_hash(self.CHAT_TEMPLATE),
            "library_versions": {},
        }


def check_surface_forms(options: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Options with their distinct surface forms; a form shared by two options is an error."""
    owner: dict[str, str] = {}
    checked: dict[str, list[str]] = {}
    for option, forms in options.items():
        if isinstance(forms, str):
            forms = [forms]
        checked[option] = list(dict.fromkeys(forms))
        if not checked[option]:
            raise InvalidInput(f"option {option!r} has no surface forms to score")
        for form in checked[option]:
            if not form:
                raise InvalidInput(f"option {option!r} has an empty surface form")
            if owner.setdefault(form, option) != option:
                raise InvalidInput(
                    f"surface form {form!r} belongs to both {owner[form]!r} and {option!r}"
                )
    return checked


def renormalize(raw: Mapping[str, float]) -> ExactDistribution:
    """Turn raw option probabilities into an :class:`ExactDistribution`."""
    covered = float(sum(raw.values()))
    if covered <= 0:
        return ExactDistribution({option: 0.0 for option in raw}, 0.0)
    return ExactDistribution({option: p / covered for option, p in raw.items()}, min(covered, 1.0))
