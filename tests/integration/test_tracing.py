"""OpenTelemetry spans from a running gateway: one per request, one child per upstream
attempt, exported to the console and over OTLP/HTTP to a loopback collector of our own."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import run_gateway
from tests.fakes.openai_fake import fake_openai

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is not installed")

CONFIG = """\
server: {{tracing: {tracing}}}
deployments:
  broken: {{kind: openai_compat, base_url: "{url}", upstream_model: "fail-500#t", hosting: hosted}}
  up:
    kind: openai_compat
    base_url: "{url}"
    upstream_model: echo
    hosting: hosted
    prices: {{input: 1.0, output: 2.0}}
routes:
  chat: {{deployments: [broken, up], retry: {{attempts_per_deployment: 1}}}}
"""


def ask(v1: str) -> str:
    api = openai.OpenAI(base_url=v1, api_key="x", max_retries=0)
    raw = api.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "a prompt 4417"}]
    )
    return raw.headers["x-request-id"]


def test_console_spans_nest_attempts_under_the_request(tmp_path: Path) -> None:
    with fake_openai() as fake:
        with run_gateway(CONFIG.format(url=fake.url, tracing="console"), tmp_path) as gw:
            rid = ask(gw.v1)
        output = gw.output()  # spans are flushed when the gateway stops
    spans = [json.loads(line) for line in output.splitlines() if line.startswith('{"name"')]
    (request,) = [s for s in spans if s["attributes"].get("hedge.request_id") == rid]
    assert request["name"] == "hedge chat" and request["parent_id"] is None
    attrs = request["attributes"]
    assert (attrs["hedge.deployment"], attrs["hedge.attempts"]) == ("up", 2)
    assert attrs["http.response.status_code"] == 200 and attrs["hedge.cost_usd"] > 0
    children = [s for s in spans if s["parent_id"] == request["context"]["span_id"]]
    assert [c["name"] for c in children] == ["attempt broken", "attempt up"]
    assert children[0]["status"]["status_code"] == "ERROR"
    assert children[1]["attributes"]["gen_ai.usage.input_tokens"] > 0
    assert all(c["context"]["trace_id"] == request["context"]["trace_id"] for c in children)
    assert all(request["start_time"] <= c["start_time"] <= c["end_time"] for c in children)
    assert children[1]["end_time"] <= request["end_time"]
    assert "4417" not in "".join(json.dumps(s) for s in spans), "no prompt text in spans"


@contextlib.contextmanager
def collector() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback OTLP/HTTP endpoint that keeps what it is sent."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


def test_otlp_exports_to_the_configured_collector(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    with fake_openai() as fake, collector() as (endpoint, received):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        with run_gateway(CONFIG.format(url=fake.url, tracing="otlp"), tmp_path, env=env) as gw:
            rid = ask(gw.v1)
    names: dict[str, str] = {}
    for body in received:
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert service["service.name"] == "hedge"
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attrs = {a.key: a.value for a in span.attributes}
                    if "hedge.request_id" in attrs:
                        names[attrs["hedge.request_id"].string_value] = span.name
                    else:
                        names[span.name] = span.name
    assert names.get(rid) == "hedge chat"
    assert {"attempt broken", "attempt up"} <= set(names)
