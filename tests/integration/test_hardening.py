"""Connection-level hardening through a running gateway: oversized heads, slow and silent
clients, and a graceful stop that finishes the stream in flight and flushes the ledger."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import fake_openai

CONFIG = """\
server: {{header_timeout_s: 1, max_header_bytes: 8192, max_headers: 50}}
ledger: {{backend: sqlite, path: {tmp}/ledger.db, flush_interval_s: 30}}
deployments:
  up: {{kind: openai_compat, base_url: "{url}", upstream_model: "{model}", hosting: hosted}}
routes:
  chat: {{deployments: [up], accept_single_point_of_failure: true}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("hardening")
    with (
        fake_openai() as fake,
        run_gateway(CONFIG.format(url=fake.url, tmp=tmp, model="echo"), tmp) as gateway,
    ):
        yield gateway


def raw(gw: Gateway, data: bytes, timeout: float = 10) -> bytes:
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)  # refused mid-send: the answer is still there to read
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def healthy(gw: Gateway) -> bool:
    return raw(gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200"
    )


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-H: v\r\n" * 60 + b"\r\n",
        b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["long-header", "4-MiB-header", "60-headers", "long-url"],
)
def test_an_oversized_head_gets_431_and_the_server_stays_up(gw: Gateway, head: bytes) -> None:
    answer = raw(gw, head)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 ")
    error = json.loads(body)["error"]
    assert error["code"] == "request_header_fields_too_large" and "8192 bytes" in error["message"]
    assert healthy(gw)


def test_a_head_within_the_limits_is_served(gw: Gateway) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += b"X-H: v\r\n" * 40 + b"X-Big: " + b"a" * 6000 + b"\r\n\r\n"
    assert raw(gw, head).startswith(b"HTTP/1.1 200")


def test_slow_and_silent_clients_are_cut_off_without_holding_others(gw: Gateway) -> None:
    port = int(gw.url.rsplit(":", 1)[1])
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-")
    assert healthy(gw), "others are served while the slow head waits"
    answer = slow.recv(4096)
    slow_after = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in answer
    assert silent.recv(4096) == b"", "a connection that never sends is closed quietly"
    assert 0.8 <= slow_after < 5
    slow.close()
    silent.close()


def start_stream(gateway: Gateway) -> http.client.HTTPResponse:
    """A streamed chat completion whose head has arrived (the fake stalls its events)."""
    port = int(gateway.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    return conn.getresponse()


def test_a_graceful_stop_finishes_the_stream_in_flight_and_flushes_the_ledger(
    tmp_path: Path,
) -> None:
    """SIGTERM while a stream waits on its upstream: the stream still ends with [DONE], the
    process exits 0, and the request is in the ledger (whose flush interval is 30 s)."""
    with fake_openai() as fake:
        cfg = CONFIG.format(url=fake.url, tmp=tmp_path, model="stall-2")
        with run_gateway(cfg, tmp_path) as gateway:
            response = start_stream(gateway)
            assert response.status == 200
            first = response.readline()  # the first event is there; the rest is 2 s away
            assert first.startswith(b"data: ")
            request_id = response.getheader("x-request-id")
            gateway.proc.send_signal(signal.SIGTERM)
            rest = response.read()
            code = gateway.proc.wait(timeout=30)
    assert b"data: [DONE]" in rest and b'"finish_reason":"stop"' in rest
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit status says
    # "ended by SIGTERM", as Unix services report it.
    assert code in (0, -signal.SIGTERM)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        row = db.execute(
            "SELECT status FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
    assert row == (200,)


def test_new_connections_are_refused_once_stopping(tmp_path: Path) -> None:
    with fake_openai() as fake:
        cfg = CONFIG.format(url=fake.url, tmp=tmp_path, model="stall-3")
        with run_gateway(cfg, tmp_path) as gateway:
            port = int(gateway.url.rsplit(":", 1)[1])
            response = start_stream(gateway)
            response.readline()
            gateway.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            refused = threading.Event()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError:
                refused.set()
            rest = response.read()
            gateway.proc.wait(timeout=30)
    assert refused.is_set(), "a stopping gateway takes no new connection"
    assert b"data: [DONE]" in rest


def test_a_body_arriving_with_its_head_is_not_taken_for_a_large_head(gw: Gateway) -> None:
    """One write of head + a 500 KB body: the reads that carry it hold far more than the head
    bound (8 KiB here), but only the head counts."""
    text = "word " * 100_000
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": text}]})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    answer = raw(gw, head.encode() + body.encode(), timeout=30)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
