"""Prompt compaction (hedge.compaction): every transformation keeps what each tool schema
accepts (checked with jsonschema on sample instances, valid and invalid, and on schemas and
instances hypothesis makes up) and leaves the rest of the request as it was."""

from __future__ import annotations

import copy
import gzip
import hashlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hedge.compaction import ELLIPSIS, CompactionSettings, compact, minify_schema, trim_text
from hedge.tokens import (
    approx_tokens,
    bundled_bpe_file,
    count_tokens,
    read_bpe_ranks,
    tiktoken_tokenizer,
)
from hedge.types import ChatRequest

ON = CompactionSettings(enabled=True)

# Draft 4 has no boolean schemas (`items: true`), which the samples use; draft 4's own
# keywords are checked in test_draft7_dependencies_and_tuple_items.
VALIDATORS = [
    jsonschema.Draft202012Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft6Validator,
]


def verdicts(schema: Any, instances: list[Any], cls: Any) -> list[bool]:
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [validator.is_valid(i) for i in instances]


def assert_same_acceptance(before: Any, after: Any, instances: list[Any]) -> None:
    for cls in VALIDATORS:
        assert verdicts(before, instances, cls) == verdicts(after, instances, cls), cls.__name__


WEATHER: dict[str, Any] = {
    "type": "object",
    "title": "WeatherArgs",
    "$comment": "generated",
    "properties": {
        "city": {
            "type": "string",
            "title": "City",
            "description": "The city.",
            "examples": ["Paris"],
            "minLength": 1,
        },
        "units": {
            "type": "string",
            "title": "Units",
            "enum": ["metric", "imperial"],
            "default": "metric",
            "example": "metric",
        },
        "days": {"type": "integer", "title": "Days", "minimum": 1, "maximum": 14},
        "tags": {
            "type": "array",
            "title": "Tags",
            "items": {"type": "string", "title": "Tag", "minLength": 0},
            "minItems": 0,
            "uniqueItems": False,
        },
        # Property names that look like annotation keywords are data, not keywords.
        "title": {"type": "string", "title": "Title", "maxLength": 5},
        "examples": {"type": "array", "title": "Examples", "items": True},
    },
    "required": ["city", "title"],
    "additionalProperties": True,
    "patternProperties": {},
    "dependentRequired": {},
}

WEATHER_INSTANCES: list[Any] = [
    {"city": "Paris", "title": "a"},
    {"city": "Paris", "title": "a", "units": "metric", "days": 3, "tags": ["x", "x"]},
    {"city": "Paris", "title": "a", "extra": 1},
    {"city": "Paris", "title": "a", "examples": [1, "two", None]},
    {"city": "", "title": "a"},
    {"city": "Paris"},
    {"title": "a"},
    {"city": "Paris", "title": "too long"},
    {"city": "Paris", "title": "a", "units": "kelvin"},
    {"city": "Paris", "title": "a", "days": 0},
    {"city": "Paris", "title": "a", "days": 15},
    {"city": "Paris", "title": "a", "days": 2.5},
    {"city": "Paris", "title": "a", "tags": "x"},
    {"city": "Paris", "title": "a", "tags": [1]},
    {"city": "Paris", "title": "a", "examples": "nope"},
    {"city": 5, "title": "a"},
    [],
    "Paris",
    None,
    42,
]


def test_minify_drops_annotations_and_no_ops_only_in_schema_positions() -> None:
    original = copy.deepcopy(WEATHER)
    out, dropped, trimmed, why = minify_schema(WEATHER)
    assert why is None and trimmed == 0
    assert original == WEATHER  # never mutated
    assert out == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city.", "minLength": 1},
            "units": {"type": "string", "enum": ["metric", "imperial"], "default": "metric"},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "tags": {"type": "array", "items": {"type": "string"}},
            "title": {"type": "string", "maxLength": 5},
            "examples": {"type": "array"},
        },
        "required": ["city", "title"],
    }
    assert dropped == 18
    assert_same_acceptance(WEATHER, out, WEATHER_INSTANCES)
    assert any(verdicts(out, WEATHER_INSTANCES, VALIDATORS[0]))
    assert not all(verdicts(out, WEATHER_INSTANCES, VALIDATORS[0]))


