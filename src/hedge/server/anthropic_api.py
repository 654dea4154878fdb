"""Anthropic's Messages API at the front door: `POST /v1/messages` for every route.

The mirror image of `hedge.backends.anthropic`, which speaks the Messages API to an upstream.
Here a Messages request comes in and becomes the gateway's neutral `ChatRequest`, so any route
(embedded llama.cpp, OpenAI-compatible, Anthropic upstreams, cascades) serves it through the
same planning, policies, fail-over and ledger as the OpenAI door. The answer goes back as a
Messages API message, or as its event stream.

Everything is pure except the `Messages` endpoint at the bottom: `parse_messages_request`
(bytes -> ChatRequest), `messages_to_chat` (parsed body -> ChatRequest), `chat_to_message`
(ChatResponse -> message), `StreamEncoder` (Chunks -> SSE events) and `error_body` (a
HedgeError in Anthropic's error shape). Every error on this endpoint, including one in the
middle of a stream, is rendered in Anthropic's shape, `{"type": "error", "error": {...}}`.

What has no neutral counterpart, and how it is handled:

- `cache_control` (on blocks, system blocks and tools) is a prompt-caching hint: accepted and
  not passed on; it never changes an answer.
- `thinking` blocks sent back in an assistant turn become `reasoning_content`; their signature
  and `redacted_thinking` blocks are opaque to every other provider and are dropped.
- `tool_result` with `is_error: true` is passed on as the result's text prefixed "Error: ".
- `top_k` is passed on as an extra field: OpenAI-compatible upstreams receive it, and the
  others refuse the request by name rather than dropping it.
- A `system` message inside `messages` (this SDK's types allow one) stays a system message at
  its place; it does not count in the alternation of user and assistant turns.
- `thinking: {type: disabled}` is the Messages API's default and asks for nothing; an enabled
  thinking budget, or `output_config.effort`, becomes a `reasoning_effort`, and
  `output_config.format` a strict JSON-schema `response_format`.
- The neutral response does not say which stop sequence matched, so a stopped answer reports
  `end_turn` unless the caller of `chat_to_message` knows better.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hedge.backends.anthropic import MIN_THINKING_BUDGET, THINKING_BUDGET
from hedge.errors import HedgeError, InvalidRequest, MethodNotAllowed, Unsupported, UpstreamError
from hedge.gateway import Gateway
from hedge.server.asgi import (
    JSON_HEADERS,
    PARSED_BODY,
    ClientGone,
    Receive,
    Scope,
    Send,
    read_body,
    relay_events,
    send_bytes,
)
from hedge.server.asgi import Message as AsgiMessage
from hedge.server.openai_api import (
    caller_of,
    describe_validation,
    json_kind,
    load_json,
    provenance_headers,
    trace_headers,
)
from hedge.trace import Trace
from hedge.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    Chunk,
    FieldError,
    FinishReason,
    HedgeOptions,
    ToolCallDelta,
    Usage,
)

log = logging.getLogger("hedge.server")

# Tool names become OpenAI function names, which allow 1-64 of these characters.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# OpenAI's `stop` takes at most four sequences, and every upstream wire but Anthropic's is
# OpenAI's.
MAX_STOP_SEQUENCES = 4
# output_config.effort -> reasoning_effort.
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


# ---- the request, as the Messages API defines it ------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


CacheControl = dict[str, Any] | None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl = None
    # Echoed back by SDKs when a previous answer is appended to the conversation.
    citations: list[Any] | None = None


class ImageSource(_Strict):
    type: Literal["base64", "url"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"] | None = None
    data: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> ImageSource:
        if self.type == "base64":
            if self.media_type is None:
                raise FieldError("media_type", "a base64 image source needs 'media_type'")
            if not self.data:
                raise FieldError("data", "a base64 image source needs its 'data'")
            if self.url is not None:
                raise FieldError("url", "a base64 image source takes 'data', not 'url'")
        else:
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise FieldError("url", "a url image source needs an http(s) 'url'")
            if self.data is not None or self.media_type is not None:
                raise FieldError("data", "a url image source takes only 'url'")
        return self

    def as_url(self) -> str:
        """The image as an OpenAI image_url: the URL itself, or a base64 data: URL."""
        if self.type == "url":
            return str(self.url)
        return f"data:{self.media_type};base64,{self.data}"


class ImageBlock(_Strict):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl = None


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl = None


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    # A list is validated block by block (text and image only) by `_turn`.
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None
    cache_control: CacheControl = None


class ThinkingBlock(_Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


Block = (
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
)
_BLOCKS: dict[str, type[Block]] = {
    "text": TextBlock,
    "image": ImageBlock,
    "tool_use": ToolUseBlock,
    "tool_result": ToolResultBlock,
    "thinking": ThinkingBlock,
    "redacted_thinking": RedactedThinkingBlock,
}
_RESULT_BLOCKS: dict[str, type[Block]] = {"text": TextBlock, "image": ImageBlock}
_SYSTEM_BLOCKS: dict[str, type[Block]] = {"text": TextBlock}
# Real Messages API block types this gateway cannot carry to every upstream.
_UNSUPPORTED_BLOCKS = frozenset(
    {
        "document",
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)
_ROLE_OF_BLOCK = {
    "tool_use": "assistant",
    "thinking": "assistant",
    "redacted_thinking": "assistant",
    "tool_result": "user",
    "image": "user",
}


class MessageParam(_Strict):
    # A system message in the conversation (text only) is an instruction at that point; it
    # does not count in the alternation of user and assistant turns.
    role: Literal["user", "assistant", "system"]
    # Blocks are validated one by one, by their `type`, so an error names the exact block.
    content: str | list[dict[str, Any]]


class ToolParam(_Strict):
    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl = None

    @model_validator(mode="before")
    @classmethod
    def _client_tool(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in (None, "custom"):
            raise FieldError(
                "type",
                f"server tools (type {kind!r}) are not supported by this gateway; a client "
                "tool has a name, an input_schema and no type, or type 'custom'",
            )
        return data

    @model_validator(mode="after")
    def _valid(self) -> ToolParam:
        if not _TOOL_NAME.match(self.name):
            raise FieldError(
                "name",
                "tool names must be 1-64 characters of letters, digits, '_' or '-' "
                f"(got {self.name!r})",
            )
        if self.input_schema.get("type") != "object":
            raise FieldError("input_schema.type", "a tool's input_schema must have type 'object'")
        return self


class ToolChoiceParam(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_for_tool(self) -> ToolChoiceParam:
        if self.type == "tool" and not self.name:
            raise FieldError("name", "tool_choice of type 'tool' needs the 'name' of a tool")
        if self.type != "tool" and self.name is not None:
            raise FieldError("name", f"tool_choice of type '{self.type}' takes no 'name'")
        return self


class ThinkingParam(_Strict):
    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = None

    @model_validator(mode="after")
    def _budget_when_enabled(self) -> ThinkingParam:
        if self.type == "disabled":
            if self.budget_tokens is not None:
                raise FieldError("budget_tokens", "disabled thinking takes no 'budget_tokens'")
        elif self.budget_tokens is None:
            raise FieldError("budget_tokens", "enabled thinking needs 'budget_tokens'")
        elif self.budget_tokens < MIN_THINKING_BUDGET:
            raise FieldError(
                "budget_tokens",
                f"must be at least {MIN_THINKING_BUDGET} (got {self.budget_tokens})",
            )
        return self


class Metadata(_Strict):
    user_id: str | None = None


class OutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Strict):
    """The Messages API's effort and structured-output settings."""

    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class MessagesBody(_Strict):
    """A Messages API request, checked field by field; the rules across messages (turn order,
    tool ids) are checked after, by `_check_conversation`."""

    model: str = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1)]
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: Metadata | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl = None  # a caching hint for the whole prompt: not passed on
    # hedge's own options, as on the OpenAI door: never sent upstream.
    hedge: HedgeOptions | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MessagesBody:
        if self.stop_sequences is not None and len(self.stop_sequences) > MAX_STOP_SEQUENCES:
            raise FieldError(
                "stop_sequences",
                f"at most {MAX_STOP_SEQUENCES} stop sequences are supported by this gateway "
                f"(got {len(self.stop_sequences)})",
            )
        budget = self.thinking.budget_tokens if self.thinking else None
        if budget is not None and budget >= self.max_tokens:
            raise FieldError(
                "thinking.budget_tokens",
                f"must be less than max_tokens ({budget} >= {self.max_tokens}): thinking "
                "counts within max_tokens",
            )
        names = [t.name for t in self.tools or ()]
        choice = self.tool_choice
        if choice is not None and choice.type in ("any", "tool") and not names:
            raise FieldError(
                "tool_choice", f"tool_choice '{choice.type}' needs a non-empty 'tools'"
            )
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise FieldError(
                "tool_choice.name",
                f"names tool '{choice.name}', which is not among 'tools' ({', '.join(names)})",
            )
        return self


