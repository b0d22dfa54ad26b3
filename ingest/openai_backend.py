"""The ``openai`` backend: sample any OpenAI-compatible server (``pip install 'catalog[openai]'``).

A model registered with ``--backend openai`` is whatever the server at ``base_url`` serves
under the name ``--source`` (a vLLM, SGLang, llama.cpp or TGI server, or an API model).
Requests go through the official ``openai`` client (its async client, timeouts and retries
with backoff on 429 and 5xx answers); the catalog writes no HTTP of its own.

**Prompts.** Plain stages send the scaffold text to ``/v1/completions``. Chat stages send
the chat template rendered by the catalog to ``/v1/completions`` when it has the model's
tokenizer (the ``tokenizer`` option, else ``--source`` when it is a local directory or a
hub id that resolves to one): the rendered prompt, its hash and the unit key are then
exactly a local backend's, and the prompt goes out as the same token ids. Without a
tokenizer a chat stage goes to ``/v1/chat/completions`` and the server renders the prompt:
the "rendered prompt" stored with the run is then the request's messages and served model
name as JSON (so the unit key covers them), and the run records ``prompt_rendering:
"server"``.

**Honest parameters.** Every request states every parameter that changes the distribution:
``n``, ``seed``, ``temperature``, ``top_p``, ``max_tokens``, ``stop``, neutral presence and
frequency penalties and, as the extra parameters vLLM and SGLang take, ``top_k`` (-1: off),
``min_p`` 0, ``repetition_penalty`` 1 and, with a tokenizer, the catalog's EOS ids as
``stop_token_ids`` (the server's generation defaults never apply). On load the backend
probes the endpoint with a tiny request sent twice: are the extra parameters accepted, is
``n`` honoured (two choices back), does the same seed give the same texts, are logprobs
returned. The answers, the served model id and ``system_fingerprint`` are recorded with
every run (``library_versions["backend"]``). A server that ignores ``n`` is refused (or
use ``max_n=1``); a condition with ``top_k`` on a server without the extra parameters is
refused.

**Requests.** A unit's N samples are split into requests of at most ``max_n`` completions,
request *i* seeded with a hash of the unit's seed and *i*; up to ``concurrency`` requests
are in flight, over all the units of a worker's call (``units_per_call``). A unit's token
usage (prompt and completion tokens, requests) is stored with its run. A unit either gets
all its samples or fails: nothing partial is returned.

**Token entropy.** Where the probe found logprobs, every request asks for the top
``entropy_top_k`` (default 5) of each sampled token, and the run records the token entropy
estimated from them (the rest of the mass as one outcome: a lower bound), marked as an
estimate. They are what the server computes: vLLM's server gives the raw model's unless it
runs with ``--logprobs-mode processed_logprobs`` (then: the distribution sampled from).

**Exact mode** needs the tokenizer: each surface form (then each EOS id, and for plain
stages a newline) is sent as prompt token ids with ``echo`` and ``logprobs=0``, and the
continuation's prompt log-probabilities are summed (float64), as the vLLM backend does.
A server that returns no prompt log-probabilities is refused with one line.

**Faults.** A dead server, a wrong URL, a refused key (401/403), a timeout, an unknown model
name, or 429/5xx answers still failing after ``max_retries`` retries end as one
:class:`EndpointError` line naming the URL and what to do. The API key is read only from
the environment variable named by ``api_key_env`` (never from a backend option): it is
never stored, printed or recorded, and it is scrubbed from any server message.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from catalog import prompting
from catalog.errors import CatalogError, InvalidInput, ModelLoadError
from ingest.backends import (
    Backend,
    BackendOption,
    Completions,
    ExactDistribution,
    ModelSpec,
    SampleRequest,
    SamplingParams,
    at_least_one,
    check_surface_forms,
    renormalize,
    top_logprob_entropy,
)

DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_N = 64
DEFAULT_UNITS_PER_CALL = 16
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_RETRIES = 5
# Top logprobs per token for the token entropy estimate: 5 is the most OpenAI's completions
# API returns (vLLM's server: 20).
DEFAULT_ENTROPY_TOP_K = 5
PROBE_SEED = 1234
PROBE_PROMPT = "Question: Name a color.\nAnswer:"
# Placeholder sent as the key when no api_key_env is given (servers without keys ignore it);
# the client would otherwise read OPENAI_API_KEY, which the catalog never does implicitly.
NO_KEY = "EMPTY"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EndpointError(CatalogError):
    """A request to the server failed (one line: the URL and what to do); ``status`` is the
    HTTP status of the answer, if one came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _top_logprobs(choice) -> list[list[float]] | None:
    """The top log-probabilities of each token of one returned completion (None when the
    server sent none): ``logprobs.top_logprobs`` of /v1/completions, ``logprobs.content`` of
    /v1/chat/completions."""
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None:
        return None
    if getattr(logprobs, "content", None) is not None:  # chat
        return [[top.logprob for top in token.top_logprobs] for token in logprobs.content]
    tops = getattr(logprobs, "top_logprobs", None)
    if tops is None or any(top is None for top in tops):
        return None
    return [list(top.values()) for top in tops]


