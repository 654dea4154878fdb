"""`hedge eval` as a person runs it: through a running `hedge serve` on the embedded model,
in-process, against a loopback fake upstream whose answers are known (so the statistics,
`compare` and `recommend` are checked end to end), killed mid-run and resumed, and with its
HTML report opened in headless Chromium.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hedge.evaluation.stats import mcnemar_exact, wilson
from tests.conftest import HEDGE, Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai

CHROMIUM = next((p for p in ("chromium", "chromium-browser") if shutil.which(p)), None)


def hedge(
    *args: str, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HEDGE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


# ---- a loopback fake upstream: two candidates whose answers are known ------------------------

FAKE_CONFIG = """\
ledger: {{path: {db}}}
deployments:
  echo-dep:
    kind: openai_compat
    base_url: {url}
    upstream_model: "echo#{key}"
    hosting: hosted
    prices: {{input: 1.0, output: 2.0}}
  seven-dep:
    kind: openai_compat
    base_url: {url}
    upstream_model: "say:7"
    hosting: hosted
    prices: {{input: 0.1, output: 0.1}}
  unpriced-dep:
    kind: openai_compat
    base_url: {url}
    upstream_model: "say:7"
    hosting: hosted
  slow-dep:
    kind: openai_compat
    base_url: {url}
    upstream_model: "slow-0.4#{key}"
    hosting: hosted
  flaky-dep:
    kind: openai_compat
    base_url: {url}
    upstream_model: "down-for-3#{key}"
    hosting: hosted
    breaker: {{failures: 1000}}
  judge-dep:
    kind: openai_compat
    base_url: {url}
    upstream_model: "say:Polite enough. SCORE: 8"
    hosting: hosted
routes:
  both: {{deployments: [echo-dep, seven-dep]}}
  judge: {{deployments: [judge-dep]}}
