"""Suite files: a small YAML header, then one JSON case per line.

    ---
    name: arithmetic
    description: Arithmetic word problems; the answer is one number.
    scorers: [{kind: numeric, tolerance: 0.01}]
    system: Answer with the number only.        # optional, before every case's messages
    request: {temperature: 0, max_tokens: 48}   # optional, every case's request defaults
    gates: [{kind: regex, pattern: "\\d"}]      # optional, see below
    ---
    {"id": "apples", "tags": ["addition"], "prompt": "...", "expected": 12}
    {"id": "change", "messages": [{"role": "user", "content": "..."}], "expected": 3.5}

A case has an `id` (unique), either `prompt` (one user message) or OpenAI `messages`, optional
`tools`, `tool_choice`, `response_format` and `max_tokens`, what its scorers need (`expected`,
Python `tests`, a judge `rubric`) and `tags` for the per-task breakdown.

`gates` are serving-time validators (hedge.validators specs of kind json_schema, regex, length
or refusal): checks that need no expected answer, so a cascade could run them on a live draft.
`hedge eval recommend` tries them as the first stage's gate of two-stage cascades, computing
their verdicts from the stored answers.

Loading validates everything, every case's request included, and reports each problem with
the file, the line and the field. Built-in suites (suites/*.jsonl) are found by name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from hedge import validators
from hedge.config import format_path, yaml_line
from hedge.evaluation.scorers import ScorerSpec, expectation_problem
from hedge.types import ChatRequest

BUILTIN_PACKAGE = "hedge.evaluation.suites"
MAX_PROBLEMS_SHOWN = 20
# Gates are computed from stored answers, without calling anything: only these kinds can be.
GATE_KINDS = ("json_schema", "regex", "length", "refusal")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class SuiteError(Exception):
    """A suite cannot be used; the message names the file, the line and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RequestDefaults(_Strict):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = 0.0
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    seed: int | None = None


class Header(_Strict):
    name: str
    description: str | None = None
    scorers: Annotated[list[ScorerSpec], Field(min_length=1)]
    system: str | None = None
    request: RequestDefaults = RequestDefaults()
    gates: list[validators.Validator] = Field(default_factory=list)


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=200)]
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    expected: Any = None
    tests: str | None = None
    rubric: str | None = None
    tags: list[str] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    source: str  # the path, or "builtin:<name>"
    text: str  # the file as read: stored with a run, so a run can be reported and resumed
    sha256: str
    header: Header
    cases: tuple[Case, ...]
    lines: dict[str, int]  # case id -> line in the file

    def case(self, case_id: str) -> Case:
        return next(c for c in self.cases if c.id == case_id)

    def body(self, case: Case, model: str) -> dict[str, Any]:
        """The chat-completions request body for `case`, sent to `model`."""
        return case_body(self.header, case, model)

    def request(self, case: Case, model: str) -> ChatRequest:
        return ChatRequest.model_validate(self.body(case, model))


