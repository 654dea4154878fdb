"""Which requests may be answered from the cache, and the key an answer is filed under.

Pure functions of the request and its context. The key is a SHA-256 over a canonical JSON of
everything that can change the answer: the request body as an upstream would receive it (every
message, tool, tool_choice, response_format, sampling parameter, seed, stop, `user` and any
provider-specific extra field) and the context hedge adds (route, the deployments that may
answer, the policies and data class in force, and the tenant). Canonical means: keys sorted, no
whitespace, numbers by value (0.7, 0.70 and 7e-1 are one number; 1 and 1.0 are one number, as
JSON has a single number type), and absent equal to null. Structure is kept: a plain string and
the same text as a content part are different requests. The `stream` flag, `stream_options` and
hedge's own `hedge` body field are left out, so a streamed and a non-streamed request share an
entry (the `hedge` field's policies and data class come in through the key's own arguments).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hedge.cache import CacheSettings
from hedge.types import ChatRequest, ChatResponse, EmbeddingRequest

__all__ = [
    "KEY_VERSION",
    "CacheControl",
    "Decision",
    "cache_key",
    "cache_tenant",
    "cacheable",
    "canonical_json",
    "decide",
    "parse_cache_control",
    "storable",
]

# Part of every key: bumping it (when canonicalisation changes) retires every old entry.
KEY_VERSION = 1

# Fields that do not change the answer: how it is delivered (streamed or not; embeddings as
# numbers or base64, the same float32 values), and hedge's own options (which reach the key as
# `policy_names` and `data_class`).
_NOT_IN_KEY = {"stream", "stream_options", "hedge", "encoding_format"}

# Beyond 2**53 not every integer is a float: such floats stay floats.
_EXACT_INT = 2**53

# ChatRequest's fields declared as float (or holding floats): always floats once validated.
_TYPED_FLOATS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias")
_DIGITS = frozenset(b"0123456789")
_DELIMITERS = frozenset(b",]}")


def _has_integral_float(raw: bytes) -> bool:
    """Whether orjson's output may hold a float equal to an integer: it writes those (below
    1e16) as digits, ".0", then , ] or }. A match inside a string only costs the slow path.
    (bytes.find, not a regex: several times faster on a request with many tools.)"""
    i = raw.find(b".0")
    while i != -1:
        if i > 0 and raw[i - 1] in _DIGITS and i + 2 < len(raw) and raw[i + 2] in _DELIMITERS:
            return True
        i = raw.find(b".0", i + 2)
    return False


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The request's Cache-Control header, as far as the cache honours it.
    `no-cache` (or `max-age=0`): do not answer from the cache, but store the fresh answer.
    `no-store`: neither read nor write."""

    no_cache: bool = False
    no_store: bool = False

    @property
    def read(self) -> bool:
        return not (self.no_cache or self.no_store)

    @property
    def write(self) -> bool:
        return not self.no_store


def parse_cache_control(value: str | bytes | None) -> CacheControl:
    if not value:
        return CacheControl()
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    directives = {d.strip().lower().replace(" ", "") for d in text.split(",")}
    return CacheControl(
        no_cache="no-cache" in directives or "max-age=0" in directives,
        no_store="no-store" in directives,
    )


