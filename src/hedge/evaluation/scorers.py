"""Scorers: is one answer right for one case?

A suite's header names its scorers; a case passes when every one of them passes. The checks are
the cascade validators' own (`hedge.validators`): the same number and letter extraction, the same
JSON parsing and schema check, the same sandbox for Python tests and the same judge prompt, so an
evaluation measures exactly what a cascade gate would see. What is added here is the comparison
with the case's expected answer, which no serving-time validator has.

Pure scorers are plain functions of (spec, case, answer); the Python-tests scorer runs the
sandbox and the judge asks a model, so `score` is async.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hedge import validators
from hedge.types import ChatRequest, ChatResponse, Choice, Usage

if TYPE_CHECKING:
    from hedge.evaluation.suite import Case


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ExactScorer(_Spec):
    """The answer, stripped of surrounding whitespace, is the expected text."""

    kind: Literal["exact"]
    case_sensitive: bool = True


class NormalizedScorer(_Spec):
    """Equal after `hedge.validators.normalize(..., "text")`: casefolded, whitespace collapsed,
    trailing punctuation dropped."""

    kind: Literal["normalized"]


class ChoiceScorer(_Spec):
    """The one multiple-choice letter the answer commits to (`validators.choice_letter`) is the
    expected letter. An answer naming several letters commits to none."""

    kind: Literal["choice"]


class NumericScorer(_Spec):
    """The answer's last number (`validators.final_number`) is within `tolerance` (absolute) or
    `relative` x |expected| of the expected number."""

    kind: Literal["numeric"]
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    relative: Annotated[float, Field(ge=0)] = 0.0


class RegexScorer(_Spec):
    """The answer matches `pattern` (`re.search`), or the case's `expected` as a pattern."""

    kind: Literal["regex"]
    pattern: str | None = None
    must_match: bool = True

    @model_validator(mode="after")
    def _valid_pattern(self) -> RegexScorer:
        if self.pattern is not None and (problem := regex_problem(self.pattern)) is not None:
            raise ValueError(f"'pattern' is not a valid regular expression: {problem}")
        return self


