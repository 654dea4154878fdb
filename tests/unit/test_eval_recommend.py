"""recommend on hand-made results: singles and gated cascades, the floor, the ranking, and a
snippet that hedge's own config loader accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from hedge import config
from hedge.evaluation.recommend import gate_accepts, options, recommend, snippet
from hedge.evaluation.runner import pending
from hedge.evaluation.store import Candidate, CaseResult, RunInfo
from hedge.evaluation.suite import Suite, parse
from hedge.types import ChatRequest
from hedge.validators import JsonSchemaCheck, LengthCheck, RefusalCheck, RegexCheck

SUITE_TEXT = (
    "---\nname: tiny\nscorers: [{kind: numeric}]\n"
    'gates: [{kind: regex, pattern: "^\\\\d+$"}]\n---\n'
    + "".join(
        json.dumps({"id": f"c{i}", "prompt": f"q{i}", "expected": i}) + "\n" for i in range(10)
    )
)
CHEAP = Candidate("cheap", "cheap", "route", {"deployments": ["cheap-dep"]})
STRONG = Candidate("strong", "strong", "route", {"deployments": ["strong-dep"], "policies": ["eu"]})


def suite() -> Suite:
    return parse(SUITE_TEXT, "tiny.jsonl")


def run_info(*candidates: Candidate) -> RunInfo:
    s = suite()
    return RunInfo(
        run_id="tiny-1", created=1_800_000_000.0, suite="tiny", suite_source="tiny.jsonl",
        suite_sha256=s.sha256, suite_text=s.text, mode="in-process", target="hedge.yaml",
        candidates=candidates or (CHEAP, STRONG), case_ids=tuple(c.id for c in s.cases),
    )  # fmt: skip


def results(strong_cost: float | None = 0.01) -> list[CaseResult]:
    """cheap: answers a bare number on c0-c5 (right on c0-c4), rambles on c6-c9 (wrong).
    strong: a bare number everywhere, right on c0-c8."""
    out = []
    for i in range(10):
        out.append(
            CaseResult(
                "cheap", f"c{i}", passed=i < 5, reason="", output="5" if i < 6 else "I think so",
                latency_ms=100.0, cost_usd=0.001,
            )
        )  # fmt: skip
        out.append(
            CaseResult(
                "strong", f"c{i}", passed=i < 9, reason="", output="7", latency_ms=1000.0,
                cost_usd=strong_cost,
            )
        )  # fmt: skip
    return out


def test_options_singles_and_cascades_from_stored_answers() -> None:
    found, cases = options(run_info(), suite(), results())
    assert cases == 10
    by_name = {o.name: o for o in found}
    assert set(by_name) == {
        "cheap",
        "strong",
        "cheap -> strong (gate: regex /^\\d+$/)",
        "strong -> cheap (gate: regex /^\\d+$/)",
    }
    cheap = by_name["cheap"]
    assert (cheap.successes, cheap.cost_usd) == (5, pytest.approx(0.01))
    assert cheap.cost_per_success == pytest.approx(0.002)
    cascade = by_name["cheap -> strong (gate: regex /^\\d+$/)"]
    # c0-c5 accepted (cheap's answers: 5 right), c6-c9 escalated (strong right on c6-c8).
    assert (cascade.successes, cascade.escalated) == (8, 4)
    assert cascade.cost_usd == pytest.approx(10 * 0.001 + 4 * 0.01)
    assert cascade.cost_per_success == pytest.approx(0.05 / 8)
    assert cascade.latency_s == pytest.approx(10 * 0.1 + 4 * 1.0)
    never = by_name["strong -> cheap (gate: regex /^\\d+$/)"]
    assert (never.successes, never.escalated) == (9, 0)


@pytest.mark.parametrize(
    ("floor", "lower_bound", "chosen"),
    [
        (0.4, False, "cheap"),
        (0.75, False, "cheap -> strong (gate: regex /^\\d+$/)"),
        # strong alone and "strong, gated, else cheap" cost the same; the simpler one wins.
        (0.85, False, "strong"),
        (0.95, False, None),
        # Lower bounds: 8/10 -> 0.49, 9/10 -> 0.60.
        (0.5, True, "strong"),
        (0.75, True, None),
    ],
)
def test_the_floor_then_the_lowest_cost_per_success(
    floor: float, lower_bound: bool, chosen: str | None
) -> None:
    rec = recommend(run_info(), suite(), results(), floor, lower_bound=lower_bound)
    assert rec.basis == "cost"
    assert (rec.chosen.name if rec.chosen else None) == chosen
    assert all(o.accuracy < floor or lower_bound for o in rec.below)


def test_unknown_prices_rank_by_latency_per_success_instead() -> None:
    rec = recommend(run_info(), suite(), results(strong_cost=None), 0.75)
    assert rec.basis == "latency"
    assert rec.chosen is not None
    # cheap -> strong: 5 s for 8 successes (0.625 s each) beats 10 s for 9 (1.11 s each).
    assert rec.chosen.kind == "cascade"
    assert rec.chosen.latency_per_success_s == pytest.approx(5 / 8)
    assert rec.chosen.cost_usd is None


def test_options_use_only_cases_every_candidate_answered() -> None:
    partial = [r for r in results() if not (r.candidate == "strong" and r.case_id == "c9")]
    found, cases = options(run_info(), suite(), partial)
    assert cases == 9
    assert all(o.n == 9 for o in found)


def test_candidates_without_a_plain_route_are_offered_alone_only() -> None:
    remote = Candidate("far", "far", "route", None)
    cascade_route = Candidate(
        "casc", "casc", "route", {"cascade": {"stages": [{"deployments": ["x"]}]}}
    )
    rows = [
        CaseResult(c, f"c{i}", True, "", output="1")
        for c in ("far", "casc", "cheap")
        for i in range(10)
    ]
    found, _ = options(run_info(remote, cascade_route, CHEAP), suite(), rows)
    assert sorted(o.name for o in found) == ["casc", "cheap", "far"]


CONFIG = """\
deployments:
  cheap-dep: {kind: openai_compat, base_url: "http://127.0.0.1:9/v1", upstream_model: a,
              hosting: self-hosted}
  strong-dep: {kind: openai_compat, base_url: "http://127.0.0.1:9/v1", upstream_model: b,
               hosting: hosted}