def cacheable(
    request: ChatRequest | EmbeddingRequest,
    settings: CacheSettings,
    cache_control: CacheControl | None = None,
) -> str | None:
    """None when the request's answer may be cached (and looked up); else why not.
    Embeddings are a function of their input, so always deterministic."""
    if not settings.enabled:
        return "caching is off for this route"
    if cache_control is not None and cache_control.no_store:
        return "the request says Cache-Control: no-store"
    if isinstance(request, EmbeddingRequest):
        return None
    if request.choices_wanted > 1:
        return "n > 1 asks for several different samples"
    if request.logprobs:
        # Cached answers keep no logprobs: a hit could not give what was asked for.
        return "logprobs are not cached"
    deterministic = request.temperature == 0 or request.seed is not None
    if not deterministic and not settings.opt_in_nondeterministic:
        temperature = "the default" if request.temperature is None else f"{request.temperature}"
        return (
            f"sampled at {temperature} temperature without a seed, so each call may answer "
            "differently (send temperature 0 or a seed, or set cache.opt_in_nondeterministic)"
        )
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the gateway does with the cache for one request. `reason` says why neither read
    nor write happens (the x-hedge-cache: bypass case)."""

    read: bool
    write: bool
    reason: str | None = None


def decide(
    request: ChatRequest | EmbeddingRequest,
    settings: CacheSettings,
    cache_control: str | bytes | None = None,
) -> Decision:
    """`cacheable` and the Cache-Control header together: the one call the gateway makes."""
    control = parse_cache_control(cache_control)
    why = cacheable(request, settings, control)
    if why is not None:
        return Decision(read=False, write=False, reason=why)
    return Decision(read=control.read, write=control.write)


def storable(response: ChatResponse) -> str | None:
    """None when a finished answer may be stored; else why not. An answer cut short by an
    error or a content filter is worth asking for again, not repeating."""
    if not response.choices:
        return "the answer has no choices"
    for choice in response.choices:
        if choice.finish_reason in (None, "error", "content_filter"):
            return f"choice {choice.index} finished with {choice.finish_reason!r}"
    return None


def cache_tenant(settings: CacheSettings, api_key_id: str | None) -> str | None:
    """The tenant a key is built for: the caller's key, unless the route shares its cache."""
    return None if settings.shared_across_keys else api_key_id


def _normalise(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {k: _normalise(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_normalise(v) for v in value]
    if kind is float and value.is_integer() and abs(value) < _EXACT_INT:
        # 1.0 -> 1 and -0.0 -> 0: equal JSON numbers get one spelling. (bool is not float,
        # so true never becomes 1.)
        return int(value)
    return value


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # orjson refuses integers beyond 64 bits; the standard library does not. The same
        # input always takes the same path, so keys stay stable.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_json(request: ChatRequest | EmbeddingRequest) -> bytes:
    """The request body as it reaches an upstream (None fields dropped, aliases used, hedge's
    own field removed), less the delivery fields, in canonical form."""
    body = request.model_dump(exclude_none=True, by_alias=True, exclude=_NOT_IN_KEY)
    # Fast path (the walk in _normalise is most of the cost on a request with many tools):
    # fields typed as floats are floats whatever the client sent, so only free-form values
    # (tool schemas, extras) can hold a float that equals an integer; when their serialised
    # form shows none, there is nothing to normalise.
    typed = {k: body.pop(k) for k in _TYPED_FLOATS if k in body}
    rest = _dumps(body)
    if _has_integral_float(rest):
        rest = _dumps(_normalise(body))
    # Two JSON documents on two lines: a field can never move from one to the other.
    return _dumps(_normalise(typed)) + b"\n" + rest


def cache_key(
    request: ChatRequest | EmbeddingRequest,
    *,
    route: str,
    deployment_scope: str | Sequence[str],
    policy_names: Sequence[str],
    data_class: str | None,
    tenant: str | None,
) -> str:
    """The hex SHA-256 an answer to `request` is filed under.

    `deployment_scope`: what may answer, in order (the admitted deployments, or any string
    that changes when they do). `policy_names`: every policy in force (route's and caller's;
    order and repeats do not matter). `tenant`: None for a cache shared across API keys
    (see `cache_tenant`)."""
    scope = [deployment_scope] if isinstance(deployment_scope, str) else list(deployment_scope)
    context = {
        "v": KEY_VERSION,
        "route": route,
        "scope": scope,
        "policies": sorted(set(policy_names)),
        "data_class": data_class,
        "tenant": tenant,
    }
    digest = hashlib.sha256(_dumps(context))
    # JSON output never holds a raw newline, so the hashed bytes split back into exactly one
    # (context, body) pair: no two different pairs can hash the same bytes.
    digest.update(b"\n")
    digest.update(canonical_json(request))
    return digest.hexdigest()