def test_data_is_never_touched() -> None:
    schema = {
        "type": "object",
        "properties": {
            "mode": {
                "enum": [{"title": "x", "examples": []}, "b"],
                "const": {"title": "y"},
                "default": {"$comment": "kept", "additionalProperties": True},
            }
        },
        "x-vendor": {"title": "unknown keywords are left alone", "minLength": 0},
    }
    out, _, _, _ = minify_schema(schema)
    assert out["properties"]["mode"] == schema["properties"]["mode"]  # type: ignore[index]
    assert out["x-vendor"] == schema["x-vendor"]


def test_keywords_that_constrain_are_kept() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "a": {"type": "string", "minLength": 2, "format": "email"},
            "b": {"type": "array", "items": False, "minItems": 1, "uniqueItems": True},
            "c": {"anyOf": [], "allOf": []},
        },
        "required": ["a"],
    }
    out, dropped, _, _ = minify_schema(schema)
    assert out == schema and dropped == 0


def test_unevaluated_keywords_keep_the_applicators_beside_them() -> None:
    # additionalProperties: true marks every property as evaluated; without it,
    # unevaluatedProperties: false would reject {"x": 1}.
    schema = {
        "title": "T",
        "additionalProperties": True,
        "unevaluatedProperties": False,
        "properties": {"a": {"title": "A"}},
    }
    out, _, _, why = minify_schema(schema)
    assert why is None
    assert out == {
        "additionalProperties": True,
        "unevaluatedProperties": False,
        "properties": {"a": {}},
    }
    assert_same_acceptance(schema, out, [{"x": 1}, {"a": 1}, {}])
    assert jsonschema.Draft202012Validator(out).is_valid({"x": 1})


def test_references_are_respected() -> None:
    schema = {
        "type": "object",
        "$defs": {"Units": {"title": "Units", "enum": ["a", "b"]}},
        "properties": {
            "u": {"$ref": "#/$defs/Units"},
            "anything": {"$ref": "#/properties/list/items"},
            "list": {"type": "array", "items": {}},
        },
    }
    out, _, _, why = minify_schema(schema)
    assert why is None
    # The no-op `items: {}` is referenced, so it stays; the annotation still goes.
    assert out["properties"]["list"] == {"type": "array", "items": {}}
    assert out["$defs"] == {"Units": {"enum": ["a", "b"]}}
    instances = [{"u": "a"}, {"u": "c"}, {"anything": 5, "list": [1]}, {"list": 3}]
    assert_same_acceptance(schema, out, instances)


def test_references_into_an_annotation_keep_it() -> None:
    schema = {"properties": {"a": {"$ref": "#/$defs/x/title"}}, "$defs": {"x": {"title": {}}}}
    out, _, _, _ = minify_schema(schema)
    assert out["$defs"]["x"] == {"title": {}}


def test_external_references_leave_the_schema_alone() -> None:
    schema = {"title": "T", "properties": {"a": {"$ref": "other.json#/x"}}}
    out, dropped, _, why = minify_schema(schema)
    assert out is schema and dropped == 0 and why is not None


def test_draft7_dependencies_and_tuple_items() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "dependencies": {"a": ["b"], "c": {"title": "C", "required": ["d"]}},
        "properties": {
            "t": {
                "type": "array",
                "items": [{"type": "integer", "title": "First"}, {"type": "string"}],
                "additionalItems": False,
            }
        },
    }
    out, _, _, _ = minify_schema(schema)
    assert out["dependencies"] == {"a": ["b"], "c": {"required": ["d"]}}
    assert out["properties"]["t"]["items"][0] == {"type": "integer"}
    instances = [
        {"a": 1},
        {"a": 1, "b": 2},
        {"c": 1},
        {"c": 1, "d": 1},
        {"t": [1, "x"]},
        {"t": [1, "x", 3]},
        {"t": ["x"]},
    ]
    for cls in (jsonschema.Draft7Validator, jsonschema.Draft4Validator):
        assert verdicts(schema, instances, cls) == verdicts(out, instances, cls)