"""

# The echo deployment answers "echo: <prompt>", so its last number is the prompt's last one;
# the other always says 7. Per case: (prompt, expected, echo right, seven right).
KNOWN = [
    ("Add 3 and 4. Answer 7", 7, True, True),
    *((f"What is {n} + 1? Answer {n + 1}", n + 1, True, False) for n in (1, 2, 3, 4, 5, 8)),
    ("What is 10 - 3? Not 8", 7, False, True),
    ("What is 14 / 2? Not 6", 7, False, True),
    ("What is 1 + 1? Not 3", 2, False, False),
]


def write_suite(path: Path, cases: list[tuple[str, object]], gate: str | None = None) -> Path:
    header = ["---", "name: known", "scorers: [{kind: numeric}]"]
    if gate:
        header.append(f"gates: [{{kind: regex, pattern: {json.dumps(gate)}}}]")
    lines = [*header, "---"]
    for i, (prompt, expected) in enumerate(cases):
        tag = "odd" if i % 2 else "even"
        case = {"id": f"case-{i}", "prompt": prompt, "expected": expected, "tags": [tag]}
        lines.append(json.dumps(case))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai() as upstream:
        yield upstream


@pytest.fixture
def setup(tmp_path: Path, fake: FakeOpenAI) -> tuple[Path, Path]:
    db = tmp_path / "ledger.db"
    cfg = tmp_path / "hedge.yaml"
    cfg.write_text(FAKE_CONFIG.format(db=db, url=fake.url, key=tmp_path.name))
    return cfg, db


def run_id_of(out: subprocess.CompletedProcess[str]) -> str:
    first = out.stdout.splitlines()[0]
    assert first.startswith("run "), out.stdout
    return first.split()[1].rstrip(":")


def test_known_answers_end_to_end(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    cfg, db = setup
    suite = write_suite(
        tmp_path / "known.jsonl", [(p, e) for p, e, _, _ in KNOWN], gate=r"Answer \d+$"
    )
    html = tmp_path / "report.html"
    out = hedge(
        "eval", str(suite), "--deployments", "echo-dep,seven-dep", "--config", str(cfg),
        "--html", str(html), "--json", "--concurrency", "4",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    echo, seven = report["candidates"]
    assert (echo["label"], echo["successes"], echo["n"]) == ("echo-dep", 7, 10)
    assert (seven["label"], seven["successes"], seven["n"]) == ("seven-dep", 3, 10)
    assert (echo["ci_low"], echo["ci_high"]) == pytest.approx(wilson(7, 10))
    pair = report["paired"][0]
    assert pair["only_a"] == [f"case-{i}" for i in range(1, 7)]
    assert pair["only_b"] == ["case-7", "case-8"]
    assert pair["p_value"] == pytest.approx(mcnemar_exact(6, 2))
    assert echo["by_tag"] == {"even": [4, 5], "odd": [3, 5]}

    # Every result is in the ledger's database, priced from the usage the upstream reported,
    # and joins the ledger's own record of the call.
    run_id = report["run_id"]
    stored = rows(
        db,
        "SELECT e.candidate, e.case_id, e.prompt_tokens, e.completion_tokens, e.cost_usd,"
        " r.route, r.answered_by FROM eval_results e JOIN requests r"
        " ON r.request_id = e.request_id WHERE e.run_id = ?",
        run_id,
    )
    assert len(stored) == 20
    prices = {"eval:echo-dep": (1.0, 2.0), "eval:seven-dep": (0.1, 0.1)}
    for candidate, _, prompt, completion, cost, route, answered_by in stored:
        p_in, p_out = prices[candidate]
        assert cost == pytest.approx((prompt * p_in + completion * p_out) / 1e6)
        assert route == candidate
        assert answered_by == candidate.removeprefix("eval:")
    assert echo["cost_usd"] == pytest.approx(
        sum(c for cand, *_, c, _r, _a in stored if cand == "eval:echo-dep")
    )
    assert echo["cost_per_success_usd"] == pytest.approx(echo["cost_usd"] / 7)
    assert report["pareto_axis"] == "cost"
    assert report["pareto_frontier"] == ["seven-dep", "echo-dep"]
    page = html.read_text()
    assert page.count('<tr class="candidate">') == 2
    assert page.count('class="point') == 2

    # recommend: gated on "Answer N", the echo's drafts are kept on case-0..6 (all right) and
    # the rest escalate to the constant 7 (right on case-7 and case-8): 9 of 10, better than
    # either alone, and the only option that reaches 0.8.
    snippet = tmp_path / "route.yaml"
    rec = hedge(
        "eval", "recommend", run_id, "--min-accuracy", "0.8", "--config", str(cfg),
        "--route-name", "arith", "--out", str(snippet),
    )  # fmt: skip
    assert rec.returncode == 0, rec.stderr
    assert (
        "# Chosen: echo-dep -> seven-dep (gate: regex /Answer \\d+$/): accuracy 0.900 "
        "[95% CI 0.60-0.98] (9/10)" in rec.stdout
    )
    assert "escalated 3/10" in rec.stdout
    assert f"from run {run_id} of suite 'known' (10 cases" in rec.stdout
    merged = yaml.safe_load(cfg.read_text())
    merged["routes"].update(yaml.safe_load(snippet.read_text())["routes"])
    check_path = tmp_path / "merged.yaml"
    check_path.write_text(yaml.safe_dump(merged))
    check = hedge("config", "check", str(check_path))
    assert check.returncode == 0, check.stderr
    assert "route arith: echo-dep -> seven-dep" in check.stdout
    cheap = hedge("eval", "recommend", run_id, "--min-accuracy", "0.2", "--config", str(cfg))
    assert "# Chosen: seven-dep: accuracy 0.300" in cheap.stdout
    assert "routes:\n  known:\n    deployments: [seven-dep]\n" in cheap.stdout
    none = hedge("eval", "recommend", run_id, "--min-accuracy", "0.95", "--config", str(cfg))
    assert none.returncode == 1
    assert "No option meets accuracy >= 0.95" in none.stdout


def test_compare_shows_regressions_case_by_case(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    cfg, _ = setup
    suite = write_suite(tmp_path / "known.jsonl", [(p, e) for p, e, _, _ in KNOWN])
    before = hedge("eval", str(suite), "--routes", "both", "--config", str(cfg), "--no-html")
    after = hedge(
        "eval", str(suite), "--deployments", "seven-dep", "--config", str(cfg), "--no-html"
    )
    assert before.returncode == 0, before.stderr
    assert after.returncode == 0, after.stderr
    out = hedge("eval", "compare", run_id_of(before), run_id_of(after), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    # The route answers with echo-dep first (fail-over order), so it is the echo's figures.
    assert "10 cases in both: accuracy 0.700 -> 0.300; 6 regression(s), 2 improvement(s)" in (
        out.stdout
    )
    assert f"exact McNemar p = {mcnemar_exact(6, 2):.4g}" in out.stdout
    assert "  case-3\n    before: 'echo: What is 3 + 1? Answer 4'" in out.stdout
    assert "after:  '7'  [expected 4, the answer's last number is 7]" in out.stdout
    gate = hedge(
        "eval", "compare", run_id_of(before), run_id_of(after), "--config", str(cfg),
        "--fail-on-regression",
    )  # fmt: skip
    assert gate.returncode == 1


def test_unpriced_deployments_have_unknown_cost(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    cfg, _ = setup
    suite = write_suite(tmp_path / "known.jsonl", [(p, e) for p, e, _, _ in KNOWN[:3]])
    out = hedge(
        "eval", str(suite), "--deployments", "unpriced-dep,seven-dep", "--config", str(cfg),
        "--no-html", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    unpriced, seven = json.loads(out.stdout)["candidates"]
    assert unpriced["cost_usd"] is None
    assert seven["cost_usd"] > 0
    assert json.loads(out.stdout)["pareto_axis"] == "latency"


def test_killed_run_resumes_without_running_a_case_twice(
    tmp_path: Path, setup: tuple[Path, Path], fake: FakeOpenAI
) -> None:
    cfg, db = setup
    cases = [(f"Item {i}: what is {i} + {i}? Answer {2 * i}", 2 * i) for i in range(8)]
    suite = write_suite(tmp_path / "slow.jsonl", cases)
    args = [
        *HEDGE, "eval", str(suite), "--deployments", "slow-dep", "--config", str(cfg),
        "--run-id", "killme", "--concurrency", "1", "--no-html",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    stored: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        if db.exists():
            try:
                stored = rows(db, "SELECT case_id FROM eval_results WHERE run_id = 'killme'")
            except sqlite3.OperationalError:
                stored = []  # the tables are being created
        if len(stored) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = {r[0] for r in rows(db, "SELECT case_id FROM eval_results WHERE run_id = 'killme'")}
    assert 3 <= len(before) < 8, "the run should have been killed part way"
    hits_at_kill = {f"Item {i}:": len(fake.hits_with(f"Item {i}:")) for i in range(8)}

    out = hedge("eval", "--resume", "killme", "--config", str(cfg), "--no-html")
    assert out.returncode == 0, out.stderr
    assert "resuming run killme" in out.stderr
    after = rows(db, "SELECT case_id, passed FROM eval_results WHERE run_id = 'killme'")
    assert sorted(c for c, _ in after) == [f"case-{i}" for i in range(8)]
    assert all(passed for _, passed in after)
    for i in range(8):
        marker = f"Item {i}:"
        hits = len(fake.hits_with(marker))
        if f"case-{i}" in before:
            assert hits == hits_at_kill[marker] == 1, f"case-{i} was run again"
        else:
            # Not stored at the kill: sent once now (twice if it was in flight then).
            assert hits - hits_at_kill[marker] == 1
            assert hits <= 2
    # Running again under the same id continues the same run: nothing is left to do.
    total = sum(len(fake.hits_with(f"Item {i}:")) for i in range(8))
    again = hedge(
        "eval", str(suite), "--deployments", "slow-dep", "--config", str(cfg),
        "--run-id", "killme", "--no-html",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "resuming run killme" in again.stderr
    assert sum(len(fake.hits_with(f"Item {i}:")) for i in range(8)) == total
    assert len(rows(db, "SELECT 1 FROM eval_results WHERE run_id = 'killme'")) == 8


def test_failed_requests_are_stored_as_errors_and_retried_on_resume(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    cfg, db = setup
    suite = write_suite(tmp_path / "known.jsonl", [(p, e) for p, e, _, _ in KNOWN[:3]])
    args = ["--config", str(cfg), "--no-html", "--json"]
    down = hedge(
        "eval", str(suite), "--deployments", "flaky-dep", "--run-id", "flaky", "--retries", "0",
        *args,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    (row,) = json.loads(down.stdout)["candidates"]
    assert (row["n"], row["errors"], row["successes"]) == (3, 3, 0)
    errors = rows(db, "SELECT status, error, request_id FROM eval_results WHERE run_id = 'flaky'")
    assert all(status == "error" and "502" in error and rid for status, error, rid in errors)
    # Errors count as finished: a plain resume leaves them; --retry-errors sends them again,
    # and the runner's own retries (with backoff) wait out the rest of the outage.
    kept = hedge("eval", "--resume", "flaky", *args)
    assert json.loads(kept.stdout)["candidates"][0]["errors"] == 3
    healed = hedge("eval", "--resume", "flaky", "--retry-errors", "--retries", "6", *args)
    assert healed.returncode == 0, healed.stderr
    (row,) = json.loads(healed.stdout)["candidates"]
    assert (row["n"], row["errors"], row["successes"]) == (3, 0, 3), rows(
        db, "SELECT error FROM eval_results WHERE run_id = 'flaky'"
    )


def test_judge_scorer_grades_through_a_route(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    cfg, db = setup
    suite = tmp_path / "judged.jsonl"
    suite.write_text(
        "---\nname: judged\n"
        "scorers: [{kind: judge, route: judge, rubric: 'Is it polite?', threshold: 0.75}]\n---\n"
        + "".join(
            json.dumps({"id": f"j{i}", "prompt": f"Greet me {i}", "tags": [t]}) + "\n"
            for i, t in enumerate(["formal", "casual", "formal"])
        )
    )
    out = hedge(
        "eval", str(suite), "--deployments", "seven-dep", "--tags", "formal", "--config",
        str(cfg), "--no-html", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["cases"] == 2  # --tags formal
    graded = rows(
        db, "SELECT case_id, passed, score, reason FROM eval_results WHERE run_id = ?",
        report["run_id"],
    )  # fmt: skip
    assert sorted(r[0] for r in graded) == ["j0", "j2"]
    for _, passed, score, reason in graded:
        assert passed == 1
        assert score == pytest.approx(0.8)
        assert "the judge 'judge' scored 0.80 (threshold 0.75)" in reason
    # The judge's calls went through the gateway too: its route is in the ledger.
    assert rows(db, "SELECT COUNT(*) FROM requests WHERE route = 'judge'") == [(2,)]


def test_bad_input_is_explained_not_a_traceback(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    cfg, _ = setup
    bad_suite = tmp_path / "bad.jsonl"
    bad_suite.write_text('---\nname: bad\nscorers: [{kind: numeric}]\n---\n{"id": "a"}\n')
    cases = [
        (["eval", "arithmetc", "--routes", "both"], "no built-in suite of that name"),
        ([ "eval", str(bad_suite), "--routes", "both"], f"{bad_suite}: 1 problem"),
        (["eval", "arithmetic", "--routes", "nope"], "--routes: unknown route 'nope'"),
        (["eval", "arithmetic"], "Fix: pass --routes a,b or --deployments d1,d2"),
        (["eval", "report", "no-such-run"], "no evaluation run 'no-such-run'"),
        (["eval", "recommend", "x"], "recommend needs --min-accuracy"),
        (["eval", "compare", "x", "--min-accuracy", "0.5"], "--min-accuracy does not apply"),
    ]  # fmt: skip
    for args, expected in cases:
        out = hedge(*args, "--config", str(cfg))
        assert out.returncode == 2, (args, out.stderr)
        assert expected in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    down = hedge("eval", "arithmetic", "--routes", "both", "--url", "http://127.0.0.1:9",
                 "--config", str(cfg), "--no-html")  # fmt: skip
    assert down.returncode == 1
    assert "no gateway answers at http://127.0.0.1:9" in down.stderr


# ---- the embedded model, through a running `hedge serve` ---------------------------------------

EMBEDDED_CONFIG = """\
ledger: {{path: {db}, flush_interval_s: 0.1}}
deployments:
  smollm2-local:
    kind: embedded
    model: smollm2-135m-instruct
    bundled: smollm2-135m-instruct
