"""Cache keys and the cacheability rules (hedge.cache.keys).

Requests are parsed from JSON text with the server's own parser, so "the same request spelled
differently" means what it means on the wire.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hedge.cache import CacheSettings
from hedge.cache.keys import (
    _TYPED_FLOATS,
    _dumps,
    _normalise,
    cache_key,
    cache_tenant,
    cacheable,
    canonical_json,
    decide,
    parse_cache_control,
    storable,
)
from hedge.server.openai_api import parse_chat_request
from hedge.types import ChatRequest, ChatResponse, Choice, Usage

ON = CacheSettings(enabled=True)

BASE: dict[str, Any] = {
    "model": "chat",
    "temperature": 0,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a fact up.",
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string", "minLength": 1}},
                    "required": ["q"],
                },
            },
        }
    ],
}


def parse(text: str | bytes) -> ChatRequest:
    return parse_chat_request(text.encode() if isinstance(text, str) else text)


def req(**changes: Any) -> ChatRequest:
    body = {**BASE, **changes}
    return parse(json.dumps({k: v for k, v in body.items() if v is not ...}))


def key(
    request: ChatRequest,
    *,
    route: str = "chat",
    scope: str | list[str] = ("a", "b"),  # type: ignore[assignment]
    policies: list[str] | None = None,
    data_class: str | None = None,
    tenant: str | None = "key-1",
) -> str:
    return cache_key(
        request,
        route=route,
        deployment_scope=scope if isinstance(scope, str) else list(scope),
        policy_names=policies or [],
        data_class=data_class,
        tenant=tenant,
    )


def test_a_key_is_a_sha256_hex_digest() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", key(req()))


def test_key_order_and_whitespace_do_not_matter() -> None:
    compact = json.dumps(BASE, separators=(",", ":"))
    pretty = json.dumps(BASE, indent=4)
    reordered = json.dumps(
        {
            "tools": [
                {
                    "function": {
                        "parameters": {
                            "required": ["q"],
                            "properties": {"q": {"minLength": 1, "type": "string"}},
                            "type": "object",
                        },
                        "description": "Look a fact up.",
                        "name": "lookup",
                    },
                    "type": "function",
                }
            ],
            "messages": [{"content": m["content"], "role": m["role"]} for m in BASE["messages"]],
            "temperature": 0,
            "model": "chat",
        }
    )
    assert key(parse(compact)) == key(parse(pretty)) == key(parse(reordered))


@pytest.mark.parametrize("spelling", ["0.7", "0.70", "7e-1", "0.7000", "70e-2"])
def test_float_spellings_are_one_number(spelling: str) -> None:
    text = json.dumps({**BASE, "temperature": "T"}).replace('"T"', spelling)
    assert key(parse(text)) == key(req(temperature=0.7))


@pytest.mark.parametrize(("a", "b"), [("1", "1.0"), ("1", "1e0"), ("0", "-0.0"), ("40", "4e1")])
def test_integers_and_equal_floats_are_one_number_in_free_form_values(a: str, b: str) -> None:
    # In a tool schema and in a provider-specific extra field, where no type says which.
    def with_number(n: str) -> ChatRequest:
        body = json.dumps(
            {
                **BASE,
                "top_k": "N",
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "minProperties": "N"},
                        },
                    }
                ],
            }
        )
        return parse(body.replace('"N"', n))

    assert key(with_number(a)) == key(with_number(b))


def test_integer_temperature_equals_float_temperature() -> None:
    assert key(parse(json.dumps({**BASE, "temperature": 1}))) == key(req(temperature=1.0))


def test_true_is_not_one() -> None:
    assert key(req(top_k=1)) != key(req(top_k=True))


def test_different_numbers_differ() -> None:
    assert key(req(temperature=0.7)) != key(req(temperature=0.70000001))
    assert key(req(top_k=2**60)) != key(req(top_k=2**60 + 1))


def test_integers_beyond_64_bits_still_make_a_key() -> None:
    # (The wire parser reads such numbers as floats; a request built in Python keeps them.)
    def big(n: int) -> ChatRequest:
        return ChatRequest.model_validate({**BASE, "top_k": n})

    assert key(big(2**70)) != key(big(2**70 + 1))
    assert key(big(2**70)) == key(big(2**70))


def test_a_plain_string_and_a_text_part_are_different_requests() -> None:
    plain = [{"role": "user", "content": "hi"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert key(req(messages=plain)) != key(req(messages=parts))


def test_null_equals_absent() -> None:
    assert key(req(seed=None, user=None)) == key(req())


def test_stream_flag_and_stream_options_are_not_in_the_key() -> None:
    streamed = req(stream=True, stream_options={"include_usage": True})
    assert key(streamed) == key(req()) == key(req(stream=False))


def test_hedge_body_options_are_not_in_the_body_part_of_the_key() -> None:
    # They reach the key as policy_names and data_class instead.
    narrowed = req(hedge={"policies": ["eu"], "data_class": "pii"})
    assert key(narrowed) == key(req())
    assert key(narrowed, policies=["eu"], data_class="pii") != key(req())


TOOL2 = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}

# Each changes what the upstream is asked, so each must change the key.
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "user text": {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
    "system text": {
        "messages": [
            {"role": "system", "content": "Be verbose."},
            BASE["messages"][1],
        ]
    },
    "role": {"messages": [{"role": "developer", "content": "Be brief."}, BASE["messages"][1]]},
    "name": {"messages": [BASE["messages"][0], {**BASE["messages"][1], "name": "dana"}]},
    "image part": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is the capital of France?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                ],
            }
        ]
    },
    "tool description": {
        "tools": [
            {**BASE["tools"][0], "function": {**BASE["tools"][0]["function"], "description": "x"}}
        ]
    },
    "tool schema": {
        "tools": [
            {
                **BASE["tools"][0],
                "function": {**BASE["tools"][0]["function"], "parameters": {"type": "object"}},
            }
        ]
    },
    "tool strict": {
        "tools": [
            {**BASE["tools"][0], "function": {**BASE["tools"][0]["function"], "strict": True}}
        ]
    },
    "another tool": {"tools": [BASE["tools"][0], TOOL2]},
    "no tools": {"tools": ...},
    "tool_choice none": {"tool_choice": "none"},
    "tool_choice auto": {"tool_choice": "auto"},
    "tool_choice required": {"tool_choice": "required"},
    "tool_choice named": {"tool_choice": {"type": "function", "function": {"name": "lookup"}}},
    "parallel_tool_calls": {"parallel_tool_calls": False},
    "response_format json_object": {"response_format": {"type": "json_object"}},
    "response_format json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": "object"}},
        }
    },
    "temperature": {"temperature": 0.2},
    "top_p": {"top_p": 0.9},
    "max_tokens": {"max_tokens": 100},
    "max_completion_tokens": {"max_completion_tokens": 100},
    "stop string": {"stop": "\n"},
    "stop list": {"stop": ["\n"]},
    "seed": {"seed": 7},
    "seed other": {"seed": 8},
    "presence_penalty": {"presence_penalty": 0.5},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "logit_bias": {"logit_bias": {"50256": -100}},
    "logprobs": {"logprobs": True},
    "top_logprobs": {"logprobs": True, "top_logprobs": 2},
    "n": {"n": 2},
    "user": {"user": "u-42"},
    "reasoning_effort": {"reasoning_effort": "low"},
    "provider extra": {"top_k": 40},
    "provider extra nested": {"chat_template_kwargs": {"enable_thinking": False}},
    "model": {"model": "other"},
}


def test_every_field_that_changes_the_answer_changes_the_key() -> None:
    keys = {name: key(req(**changes)) for name, changes in VARIANTS.items()}
    by_key: dict[str, list[str]] = {}
    for name, k in keys.items():
        by_key.setdefault(k, []).append(name)
    assert [names for names in by_key.values() if len(names) > 1] == []


def test_the_context_is_in_the_key() -> None:
    r = req()
    base = key(r)
    assert key(r, route="other") != base
    assert key(r, scope=["a"]) != base
    assert key(r, scope=["b", "a"]) != base  # the order says who answers first
    assert key(r, scope="a,b") != base
    assert key(r, policies=["eu"]) != base
    assert key(r, data_class="pii") != base


def test_policy_order_and_repeats_do_not_matter() -> None:
    r = req()
    assert key(r, policies=["a", "b"]) == key(r, policies=["b", "a", "b"])


def test_tenants_are_separated() -> None:
    r = req()
    assert len({key(r, tenant="key-1"), key(r, tenant="key-2"), key(r, tenant=None)}) == 3
    assert cache_tenant(ON, "key-1") == "key-1"
    assert cache_tenant(CacheSettings(enabled=True, shared_across_keys=True), "key-1") is None


def test_context_and_body_cannot_be_re_split() -> None:
    # A route name that looks like JSON must not collide with a different body.
    a = cache_key(
        req(),
        route='x","scope":[]}',
        deployment_scope=[],
        policy_names=[],
        data_class=None,
        tenant=None,
    )
    b = cache_key(
        req(), route="x", deployment_scope=[], policy_names=[], data_class=None, tenant=None
    )
    assert a != b


# ---- canonical form: the fast path equals the full normalisation -------------------------


def _json_values(max_int: int) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-max_int, max_value=max_int)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8)
        | st.sampled_from(["1.0,", "v2.0]", "x.0}"])  # integral-float look-alikes in strings
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=20,
    )


json_values = _json_values(2**70)
# What the wire parser (orjson) reads as an integer: beyond 64 bits it reads a float.
wire_json_values = _json_values(2**63 - 1)


def _slow_canonical(request: ChatRequest) -> bytes:
    body = request.model_dump(
        exclude_none=True, by_alias=True, exclude={"stream", "stream_options", "hedge"}
    )
    typed = {k: body.pop(k) for k in _TYPED_FLOATS if k in body}
    return _dumps(_normalise(typed)) + b"\n" + _dumps(_normalise(body))


@settings(max_examples=300, deadline=None, database=None)
@given(extra=json_values, schema=st.dictionaries(st.text(max_size=6), json_values, max_size=4))
def test_fast_canonical_form_equals_the_full_normalisation(extra: Any, schema: Any) -> None:
    body = {
        **BASE,
        "extra_field": extra,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    }
    request = ChatRequest.model_validate(body)
    assert canonical_json(request) == _slow_canonical(request)


@settings(max_examples=200, deadline=None, database=None)
@given(value=wire_json_values)
def test_a_value_and_its_json_round_trip_make_one_key(value: Any) -> None:
    # What a client sends and what it would send after a JSON round trip (where 1.0 may come
    # back as 1) are the same request.
    direct = ChatRequest.model_validate({**BASE, "extra_field": value})
    text = json.dumps({**BASE, "extra_field": value})
    assert key(direct) == key(parse(text))


# ---- cacheable and the Cache-Control header ------------------------------------------------


def test_cacheable_rules() -> None:
    assert cacheable(req(), ON) is None
    assert cacheable(req(temperature=0.8, seed=3), ON) is None
    assert "off" in (cacheable(req(), CacheSettings()) or "")
    assert "temperature" in (cacheable(req(temperature=0.8), ON) or "")
    assert "temperature" in (cacheable(req(temperature=...), ON) or "")  # default is sampled
    opted = CacheSettings(enabled=True, opt_in_nondeterministic=True)
    assert cacheable(req(temperature=0.8), opted) is None
    assert "n > 1" in (cacheable(req(n=2), ON) or "")
    assert cacheable(req(n=1), ON) is None
    assert "logprobs" in (cacheable(req(logprobs=True), ON) or "")
    assert "no-store" in (cacheable(req(), ON, parse_cache_control("no-store")) or "")
    assert cacheable(req(), ON, parse_cache_control("no-cache")) is None


@pytest.mark.parametrize(
    ("header", "read", "write"),
    [
        (None, True, True),
        ("", True, True),
        ("no-cache", False, True),
        ("No-Cache", False, True),
        ("max-age=0", False, True),
        ("private, no-cache", False, True),
        ("no-store", False, False),
        (b"NO-STORE", False, False),
        ("no-cache, no-store", False, False),
        ("max-age=60", True, True),
    ],
)
def test_cache_control(header: str | bytes | None, read: bool, write: bool) -> None:
    control = parse_cache_control(header)
    assert (control.read, control.write) == (read, write)
    decision = decide(req(), ON, header)
    assert (decision.read, decision.write) == (read, write)
    assert (decision.reason is None) == (read or write)


def test_decide_bypasses_what_is_not_cacheable() -> None:
    decision = decide(req(temperature=0.9), ON, "no-cache")
    assert (decision.read, decision.write) == (False, False)
    assert decision.reason is not None


def _response(*finish: Any) -> ChatResponse:
    return ChatResponse(
        choices=tuple(Choice(i, "x", f) for i, f in enumerate(finish)),
        usage=Usage(1, 1),
        upstream_model="m",
    )


def test_storable() -> None:
    assert storable(_response("stop")) is None
    assert storable(_response("length")) is None
    assert storable(_response("tool_calls")) is None
    assert storable(_response("error")) is not None
    assert storable(_response("content_filter")) is not None
    assert storable(_response(None)) is not None
    assert storable(_response()) is not None