def test_schema_descriptions_are_trimmed_only_when_asked() -> None:
    schema = {"properties": {"a": {"type": "string", "description": "One. Two. Three. Four."}}}
    out, _, trimmed, _ = minify_schema(schema)
    assert out == schema and trimmed == 0
    out, _, trimmed, _ = minify_schema(schema, max_description_chars=16)
    assert out["properties"]["a"]["description"] == f"One. Two. {ELLIPSIS}"
    assert trimmed == 1


# ---- made-up schemas and instances --------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "title", "examples", "items", "required", "default"])
LEAF_SCHEMAS = st.sampled_from(
    [
        True,
        False,
        {},
        {"type": "string"},
        {"type": "integer", "minimum": 0},
        {"type": "string", "minLength": 0},
        {"type": "string", "minLength": 2},
        {"enum": [1, "a", None]},
        {"const": {"title": "x"}},
        {"type": "array", "minItems": 0, "uniqueItems": False},
        {"type": "array", "uniqueItems": True},
        {"type": "object", "required": []},
        {"title": "only an annotation", "examples": [1]},
        {"$comment": "c", "type": "number"},
        {"minProperties": 0, "type": "object"},
        # Spelled-out defaults next to (or, composed, under) the unevaluated* keywords.
        {"additionalProperties": True},
        {"items": {}, "prefixItems": [{"type": "string"}]},
        {"unevaluatedProperties": False},
        {"unevaluatedItems": False},
        {"additionalProperties": True, "unevaluatedProperties": False},
    ]
)


def _schemas(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    props = st.dictionaries(NAMES, children, max_size=3)
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["object", "array", "string", ["object", "null"]]),
            "title": st.text(max_size=3),
            "examples": st.lists(st.integers(), max_size=2),
            "$comment": st.just("why"),
            "properties": props,
            "patternProperties": st.dictionaries(
                st.sampled_from(["^x", "^t"]), children, max_size=1
            ),
            "additionalProperties": st.one_of(st.just(True), st.just({}), st.just(False), children),
            "unevaluatedProperties": st.booleans(),
            "items": st.one_of(st.just(True), st.just({}), children),
            "prefixItems": st.lists(children, max_size=2),
            "required": st.lists(NAMES, max_size=2, unique=True),
            "minItems": st.sampled_from([0, 1]),
            "minProperties": st.sampled_from([0, 1]),
            "uniqueItems": st.booleans(),
            "propertyNames": st.one_of(st.just(True), st.just({}), st.just({"maxLength": 1})),
            "dependentRequired": st.one_of(st.just({}), st.just({"a": ["b"]})),
            "allOf": st.lists(children, min_size=1, max_size=2),
            "anyOf": st.lists(children, min_size=1, max_size=2),
            "not": children,
            "if": children,
            "then": children,
        },
    )


SCHEMAS = st.recursive(LEAF_SCHEMAS, _schemas, max_leaves=12)
INSTANCES = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from(["", "a", "xx", "title"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "title", "x1", "t"]), inner, max_size=3)
    ),
    max_leaves=8,
)

_VALUES: list[Any] = [None, True, 0, 1, -1, 2.5, "", "a", "xx", "title", [], [1, 1], ["a", "b"]]


