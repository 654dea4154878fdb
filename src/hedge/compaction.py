"""Prompt compaction: fewer prompt tokens for the same request (counted by hedge.tokens).

`compact(request, settings)` is pure and returns a new request plus a `Report` of what it did:

- tool JSON Schemas are minified: annotations no validator reads (`title`, `examples`, OpenAPI's
  `example`, `$comment`) are dropped, and so are keywords whose value is the one a missing
  keyword has (`additionalProperties: true`, `minLength: 0`, `required: []`...). Only keywords in
  schema positions are touched (a property called "title" stays), never data (`enum`, `const`,
  `default`), never unknown keywords. A schema whose `$ref`s point into something this could
  remove, or that uses `unevaluated*` (whose outcome depends on sibling keywords), is handled
  more carefully or left alone: what the schema accepts never changes.
- tool descriptions (and, if configured, schema descriptions) longer than a bound are cut to
  whole sentences, then an ellipsis.
- tools that `tool_choice` makes unreachable are dropped: a named function leaves that tool,
  "none" leaves none (and then tool_choice and parallel_tool_calls go too). Tools the
  conversation has already called are kept, because some providers refuse a history of tool
  calls to tools the request does not define.
- runs of identical system (or developer) messages collapse into one. Only consecutive ones: a
  system message later in a conversation means something in its place.

`count_tokens(request, tokenizer)` estimates a request's prompt tokens with a tokenizer passed in
(the GGUF's for embedded models; `tiktoken_tokenizer` for OpenAI's encodings from a local BPE
file) or, without one, `approx_tokens`. tiktoken is never asked to fetch its BPE files: it
downloads them at run time, which hedge must not do, so `tiktoken_tokenizer` reads a file that
is already on disk (checked against the published SHA-256).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote

import orjson
from pydantic import BaseModel, ConfigDict, Field

from hedge.tokens import compact_json
from hedge.types import ChatRequest, Message, Tool, ToolChoiceFunction

__all__ = [
    "ELLIPSIS",
    "CompactionSettings",
    "Report",
    "compact",
    "minify_schema",
    "trim_text",
]

ELLIPSIS = "…"


class CompactionSettings(BaseModel):
    """A route's prompt compaction. Off unless `enabled`; each step can be turned off."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = False
    minify_schemas: bool = True
    # 400 characters keep the first two or three sentences, which is where a description says
    # what the tool does and when to use it.
    max_tool_description_chars: Annotated[int, Field(ge=16)] | None = 400
    max_schema_description_chars: Annotated[int, Field(ge=16)] | None = Field(
        default=None, description="also cut `description`s inside tool schemas; default: keep"
    )
    drop_unreachable_tools: bool = True
    collapse_system_messages: bool = True


@dataclass(frozen=True, slots=True)
class Report:
    """What `compact` did. `tool_chars_*` is the size of the tools as compact JSON."""

    changed: bool = False
    tools_dropped: tuple[str, ...] = ()
    descriptions_trimmed: int = 0
    schema_keywords_dropped: int = 0
    schemas_left_alone: tuple[str, ...] = ()
    system_messages_collapsed: int = 0
    tool_chars_before: int = 0
    tool_chars_after: int = 0
    notes: tuple[str, ...] = ()


# ---- JSON Schema minification ----------------------------------------------------------

# Where subschemas live. Anything not listed is data or an unknown keyword: left as it is.
_SCHEMA_MAPS = frozenset(
    ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
)
_SCHEMA_VALUES = frozenset(
    {
        *("additionalProperties", "additionalItems", "unevaluatedProperties"),
        *("unevaluatedItems", "contains", "propertyNames", "if", "then", "else", "not", "items"),
    }
)
_SCHEMA_ARRAYS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})

# Annotations: no validator reads them, in any draft.
_ANNOTATIONS = frozenset({"title", "examples", "example", "$comment"})


def _is_true_schema(v: Any) -> bool:
    return v is True or v == {}


def _is_zero(v: Any) -> bool:
    return type(v) in (int, float) and v == 0


# Keyword -> "this value is what the keyword's absence means", so dropping it changes nothing.
# (Not allOf: [] — invalid by the meta-schema, and anyOf/oneOf: [] reject everything.)
_NO_OPS: dict[str, Callable[[Any], bool]] = {
    "additionalProperties": _is_true_schema,
    "additionalItems": _is_true_schema,
    "items": _is_true_schema,
    "propertyNames": _is_true_schema,
    "properties": lambda v: v == {},
    "patternProperties": lambda v: v == {},
    "dependentSchemas": lambda v: v == {},
    "dependentRequired": lambda v: v == {},
    "dependencies": lambda v: v == {},
    "$defs": lambda v: v == {},
    "definitions": lambda v: v == {},
    "required": lambda v: v == [],
    "minLength": _is_zero,
    "minItems": _is_zero,
    "minProperties": _is_zero,
    "uniqueItems": lambda v: v is False,
}

