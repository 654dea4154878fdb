"""`hedge serve --workers 2`: two worker processes behind one port, supervised.

A real `hedge serve --workers 2` runs against the loopback fake OpenAI upstream; the openai SDK
talks to it. Each chat completion says which worker answered (`x-hedge-worker`, its pid).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import HEDGE, free_port, wait_http
from tests.fakes.openai_fake import FakeOpenAI, fake_openai


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    ledger: Path

    def client(self) -> OpenAI:
        # A client of its own per thread: its own connections, so the kernel spreads them.
        return OpenAI(base_url=f"{self.url}/v1", api_key="any", max_retries=2, timeout=30)

    def workers(self) -> set[int]:
        """The supervisor's live child processes."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return {int(p) for p in children.split()}


def config(fake_url: str, ledger: Path) -> str:
    return f"""
server: {{log_level: warning}}
ledger: {{backend: sqlite, path: "{ledger}", flush_interval_s: 0.1}}
deployments:
  echo:
    kind: openai_compat
    hosting: self-hosted
    base_url: {fake_url}
    upstream_model: echo
routes:
  chat: {{deployments: [echo]}}
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, FakeOpenAI]]:
    with fake_openai() as fake:
        port = free_port()
        ledger = tmp_path / "ledger.db"
        cfg = tmp_path / "hedge.yaml"
        cfg.write_text(config(fake.url, ledger))
        log = tmp_path / "hedge.log"
        args = [*HEDGE, "serve", "--config", str(cfg), "--port", str(port), "--workers", "2"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/readyz", 60, proc)
            wait_for(lambda: "2 workers serving" in log.read_text(), 30)
            yield Served(url, proc, log, ledger), fake
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
                # The workers notice their supervisor is gone and stop by themselves.


def wait_for(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"condition not met within {timeout_s}s")


def ask(served: Served, n: int, threads: int = 8) -> list[int]:
    """`n` chat completions from `threads` clients at once; the pid that answered each."""

    def one_client(count: int) -> list[int]:
        client = served.client()
        pids = []
        for i in range(count):
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": f"hello {i}"}]
            )
            reply = raw.parse()
            assert reply.choices[0].message.content == f"echo: hello {i}"
            pids.append(int(raw.headers["x-hedge-worker"]))
        client.close()
        return pids

    with ThreadPoolExecutor(threads) as pool:
        chunks = pool.map(one_client, [n // threads] * threads)
    return [pid for chunk in chunks for pid in chunk]


def test_two_workers_share_the_port_survive_a_crash_and_stop_cleanly(
    served: tuple[Served, FakeOpenAI],
) -> None:
    gw, _ = served
    workers = gw.workers()
    assert len(workers) == 2

    # Both workers answer; keep asking (bounded) until the kernel has handed each a connection.
    seen: set[int] = set()
    answered = 0
    for _ in range(10):
        pids = ask(gw, 80)
        answered += len(pids)
        seen |= set(pids)
        if seen == workers:
            break
    assert seen == workers, f"answers came from {seen}, workers are {workers}"

    # /metrics sums every worker's samples, whichever worker answers the scrape.
    def counted() -> set[float]:
        return {_requests_counted(gw.url) for _ in range(8)}

    wait_for(lambda: counted() == {float(answered)}, 10)

    # A worker killed outright is replaced, and the service keeps answering meanwhile.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    answered += len(ask(gw, 40))
    wait_for(lambda: len(gw.workers() - {victim}) == 2, 30)
    wait_for(lambda: gw.log.read_text().count("ready (pid") == 3, 30)
    replacement = (gw.workers() - workers).pop()
    seen = set()
    for _ in range(10):
        seen |= set(ask(gw, 80))
        answered += 80
        if replacement in seen:
            break
    assert replacement in seen

    # SIGTERM: every worker stops gracefully and the supervisor exits 0.
    everyone = gw.workers()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(40) == 0, gw.log.read_text()
    for pid in everyone:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} still runs"
    text = gw.log.read_text()
    assert "exited with signal SIGKILL; restarting it" in text
    assert "Traceback" not in text

    # Both workers wrote the one SQLite ledger: every answered request is in it (the killed
    # worker's unflushed records, at most one flush interval's worth, may be missing).
    with sqlite3.connect(gw.ledger) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM requests WHERE status = 200").fetchone()
    assert answered - 50 <= rows <= answered


def _requests_counted(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hedge_requests_total" and s.labels.get("status") == "200"
    )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_that_cannot_start_stops_the_supervisor_with_a_clear_message(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "hedge.yaml"
    # The ledger path is a directory: each worker fails at start-up, and so must the whole.
    (tmp_path / "ledger-dir").mkdir()
    cfg.write_text(config("http://127.0.0.1:9/v1", tmp_path / "ledger-dir"))
    args = [*HEDGE, "serve", "--config", str(cfg), "--port", str(free_port()), "--workers", "2"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "before it was ready" in done.stderr and "Stopping." in done.stderr


def test_a_port_in_use_is_reported_and_exits_1(tmp_path: Path) -> None:
    cfg = tmp_path / "hedge.yaml"
    cfg.write_text(config("http://127.0.0.1:9/v1", tmp_path / "ledger.db"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [*HEDGE, "serve", "--config", str(cfg), "--port", str(port), "--workers", "2"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_workers_must_be_positive() -> None:
    done = subprocess.run(
        [*HEDGE, "serve", "--workers", "0"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "must be at least 1" in done.stderr


def test_each_worker_listens_on_a_socket_of_its_own(served: tuple[Served, FakeOpenAI]) -> None:
    """SO_REUSEPORT: the kernel spreads new connections across the workers' sockets (with one
    shared socket, a burst of 32 under load went 26/6 to two workers: bench/hot_path.py)."""
    gateway, _ = served
    port = int(gateway.url.rsplit(":", 1)[1])
    listening = {
        f"socket:[{fields[9]}]"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if (fields := line.split())[3] == "0A" and fields[1].endswith(f":{port:04X}")
    }
    holders = {
        pid
        for pid in gateway.workers()
        for fd in Path(f"/proc/{pid}/fd").iterdir()
        if os.readlink(fd) in listening
    }
    assert len(listening) == 2 and len(holders) == 2


def test_a_second_supervisor_on_the_same_port_is_refused(
    served: tuple[Served, FakeOpenAI], tmp_path: Path
) -> None:
    gateway, _ = served
    port = int(gateway.url.rsplit(":", 1)[1])
    cfg = tmp_path / "other.yaml"
    cfg.write_text(config("http://127.0.0.1:9/v1", tmp_path / "other.db"))
    args = [*HEDGE, "serve", "--config", str(cfg), "--port", str(port), "--workers", "2"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
