"""hedge's own API, fuzzed from its OpenAPI description with schemathesis against a running
gateway: no 5xx, every status and content type documented, every error body well-formed.

Generation covers valid and invalid bodies for every operation (negative mode included), with
the gateway's route names in `model`, so requests reach the upstream as well as the
validators. The upstream is the loopback fake with a fixed answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_gateway
from tests.fakes.openai_fake import fake_openai

CONFIG = """\
ledger: {{backend: sqlite, path: {tmp}/ledger.db}}
deployments:
  up: {{kind: openai_compat, base_url: "{url}", upstream_model: "say:ok", hosting: hosted}}
  emb: {{kind: openai_compat, base_url: "{url}", upstream_model: "embed-8#fuzz", hosting: hosted}}
routes:
  chat: {{deployments: [up], accept_single_point_of_failure: true}}
  vectors: {{deployments: [emb], accept_single_point_of_failure: true}}
"""

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


def schemathesis() -> str | None:
    found = Path(sys.executable).parent / "schemathesis"
    return str(found) if found.exists() else shutil.which("schemathesis")


def test_the_description_is_served_and_names_every_route(tmp_path: Path) -> None:
    with (
        fake_openai() as fake,
        run_gateway(CONFIG.format(url=fake.url, tmp=tmp_path), tmp_path) as gw,
        urllib.request.urlopen(f"{gw.url}/openapi.json", timeout=10) as r,
    ):
        doc = json.loads(r.read())
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/feedback"} <= set(
        doc["paths"]
    )
    schemas = doc["components"]["schemas"]
    assert schemas["ChatRequest"]["properties"]["model"]["enum"] == ["chat", "vectors"]
    assert "messages" in schemas["ChatRequest"]["required"]


@pytest.mark.skipif(schemathesis() is None, reason="schemathesis is not installed")
def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(tmp_path: Path) -> None:
    tool = schemathesis()
    assert tool is not None
    with (
        fake_openai() as fake,
        run_gateway(CONFIG.format(url=fake.url, tmp=tmp_path), tmp_path) as gw,
    ):
        run = subprocess.run(
            [
                tool,
                "run",
                f"{gw.url}/openapi.json",
                "--checks",
                ",".join(CHECKS),
                "--phases",
                "examples,fuzzing",
                "--max-examples",
                "40",
                "--request-timeout",
                "20",
                "--max-time",
                "90",
                "--seed",
                "20261123",
                "--workers",
                "2",
                "--no-color",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        alive = urllib.request.urlopen(f"{gw.url}/healthz", timeout=10).status
        log = gw.output()
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "passed" in run.stdout and " failed" not in run.stdout.split("SUMMARY")[-1], report
    assert alive == 200, "the server is still up"
    assert "Traceback" not in log, log[-4000:]