routes:
  smollm2: {{deployments: [smollm2-local], accept_single_point_of_failure: true}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path, Path]]:
    tmp = tmp_path_factory.mktemp("eval-embedded")
    db = tmp / "ledger.db"
    cfg = tmp / "hedge.yaml"
    cfg.write_text(EMBEDDED_CONFIG.format(db=db))
    with run_gateway(cfg.read_text(), tmp) as gw:
        yield gw, cfg, db


def test_builtin_suite_on_the_embedded_model_through_the_server(
    tmp_path: Path, served: tuple[Gateway, Path, Path]
) -> None:
    gw, cfg, db = served
    html = tmp_path / "report.html"
    out = hedge(
        "eval", "arithmetic", "--routes", "smollm2", "--url", gw.url, "--config", str(cfg),
        "--limit", "3", "--html", str(html), "--progress",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "arithmetic [########################] 3/3 100%" in out.stderr
    run_id = run_id_of(out)
    assert f"run {run_id}: suite 'arithmetic' (3 cases, builtin:arithmetic), url on {gw.url}" in (
        out.stdout
    )
    stored = rows(
        db,
        "SELECT case_id, request_id, deployment, output, latency_ms, completion_tokens"
        " FROM eval_results WHERE run_id = ? ORDER BY case_id",
        run_id,
    )
    assert [r[0] for r in stored] == ["bus", "pencils", "shelf"]
    for _, request_id, deployment, output, latency_ms, completion in stored:
        assert request_id.startswith("chatcmpl-")
        assert deployment == "smollm2-local"
        assert output.strip()
        assert latency_ms > 0
        assert 0 < completion <= 128  # the suite's max_tokens
    # The server's ledger (same database) recorded each call under the same request id.
    ids = [r[1] for r in stored]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = rows(
            db,
            f"SELECT request_id FROM requests WHERE request_id IN ({','.join('?' * len(ids))})",
            *ids,
        )
        if len(found) == 3:
            break
        time.sleep(0.1)
    assert len(found) == 3
    assert_report_renders(html, tmp_path, candidates=1)


def test_in_process_run_of_a_deployment(tmp_path: Path, served: tuple[Gateway, Path, Path]) -> None:
    _, cfg, db = served
    out = hedge(
        "eval", "json-extraction", "--deployments", "smollm2-local", "--config", str(cfg),
        "--limit", "2", "--no-html", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (row,) = report["candidates"]
    assert (row["label"], row["n"], row["errors"]) == ("smollm2-local", 2, 0)
    assert row["cost_usd"] is None  # no prices configured: unknown, not free
    outputs = rows(db, "SELECT output FROM eval_results WHERE run_id = ?", report["run_id"])
    # llama.cpp constrains the answer to the request's JSON Schema.
    assert all(isinstance(json.loads(o), dict) for (o,) in outputs)


def assert_report_renders(html: Path, tmp_path: Path, candidates: int) -> None:
    """Open the report in headless Chromium: the DOM it builds has the plot and the tables,
    and it paints a page."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed; run scripts/system-deps.sh")
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--dump-dom", html.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert '<svg id="pareto-plot"' in page
    assert page.count('class="point') == candidates
    assert '<table id="summary">' in page
    assert page.count('<tr class="candidate">') == candidates
    assert '<table id="per-tag">' in page
    assert '<table id="cases">' in page
    shot = tmp_path / "report.png"
    painted = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1100,900", html.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert painted.returncode == 0, painted.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a painted page, not an empty canvas
