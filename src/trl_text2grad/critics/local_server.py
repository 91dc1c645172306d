"""Start ``transformers serve`` (transformers' OpenAI-compatible server) on 127.0.0.1 for a local critic.

Used by the real-server tests and ``bench/annotate.py``; handy for trying :class:`OpenAICompatibleCritic`
without a hosted model::

    with TransformersServer(default_model_path()) as server:
        critic = OpenAICompatibleCritic(model=server.model, base_url=server.base_url, api_key_env=None)

Needs the ``serving`` extra (``pip install 'trl-text2grad[serving]'``: FastAPI and Uvicorn).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["TransformersServer", "serving_available"]


def serving_available() -> bool:
    """True when ``transformers serve`` can run here (FastAPI and Uvicorn installed)."""
    return all(importlib.util.find_spec(name) is not None for name in ("fastapi", "uvicorn", "transformers"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TransformersServer:
    """``transformers serve`` in a child process, as a context manager.

    Args:
        model: Checkpoint path (or hub name, which would need network) to preload and serve.
        port: TCP port on 127.0.0.1 (``None``: a free one).
        startup_timeout: Seconds to wait for ``/health``.
        threads: ``OMP_NUM_THREADS`` of the server (``None``: inherit).
        continuous_batching: Pass ``--continuous-batching``.
        extra_args: More ``transformers serve`` flags.
    """

    def __init__(
        self,
        model: str,
        port: int | None = None,
        startup_timeout: float = 300.0,
        threads: int | None = None,
        continuous_batching: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        if not serving_available():
            raise RuntimeError("transformers serve needs FastAPI and Uvicorn: pip install 'trl-text2grad[serving]'")
        self.model = model
        self.port = port or _free_port()
        self.startup_timeout = startup_timeout
        self.threads = threads
        self.continuous_batching = continuous_batching
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _command(self) -> list[str]:
        cli = Path(sys.executable).with_name("transformers")
        head = [str(cli)] if cli.exists() else [shutil.which("transformers") or "transformers"]
        command = [*head, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        if self.continuous_batching:
            command.append("--continuous-batching")
        return [*command, *self.extra_args, self.model]

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def start(self) -> TransformersServer:
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        handle, name = tempfile.mkstemp(prefix="t2g-serve-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(handle, "w") as log:
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"transformers serve did not become healthy in {self.startup_timeout} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
        self.process = None

    def __enter__(self) -> TransformersServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
