"""A small OpenAI-compatible HTTP server for tests of the ``openai`` backend: real sockets on
127.0.0.1, run in a thread, answering the way vLLM's server does where the backend cares.

It serves one model name whose completions follow a fixed distribution (like the ``table``
backend): each request draws its ``n`` texts with numpy seeded by the request's ``seed``, so
equal requests get equal answers. Tests script its faults:

- ``fail_next([429, 500])``: answer the next requests with these statuses (with
  ``retry-after-ms``, as rate-limited APIs do, so the client's backoff stays short);
- ``poison``: a prompt containing this text always gets 500;
- ``key``: requests must carry ``Authorization: Bearer KEY``; a wrong key gets 401 with a
  message that quotes it, as OpenAI's API does (the backend must never show it);
- ``honour_n=False``: one choice whatever ``n`` asks (servers that ignore ``n``);
- ``extra_params=False``: 400 for vLLM's extra sampling parameters (OpenAI's API);
- ``logprobs=False``: 400 for a request that asks for logprobs;
- ``delay``: seconds to wait before each answer (a server too slow for the timeout).

Every request body it received is kept in ``requests`` (path, body).
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

DISTRIBUTION = {"7": 0.5, "3": 0.3, "I pick 5.": 0.15, "no idea": 0.05}
EXTRA_PARAMS = ("top_k", "min_p", "repetition_penalty", "stop_token_ids", "ignore_eos")


class CompatibleServer:
    def __init__(self, *, model: str = "served-model", key: str | None = None,
                 honour_n: bool = True, extra_params: bool = True, logprobs: bool = True,
                 poison: str | None = None, delay: float = 0.0,
                 distribution: dict[str, float] | None = None) -> None:
        self.model, self.key = model, key
        self.honour_n, self.extra_params, self.poison = honour_n, extra_params, poison
        self.logprobs, self.delay = logprobs, delay
        self.distribution = distribution or DISTRIBUTION
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._http = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_port}/v1"

    def fail_next(self, statuses: list[int]) -> None:
        with self._lock:
            self._failures.extend(statuses)

    def sampling_requests(self) -> list[dict[str, Any]]:
        """Bodies of the completion requests answered or refused, in order."""
        return [body for path, body in self.requests if path.endswith("completions")]

    def __enter__(self) -> CompatibleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    # ------------------------------------------------------------------ answers

    def answer(self, method: str, path: str, headers, body: dict) -> tuple[int, dict]:
        if method == "POST":
            with self._lock:
                self.requests.append((path, body))
        if self.key is not None:
            sent = headers.get("Authorization", "").removeprefix("Bearer ")
            if sent != self.key:
                return 401, _error(f"Incorrect API key provided: {sent}.", "invalid_api_key")
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "test"}]}
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, {"detail": "Not Found"}
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return failure, _error(f"scripted failure {failure}", "server_error")
        if body.get("model") != self.model:
            return 404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if not self.extra_params and any(name in body for name in EXTRA_PARAMS):
            return 400, _error("Unrecognized request argument supplied: top_k", "invalid")
        if not self.logprobs and body.get("logprobs") is not None:
            return 400, _error("logprobs are not supported with this model", "invalid")
        if self.poison and self.poison in json.dumps(body.get("prompt", body.get("messages"))):
            return 500, _error("the model crashed on this prompt", "server_error")
        time.sleep(self.delay)
        return 200, self._completion(path, body)

    def _completion(self, path: str, body: dict) -> dict:
        texts, weights = zip(*self.distribution.items())
        n = body.get("n", 1) if self.honour_n else 1
        rng = np.random.default_rng(body.get("seed"))
        drawn = [texts[i] for i in rng.choice(len(texts), size=n, p=np.array(weights))]
        chat = path.endswith("chat/completions")
        choices = [
            {"index": i, "finish_reason": "stop",
             **({"message": {"role": "assistant", "content": text},
                 "logprobs": self._chat_logprobs(body, text)} if chat
                else {"text": text, "logprobs": self._logprobs(body, text)})}
            for i, text in enumerate(drawn)
        ]
        completion_tokens = sum(len(text.split()) for text in drawn)
        return {
            "id": "cmpl-test", "object": "chat.completion" if chat else "text_completion",
            "created": 0, "model": self.model, "system_fingerprint": "fp_test",
            "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": completion_tokens,
                      "total_tokens": 5 + completion_tokens},
        }


    def _top(self, k: int) -> list[tuple[str, float]]:
        """The k most likely completions as (text, log p): each completion is one token."""
        ranked = sorted(self.distribution.items(), key=lambda item: -item[1])[:k]
        return [(text, math.log(p)) for text, p in ranked]

    def _logprobs(self, body: dict, text: str) -> dict | None:
        k = body.get("logprobs")
        if k is None:
            return None
        top = [dict(self._top(k))] if k else None
        return {"tokens": [text], "token_logprobs": [math.log(self.distribution[text])],
                "top_logprobs": top, "text_offset": [0]}

    def _chat_logprobs(self, body: dict, text: str) -> dict | None:
        if not body.get("logprobs"):
            return None
        top = [{"token": t, "logprob": lp, "bytes": None}
               for t, lp in self._top(body.get("top_logprobs") or 0)]
        return {"content": [{"token": text, "logprob": math.log(self.distribution[text]),
                             "bytes": None, "top_logprobs": top}]}


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (its other requests failed, so it cancelled this one) is
        normal here; anything else is a bug of the test server and is raised."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(server: CompatibleServer):
    class Handler(BaseHTTPRequestHandler):
        def _respond(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            status, answer = server.answer(method, self.path, self.headers, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429 or status >= 500:
                self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._respond("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._respond("POST")

        def log_message(self, *args: object) -> None:
            pass

    return Handler