class JsonSchemaScorer(_Spec):
    """The answer is JSON valid against `schema` (default: the case's response_format schema;
    any JSON value without one), and, when the case has an `expected` value, equal to it.
    Strings are compared normalized (casefolded, whitespace collapsed, trailing punctuation
    dropped); numbers by value; objects whatever their key order."""

    kind: Literal["json_schema"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _valid_schema(self) -> JsonSchemaScorer:
        if self.schema_ is not None and (problem := validators.schema_problem(self.schema_)):
            raise ValueError(f"'schema' is not a valid JSON Schema: {problem}")
        return self


class PythonTestsScorer(_Spec):
    """The answer's code passes the case's `tests` in hedge's sandbox (the `python_tests`
    validator: a subprocess with time and memory limits and an audit hook)."""

    kind: Literal["python_tests"]
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    memory_mb: Annotated[int, Field(ge=16, le=4096)] = 256


class JudgeScorer(_Spec):
    """A model grades the answer against a rubric (the case's `rubric`, else this one) with
    hedge's judge prompt, through the gateway's route `route`; passes at `threshold`."""

    kind: Literal["judge"]
    route: str
    rubric: str | None = None
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.7
    reasoning: Literal["none", "low", "medium", "high"] = "none"


ScorerSpec = Annotated[
    ExactScorer
    | NormalizedScorer
    | ChoiceScorer
    | NumericScorer
    | RegexScorer
    | JsonSchemaScorer
    | PythonTestsScorer
    | JudgeScorer,
    Field(discriminator="kind"),
]
SCORER_KINDS = (
    "exact",
    "normalized",
    "choice",
    "numeric",
    "regex",
    "json_schema",
    "python_tests",
    "judge",
)


@dataclass(frozen=True, slots=True)
class Score:
    passed: bool
    reason: str
    score: float | None = None  # a judge's grade in [0, 1]


# A judge call through the gateway: (route, grading request) -> the judge's answer.
Ask = Callable[[str, ChatRequest], Awaitable[ChatResponse]]


def regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as e:
        return str(e)
    return None


def expectation_problem(spec: ScorerSpec, case: Case) -> tuple[str, str] | None:
    """What the case lacks for this scorer, as (field, message), or None. Checked when the
    suite is loaded, so a bad case is reported before anything runs."""
    expected = case.expected
    if isinstance(spec, ExactScorer | NormalizedScorer):
        if not isinstance(expected, str | int | float) or isinstance(expected, bool):
            return "expected", f"the {spec.kind} scorer needs 'expected' as a string"
    elif isinstance(spec, ChoiceScorer):
        if not (isinstance(expected, str) and re.fullmatch(r"[A-Ea-e]", expected.strip())):
            return "expected", "the choice scorer needs 'expected' as one letter from A to E"
    elif isinstance(spec, NumericScorer):
        if expected_number(expected) is None:
            return "expected", "the numeric scorer needs 'expected' as a number (or a numeral)"
    elif isinstance(spec, RegexScorer):
        if spec.pattern is None:
            if not isinstance(expected, str):
                return "expected", (
                    "the regex scorer has no 'pattern', so it needs 'expected' as a pattern"
                )
            if (problem := regex_problem(expected)) is not None:
                return "expected", f"not a valid regular expression: {problem}"
    elif isinstance(spec, PythonTestsScorer):
        if not (case.tests or "").strip():
            return "tests", "the python_tests scorer needs 'tests' (Python asserts) in every case"
    elif isinstance(spec, JudgeScorer) and spec.rubric is None and not (case.rubric or "").strip():
        return "rubric", "the judge scorer has no 'rubric', so every case needs one"
    return None


def expected_number(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        try:
            number = Decimal(str(value).strip().replace(",", ""))
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


# ---- pure scorers ------------------------------------------------------------------------------


def score_exact(answer: str, expected: str, *, case_sensitive: bool = True) -> Score:
    got, want = answer.strip(), expected.strip()
    if not case_sensitive:
        got, want = got.casefold(), want.casefold()
    if got == want:
        return Score(True, "the answer is the expected text")
    return Score(False, f"expected {_short(want)!r}, got {_short(got)!r}")


def score_normalized(answer: str, expected: str) -> Score:
    got = validators.normalize(answer, "text")
    want = validators.normalize(expected, "text")
    if got is not None and got == want:
        return Score(True, "the normalized answer is the expected text")
    return Score(False, f"expected {_short(want or '')!r}, got {_short(got or '')!r}")


def score_choice(answer: str, expected: str) -> Score:
    got = validators.choice_letter(answer)
    want = expected.strip().upper()
    if got is None:
        return Score(False, "the answer commits to no single letter")
    if got == want:
        return Score(True, f"the answer is {want}")
    return Score(False, f"expected {want}, the answer is {got}")


def score_numeric(answer: str, expected: object, tolerance: float, relative: float) -> Score:
    want = expected_number(expected)
    if want is None:
        return Score(False, f"the expected value {expected!r} is not a number")
    got_text = validators.final_number(answer)
    if got_text is None:
        return Score(False, "the answer has no number")
    got = Decimal(got_text)
    allowed = max(Decimal(str(tolerance)), Decimal(str(relative)) * abs(want))
    if abs(got - want) <= allowed:
        return Score(True, f"the answer's last number {got_text} is {want}")
    return Score(False, f"expected {want}, the answer's last number is {got_text}")


def score_regex(answer: str, pattern: str, *, must_match: bool = True) -> Score:
    verdict = validators.check_regex(answer, pattern, must_match=must_match)
    return Score(verdict.accepted, verdict.reason)


def score_json(answer: str, schema: dict[str, Any] | None, expected: object) -> Score:
    verdict = validators.check_json_schema(answer, schema)
    if not verdict.accepted:
        return Score(False, verdict.reason)
    if expected is None:
        return Score(True, verdict.reason)
    value = validators.parse_json_answer(answer)  # parses: the check above accepted it
    difference = json_difference(value, expected)
    if difference is None:
        return Score(True, "the answer's JSON is the expected value")
    return Score(False, f"the JSON differs from the expected value {difference}")


def json_difference(got: object, want: object, path: str = "") -> str | None:
    """Where two JSON values differ (a JSON pointer and what each has), or None when equal:
    strings compared normalized, numbers by value, object keys in any order."""
    where = path or "the top level"
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"at {where}: expected an object, got {_kind(got)}"
        missing = sorted(set(want) - set(got))
        if missing:
            return f"at {where}: missing key {missing[0]!r}"
        extra = sorted(set(got) - set(want))
        if extra:
            return f"at {where}: unexpected key {extra[0]!r}"
        for key in want:
            found = json_difference(got[key], want[key], f"{path}/{_escape(key)}")
            if found is not None:
                return found
        return None
    if isinstance(want, list):
        if not isinstance(got, list):
            return f"at {where}: expected an array, got {_kind(got)}"
        if len(got) != len(want):
            return f"at {where}: expected {len(want)} items, got {len(got)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            found = json_difference(g, w, f"{path}/{i}")
            if found is not None:
                return found
        return None
    if isinstance(want, str):
        if isinstance(got, str) and validators.normalize(got, "text") == validators.normalize(
            want, "text"
        ):
            return None
    elif isinstance(want, bool) or want is None:
        if got is want:
            return None
    elif isinstance(want, int | float) and (
        isinstance(got, int | float)
        and not isinstance(got, bool)
        and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    ):
        return None
    return f"at {where}: expected {_short(repr(want))}, got {_short(repr(got))}"


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ---- the dispatcher ----------------------------------------------------------------------------


def as_response(answer: str) -> ChatResponse:
    """An answer text in the shape validators take."""
    return ChatResponse(choices=(Choice(0, answer, "stop"),), usage=Usage(), upstream_model="")


async def score_one(
    spec: ScorerSpec, case: Case, request: ChatRequest, answer: str, ask: Ask | None
) -> Score:
    """Score `answer` to `case` (sent as `request`) with one scorer."""
    expected = case.expected
    if isinstance(spec, ExactScorer):
        return score_exact(answer, str(expected), case_sensitive=spec.case_sensitive)
    if isinstance(spec, NormalizedScorer):
        return score_normalized(answer, str(expected))
    if isinstance(spec, ChoiceScorer):
        return score_choice(answer, str(expected))
    if isinstance(spec, NumericScorer):
        return score_numeric(answer, expected, spec.tolerance, spec.relative)
    if isinstance(spec, RegexScorer):
        return score_regex(answer, spec.pattern or str(expected), must_match=spec.must_match)
    if isinstance(spec, JsonSchemaScorer):
        check = validators.JsonSchemaCheck.model_validate(
            {"kind": "json_schema", "schema": spec.schema_}
        )
        schema = validators.effective_schema(check, request)
        return score_json(answer, None if schema is None else dict(schema), expected)
    if isinstance(spec, PythonTestsScorer):
        tests = validators.PythonTestsCheck(
            kind="python_tests",
            tests=case.tests or "",
            timeout_s=spec.timeout_s,
            memory_mb=spec.memory_mb,
        )
        verdict = await validators.check_python_tests(tests, answer)
        return Score(verdict.accepted, verdict.reason)
    return await _judge(spec, case, request, answer, ask)


async def _judge(
    spec: JudgeScorer, case: Case, request: ChatRequest, answer: str, ask: Ask | None
) -> Score:
    check = validators.JudgeCheck(
        kind="judge",
        deployment=spec.route,  # the judge request's model: here, a route of the gateway
        rubric=case.rubric or spec.rubric or "",
        threshold=spec.threshold,
        reasoning=spec.reasoning,
    )

    ctx = validators.ValidationContext(request=request, ask=ask)
    verdict = await validators.check_judge(check, as_response(answer), ctx)
    return Score(verdict.accepted, verdict.reason, verdict.score)


async def score_case(
    specs: Sequence[ScorerSpec],
    case: Case,
    request: ChatRequest,
    answer: str,
    ask: Ask | None = None,
) -> Score:
    """Every scorer must pass; the reason is the first failure's, or every pass's joined."""
    passes: list[str] = []
    grade: float | None = None
    for spec in specs:
        result = await score_one(spec, case, request, answer, ask)
        if result.score is not None:
            grade = result.score if grade is None else min(grade, result.score)
        if not result.passed:
            return Score(False, result.reason, grade)
        passes.append(result.reason)
    return Score(True, "; ".join(passes), grade)