Role = Literal["user", "assistant", "system"]
Turn = tuple[Role, list[Block]]


# ---- request: Messages -> ChatRequest (pure) ----------------------------------------------


def parse_messages_request(body: bytes, parsed: Any = None) -> ChatRequest:
    """Bytes -> ChatRequest, or an InvalidRequest that says what is wrong and where.
    `parsed`: the body already parsed as JSON (by the key guard), when it was."""
    return messages_to_chat(parsed if parsed is not None else load_json(body))


def messages_to_chat(body: Any) -> ChatRequest:
    """A parsed Messages API request -> the neutral ChatRequest. Raises InvalidRequest (or
    Unsupported, for real block types the gateway cannot carry) naming the field at fault."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not {json_kind(body)}.", code="invalid_json"
        )
    try:
        parsed = MessagesBody.model_validate(body)
    except ValidationError as e:
        message, param = describe_validation(e)
        raise InvalidRequest(message, param=param) from None
    turns = [_turn(m, i) for i, m in enumerate(parsed.messages)]
    _check_conversation(turns)
    fields: dict[str, Any] = {
        "model": parsed.model,
        "max_tokens": parsed.max_tokens,
        "messages": [*_system(parsed.system), *_chat_messages(turns)],
        "stream": parsed.stream,
        **_sampling(parsed),
        **_tooling(parsed),
    }
    if parsed.hedge is not None:
        fields["hedge"] = parsed.hedge.model_dump()
    try:
        return ChatRequest.model_validate(fields)
    except ValidationError as e:  # every rule is checked above; this keeps the door total
        message, param = describe_validation(e)
        raise InvalidRequest(message, param=param) from None


def effort_for_budget(budget_tokens: int) -> str:
    """A thinking budget as a reasoning effort: the largest effort whose budget in
    `THINKING_BUDGET` fits, so the anthropic backend maps it back to at most what was asked."""
    by_budget = sorted(THINKING_BUDGET.items(), key=lambda item: item[1])
    effort = by_budget[0][0]  # Anthropic's smallest budget: nothing asks for less
    for name, tokens in by_budget:
        if tokens <= budget_tokens:
            effort = name
    return effort


def _sampling(parsed: MessagesBody) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(parsed, name)
        if value is not None:
            out[name] = value  # top_k is no ChatRequest field: it travels as an extra
    if parsed.stop_sequences:
        out["stop"] = list(parsed.stop_sequences)
    if parsed.metadata is not None and parsed.metadata.user_id is not None:
        out["user"] = parsed.metadata.user_id
    thinking = parsed.thinking
    if thinking is not None and thinking.budget_tokens is not None:
        out["reasoning_effort"] = effort_for_budget(thinking.budget_tokens)
    return out | _output(parsed.output_config)


def _output(config: OutputConfig | None) -> dict[str, Any]:
    """output_config: an explicit effort (the neutral scale tops out at "high", so "xhigh" and
    "max" ask for that) wins over a thinking budget; a format becomes a strict JSON schema."""
    out: dict[str, Any] = {}
    if config is None:
        return out
    if config.effort is not None:
        out["reasoning_effort"] = EFFORTS[config.effort]
    if config.format is not None:
        schema = {"name": "output", "schema": config.format.schema_, "strict": True}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    return out


def _tooling(parsed: MessagesBody) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if parsed.tools:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.input_schema,
                },
            }
            for t in parsed.tools
        ]
    choice = parsed.tool_choice
    if choice is None or (not parsed.tools and choice.type in ("auto", "none")):
        return out  # with no tools, 'auto' and 'none' ask for nothing
    if choice.type == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def _validate_block(raw: dict[str, Any], where: str, kinds: dict[str, type[Block]]) -> Block:
    kind = raw.get("type")
    if not isinstance(kind, str):
        problem = "this field is required" if kind is None else "must be a string"
        raise InvalidRequest(f"Invalid '{where}.type': {problem}.", param=f"{where}.type")
    model = kinds.get(kind)
    if model is None:
        if kind in _UNSUPPORTED_BLOCKS:
            raise Unsupported(
                f"Invalid '{where}.type': content blocks of type '{kind}' are not supported by "
                "this gateway.",
                param=f"{where}.type",
            )
        raise InvalidRequest(
            f"Invalid '{where}.type': unknown content block type '{kind}' here; the types "
            f"taken are {', '.join(kinds)}.",
            param=f"{where}.type",
        )
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise _nested(e, where) from None


def _nested(error: ValidationError, where: str) -> InvalidRequest:
    """A block's validation error, with its path made absolute."""
    message, param = describe_validation(error)
    if param is None:
        return InvalidRequest(message.replace("Invalid request body", f"Invalid '{where}'", 1))
    path = f"{where}.{param}"
    return InvalidRequest(message.replace(f"Invalid '{param}'", f"Invalid '{path}'", 1), param=path)