def _url_allowed(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not (
        parts.username or parts.password
    )


class OpenAIBackend(Backend):
    """Samples and scores a model behind an OpenAI-compatible server (module docstring)."""

    name = "openai"
    OPTIONS = {
        "base_url": BackendOption(
            str, "the server's API root, e.g. http://gpu-node-3:8000/v1 (required)",
            _url_allowed,
            "that is an http(s) URL without user or password (keys go in api_key_env)",
        ),
        "api_key_env": BackendOption(
            str, "name of the environment variable that holds the API key (never the key)",
            lambda name: bool(_ENV_NAME.fullmatch(name)),
            "that is an environment variable's name",
        ),
        "tokenizer": BackendOption(
            str, "hub id or directory of the served model's tokenizer: the catalog renders "
            "chat prompts (and exact mode can run)",
        ),
        "concurrency": BackendOption(
            int, f"requests in flight (default {DEFAULT_CONCURRENCY})", at_least_one, ">= 1"
        ),
        "max_n": BackendOption(
            int, f"most completions per request (default {DEFAULT_MAX_N})", at_least_one,
            ">= 1",
        ),
        "units_per_call": BackendOption(
            int, f"units per worker call (default {DEFAULT_UNITS_PER_CALL})", at_least_one,
            ">= 1",
        ),
        "timeout": BackendOption(
            float, f"seconds to wait for one answer (default {DEFAULT_TIMEOUT:g})",
            lambda value: value > 0, "> 0",
        ),
        "max_retries": BackendOption(
            int, f"retries of a 429/5xx answer or a lost connection, with backoff (default "
            f"{DEFAULT_MAX_RETRIES})", lambda value: value >= 0, ">= 0",
        ),
        "entropy_top_k": BackendOption(
            int, f"top logprobs per token for the token entropy estimate (default "
            f"{DEFAULT_ENTROPY_TOP_K}; 0: none)", lambda value: 0 <= value <= 20, "in [0, 20]",
        ),
    }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        checked = super().check_options(options)
        if "base_url" not in checked:
            raise InvalidInput(
                "backend openai needs the server's URL: --backend-arg "
                "base_url=http://HOST:PORT/v1"
            )
        checked["base_url"] = checked["base_url"].rstrip("/")
        return checked

    def __init__(self, spec: ModelSpec, **_: Any) -> None:
        super().__init__(spec)
        options = self.check_options(spec.backend_options)
        self.base_url = options["base_url"]
        self.key_variable = options.get("api_key_env")
        self.concurrency = options.get("concurrency", DEFAULT_CONCURRENCY)
        self.max_n = options.get("max_n", DEFAULT_MAX_N)
        self.units_per_call = options.get("units_per_call", DEFAULT_UNITS_PER_CALL)
        self.timeout = options.get("timeout", DEFAULT_TIMEOUT)
        self.max_retries = options.get("max_retries", DEFAULT_MAX_RETRIES)
        self.entropy_top_k = options.get("entropy_top_k", DEFAULT_ENTROPY_TOP_K)
        self._api_key = _api_key(self.key_variable)
        self._openai = _import_openai()
        self.prompts = EndpointRenderer.for_spec(spec)
        self.records: list[dict[str, Any]] = []
        self.probe = self._probe()

    # ---------------------------------------------------------------- prompts

    @classmethod
    def renderer(cls, spec: ModelSpec) -> EndpointRenderer:
        """Renders as a loaded backend does, without asking the server anything."""
        return EndpointRenderer.for_spec(replace(spec, backend_options=cls.check_options(
            spec.backend_options)))

    def render(self, prompt_text: str, prompt_format: str | None = None, *,
               scaffold: str | None = None) -> str:
        return self.prompts.render(prompt_text, prompt_format, scaffold=scaffold)

    # ---------------------------------------------------------------- sampling

    def sample(self, rendered: str, params: SamplingParams, seed: int) -> dict[str, int]:
        return self.sample_many([SampleRequest(rendered, params, seed)])[0]

    def sample_many(self, requests: Sequence[SampleRequest]) -> list[Completions]:
        """Counts of each request; all its requests answered, or an EndpointError. Where the
        server returns logprobs, with the token entropy estimated from the top ones."""
        self.records = []
        if not requests:
            return []
        for request in requests:
            self._check_supported(request.params)
        jobs = [(unit, self._request(request, n, seed))
                for unit, request in enumerate(requests)
                for n, seed in request_splits(request.params.n, request.seed, self.max_n)]
        answers = self._run([args for _, args in jobs])
        texts: list[list[str]] = [[] for _ in requests]
        top_logprobs: list[list] = [[] for _ in requests]
        usage = [Counter() for _ in requests]
        fingerprints: list[set[str]] = [set() for _ in requests]
        for (unit, args), answer in zip(jobs, answers):
            texts[unit] += self._texts(answer, args["n"])
            top_logprobs[unit] += [_top_logprobs(choice) for choice in answer.choices]
            usage[unit].update(_usage(answer))
            if getattr(answer, "system_fingerprint", None):
                fingerprints[unit].add(answer.system_fingerprint)
        self.records = [
            {"usage": dict(used), "system_fingerprints": sorted(prints)}
            for used, prints in zip(usage, fingerprints)
        ]
        return [
            Completions.of(Counter(unit_texts), top_logprob_entropy(unit_logprobs,
                                                                    self.entropy_top_k)
                           if self._asks_logprobs() else None)
            for unit_texts, unit_logprobs in zip(texts, top_logprobs)
        ]

    def _asks_logprobs(self) -> bool:
        return bool(self.entropy_top_k) and bool(self.probe.get("logprobs"))

    def call_records(self) -> list[dict[str, Any]]:
        return self.records

    def _check_supported(self, params: SamplingParams) -> None:
        if params.top_k is not None and not self.probe["extra_params"]:
            raise InvalidInput(
                f"the server at {self.base_url} refuses top_k (and the other extra sampling "
                f"parameters); sample {self.spec.source!r} without --top-k"
            )

    def _request(self, request: SampleRequest, n: int, seed: int) -> dict[str, Any]:
        """One request's arguments: every parameter that changes the distribution."""
        params = request.params
        args: dict[str, Any] = {
            "model": self.spec.source, "n": n, "seed": seed,
            "temperature": params.temperature, "top_p": params.top_p,
            "max_tokens": params.max_new_tokens, "stop": list(params.stop),
            "presence_penalty": 0.0, "frequency_penalty": 0.0,
        }
        extra = {"top_k": params.top_k or -1, "min_p": 0.0, "repetition_penalty": 1.0}
        if self.prompts.server_renders(request.rendered):
            args["messages"] = json.loads(request.rendered)["messages"]
        else:
            args["prompt"] = self.prompts.prompt(request.rendered)
            if self.prompts.eos_ids:
                # the catalog's EOS ids end completions, as in every local backend
                extra.update(stop_token_ids=self.prompts.eos_ids, ignore_eos=True)
        if self.probe.get("extra_params", True):
            args["extra_body"] = extra
        if self._asks_logprobs():
            if "messages" in args:
                args.update(logprobs=True, top_logprobs=self.entropy_top_k)
            else:
                args["logprobs"] = self.entropy_top_k
        return args

    def _texts(self, answer, n: int) -> list[str]:
        if len(answer.choices) != n:
            raise EndpointError(
                f"the server at {self.base_url} returned {len(answer.choices)} completions "
                f"for n={n}; it does not honour n: use --backend-arg max_n=1"
            )
        if answer.object == "chat.completion":
            return [choice.message.content or "" for choice in answer.choices]
        return [choice.text for choice in answer.choices]

    # ---------------------------------------------------------------- exact mode

    def option_probabilities(
        self, rendered: str, options: Mapping[str, Sequence[str]]
    ) -> ExactDistribution:
        from ingest.exact import continuation_ids
        from ingest.sampling import encode_prompt

        tokenizer = self.prompts.tokenizer
        if tokenizer is None:
            raise InvalidInput(
                f"exact mode through a server needs the model's tokenizer: register "
                f"{self.spec.source!r} with --backend-arg tokenizer=HUB_ID_OR_DIR"
            )
        prompt_ids = encode_prompt(tokenizer, rendered)
        scored: list[tuple[str, list[int]]] = []  # (option, continuation ending the answer)
        for option, forms in check_surface_forms(options).items():
            for form in forms:
                ids = continuation_ids(tokenizer, rendered, prompt_ids, form)
                scored += [(option, ids + [eos]) for eos in self.prompts.eos_ids]
                if self.spec.prompt_format == "plain":
                    newline = continuation_ids(tokenizer, rendered, prompt_ids, form + "\n")
                    scored.append((option, newline))
        answers = self._run([
            {"model": self.spec.source, "prompt": prompt_ids + ids, "echo": True, "logprobs": 0,
             "max_tokens": 1, "temperature": 0.0, "n": 1}
            for _, ids in scored
        ])
        raw = dict.fromkeys(options, 0.0)
        start = len(prompt_ids)
        for (option, ids), answer in zip(scored, answers):
            raw[option] += math.exp(self._prompt_logprob(answer, start, len(ids)))
        return renormalize(raw)

    def _prompt_logprob(self, answer, start: int, length: int) -> float:
        logprobs = getattr(answer.choices[0], "logprobs", None)
        values = (getattr(logprobs, "token_logprobs", None) or [])[start:start + length]
        if len(values) != length or any(value is None for value in values):
            raise InvalidInput(
                f"the server at {self.base_url} returns no prompt log-probabilities (echo with "
                "logprobs), so exact mode cannot run there; sample this model instead"
            )
        return math.fsum(values)

    # ---------------------------------------------------------------- the probe

    def _probe(self) -> dict[str, Any]:
        """Ask the server a tiny question twice; refuse what cannot be sampled honestly."""
        chat = self.spec.prompt_format == "chat" and self.prompts.tokenizer is None
        rendered = self.render("Name a color.", "chat" if chat else "plain")
        request = SampleRequest(rendered, SamplingParams(n=2, max_new_tokens=4), PROBE_SEED)
        self.probe = {"extra_params": True}
        args = {**self._request(request, 2 if self.max_n > 1 else 1, PROBE_SEED),
                "logprobs": True if chat else 1}
        # A server that refuses a parameter (400/422) is asked again without it: first
        # without vLLM's extra parameters (OpenAI's API), then without logprobs.
        for refusable in ("extra_body", "logprobs", None):
            try:
                first, second = self._run([args, args], sequential=True)
                break
            except EndpointError as exc:
                if exc.status not in (400, 422) or refusable is None:
                    raise ModelLoadError(str(exc)) from None
                args.pop(refusable, None)
                self.probe = {"extra_params": "extra_body" in args}
        if self.max_n > 1 and len(first.choices) != 2:
            raise ModelLoadError(
                f"the server at {self.base_url} ignores n (asked for 2 completions, got "
                f"{len(first.choices)}): its samples cannot be counted honestly in batches; "
                "use --backend-arg max_n=1 to send one request per sample"
            )
        texts = [sorted(self._choice_text(c) for c in answer.choices)
                 for answer in (first, second)]
        return {
            "extra_params": "extra_body" in args,
            "n_honoured": len(first.choices) == args["n"],
            "seed_reproducible": texts[0] == texts[1],
            "logprobs": "logprobs" in args and first.choices[0].logprobs is not None,
            "served_model": first.model,
            "system_fingerprint": getattr(first, "system_fingerprint", None),
        }

    @staticmethod
    def _choice_text(choice) -> str:
        message = getattr(choice, "message", None)
        return (message.content or "") if message is not None else choice.text

    # ---------------------------------------------------------------- requests

    def _run(self, requests: list[dict[str, Any]], *, sequential: bool = False) -> list[Any]:
        """Send the requests (up to ``concurrency`` at once) and return their answers."""
        return asyncio.run(self._send_all(requests, 1 if sequential else self.concurrency))

    async def _send_all(self, requests: list[dict[str, Any]], concurrency: int) -> list[Any]:
        slots = asyncio.Semaphore(concurrency)
        client = self._openai.AsyncOpenAI(
            api_key=self._api_key or NO_KEY, base_url=self.base_url, timeout=self.timeout,
            max_retries=self.max_retries,
        )

        async def send(args: dict[str, Any]):
            async with slots:
                return await self._send(client, args)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(send(args)) for args in requests]
        except BaseExceptionGroup as group_error:
            # the first failure says what went wrong; the others were cancelled with it
            raise group_error.exceptions[0] from None
        finally:
            await client.close()
        return [task.result() for task in tasks]

    async def _send(self, client, args: dict[str, Any]):
        args = dict(args)
        try:
            if "messages" in args:
                return await client.chat.completions.create(**args)
            return await client.completions.create(**args)
        except self._openai.OpenAIError as exc:
            raise EndpointError(self._scrubbed(self._describe(exc)),
                                getattr(exc, "status_code", None)) from None

    def _describe(self, exc) -> str:
        """One line: what failed at which URL, and what to do."""
        openai, url = self._openai, self.base_url
        if isinstance(exc, openai.APITimeoutError):
            return (f"the server at {url} did not answer within {self.timeout:g} s; raise "
                    "--backend-arg timeout=SECONDS or lower concurrency")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return (f"cannot reach the server at {url} ({type(cause).__name__}); check "
                    "base_url and that the server is running")
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            # the server's own message may quote part of the key: never shown
            where = (f"the key in ${self.key_variable}" if self.key_variable
                     else "no key (set --backend-arg api_key_env=VARIABLE)")
            return (f"the server at {url} refused the request ({exc.status_code}) with "
                    f"{where}; check the API key")
        message = _server_message(exc)
        if isinstance(exc, openai.NotFoundError):
            if "model" in message.lower():
                return (f"the server at {url} does not serve model {self.spec.source!r} "
                        f"({message}){self._served_models()}; register the served name as "
                        "--source")
            return (f"{url} answered 404 Not Found ({message}); check base_url (it usually "
                    "ends with /v1)")
        if isinstance(exc, openai.RateLimitError):
            return (f"the server at {url} still answers 429 Too Many Requests after "
                    f"{self.max_retries} retries ({message}); lower concurrency or retry later")
        if isinstance(exc, openai.APIStatusError):
            return f"the server at {url} answered {exc.status_code}: {message}"
        return f"request to {url} failed: {type(exc).__name__}: {message}"

    def _served_models(self) -> str:
        try:
            client = self._openai.OpenAI(api_key=self._api_key or NO_KEY,
                                         base_url=self.base_url, timeout=10, max_retries=0)
            with client:
                names = sorted(model.id for model in client.models.list())
        except self._openai.OpenAIError:
            return ""
        return f"; it serves {', '.join(names[:10])}" if names else ""

    def _scrubbed(self, text: str) -> str:
        text = " ".join(text.split())  # one line
        return text.replace(self._api_key, "***") if self._api_key else text

    # ---------------------------------------------------------------- provenance

    def provenance(self) -> dict[str, Any]:
        versions = {"openai": importlib.metadata.version("openai")}
        if self.prompts.tokenizer is not None:
            from ingest.models import library_versions

            versions.update(library_versions())
        return {
            "model_revision": None,  # what the server loaded is not ours to know
            "dtype": None,
            "device": f"server {urlsplit(self.base_url).netloc}",
            "chat_template_hash": self.prompts.chat_template_hash(),
            "library_versions": versions,
        }

    def backend_record(self) -> dict[str, Any]:
        return {
            **super().backend_record(),
            "endpoint": "chat/completions" if self._server_renders_chat() else "completions",
            "prompt_rendering": "server" if self._server_renders_chat() else "catalog",
            "tokenizer_revision": self.prompts.revision,
            "probe": self.probe,
        }

    def _server_renders_chat(self) -> bool:
        return self.spec.prompt_format == "chat" and self.prompts.tokenizer is None


