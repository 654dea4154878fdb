"""hedge's HTTP/1.1 connection protocol (hedge.server.protocol), spoken to over raw sockets:
keep-alive, pipelining, Expect: 100-continue, chunked request bodies, HEAD, HTTP/1.0,
protocol upgrades, malformed requests and a client that reads its answer late."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from io import BufferedReader
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import fake_openai

CONFIG = """\
deployments:
  up: {{kind: openai_compat, base_url: "{url}", upstream_model: echo, hosting: hosted}}
routes:
  chat: {{deployments: [up], accept_single_point_of_failure: true}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("http1")
    with fake_openai() as fake, run_gateway(CONFIG.format(url=fake.url), tmp) as gateway:
        yield gateway


def connect(gw: Gateway, timeout: float = 10) -> socket.socket:
    port = int(gw.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def chat_body(text: str) -> bytes:
    return json.dumps({"model": "chat", "messages": [{"role": "user", "content": text}]}).encode()


def chat_request(text: str, extra: bytes = b"") -> bytes:
    body = chat_body(text)
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(f: BufferedReader, head_only: bool = False) -> Response:
    """One response from a buffered socket reader, framed by Content-Length or chunks."""
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1."), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only or status in (100, 204, 304):
        return Response(status, headers, b"")
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while (size := int(f.readline().strip(), 16)) > 0:
            body += f.read(size)
            f.readline()
        f.readline()
        return Response(status, headers, body)
    if "content-length" in headers:
        return Response(status, headers, f.read(int(headers["content-length"])))
    return Response(status, headers, f.read())  # delimited by the connection closing


def closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_serves_many_requests_on_one_connection(gw: Gateway) -> None:
    with connect(gw) as s:
        f = s.makefile("rb")
        for i in range(5):
            s.sendall(chat_request(f"turn {i}"))
            r = read_response(f)
            assert r.status == 200 and r.json()["choices"][0]["message"]["content"] == (
                f"echo: turn {i}"
            )
            assert "connection" not in r.headers


def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(
            chat_request("first")
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            + chat_request("third")
            + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = [read_response(f) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 404]
    assert answers[0].json()["choices"][0]["message"]["content"] == "echo: first"
    assert answers[1].json() == {"status": "ok"}
    assert answers[2].json()["choices"][0]["message"]["content"] == "echo: third"
    assert answers[3].json()["error"]["code"] == "not_found"


def test_expect_100_continue_is_answered_before_the_body_is_sent(gw: Gateway) -> None:
    body = chat_body("after continue")
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        interim = read_response(f)
        assert interim.status == 100
        s.sendall(body)
        r = read_response(f)
    assert (
        r.status == 200 and r.json()["choices"][0]["message"]["content"] == "echo: after continue"
    )


def test_a_request_refused_before_its_body_gets_no_100_continue(gw: Gateway) -> None:
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        r = read_response(f)
    assert r.status == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_chunked_request_body_is_reassembled(gw: Gateway) -> None:
    body = chat_body("sent in chunks")
    parts = [body[:10], body[10:25], body[25:]]
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for piece in (chunked[:7], chunked[7:40], chunked[40:]):  # across several reads
            s.sendall(piece)
            time.sleep(0.05)
        r = read_response(f)
    assert (
        r.status == 200 and r.json()["choices"][0]["message"]["content"] == "echo: sent in chunks"
    )


def test_head_gets_the_headers_and_no_body_and_the_connection_stays_usable(gw: Gateway) -> None:
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        head = read_response(f, head_only=True)
        assert head.status == 200 and int(head.headers["content-length"]) > 0
        after = read_response(f)  # would be garbled if the HEAD answer had carried a body
    assert after.status == 200 and after.json() == {"status": "ok"}


def test_http_1_0_is_answered_and_the_connection_closed(gw: Gateway) -> None:
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        r = read_response(f)
        assert r.status == 200 and r.json() == {"status": "ok"}
        assert closed(s)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        b"hello",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["no-method", "bad-version", "two-lengths", "bad-chunk-size"],
)
def test_malformed_http_gets_an_openai_shaped_400_and_the_server_stays_up(
    gw: Gateway, garbage: bytes
) -> None:
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(garbage)
        r = read_response(f)
        assert r.status == 400, r.body
        error = r.json()["error"]
        assert error["code"] == "invalid_http" and "Malformed HTTP/1.1 request" in error["message"]
        assert closed(s)
    with connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s.makefile("rb")).status == 200


def test_an_upgrade_request_is_served_as_http_then_closed(gw: Gateway) -> None:
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"\x81\x85 not http at all"
        )
        r = read_response(f)
        assert r.status == 200 and r.json() == {"status": "ok"}
        assert r.headers.get("connection") == "close"
        assert closed(s)


def test_a_client_that_reads_late_still_gets_the_whole_large_answer(gw: Gateway) -> None:
    text = "long answer " * 70_000  # 840 KB echoed back (the fake upstream takes up to 1 MiB)
    request = chat_request(text)
    with connect(gw, timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(request)
        time.sleep(1.0)  # the gateway's write buffer fills and it must wait for the client
        r = read_response(s.makefile("rb"))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # and the connection still works
        after = read_response(s.makefile("rb"))
    assert r.status == 200, r.body[:500]
    assert r.json()["choices"][0]["message"]["content"] == f"echo: {text}"
    assert after.status == 200


def test_response_headers_are_lowercase_and_name_no_server_software(gw: Gateway) -> None:
    with connect(gw) as s:
        s.sendall(chat_request("headers"))
        raw = s.makefile("rb")
        status = raw.readline()
        lines = []
        while (line := raw.readline()) != b"\r\n":
            lines.append(line)
    assert status == b"HTTP/1.1 200 OK\r\n"
    names = [line.split(b":", 1)[0] for line in lines]
    assert all(n == n.lower() for n in names) and b"server" not in names
    assert b"date" in names and b"x-request-id" in names


def test_a_slow_body_is_read_as_it_arrives(gw: Gateway, tmp_path: Path) -> None:
    body = chat_body("slow body")
    with connect(gw) as s:
        f = s.makefile("rb")
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        for i in range(0, len(body), 16):
            s.sendall(body[i : i + 16])
            time.sleep(0.02)
        r = read_response(f)
    assert r.status == 200 and r.json()["choices"][0]["message"]["content"] == "echo: slow body"
