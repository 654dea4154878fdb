"""The `hedge` command as a person runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import HEDGE, Gateway, free_port

BAD = """\
deployments:
  a:
    kind: embedded
    bundled: smollm2-135m-instruct
    n_ctx: big
routes:
  r: {deployments: [a, ghost]}
"""


def hedge(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HEDGE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def test_config_check_accepts_the_default_and_summarises_it() -> None:
    default = Path(__file__).resolve().parents[2] / "src/hedge/default.yaml"
    out = hedge("config", "check", str(default))
    assert out.returncode == 0, out.stderr
    assert "route default: smollm2-local -> gemma3-local" in out.stdout


def test_config_check_rejects_with_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "hedge.yaml"
    bad.write_text(BAD)
    out = hedge("config", "check", str(bad))
    assert out.returncode == 2
    assert f"{bad}: 1 problem:" in out.stderr
    assert "deployments.a.n_ctx (line 5)" in out.stderr


def test_serve_refuses_a_bad_config_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "hedge.yaml"
    bad.write_text(BAD.replace("n_ctx: big", "n_ctx: 512"))
    out = hedge("serve", "--config", str(bad), "--port", str(free_port()), timeout=60)
    assert out.returncode == 2
    assert "routes.r.deployments[1]" in out.stderr and "unknown deployment 'ghost'" in out.stderr


def test_chat_through_a_running_gateway(embedded_gateway: Gateway) -> None:
    out = hedge(
        "chat",
        "Name a colour.",
        "--model",
        "smollm2",
        "--url",
        embedded_gateway.url,
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "the answer streamed to stdout"


def test_chat_reports_an_unknown_model(embedded_gateway: Gateway) -> None:
    out = hedge("chat", "hi", "--model", "nope", "--url", embedded_gateway.url)
    assert out.returncode == 1
    assert "404" in out.stderr and "'nope' does not exist" in out.stderr


def test_chat_in_process_without_a_gateway(tmp_path: Path) -> None:
    out = hedge(
        "chat",
        "Say hi.",
        "--model",
        "smollm2",
        "--local",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
