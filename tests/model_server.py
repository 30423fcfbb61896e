"""llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) on loopback,
for the tests of the remote engine: the real server the OpenAI engine is meant to talk to."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import free_port


@contextmanager
def llama_cpp_server(model: Path, *, n_ctx: int) -> Iterator[str]:
    """Serve `model` on a free loopback port; yields the base URL (`http://127.0.0.1:PORT`,
    the OpenAI API under /v1) once /v1/models answers, and stops the server afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    command += ["--verbose", "False", "--interrupt_requests", "False"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(server.stderr.read().decode()[-2000:]) from None  # type: ignore[union-attr]
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