def _turn(message: MessageParam, i: int) -> Turn:
    """A message with every block validated by its type (a string is one text block)."""
    content = message.content
    if isinstance(content, str):
        return message.role, ([TextBlock(type="text", text=content)] if content else [])
    blocks: list[Block] = []
    kinds = _SYSTEM_BLOCKS if message.role == "system" else _BLOCKS
    for j, raw in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        block = _validate_block(raw, where, kinds)
        if isinstance(block, ToolResultBlock) and isinstance(block.content, list):
            for k, part in enumerate(block.content):
                _validate_block(part, f"{where}.content[{k}]", _RESULT_BLOCKS)
        blocks.append(block)
    return message.role, blocks


def _check_conversation(turns: list[Turn]) -> None:
    """The Messages API's rules across messages: the first user or assistant turn is the
    user's, those turns alternate (system messages aside), blocks sit in the right role, only a
    final assistant turn may be empty, and tool results answer exactly the tool calls of the
    message right before them."""
    _check_alternation(turns)
    last = len(turns) - 1
    for i, (role, blocks) in enumerate(turns):
        if not blocks and not (i == last and role == "assistant"):
            raise InvalidRequest(
                f"Invalid 'messages[{i}].content': must not be empty (only a final assistant "
                "message may be).",
                param=f"messages[{i}].content",
            )
        for j, block in enumerate(blocks):
            _check_block(block, role, f"messages[{i}].content[{j}]")
        _check_tool_results(turns, i)