policies:
  eu: {}
routes:
  existing: {deployments: [cheap-dep]}
"""


def merged(snippet_text: str) -> config.Settings:
    base: dict[str, Any] = yaml.safe_load(CONFIG)
    base["routes"].update(yaml.safe_load(snippet_text)["routes"])
    return config.parse(yaml.safe_dump(base), "merged.yaml", environ={})


def test_a_cascade_snippet_loads_in_hedge_config_with_its_evidence() -> None:
    rec = recommend(run_info(), suite(), results(), 0.75)
    text = snippet(rec, run_info(), "tiny-route", "hedge eval recommend tiny-1", now=1.8e9)
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments[0] == "# hedge eval recommend tiny-1"
    assert any("from run tiny-1 of suite 'tiny' (10 cases" in c for c in comments)
    assert any(
        "Chosen: cheap -> strong (gate: regex /^\\d+$/): accuracy 0.800 [95% CI 0.49-0.94] "
        "(8/10), cost/success $0.006250, escalated 4/10" in c
        for c in comments
    )
    assert any("Below the floor" in c for c in comments)
    settings = merged(text)
    route = settings.config.routes["tiny-route"]
    assert route.cascade is not None
    first, second = route.cascade.stages
    assert first.deployments == ["cheap-dep"]
    assert first.validators == [RegexCheck(kind="regex", pattern="^\\d+$")]
    assert second.deployments == ["strong-dep"]
    assert route.policies == ["eu"]  # the strong stage's policies still apply


def test_a_single_snippet_and_a_refusal_without_snippet() -> None:
    rec = recommend(run_info(), suite(), results(), 0.4)
    text = snippet(rec, run_info(), "tiny-route", "cmd", now=1.8e9)
    assert merged(text).config.routes["tiny-route"].deployments == ["cheap-dep"]
    none = recommend(run_info(), suite(), results(), 0.99)
    text = snippet(none, run_info(), "tiny-route", "cmd", now=1.8e9)
    assert "routes:" not in text
    assert "No option meets accuracy >= 0.99" in text
    assert all(line.startswith("#") for line in text.splitlines())


def request(**extra: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "q"}], **extra}
    )


def test_gates_are_the_serving_time_validators() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    gate = JsonSchemaCheck(kind="json_schema")
    assert gate_accepts(gate, request(response_format=fmt), '{"n": 3}')
    assert not gate_accepts(gate, request(response_format=fmt), '{"n": "3"}')
    assert gate_accepts(gate, request(), '"any JSON"')
    assert not gate_accepts(gate, request(), None)  # a failed call escalates
    assert not gate_accepts(RefusalCheck(kind="refusal"), request(), "I'm sorry, but I can't.")
    assert gate_accepts(RefusalCheck(kind="refusal"), request(), "42")
    assert not gate_accepts(LengthCheck(kind="length", min_chars=3), request(), "ab")


def test_pending_skips_what_is_stored() -> None:
    run = run_info()
    stored = [
        CaseResult("cheap", "c0", True, ""),
        CaseResult("strong", "c0", False, "", status="error", error="502"),
    ]
    todo = pending(run, suite(), stored, retry_errors=False)
    assert len(todo) == 18
    assert ("cheap", "c0") not in {(c.name, k.id) for c, k in todo}
    assert [(c.name, k.id) for c, k in todo][:2] == [("cheap", "c1"), ("strong", "c1")]
    again = pending(run, suite(), stored, retry_errors=True)
    assert (again[0][0].name, again[0][1].id) == ("strong", "c0")
    assert len(again) == 19
