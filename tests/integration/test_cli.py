"""The `hedge` command as a person runs it."""

from __future__ import annotations

import json
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


def test_models_filters_as_table_and_json() -> None:
    out = hedge("models", "--origin", "CN", "--commercial", "yes", "--open-weights", "--json")
    assert out.returncode == 0, out.stderr
    ids = [row["id"] for row in json.loads(out.stdout)]
    assert "deepseek-v4-pro" in ids and "qwen3-coder" in ids
    assert "llama-4-maverick" not in ids and "claude-opus-4.6" not in ids
    table = hedge("models", "--max-active-params", "20")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "lab", "origin", "licence"]
    assert any(line.startswith("qwen3.5-397b-a17b ") for line in lines)
    assert not any(line.startswith("kimi-k2.6 ") for line in lines)  # 32B active


def test_models_fit_shows_the_arithmetic() -> None:
    out = hedge(
        "models",
        "fit",
        "--gpu-mem",
        "80",
        "--gpus",
        "8",
        "--quant",
        "q4",
        "--model",
        "deepseek-v4-pro",
        "--model",
        "gpt-oss",
    )
    assert out.returncode == 0, out.stderr
    assert "deepseek-v4-pro: does not fit" in out.stdout
    assert "1600 B params x 4.5 bits / 8 = 900 GB" in out.stdout
    assert "gpt-oss: unknown" in out.stdout


def test_doctor_fails_on_an_unaccepted_single_point(tmp_path: Path) -> None:
    cfg = tmp_path / "hedge.yaml"
    cfg.write_text(
        "deployments:\n"
        "  a: {kind: openai_compat, model: deepseek-v4-pro, base_url: http://127.0.0.1:9/v1,\n"
        "      upstream_model: x, hosting: hosted, operator: DeepSeek, operator_jurisdiction: CN}\n"
        "routes:\n  r: {deployments: [a]}\n"
    )
    out = hedge("doctor", "--config", str(cfg))
    assert out.returncode == 1
    assert (
        "r [AT RISK]" in out.stdout and "single point of failure: operator DeepSeek" in out.stdout
    )
    cfg.write_text(cfg.read_text().replace("[a]}", "[a], accept_single_point_of_failure: true}"))
    assert hedge("doctor", "--config", str(cfg)).returncode == 0


def test_replay_reports_a_cascade_and_refuses_an_unrecordable_judge(tmp_path: Path) -> None:
    from tests.unit.test_replay import DEPLOYMENTS, OUTCOMES

    cfg = tmp_path / "hedge.yaml"
    cfg.write_text(DEPLOYMENTS.format(rec=OUTCOMES))
    out_json = tmp_path / "report.json"
    base = ["replay", str(OUTCOMES), "--config", str(cfg), "--split", "test", "--task", "quiz"]
    ok = hedge(*base, "--route", "two_voters", "--json", str(out_json))
    assert ok.returncode == 0, ok.stderr
    report = json.loads(out_json.read_text())
    assert json.dumps(report).count("two_voters") >= 1
    assert "cost" in ok.stdout.lower() and "oracle" in ok.stdout.lower()
    refused = hedge(*base, "--route", "judged")
    assert refused.returncode == 2
    assert "judge" in (refused.stderr + refused.stdout).lower()