def _check_alternation(turns: list[Turn]) -> None:
    previous: tuple[int, Role] | None = None
    for i, (role, _) in enumerate(turns):
        if role == "system":
            continue
        if previous is None and role != "user":
            raise InvalidRequest(
                f"Invalid 'messages[{i}].role': the first message must have role 'user' "
                "(system messages may come before it).",
                param=f"messages[{i}].role",
            )
        if previous is not None and previous[1] == role:
            raise InvalidRequest(
                f"Invalid 'messages[{i}].role': roles must alternate between 'user' and "
                f"'assistant', and messages[{previous[0]}] is '{role}' too.",
                param=f"messages[{i}].role",
            )
        previous = (i, role)
    if previous is None:
        raise InvalidRequest(
            "Invalid 'messages': there must be a user message, not only system messages.",
            param="messages",
        )


def _check_block(block: Block, role: str, where: str) -> None:
    belongs = _ROLE_OF_BLOCK.get(block.type)
    if belongs is not None and belongs != role:
        raise InvalidRequest(
            f"Invalid '{where}': a '{block.type}' block may only appear in a {belongs} message.",
            param=where,
        )
    if isinstance(block, TextBlock) and not block.text:
        raise InvalidRequest(
            f"Invalid '{where}.text': text content blocks must be non-empty.",
            param=f"{where}.text",
        )