@dataclass
class EndpointRenderer:
    """What the model sees: the catalog's rendering with the tokenizer, when there is one;
    else the scaffold text (plain) or the chat messages as JSON (the server renders them)."""

    spec: ModelSpec
    files: Any = None  # ingest.models.ModelFiles of the tokenizer, or None
    eos_ids: list[int] | None = None

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> EndpointRenderer:
        files = _tokenizer_files(spec)
        if files is None:
            return cls(spec)
        from ingest.models import eos_token_ids
        from ingest.vllm_backend import _generation_config

        eos = eos_token_ids(_generation_config(files), files.config, files.tokenizer)
        return cls(spec, files, eos)

    @property
    def tokenizer(self):
        return None if self.files is None else self.files.tokenizer

    @property
    def revision(self) -> str | None:
        return None if self.files is None else self.files.revision

    def render(self, prompt_text: str, prompt_format: str | None = None, *,
               scaffold: str | None = None) -> str:
        prompt_format = prompt_format or self.spec.prompt_format
        if self.tokenizer is not None:
            from ingest.models import render_prompt

            return render_prompt(self.tokenizer, self.spec, prompt_text, prompt_format,
                                 scaffold)
        if prompt_format == "plain":
            return prompting.render_plain(prompt_text, scaffold)
        messages = [{"role": "user", "content": prompt_text}]
        return json.dumps({"messages": messages, "model": self.spec.source}, sort_keys=True)

    def server_renders(self, rendered: str) -> bool:
        return self.tokenizer is None and rendered.startswith('{"messages": ')

    def prompt(self, rendered: str) -> str | list[int]:
        """The completions request's prompt: the same token ids as a local backend's when
        the tokenizer is known, else the text."""
        if self.tokenizer is None:
            return rendered
        from ingest.sampling import encode_prompt

        return encode_prompt(self.tokenizer, rendered)

    def chat_template_hash(self) -> str | None:
        if self.tokenizer is None:
            return None
        from ingest.models import chat_template_hash

        return chat_template_hash(self.tokenizer)