def case_body(header: Header, case: Case, model: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if case.messages is not None:
        messages = [dict(m) for m in case.messages]
    elif case.prompt is not None:
        messages = [{"role": "user", "content": case.prompt}]
    if header.system is not None and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": header.system})
    body: dict[str, Any] = {"model": model, "messages": messages}
    defaults = header.request
    for key in ("temperature", "top_p", "max_tokens", "seed"):
        value = getattr(defaults, key)
        if value is not None:
            body[key] = value
    if case.max_tokens is not None:
        body["max_tokens"] = case.max_tokens
    for key in ("tools", "tool_choice", "response_format"):
        value = getattr(case, key)
        if value is not None:
            body[key] = value
    return body


# ---- finding and reading ---------------------------------------------------------------------


def builtin_names() -> list[str]:
    files = resources.files(BUILTIN_PACKAGE)
    return sorted(
        p.name.removesuffix(".jsonl") for p in files.iterdir() if p.name.endswith(".jsonl")
    )


def resolve(name_or_path: str) -> Suite:
    """A suite file at this path, else the built-in suite of this name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SuiteError(f"{path}: cannot be read as UTF-8 text ({e}).") from None
        return parse(text, str(path))
    if path.is_dir():
        raise SuiteError(f"{path} is a directory. Fix: pass a suite file (.jsonl).")
    if name_or_path in builtin_names():
        resource = resources.files(BUILTIN_PACKAGE).joinpath(f"{name_or_path}.jsonl")
        return parse(resource.read_text(encoding="utf-8"), f"builtin:{name_or_path}")
    raise SuiteError(
        f"{name_or_path}: no such suite file, and no built-in suite of that name. Fix: pass the "
        f"path of a suite file, or one of the built-in suites: {', '.join(builtin_names())}."
    )


Problem = tuple[int | None, str | None, str]  # line, field, message


def parse(text: str, source: str) -> Suite:
    """Validate a suite's text; raise SuiteError listing every problem found."""
    lines = text.splitlines()
    problems: list[Problem] = []
    header, first_case_line = _header(lines, problems)
    cases: list[Case] = []
    where: dict[str, int] = {}
    for number in range(first_case_line, len(lines) + 1):
        raw = lines[number - 1].strip()
        if not raw:
            continue
        case = _case(raw, number, header, problems)
        if case is None:
            continue
        if case.id in where:
            problems.append(
                (number, "id", f"duplicate case id {case.id!r} (first on line {where[case.id]})")
            )
            continue
        where[case.id] = number
        cases.append(case)
    if header is not None and not cases and not problems:
        problems.append((None, None, "the suite has no cases: add one JSON object per line"))
    if problems or header is None:
        raise SuiteError(_describe(source, problems))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Suite(header.name, source, text, digest, header, tuple(cases), where)


def _header(lines: list[str], problems: list[Problem]) -> tuple[Header | None, int]:
    """The header and the first line after it (1-based)."""
    if not lines or lines[0].strip() != "---":
        problems.append(
            (
                1,
                None,
                "a suite starts with a YAML header between two '---' lines (with at least "
                "'name' and 'scorers'), then one JSON case per line",
            )
        )
        return None, 1
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        problems.append((1, None, "the YAML header has no closing '---' line"))
        return None, len(lines) + 1
    block = "\n".join(lines[1:end])
    try:
        node = yaml.compose(block, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(block)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = mark.line + 2 if mark else 2
        problems.append((line, None, f"the header is not valid YAML: {e.problem}"))
        return None, end + 2
    if not isinstance(raw, dict):
        problems.append((2, None, "the header must be a YAML mapping with 'name' and 'scorers'"))
        return None, end + 2
    try:
        header = Header.model_validate(raw)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not _is_tag(p))
            where = yaml_line(node, loc, first_line=2)
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key '{loc[-1]}'. Fix: remove it or check its spelling"
            problems.append((where, format_path(loc), msg))
        return None, end + 2
    if not _NAME.match(header.name):
        problems.append(
            (
                yaml_line(node, ("name",), first_line=2),
                "name",
                "use lowercase letters, digits, '.', '_' and '-' (at most 64 characters)",
            )
        )
    for i, gate in enumerate(header.gates):
        if gate.kind not in GATE_KINDS:
            problems.append(
                (
                    yaml_line(node, ("gates", i), first_line=2),
                    f"gates[{i}].kind",
                    f"a gate of kind '{gate.kind}' cannot be computed from stored answers. "
                    f"Fix: use {', '.join(GATE_KINDS)}",
                )
            )
    return header, end + 2


_CASE = TypeAdapter(Case)


def _case(raw: str, number: int, header: Header | None, problems: list[Problem]) -> Case | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        problems.append((number, None, f"not valid JSON ({e}). Fix: one JSON object per line"))
        return None
    if not isinstance(data, dict):
        problems.append((number, None, "each line must be one JSON object (a case)"))
        return None
    try:
        case = _CASE.validate_python(data)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field '{loc[-1]}'. Fix: remove it or check its spelling"
            problems.append((number, format_path(loc), msg))
        return None
    if (case.prompt is None) == (case.messages is None):
        problems.append((number, "prompt", "give exactly one of 'prompt' or 'messages'"))
        return None
    if header is None:
        return case
    body = case_body(header, case, "suite-check")
    try:
        ChatRequest.model_validate(body)
    except ValidationError as e:
        from hedge.server.openai_api import describe_validation

        message, param = describe_validation(e)
        message = message.removeprefix(f"Invalid '{param}': ") if param else message
        problems.append((number, param, f"not a valid chat request: {message}"))
        return None
    for spec in header.scorers:
        if (missing := expectation_problem(spec, case)) is not None:
            problems.append((number, *missing))
            return None
    return case


def _is_tag(part: str | int) -> bool:
    # Discriminated unions put the tag into the error path: scorers.0.numeric.tolerance.
    return isinstance(part, str) and part in _TAGS


_TAGS = frozenset(
    {
        "exact",
        "normalized",
        "choice",
        "numeric",
        "regex",
        "json_schema",
        "python_tests",
        "judge",
        "length",
        "refusal",
        "agreement",
    }
)


def _describe(source: str, problems: list[Problem]) -> str:
    n = len(problems)
    lines = [f"{source}: {n} problem{'s' if n != 1 else ''}:"]
    for line, field, message in problems[:MAX_PROBLEMS_SHOWN]:
        where = ", ".join(
            part
            for part in (
                f"line {line}" if line is not None else None,
                f"field '{field}'" if field else None,
            )
            if part
        )
        lines.append(f"  - {where + ': ' if where else ''}{message}")
    if n > MAX_PROBLEMS_SHOWN:
        lines.append(f"  ... and {n - MAX_PROBLEMS_SHOWN} more")
    return "\n".join(lines)