_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def _refs(node: Any) -> Iterable[str]:
    """Every reference anywhere in the document, schema position or not (over-approximating
    is safe: it only makes minification more careful)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _REF_KEYWORDS and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


@dataclass(slots=True)
class _Counts:
    dropped: int = 0
    trimmed: int = 0


def minify_schema(
    schema: dict[str, Any],
    max_description_chars: int | None = None,
    *,
    drop_no_ops: bool = True,
) -> tuple[dict[str, Any], int, int, str | None]:
    """(minified schema, keywords dropped, descriptions trimmed, why left alone or None).

    Never mutates `schema`. The result accepts exactly the instances `schema` accepts.
    `drop_no_ops=False` keeps keywords that spell out a default (annotations still go)."""
    removable = set(_ANNOTATIONS)
    # Both checks below look at the serialised schema first (one C call), and walk it only
    # when it mentions the keyword at all: most tool schemas have neither.
    raw = compact_json(schema)
    # Whether a property counts as "evaluated" depends on applicators beside it, such as
    # additionalProperties: true; dropping one could change the outcome.
    drop_no_ops = drop_no_ops and b'"unevaluated' not in raw
    refs = list(_refs(schema)) if b'Ref"' in raw or b'"$ref"' in raw else []
    if any(not r.startswith("#") for r in refs):
        return schema, 0, 0, "it has references this cannot follow"
    paths = [
        [unquote(seg).replace("~1", "/").replace("~0", "~") for seg in r[1:].split("/")]
        for r in refs
    ]
    if any(path[-1] in _NO_OPS for path in paths):
        # A reference may point at a keyword that would go. (A no-op value is empty, so a
        # reference can only end there, never pass through it.)
        drop_no_ops = False
    # A reference into an annotation is odd, but then keep that annotation everywhere.
    removable -= {seg for path in paths for seg in path}
    counts = _Counts()
    out = _minify(schema, frozenset(removable), drop_no_ops, max_description_chars, counts)
    return out, counts.dropped, counts.trimmed, None


def _minify(
    node: Any,
    removable: frozenset[str],
    drop_no_ops: bool,
    max_description: int | None,
    counts: _Counts,
) -> Any:
    if not isinstance(node, dict):
        return node  # a boolean schema (or garbage a validator would reject either way)

    def sub(v: Any) -> Any:
        return _minify(v, removable, drop_no_ops, max_description, counts)

    out: dict[str, Any] = {}
    for key, raw in node.items():
        if key in removable:
            counts.dropped += 1
            continue
        value = raw
        if key in _SCHEMA_MAPS and isinstance(raw, dict):
            value = {name: sub(s) for name, s in raw.items()}
        elif key in _SCHEMA_ARRAYS and isinstance(raw, list):
            value = [sub(s) for s in raw]
        elif key in _SCHEMA_VALUES:
            value = sub(raw)
        elif key == "dependencies" and isinstance(raw, dict):
            # Draft 4-7: each value is a schema or a list of property names (data).
            value = {name: sub(s) if isinstance(s, dict) else s for name, s in raw.items()}
        elif key == "description" and isinstance(raw, str) and max_description is not None:
            value = trim_text(raw, max_description)
            counts.trimmed += value != raw
        # Checked after minifying the value: {"title": "x"} becomes {}, which is a no-op.
        if drop_no_ops and key in _NO_OPS and _NO_OPS[key](value):
            counts.dropped += 1
            continue
        out[key] = value
    return out


# ---- descriptions ----------------------------------------------------------------------

# A sentence ends at . ! ? followed by space and something that starts a sentence, or at a
# line break (lists and paragraphs).
_SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[A-Z0-9\"'(\[*`-])|(?<=\S)\s*\n\s*"
)


def trim_text(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters; else as many whole sentences as fit, then an
    ellipsis (cut at a word boundary when not even one sentence fits)."""
    if len(text) <= limit:
        return text
    budget = limit - len(ELLIPSIS) - 1
    cut = 0
    for m in _SENTENCE_BREAK.finditer(text):
        # Every break starts right after a non-space character: no trailing space to strip.
        if m.start() > budget:
            break
        cut = m.start()
    if cut == 0:
        space = text.rfind(" ", 0, budget + 1)
        cut = space if space > 0 else budget
    return text[:cut].rstrip() + " " + ELLIPSIS


# ---- the request -----------------------------------------------------------------------


def _tools_json(tools: list[Tool] | None) -> bytes:
    if not tools:
        return b""
    return compact_json([t.model_dump(exclude_none=True) for t in tools])


def _called_tools(messages: list[Message]) -> set[str]:
    return {call.function.name for m in messages for call in m.tool_calls or ()}


def _uses_tools(messages: list[Message]) -> bool:
    return any(m.tool_calls or m.role == "tool" for m in messages)