def _tokenizer_files(spec: ModelSpec):
    """The tokenizer's files: the ``tokenizer`` option (which must load), else the source
    when it is a local directory or a hub id that resolves to a tokenizer, else None (a
    served name such as an API model's, or a path on the server's machine)."""
    from ingest.models import load_model_files, looks_like_path

    named = spec.backend_options.get("tokenizer")
    tokenizer_spec = ModelSpec(named or spec.source,
                               revision=spec.revision if not named else None,
                               trust_remote_code=spec.trust_remote_code,
                               prompt_format=spec.prompt_format)
    if named is not None:
        try:
            return load_model_files(tokenizer_spec, weights=False)
        except ModelLoadError as exc:
            raise ModelLoadError(f"backend option tokenizer={named!r}: {exc}") from None
    source = spec.source
    hub_id = "/" in source and not looks_like_path(source)
    if not (Path(source).expanduser().is_dir() or hub_id):
        return None
    try:
        return load_model_files(tokenizer_spec, weights=False)
    except ModelLoadError:
        return None  # the server renders the chat


def request_splits(n: int, seed: int, max_n: int) -> list[tuple[int, int]]:
    """A unit's ``n`` samples as requests of at most ``max_n``: (n, seed) each, request
    *i*'s seed a hash of the unit's seed and *i* (below 2**31, which every server takes)."""
    sizes = [max_n] * (n // max_n) + ([n % max_n] if n % max_n else [])
    return [(size, request_seed(seed, index)) for index, size in enumerate(sizes)]


def request_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def _usage(answer) -> dict[str, int]:
    usage = getattr(answer, "usage", None)
    tokens = {"requests": 1}
    if usage is not None:
        tokens["prompt_tokens"] = usage.prompt_tokens or 0
        tokens["completion_tokens"] = usage.completion_tokens or 0
    return tokens


def _server_message(exc) -> str:
    body = getattr(exc, "body", None)
    for _ in range(2):  # {"error": {"message": ...}}, {"message": ...} or {"detail": ...}
        if isinstance(body, Mapping):
            body = body.get("message") or body.get("error") or body.get("detail") or body
    text = str(body if body else exc)
    return " ".join(text.split())[:300]


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key.strip():
        raise ModelLoadError(
            f"the environment variable {variable} (backend option api_key_env) is not set; "
            "export it with the API key"
        )
    return key.strip()


def _import_openai():
    try:
        import openai
    except ImportError:
        raise ModelLoadError(
            "the openai backend needs the openai client: pip install 'catalog[openai]'"
        ) from None
    return openai