def _check_tool_results(turns: list[Turn], i: int) -> None:
    """Turn i's tool_result blocks against the tool_use blocks of turn i - 1, both ways."""
    role, blocks = turns[i]
    if role == "assistant":
        calls = [b.id for b in blocks if isinstance(b, ToolUseBlock)]
        if len(set(calls)) < len(calls):
            raise InvalidRequest(
                f"Invalid 'messages[{i}].content': tool_use ids must be unique.",
                param=f"messages[{i}].content",
            )
        if calls and i == len(turns) - 1:
            raise InvalidRequest(
                f"Invalid 'messages[{i}].content': the conversation ends with tool_use blocks "
                "that no tool_result answers; send their results in a user message.",
                param=f"messages[{i}].content",
            )
        return
    # A tool result must come right after its call: OpenAI's wire requires the tool messages to
    # follow the assistant message that made the calls.
    asked = [b.id for b in turns[i - 1][1] if isinstance(b, ToolUseBlock)] if i else []
    answered: list[str] = []
    for j, block in enumerate(blocks):
        if not isinstance(block, ToolResultBlock):
            continue
        if block.tool_use_id not in asked or block.tool_use_id in answered:
            where = f"messages[{i}].content[{j}].tool_use_id"
            again = " again" if block.tool_use_id in answered else ""
            raise InvalidRequest(
                f"Invalid '{where}': '{block.tool_use_id}' does not answer a tool_use block of "
                f"the previous message{again} (its tool_use ids: {', '.join(asked) or 'none'}).",
                param=where,
            )
        answered.append(block.tool_use_id)
    missing = [c for c in asked if c not in answered]
    if missing:
        raise InvalidRequest(
            f"Invalid 'messages[{i}].content': the tool_use block(s) {', '.join(missing)} of "
            f"messages[{i - 1}] need a tool_result block here.",
            param=f"messages[{i}].content",
        )


def _system(system: str | list[TextBlock] | None) -> list[dict[str, Any]]:
    if system is None:
        return []
    text = system if isinstance(system, str) else "\n\n".join(b.text for b in system)
    return [{"role": "system", "content": text}] if text else []