def compact(request: ChatRequest, settings: CompactionSettings) -> tuple[ChatRequest, Report]:
    """The compacted request and what was done. The request itself when nothing changes."""
    if not settings.enabled:
        return request, Report()
    update: dict[str, Any] = {}
    notes: list[str] = []
    tools = list(request.tools or ())
    dropped: list[str] = []
    if settings.drop_unreachable_tools and tools:
        keep = _reachable(request, notes)
        if keep is not None:
            dropped = [t.function.name for t in tools if t.function.name not in keep]
            tools = [t for t in tools if t.function.name in keep]
            if not tools:
                # No tool left: tool_choice and parallel_tool_calls have nothing to govern.
                update["tool_choice"] = None
                update["parallel_tool_calls"] = None

    new_tools, trimmed, keywords, left_alone = _compact_tools(tools, settings)
    if dropped or trimmed or keywords:
        update["tools"] = new_tools or None

    collapsed = 0
    if settings.collapse_system_messages:
        messages = _collapse_system(request.messages)
        collapsed = len(request.messages) - len(messages)
        if collapsed:
            update["messages"] = messages

    if not update:
        return request, Report(notes=tuple(notes), schemas_left_alone=tuple(left_alone))
    compacted = request.model_copy(update=update)
    return compacted, Report(
        changed=True,
        tools_dropped=tuple(dropped),
        descriptions_trimmed=trimmed,
        schema_keywords_dropped=keywords,
        schemas_left_alone=tuple(left_alone),
        system_messages_collapsed=collapsed,
        tool_chars_before=len(_tools_json(request.tools)),
        tool_chars_after=len(_tools_json(compacted.tools)),
        notes=tuple(notes),
    )


def _reachable(request: ChatRequest, notes: list[str]) -> set[str] | None:
    """The names of the tools the model may still call (or be shown calling), or None when
    all of them are."""
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        return {choice.function.name} | _called_tools(request.messages)
    if choice == "none":
        called = _called_tools(request.messages)
        if _uses_tools(request.messages) and not called:
            # Tool results without the calls they answer: keep everything rather than guess
            # what a provider wants defined.
            notes.append("kept the tools: the conversation has tool results")
            return None
        return called
    return None


def _compact_tools(
    tools: list[Tool], settings: CompactionSettings
) -> tuple[list[Tool], int, int, list[str]]:
    """(tools, descriptions trimmed, schema keywords dropped, schemas left alone and why)."""
    trimmed = keywords = 0
    left_alone: list[str] = []
    out: list[Tool] = []
    for tool in tools:
        fn = tool.function
        schema: bytes | dict[str, Any] | None
        try:
            params = None if fn.parameters is None else orjson.dumps(fn.parameters)
            description, schema, n_dropped, n_trimmed, why = _compact_function_memo(
                fn.description, params, bool(fn.strict), settings
            )
        except TypeError:
            # An integer beyond 64 bits (only from Python callers: the wire parser reads those
            # as floats) cannot be keyed on orjson's bytes: no memo.
            description, schema, n_dropped, n_trimmed, why = _compact_function(
                fn.description, fn.parameters, bool(fn.strict), settings
            )
        if why is not None:
            left_alone.append(f"{fn.name}: {why}")
        fn_update: dict[str, Any] = {}
        if description != fn.description:
            fn_update["description"] = description
            trimmed += 1
        if schema is not None:
            # A fresh dict per request: nothing shares the memoised value.
            fn_update["parameters"] = orjson.loads(schema) if isinstance(schema, bytes) else schema
            keywords += n_dropped
            trimmed += n_trimmed
        if fn_update:
            out.append(tool.model_copy(update={"function": fn.model_copy(update=fn_update)}))
        else:
            out.append(tool)
    return out, trimmed, keywords, left_alone


def _compact_function(
    description: str | None,
    parameters: dict[str, Any] | None,
    strict: bool,
    settings: CompactionSettings,
) -> tuple[str | None, dict[str, Any] | None, int, int, str | None]:
    """(description, minified schema or None when unchanged, keywords dropped, descriptions
    trimmed in the schema, why the schema was left alone)."""
    limit = settings.max_tool_description_chars
    if description is not None and limit is not None:
        description = trim_text(description, limit)
    if not settings.minify_schemas or parameters is None:
        return description, None, 0, 0, None
    # Strict mode (structured outputs) has its own rules about which keywords must be present
    # (`required` listing every property, for one): spelled-out defaults stay there.
    schema, dropped, trimmed, why = minify_schema(
        parameters, settings.max_schema_description_chars, drop_no_ops=not strict
    )
    if why is not None or not (dropped or trimmed):
        return description, None, 0, 0, why
    return description, schema, dropped, trimmed, None


@functools.lru_cache(maxsize=2048)
def _compact_function_memo(
    description: str | None, parameters: bytes | None, strict: bool, settings: CompactionSettings
) -> tuple[str | None, bytes | None, int, int, str | None]:
    """`_compact_function` keyed on the schema's JSON and holding the result as JSON: an
    agent sends the same tools with every turn, and this is most of what compaction costs."""
    loaded = None if parameters is None else orjson.loads(parameters)
    description, schema, dropped, trimmed, why = _compact_function(
        description, loaded, strict, settings
    )
    return description, None if schema is None else orjson.dumps(schema), dropped, trimmed, why


def _collapse_system(messages: list[Message]) -> list[Message]:
    out: list[Message] = []
    for m in messages:
        if m.role in ("system", "developer") and out and out[-1] == m:
            continue
        out.append(m)
    return out
