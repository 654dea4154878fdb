"""Suite files: what loads, and what is refused with the file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hedge.evaluation import suite as suites
from hedge.evaluation.suite import SuiteError, parse, resolve

HEADER = """---
name: tiny
scorers: [{kind: numeric}]
request: {max_tokens: 16}
---
"""


def line(**case: Any) -> str:
    return json.dumps(case) + "\n"


def problems(text: str) -> str:
    with pytest.raises(SuiteError) as caught:
        parse(text, "tiny.jsonl")
    message = str(caught.value)
    assert message.startswith("tiny.jsonl: ")
    return message


def test_a_good_suite_loads_with_its_requests() -> None:
    text = HEADER.replace("---\n", "---\nsystem: Be brief.\n", 1) + line(
        id="a", prompt="2+2?", expected=4, tags=["sum"]
    )
    text += "\n" + line(
        id="b",
        messages=[{"role": "system", "content": "Own system."}, {"role": "user", "content": "1?"}],
        expected="1",
        max_tokens=4,
    )
    s = parse(text, "tiny.jsonl")
    assert [c.id for c in s.cases] == ["a", "b"]
    assert s.lines == {"a": 7, "b": 9}
    a = s.request(s.cases[0], "route-x")
    assert a.model == "route-x"
    assert [m.role for m in a.messages] == ["system", "user"]
    assert a.max_tokens == 16
    assert a.temperature == 0  # suites default to greedy decoding, so answers repeat
    b = s.request(s.cases[1], "route-x")
    assert [m.text() for m in b.messages] == ["Own system.", "1?"]  # no second system message
    assert b.max_tokens == 4
    assert len(s.sha256) == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"id": "a"}\n', "line 1: a suite starts with a YAML header"),
        ("---\nname: x\n", "line 1: the YAML header has no closing '---' line"),
        ("---\nname: [x\n---\n", "line 2: the header is not valid YAML"),
        ("---\nname: x\n---\n", "field 'scorers': Field required"),
        ("---\nname: x\nscorers: [{kind: numeric}]\nscorer: 1\n---\n", "line 4, field 'scorer'"),
        ("---\nname: x\nscorers: [{kind: numerik}]\n---\n", "line 3, field 'scorers[0]'"),
        (
            "---\nname: x\nscorers:\n  - kind: numeric\n    tolerance: -1\n---\n",
            "line 5, field 'scorers[0].tolerance'",
        ),
        ("---\nname: Has Spaces\nscorers: [{kind: numeric}]\n---\n", "line 2, field 'name'"),
        (
            "---\nname: x\nscorers: [{kind: numeric}]\ngates:\n  - {kind: python_tests, tests: x}"
            "\n---\n",
            "line 5, field 'gates[0].kind': a gate of kind 'python_tests' cannot be computed",
        ),
        (HEADER, "the suite has no cases"),
        (HEADER + '{"id": "a", "prompt": "x", "expected": 1\n', "line 6: not valid JSON"),
        (HEADER + "[1, 2]\n", "line 6: each line must be one JSON object"),
        (HEADER + line(id="a", prompt="x", expcted=1), "line 6, field 'expcted': unknown field"),
        (HEADER + line(prompt="x", expected=1), "line 6, field 'id': Field required"),
        (HEADER + line(id="a", expected=1), "give exactly one of 'prompt' or 'messages'"),
        (
            HEADER + line(id="a", prompt="x", messages=[], expected=1),
            "give exactly one of 'prompt' or 'messages'",
        ),
        (
            HEADER + line(id="a", messages=[{"role": "robot", "content": "x"}], expected=1),
            "line 6, field 'messages[0].role': not a valid chat request",
        ),
        (
            HEADER + line(id="a", prompt="x", expected=1, max_tokens=0),
            "line 6, field 'max_tokens'",
        ),
        (
            HEADER + line(id="a", prompt="x", expected="twelve"),
            "line 6, field 'expected': the numeric scorer needs 'expected' as a number",
        ),
        (
            HEADER + line(id="a", prompt="x", expected=1) + line(id="a", prompt="y", expected=2),
            "line 7, field 'id': duplicate case id 'a' (first on line 6)",
        ),
    ],
)
def test_problems_name_the_line_and_the_field(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_every_problem_is_listed_not_just_the_first() -> None:
    text = HEADER + line(id="a", prompt="x") + "oops\n" + line(id="c", prompt="z", expected=3)
    message = problems(text)
    assert message.startswith("tiny.jsonl: 2 problems:")
    assert "line 6" in message
    assert "line 7" in message


@pytest.mark.parametrize(
    ("scorer", "case", "expected"),
    [
        ("{kind: choice}", {"expected": "F"}, "one letter from A to E"),
        ("{kind: exact}", {"expected": ["a"]}, "'expected' as a string"),
        ("{kind: regex}", {"expected": "("}, "not a valid regular expression"),
        ("{kind: regex}", {}, "it needs 'expected' as a pattern"),
        ("{kind: python_tests}", {}, "field 'tests'"),
        ("{kind: judge, route: j}", {}, "field 'rubric'"),
    ],
)
def test_each_scorer_checks_what_its_cases_need(
    scorer: str, case: dict[str, Any], expected: str
) -> None:
    text = f"---\nname: x\nscorers: [{scorer}]\n---\n" + line(id="a", prompt="q", **case)
    assert expected in problems(text)


def test_builtin_suites_load_and_are_small() -> None:
    names = suites.builtin_names()
    assert names == ["arithmetic", "json-extraction", "python-functions"]
    for name in names:
        s = resolve(name)
        assert s.source == f"builtin:{name}"
        assert 15 <= len(s.cases) <= 25
        assert s.header.request.temperature == 0
        assert s.header.gates, "every built-in suite offers a serving-time gate"
        for c in s.cases:
            assert c.tags
            request = s.request(c, "m")
            assert (request.max_tokens or 0) <= 128


def test_resolve_a_file_or_refuse_with_the_builtins(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(HEADER + line(id="a", prompt="x", expected=1))
    assert resolve(str(path)).source == str(path)
    with pytest.raises(SuiteError, match="built-in suites: arithmetic, json-extraction"):
        resolve("arithmetics")
    with pytest.raises(SuiteError, match="is a directory"):
        resolve(str(tmp_path))
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SuiteError, match="cannot be read as UTF-8"):
        resolve(str(path))