def _chat_messages(turns: list[Turn]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for role, blocks in turns:
        if role == "system":
            out.append({"role": "system", "content": "\n\n".join(_texts(blocks))})
            continue
        if role == "assistant":
            if blocks:
                out.append(_assistant(blocks))
            continue
        out.extend(_tool_message(b) for b in blocks if isinstance(b, ToolResultBlock))
        rest = [b for b in blocks if not isinstance(b, ToolResultBlock)]
        if rest:
            out.append({"role": "user", "content": _content(rest)})
    return out


def _texts(blocks: list[Block]) -> list[str]:
    return [b.text for b in blocks if isinstance(b, TextBlock)]


def _assistant(blocks: list[Block]) -> dict[str, Any]:
    text = "".join(_texts(blocks))
    thinking = [b.thinking for b in blocks if isinstance(b, ThinkingBlock)]
    calls = [
        {
            "id": b.id,
            "type": "function",
            "function": {"name": b.name, "arguments": orjson.dumps(b.input).decode()},
        }
        for b in blocks
        if isinstance(b, ToolUseBlock)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message


def _content(blocks: Sequence[Block]) -> str | list[dict[str, Any]]:
    """Text and image blocks as OpenAI content: a lone text block is a plain string."""
    if len(blocks) == 1 and isinstance(blocks[0], TextBlock):
        return blocks[0].text
    parts: list[dict[str, Any]] = []
    for b in blocks:
        if isinstance(b, TextBlock):
            parts.append({"type": "text", "text": b.text})
        elif isinstance(b, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": b.source.as_url()}})
    return parts


def _tool_message(block: ToolResultBlock) -> dict[str, Any]:
    raw = block.content
    content: str | list[dict[str, Any]]
    if raw is None or isinstance(raw, str):
        content = raw or ""
    else:
        content = _content([_RESULT_BLOCKS[p["type"]].model_validate(p) for p in raw])
    if block.is_error:
        if isinstance(content, str):
            content = f"Error: {content}"
        else:
            content = [{"type": "text", "text": "Error:"}, *content]
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": content}


# ---- response: ChatResponse -> Messages (pure) --------------------------------------------


def stop_reason(finish: FinishReason | None, called_tools: bool, stop_sequence: str | None) -> str:
    """A neutral finish reason as a Messages API stop_reason. Tool calls win over "stop" (some
    servers say "stop" beside tool calls, and Anthropic clients loop on "tool_use")."""
    if finish == "length":
        return "max_tokens"
    if finish == "content_filter":
        return "refusal"
    if finish == "tool_calls" or called_tools:
        return "tool_use"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def render_usage(usage: Usage) -> dict[str, int]:
    """Neutral usage in Anthropic's terms: input_tokens excludes the tokens read from cache
    (any cache writes stay inside it, which keeps the sum of the three equal to prompt_tokens)."""
    return {
        "input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def chat_to_message(response: ChatResponse, model: str, request_id: str) -> dict[str, Any]:
    """A neutral response -> a Messages API message (its first choice: the Messages API has
    one). Raises UpstreamError when a tool call's arguments are not a JSON object."""
    choice = response.choices[0]
    stop_sequence = choice.stop_sequence if choice.finish_reason == "stop" else None
    reason = stop_reason(choice.finish_reason, bool(choice.tool_calls), stop_sequence)
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _content_blocks(choice),
        "stop_reason": "refusal" if choice.refusal is not None else reason,
        "stop_sequence": stop_sequence,
        "usage": render_usage(response.usage),
    }


def _content_blocks(choice: Choice) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if choice.reasoning:
        # No provider but Anthropic signs its thinking, and Anthropic's signature was not kept.
        blocks.append({"type": "thinking", "thinking": choice.reasoning, "signature": ""})
    text = choice.content or (choice.refusal if choice.refusal is not None else "")
    if text:
        blocks.append({"type": "text", "text": text})
    for call in choice.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
        )
    return blocks


def _input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as the object a tool_use block carries."""
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            f"the model called a tool with arguments that are not a JSON object: "
            f"{arguments[:200]!r}",
            retryable=False,
        )
    return value


# ---- stream: Chunks -> Messages API events (pure) -----------------------------------------


def sse_event(kind: str, payload: dict[str, Any]) -> bytes:
    """One named SSE event whose data repeats its name as `type`, as Anthropic's do."""
    data = orjson.dumps({"type": kind, **payload})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class StreamEncoder:
    """Renders one stream's Chunks as Messages API events.

    `start()` opens the message, `feed(chunk)` turns each chunk into content block events,
    `finish()` closes the last block and the message with its stop_reason and usage. A block
    is opened when its kind (thinking, text, one tool call) first appears and closed when
    another begins: blocks are numbered in order, as the Messages API requires. Only choice 0
    is rendered, the only one a Messages request asks for.
    """

    def __init__(self, model: str, request_id: str) -> None:
        self.model = model
        self.request_id = request_id
        self._blocks = 0  # blocks opened so far; the open one is number _blocks - 1
        self._open: tuple[str, int] | None = None  # (kind, tool call index or -1)
        self._tools: set[int] = set()
        self._finish: FinishReason | None = None
        self._stop_sequence: str | None = None
        self._usage = Usage()

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.request_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Counted upstream only once the answer is done: message_delta restates it all.
            "usage": render_usage(Usage()),
        }
        return sse_event("message_start", {"message": message}) + sse_event("ping", {})

    def feed(self, chunk: Chunk) -> bytes:
        """The events of one chunk (b"" when it carries nothing to show). Raises UpstreamError
        when a tool call's arguments continue after another block began."""
        if chunk.index != 0:
            return b""
        out: list[bytes] = []
        if chunk.reasoning:
            out += self._text("thinking", chunk.reasoning)
        if chunk.content:
            out += self._text("text", chunk.content)
        for delta in chunk.tool_calls:
            out += self._tool(delta)
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
            self._stop_sequence = chunk.stop_sequence if chunk.finish_reason == "stop" else None
        if chunk.usage is not None:
            self._usage = chunk.usage
        return b"".join(out)

    def error(self, error: HedgeError) -> bytes:
        return error_event(error)

    def finish(self) -> bytes:
        reason = stop_reason(self._finish, bool(self._tools), self._stop_sequence)
        stop_sequence = self._stop_sequence if reason == "stop_sequence" else None
        delta = {"stop_reason": reason, "stop_sequence": stop_sequence}
        return b"".join(
            [
                *self._close(),
                sse_event("message_delta", {"delta": delta, "usage": render_usage(self._usage)}),
                sse_event("message_stop", {}),
            ]
        )

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse_event("content_block_stop", {"index": self._blocks - 1})]

    def _begin(self, block: dict[str, Any], key: tuple[str, int]) -> list[bytes]:
        out = self._close()
        out.append(
            sse_event("content_block_start", {"index": self._blocks, "content_block": block})
        )
        self._blocks += 1
        self._open = key
        return out

    def _text(self, kind: Literal["thinking", "text"], text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open != (kind, -1):
            start: dict[str, Any] = {"type": kind, kind: ""}
            if kind == "thinking":
                start["signature"] = ""
            out = self._begin(start, (kind, -1))
        delta = {"type": f"{kind}_delta", kind: text}
        out.append(sse_event("content_block_delta", {"index": self._blocks - 1, "delta": delta}))
        return out

    def _tool(self, delta: ToolCallDelta) -> list[bytes]:
        out: list[bytes] = []
        key = ("tool_use", delta.index)
        if delta.index not in self._tools:
            if not delta.name:
                raise UpstreamError(
                    "the upstream streamed a tool call without its name", retryable=False
                )
            self._tools.add(delta.index)
            call_id = delta.id or f"toolu_{self.request_id}_{delta.index}"
            block = {"type": "tool_use", "id": call_id, "name": delta.name, "input": {}}
            out = self._begin(block, key)
        elif self._open != key:
            raise UpstreamError(
                f"the upstream interleaved tool call {delta.index}'s arguments with other "
                "content, which a Messages API stream cannot carry",
                retryable=False,
            )
        if delta.arguments:
            json_delta = {"type": "input_json_delta", "partial_json": delta.arguments}
            out.append(
                sse_event("content_block_delta", {"index": self._blocks - 1, "delta": json_delta})
            )
        return out


# ---- errors in Anthropic's shape ----------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """The Messages API's error type for an HTTP status."""
    return _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(error: HedgeError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`, plus hedge's details (such as the
    policy refusals), which clients ignore when they do not know them."""
    return {
        "type": "error",
        "error": {"type": error_type(error.status), "message": error.message, **error.details},
    }


def error_event(error: HedgeError) -> bytes:
    return sse_event("error", {"error": error_body(error)["error"]})


def new_message_id() -> str:
    return f"msg_{os.urandom(12).hex()}"


# ---- the endpoint -------------------------------------------------------------------------


class Messages:
    """POST /v1/messages: the Messages API over every route; errors in Anthropic's shape."""

    def __init__(self, gateway: Gateway, max_body: int) -> None:
        self.gateway = gateway
        self.max_body = max_body
        self.provenance = {name: provenance_headers(p) for name, p in gateway.provenance.items()}

    def headers(self, trace: Trace) -> list[tuple[bytes, bytes]]:
        # `request-id` is where Anthropic's SDKs look for the id of a request.
        return [
            *trace_headers(trace),
            (b"request-id", trace.request_id.encode()),
            *self.provenance.get(trace.answered_by or "", ()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: AsgiMessage) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(
                    f"{scope['method']} is not allowed on {scope['path']}; use POST.",
                    headers={"Allow": "POST"},
                )
            await self._serve(scope, receive, tracked)
        except ClientGone:
            raise
        except HedgeError as e:
            if not started:
                await send_error(send, e)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                body = {
                    "type": "error",
                    "error": {
                        "type": "api_error",
                        "message": "hedge hit an internal error; it has been logged.",
                    },
                }
                await send_bytes(send, 500, orjson.dumps(body), JSON_HEADERS)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(scope, receive, self.max_body)
        request = parse_messages_request(body, scope.get(PARSED_BODY))
        trace = Trace(route=request.model, request_id=new_message_id())
        caller = caller_of(scope, request)
        try:
            if not request.stream:
                response = await self.gateway.chat(request, trace, caller)
                message = chat_to_message(response, request.model, trace.request_id)
                # Recorded before the answer goes out, so feedback sent right after finds it.
                self.gateway.record(trace, 200)
                headers = [*JSON_HEADERS, *self.headers(trace)]
                await send_bytes(send, 200, orjson.dumps(message), headers)
                return
            chunks = await self.gateway.stream(request, trace, caller)
        except HedgeError as e:
            e.headers.setdefault("x-request-id", trace.request_id)
            e.headers.setdefault("request-id", trace.request_id)
            if trace.attempts:
                e.headers.setdefault("x-hedge-attempts", str(len(trace.attempts)))
            self.gateway.record(trace, e.status, e.code)
            raise
        await relay_events(
            chunks,
            StreamEncoder(request.model, trace.request_id),
            self.headers(trace),
            receive,
            send,
            lambda status: self.gateway.record(trace, status),
        )


async def send_error(send: Send, error: HedgeError) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send_bytes(send, error.status, orjson.dumps(error_body(error)), [*JSON_HEADERS, *headers])
