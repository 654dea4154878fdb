"""Turn a run into a route: the option that meets an accuracy floor at the lowest cost per
successful outcome, written as a hedge.yaml snippet with its evidence in comments.

Options are every candidate alone and, where the suite names serving-time `gates`, every
two-stage cascade "A, gated; else B" of two plain candidates. A cascade is evaluated from the
stored answers, not simulated: on each case the gate runs on A's stored answer (the same
`hedge.validators` check a live cascade runs, with the case's own request, e.g. its
response_format schema); if it accepts, the case scores as A's answer and costs A's call,
otherwise as B's answer at the cost of both calls. That is what the cascade would have done on
these cases, as long as each candidate answers the same way twice (suites default to
temperature 0). Gates that need the expected answer (the suite's Python tests) or another
model (a judge) are not offered: they could not run at serving time, or not from the record.

Options are compared on the cases every candidate answered. The ranking is by cost per
successful outcome when every eligible option's cost is known; otherwise by latency per
successful outcome, and the snippet says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from hedge import validators
from hedge.evaluation.figures import Axis
from hedge.evaluation.report_text import date, usd
from hedge.evaluation.scorers import as_response
from hedge.evaluation.stats import wilson
from hedge.evaluation.store import Candidate, CaseResult, RunInfo
from hedge.evaluation.suite import Suite
from hedge.types import ChatRequest


@dataclass(frozen=True, slots=True)
class Option:
    kind: Literal["single", "cascade"]
    first: Candidate
    second: Candidate | None
    gate: validators.Validator | None
    n: int
    successes: int
    cost_usd: float | None
    latency_s: float
    escalated: int = 0  # cascades: cases the gate sent to the second stage

    @property
    def name(self) -> str:
        if self.second is None or self.gate is None:
            return self.first.label
        return f"{self.first.label} -> {self.second.label} (gate: {gate_text(self.gate)})"

    @property
    def accuracy(self) -> float:
        return self.successes / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.successes, self.n)

    @property
    def cost_per_success(self) -> float | None:
        return (
            None if self.cost_usd is None or not self.successes else self.cost_usd / self.successes
        )

    @property
    def latency_per_success_s(self) -> float | None:
        return self.latency_s / self.successes if self.successes else None

    def per_success(self, basis: Axis) -> float:
        value = self.cost_per_success if basis == "cost" else self.latency_per_success_s
        return math.inf if value is None else value


@dataclass(frozen=True, slots=True)
class Recommendation:
    floor: float
    lower_bound: bool  # the floor applies to the interval's lower bound, not the estimate
    basis: Axis
    cases: int  # the cases every candidate answered
    ranked: list[Option]  # eligible options, best first
    below: list[Option]  # options under the floor

    @property
    def chosen(self) -> Option | None:
        return self.ranked[0] if self.ranked else None


def gate_text(gate: validators.Validator) -> str:
    if isinstance(gate, validators.RegexCheck):
        return f"regex /{gate.pattern}/" + ("" if gate.must_match else " must not match")
    if isinstance(gate, validators.LengthCheck):
        return f"length {gate.min_chars}-{gate.max_chars or ''}"
    return gate.kind


def gate_accepts(gate: validators.Validator, request: ChatRequest, output: str | None) -> bool:
    """The gate's verdict on a stored answer, as the live cascade would reach it. A failed
    call (no answer) escalates, as it does in a cascade."""
    if output is None:
        return False
    if isinstance(gate, validators.JsonSchemaCheck):
        schema = validators.effective_schema(gate, request)
        return validators.check_json_schema(output, schema).accepted
    if isinstance(gate, validators.RegexCheck):
        return validators.check_regex(output, gate.pattern, must_match=gate.must_match).accepted
    if isinstance(gate, validators.LengthCheck):
        return validators.check_length(output, gate.min_chars, gate.max_chars).accepted
    if isinstance(gate, validators.RefusalCheck):
        return validators.check_refusal(as_response(output)).accepted
    raise ValueError(f"a {gate.kind} gate cannot be computed from stored answers")


def _plain(c: Candidate) -> bool:
    return c.route is not None and "cascade" not in c.route and bool(c.route.get("deployments"))


def _latency(r: CaseResult) -> float:
    return (r.latency_ms or 0.0) / 1000


def _billed(r: CaseResult) -> float | None:
    """What a call cost: unknown for an answer without prices; a failed call is billed only
    when its usage was reported (as in the run's figures)."""
    return r.cost_usd if r.status == "ok" else r.cost_usd or 0.0


def _sum_cost(costs: Sequence[float | None]) -> float | None:
    return None if any(c is None for c in costs) else math.fsum(c or 0.0 for c in costs)


def options(run: RunInfo, suite: Suite, results: Sequence[CaseResult]) -> tuple[list[Option], int]:
    """Every option, over the cases every candidate answered (and how many those are)."""
    got = {(r.candidate, r.case_id): r for r in results}
    cases = [
        case_id for case_id in run.case_ids if all((c.name, case_id) in got for c in run.candidates)
    ]
    out: list[Option] = []
    for c in run.candidates:
        rows = [got[(c.name, i)] for i in cases]
        out.append(
            Option(
                "single",
                c,
                None,
                None,
                len(rows),
                sum(r.passed for r in rows),
                _sum_cost([_billed(r) for r in rows]),
                math.fsum(_latency(r) for r in rows),
            )
        )
    plain = [c for c in run.candidates if _plain(c)]
    out += [
        _cascade(a, b, gate, suite, cases, got)
        for gate in suite.header.gates
        for a in plain
        for b in plain
        if a is not b
    ]
    return out, len(cases)


def _cascade(
    a: Candidate,
    b: Candidate,
    gate: validators.Validator,
    suite: Suite,
    cases: Sequence[str],
    got: dict[tuple[str, str], CaseResult],
) -> Option:
    """ "A, gated; else B" on each case, from both candidates' stored answers."""
    successes = escalated = 0
    costs: list[float | None] = []
    latency = 0.0
    for case_id in cases:
        ra, rb = got[(a.name, case_id)], got[(b.name, case_id)]
        request = suite.request(suite.case(case_id), a.name)
        if gate_accepts(gate, request, ra.output if ra.status == "ok" else None):
            successes += ra.passed
            costs.append(_billed(ra))
            latency += _latency(ra)
        else:
            escalated += 1
            successes += rb.passed
            costs.append(_sum_cost([_billed(ra), _billed(rb)]))
            latency += _latency(ra) + _latency(rb)
    return Option(
        "cascade", a, b, gate, len(cases), successes, _sum_cost(costs), latency, escalated
    )


def recommend(
    run: RunInfo,
    suite: Suite,
    results: Sequence[CaseResult],
    min_accuracy: float,
    *,
    lower_bound: bool = False,
) -> Recommendation:
    every, cases = options(run, suite, results)

    def meets(o: Option) -> bool:
        value = o.ci[0] if lower_bound else o.accuracy
        return o.n > 0 and value >= min_accuracy - 1e-12

    eligible = [o for o in every if meets(o)]
    judged = eligible or every
    basis: Axis = "cost" if judged and all(o.cost_usd is not None for o in judged) else "latency"
    eligible.sort(key=lambda o: (o.per_success(basis), -o.accuracy, o.kind != "single", o.name))
    below = sorted((o for o in every if not meets(o)), key=lambda o: (-o.accuracy, o.name))
    return Recommendation(min_accuracy, lower_bound, basis, cases, eligible, below)


# ---- the snippet ---------------------------------------------------------------------------


def route_config(option: Option) -> dict[str, Any] | None:
    """The route's hedge.yaml settings, or None when the candidate's configuration is not
    known (a route of a remote gateway that the local hedge.yaml does not define)."""
    if option.second is None or option.gate is None:
        if option.first.route is None:
            return None
        # The settings that change how it is served; the description was the old route's.
        return {k: v for k, v in option.first.route.items() if k != "description"}
    assert option.first.route is not None and option.second.route is not None
    gate = option.gate.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    route: dict[str, Any] = {
        "cascade": {
            "stages": [
                {"deployments": list(option.first.route["deployments"]), "validators": [gate]},
                {"deployments": list(option.second.route["deployments"])},
            ]
        }
    }
    policies = [
        *option.first.route.get("policies", []),
        *option.second.route.get("policies", []),
    ]
    if policies:
        route["policies"] = list(dict.fromkeys(policies))
    return route


def evidence(o: Option, basis: Axis) -> str:
    low, high = o.ci
    per = (
        f"cost/success {usd(o.cost_per_success) if o.cost_usd is not None else 'unknown'}"
        if basis == "cost"
        else f"latency/success {_s(o.latency_per_success_s)}, cost "
        + (usd(o.cost_usd) if o.cost_usd is not None else "unknown (no prices)")
    )
    line = (
        f"{o.name}: accuracy {o.accuracy:.3f} [95% CI {low:.2f}-{high:.2f}] "
        f"({o.successes}/{o.n}), {per}"
    )
    if o.kind == "cascade":
        line += f", escalated {o.escalated}/{o.n}"
    return line


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def snippet(
    rec: Recommendation, run: RunInfo, route_name: str, command: str, now: float | None = None
) -> str:
    """The recommendation as hedge.yaml text: comments with the evidence, then the route (or,
    when nothing meets the floor, comments only)."""
    today = time.strftime("%Y-%m-%d", time.localtime(time.time() if now is None else now))
    floor = f"{'the 95% CI lower bound of ' if rec.lower_bound else ''}accuracy >= {rec.floor:g}"
    ranking = (
        "cost per successful outcome"
        if rec.basis == "cost"
        else "latency per successful outcome (some cost is unknown: no prices in hedge.yaml)"
    )
    lines = [
        f"# {command}",
        f"# {today}: from run {run.run_id} of suite '{run.suite}' ({rec.cases} cases, suite "
        f"sha256 {run.suite_sha256[:12]}), {run.mode} on {run.target}, run {date(run.created)}.",
        f"# Rule: {floor}, then the lowest {ranking}.",
    ]
    chosen = rec.chosen
    if chosen is None:
        lines.append(f"# No option meets {floor}. The best were:")
        lines += [f"#   {evidence(o, rec.basis)}" for o in rec.below[:5]]
        return "\n".join(lines) + "\n"
    lines.append(f"# Chosen: {evidence(chosen, rec.basis)}")
    if chosen.kind == "cascade":
        lines.append(
            "# The cascade's figures come from both candidates' stored answers, the gate run on "
            "the first one's; they hold if answers repeat (temperature 0)."
        )
    others = rec.ranked[1:6]
    if others:
        lines.append("# Also meeting the floor (more per success):")
        lines += [f"#   {evidence(o, rec.basis)}" for o in others]
    if rec.below:
        lines.append("# Below the floor:")
        lines += [f"#   {evidence(o, rec.basis)}" for o in rec.below[:5]]
    config = route_config(chosen)
    if config is None:
        lines.append(
            f"# Use the route '{chosen.first.name}' of the gateway: its configuration is not in "
            "the local hedge.yaml, so no snippet can be written."
        )
        return "\n".join(lines) + "\n"
    config["description"] = f"chosen by hedge eval recommend from run {run.run_id}"
    body = yaml.safe_dump(
        {"routes": {route_name: config}}, sort_keys=False, default_flow_style=None, width=100
    )
    return "\n".join(lines) + "\n" + body