def _names(node: Any) -> set[str]:
    """Every name a made-up schema mentions as a property (or a pattern's sample match)."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("properties", "dependentRequired") and isinstance(v, dict):
                out |= set(v)
            if k == "required" and isinstance(v, list):
                out |= {x for x in v if isinstance(x, str)}
            if k == "patternProperties" and isinstance(v, dict):
                out |= {p.strip("^") + "1" for p in v}
            out |= _names(v)
    elif isinstance(node, list):
        for v in node:
            out |= _names(v)
    return out


def probes(schema: Any) -> list[Any]:
    """Instances aimed at a schema: every kind of value, at the top, under each property
    name it mentions, two levels deep, in arrays (with duplicates), and with unknown names."""
    names = [*sorted(_names(schema)), "zz"]
    out: list[Any] = [*_VALUES, {}, [{}], [{}, {}]]
    for n in names:
        out += [{n: v} for v in _VALUES]
        out += [{n: {m: "xx"}} for m in names]
        out += [[{n: 1}], [{n: 1}, {n: 1}], {n: [{n: 1}]}]
    out.append(dict.fromkeys(names, "xx"))
    out.append({key: [1, 1] for key in names})
    return out


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schema=SCHEMAS, extra=st.lists(INSTANCES, max_size=6))
def test_made_up_schemas_accept_the_same_instances(schema: Any, extra: list[Any]) -> None:
    if not isinstance(schema, dict):
        schema = {"properties": {"a": schema}}
    out, _, _, _ = minify_schema(schema)
    instances = probes(schema) + extra
    for cls in (jsonschema.Draft202012Validator, jsonschema.Draft201909Validator):
        assert verdicts(schema, instances, cls) == verdicts(out, instances, cls)


# ---- descriptions -------------------------------------------------------------------------


def test_trim_text() -> None:
    text = "Get the weather. Use it for today only. Do not guess the city! Ask instead?"
    assert trim_text(text, len(text)) == text
    assert trim_text(text, 41) == f"Get the weather. Use it for today only. {ELLIPSIS}"
    assert trim_text(text, 40) == f"Get the weather. {ELLIPSIS}"
    assert trim_text(text, 20) == f"Get the weather. {ELLIPSIS}"
    # No whole sentence fits: a word boundary.
    assert trim_text(text, 12) == f"Get the {ELLIPSIS}"
    assert trim_text("x" * 50, 10) == "x" * 8 + f" {ELLIPSIS}"[:2]
    for limit in range(16, len(text) + 5):
        assert len(trim_text(text, limit)) <= limit


def test_trim_text_keeps_whole_lines_of_a_list() -> None:
    text = "Search files.\n- by name\n- by content\n- by date, with many more words"
    assert trim_text(text, 40) == f"Search files.\n- by name\n- by content {ELLIPSIS}"


def test_trim_text_does_not_cut_inside_abbreviations_or_numbers() -> None:
    text = "Costs 3.5 dollars, e.g. for one call. Then more text follows here."
    assert trim_text(text, 45) == f"Costs 3.5 dollars, e.g. for one call. {ELLIPSIS}"


# ---- the request --------------------------------------------------------------------------


def tool(name: str, description: str = "Does a thing.", params: Any = None) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": params if params is not None else copy.deepcopy(WEATHER),
        },
    }


def request(**changes: Any) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "m",
        "temperature": 0.3,
        "seed": 9,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        "tools": [tool("weather"), tool("calendar"), tool("email")],
        "top_k": 40,
        **changes,
    }
    return ChatRequest.model_validate({k: v for k, v in body.items() if v is not ...})


def unchanged_except(a: ChatRequest, b: ChatRequest, *fields: str) -> None:
    da, db = a.model_dump(), b.model_dump()
    for f in fields:
        da.pop(f, None)
        db.pop(f, None)
    assert da == db


def test_disabled_or_nothing_to_do_returns_the_request_itself() -> None:
    r = request()
    assert compact(r, CompactionSettings())[0] is r
    plain = request(tools=...)
    out, report = compact(plain, ON)
    assert out is plain and not report.changed


def test_tool_schemas_are_minified_and_nothing_else_changes() -> None:
    r = request()
    out, report = compact(r, ON)
    assert report.changed and report.schema_keywords_dropped == 54
    assert report.tool_chars_after < report.tool_chars_before
    unchanged_except(r, out, "tools")
    for before, after in zip(r.tools or [], out.tools or [], strict=True):
        assert before.function.name == after.function.name
        assert before.function.description == after.function.description
        assert_same_acceptance(
            before.function.parameters, after.function.parameters, WEATHER_INSTANCES
        )
    assert r.tools is not None and r.tools[0].function.parameters == WEATHER  # not mutated


def test_strict_functions_keep_spelled_out_defaults() -> None:
    strict = tool("weather", params={"type": "object", "title": "T", "required": []})
    strict["function"]["strict"] = True
    out, _ = compact(request(tools=[strict]), ON)
    assert out.tools is not None
    assert out.tools[0].function.parameters == {"type": "object", "required": []}


def test_integers_beyond_64_bits_in_a_schema() -> None:
    # Only a Python caller can send one (the wire parser reads them as floats).
    big = tool("big", params={"type": "integer", "maximum": 2**70, "title": "Big"})
    out, _ = compact(request(tools=[big]), ON)
    assert out.tools is not None
    assert out.tools[0].function.parameters == {"type": "integer", "maximum": 2**70}
    assert count_tokens(out) > 0


def test_tool_descriptions_are_trimmed() -> None:
    long = "Get the weather. " * 40
    r = request(tools=[tool("weather", long, {"type": "object"})])
    out, report = compact(r, CompactionSettings(enabled=True, max_tool_description_chars=50))
    assert out.tools is not None
    assert out.tools[0].function.description == "Get the weather. Get the weather. " + ELLIPSIS
    assert report.descriptions_trimmed == 1
    unchanged_except(r, out, "tools")
    assert out.tools[0].function.parameters == {"type": "object"}


def test_a_named_tool_choice_leaves_only_that_tool() -> None:
    r = request(tool_choice={"type": "function", "function": {"name": "calendar"}})
    out, report = compact(r, ON)
    assert [t.function.name for t in out.tools or ()] == ["calendar"]
    assert report.tools_dropped == ("weather", "email")
    assert out.tool_choice == r.tool_choice
    unchanged_except(r, out, "tools")


def test_tool_choice_none_drops_tools_tool_choice_and_parallel_flag() -> None:
    r = request(tool_choice="none", parallel_tool_calls=True)
    out, report = compact(r, ON)
    assert (out.tools, out.tool_choice, out.parallel_tool_calls) == (None, None, None)
    assert report.tools_dropped == ("weather", "calendar", "email")
    unchanged_except(r, out, "tools", "tool_choice", "parallel_tool_calls")
    # What an upstream is sent carries none of the three.
    sent = out.model_dump(exclude_none=True)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]


def test_tools_the_conversation_called_are_kept() -> None:
    out, _ = compact(request(messages=HISTORY, tool_choice="none"), ON)
    assert [t.function.name for t in out.tools or ()] == ["weather"]
    assert out.tool_choice == "none"
    named = request(
        messages=HISTORY, tool_choice={"type": "function", "function": {"name": "email"}}
    )
    out, _ = compact(named, ON)
    assert [t.function.name for t in out.tools or ()] == ["weather", "email"]


def test_tool_results_without_their_calls_keep_every_tool() -> None:
    orphan = [{"role": "tool", "tool_call_id": "c1", "content": "sunny"}, HISTORY[0]]
    out, report = compact(request(messages=orphan, tool_choice="none"), ON)
    assert len(out.tools or ()) == 3
    assert report.notes


@pytest.mark.parametrize("choice", ["auto", "required", ...])
def test_other_tool_choices_keep_every_tool(choice: Any) -> None:
    out, report = compact(request(tool_choice=choice), ON)
    assert len(out.tools or ()) == 3 and report.tools_dropped == ()


def test_repeated_system_messages_collapse() -> None:
    sys_a = {"role": "system", "content": "Be brief."}
    sys_b = {"role": "system", "content": "Be kind."}
    dev = {"role": "developer", "content": "Be exact."}
    user = {"role": "user", "content": "hi"}
    messages = [sys_a, sys_a, sys_a, sys_b, dev, dev, user, sys_a, user, user]
    r = request(messages=messages, tools=...)
    out, report = compact(r, ON)
    assert [m.model_dump(exclude_none=True) for m in out.messages] == [
        sys_a,
        sys_b,
        dev,
        user,
        sys_a,  # not next to the first: it means something where it is
        user,
        user,  # only system and developer messages collapse
    ]
    assert report.system_messages_collapsed == 3
    unchanged_except(r, out, "messages")


def test_system_messages_differing_in_a_field_are_kept() -> None:
    messages = [
        {"role": "system", "content": "A"},
        {"role": "system", "content": "A", "name": "x"},
        {"role": "system", "content": [{"type": "text", "text": "A"}]},
        {"role": "user", "content": "hi"},
    ]
    out, _ = compact(request(messages=messages, tools=...), ON)
    assert len(out.messages) == 4


def test_each_step_can_be_turned_off() -> None:
    r = request(
        tool_choice={"type": "function", "function": {"name": "email"}},
        messages=[{"role": "system", "content": "x"}] * 2 + [{"role": "user", "content": "y"}],
    )
    off = CompactionSettings(
        enabled=True,
        minify_schemas=False,
        max_tool_description_chars=None,
        drop_unreachable_tools=False,
        collapse_system_messages=False,
    )
    out, report = compact(r, off)
    assert out is r and not report.changed


# ---- token counting -----------------------------------------------------------------------


def test_count_tokens_with_a_tokenizer_passed_in() -> None:
    def words(text: str) -> int:
        return len(text.split())

    r = request(tools=...)
    # 3 priming + per message 3 framing + words ("Be brief." = 2, "Weather in Paris?" = 3)
    assert count_tokens(r, words) == 3 + (3 + 2) + (3 + 3)
    with_tools = request()
    assert count_tokens(with_tools, words) > count_tokens(r, words)


def test_compaction_lowers_the_count() -> None:
    r = request()
    out, _ = compact(r, ON)
    assert count_tokens(out) < count_tokens(r)


def test_count_tokens_counts_names_tool_calls_and_response_format() -> None:
    base = request(tools=..., messages=HISTORY)
    assert count_tokens(base, len) > count_tokens(request(tools=...), len)
    fmt = request(
        tools=...,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
    )
    assert count_tokens(fmt, len) == count_tokens(request(tools=...), len) + len(
        '{"type":"object"}'
    )


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("", 0, 0),
        ("Hello world, this is a test.", 6, 10),
        ('{"type":"object","properties":{"city":{"type":"string"}}}', 10, 24),
        ("東京の天気はどうですか。", 6, 14),
    ],
)
def test_the_approximation_is_in_a_sane_range(text: str, low: int, high: int) -> None:
    assert low <= approx_tokens(text) <= high


# ---- tiktoken from a local file -----------------------------------------------------------


def _tiny_bpe(tmp_path: Path, gz: bool) -> Path:
    import base64

    lines = [base64.b64encode(bytes([b])) + b" " + str(b).encode() for b in range(256)]
    lines.append(base64.b64encode(b"ab") + b" 256")
    raw = b"\n".join(lines) + b"\n"
    path = tmp_path / ("tiny.tiktoken.gz" if gz else "tiny.tiktoken")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_bpe_ranks(tmp_path: Path, gz: bool) -> None:
    path = _tiny_bpe(tmp_path, gz)
    ranks = read_bpe_ranks(path)
    assert ranks[b"ab"] == 256 and ranks[b"\x00"] == 0 and len(ranks) == 257
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    assert read_bpe_ranks(path, hashlib.sha256(raw).hexdigest()) == ranks
    with pytest.raises(ValueError, match="SHA-256"):
        read_bpe_ranks(path, "0" * 64)


def test_tiktoken_tokenizer_refuses_a_file_that_is_not_the_published_one(tmp_path: Path) -> None:
    pytest.importorskip("tiktoken")
    with pytest.raises(ValueError, match="SHA-256"):
        tiktoken_tokenizer(_tiny_bpe(tmp_path, gz=False), "o200k_base")
    with pytest.raises(ValueError, match="unknown encoding"):
        tiktoken_tokenizer(_tiny_bpe(tmp_path, gz=False), "p50k_base")


def test_tiktoken_tokenizer_on_the_real_file_when_one_is_installed() -> None:
    pytest.importorskip("tiktoken")
    path = bundled_bpe_file("o200k_base")
    if path is None:
        pytest.skip("no local o200k_base BPE file (the bpe-openai package ships one)")
    count = tiktoken_tokenizer(path, "o200k_base")
    assert count("Hello world, this is a test.") == 8
    assert count("<|endoftext|>") > 1  # special tokens are counted as text
