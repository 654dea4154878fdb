"""Anthropic's Messages API as an upstream.

Owns the mapping between the gateway's OpenAI-shaped `ChatRequest` and the Messages API:
`unsupported` (what the Messages API cannot honour), `to_wire` (request body), `from_wire`
(non-streamed reply), `StreamTranslator` (stream events -> Chunks), all pure, then one short
sender, `AnthropicBackend`. Nothing asked for is dropped silently: a parameter the Messages API
cannot honour is reported by `unsupported`, and `to_wire` refuses it too if called anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import orjson

from hedge.backends.base import DeploymentStatus, unknown_fields
from hedge.backends.http import HttpPool, JsonEndpoint
from hedge.config import AnthropicDeployment
from hedge.errors import InvalidRequest, Unsupported, UpstreamError
from hedge.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    Chunk,
    ContentPart,
    FinishReason,
    Message,
    ToolCall,
    ToolCallDelta,
    ToolCallIn,
    ToolChoiceFunction,
    Usage,
)

KIND = "anthropic"

# reasoning_effort -> thinking budget_tokens. "none" and "minimal" leave thinking off: the
# smallest budget Anthropic accepts (1024) is already more than "minimal" suggests.
THINKING_BUDGET: dict[str, int] = {"low": 1024, "medium": 4096, "high": 16384}
MIN_THINKING_BUDGET = 1024
# Anthropic refuses top_p below this while thinking is on.
MIN_THINKING_TOP_P = 0.95
MAX_TEMPERATURE = 1.0

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # Only server-side tools pause a turn, and this backend never sends any.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_PART_TYPES = ("text", "image_url")


# --- what the Messages API cannot do -----------------------------------------------------------


def unsupported(request: ChatRequest) -> str | None:
    """Why an Anthropic deployment cannot serve the request as asked (None when it can)."""
    for check in (
        lambda r: unknown_fields(r, KIND),
        _unsupported_params,
        _unsupported_sampling,
        _unsupported_parts,
        _thinking_conflict,
    ):
        reason = check(request)
        if reason:
            return reason
    return None


def _unsupported_params(request: ChatRequest) -> str | None:
    if request.choices_wanted > 1:
        return f"n > 1 is not supported by {KIND} deployments"
    if request.logprobs:
        return f"logprobs are not supported by {KIND} deployments"
    if request.response_format is not None and request.response_format.type != "text":
        return (
            f"response_format '{request.response_format.type}' is not supported by {KIND} "
            "deployments (the Messages API has no JSON mode)"
        )
    if request.seed is not None:
        return f"seed is not supported by {KIND} deployments (the Messages API has no seed)"
    if request.logit_bias:
        return f"logit_bias is not supported by {KIND} deployments"
    return None


def _unsupported_sampling(request: ChatRequest) -> str | None:
    # A zero penalty is the OpenAI default that some SDKs always send: it asks for nothing.
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            return f"{name} is not supported by {KIND} deployments"
    if request.temperature is not None and request.temperature > MAX_TEMPERATURE:
        return (
            f"temperature {request.temperature:g} is above {MAX_TEMPERATURE:g}, the highest "
            f"{KIND} deployments accept (their range is 0 to 1)"
        )
    return None


def _unsupported_parts(request: ChatRequest) -> str | None:
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.type not in _PART_TYPES:
                    return (
                        f"messages[{i}].content[{j}]: content parts of type '{part.type}' "
                        f"are not supported by {KIND} deployments"
                    )
    return None


def _thinking_conflict(request: ChatRequest) -> str | None:
    """Extended thinking's own rules, which the Messages API enforces with a 400."""
    if request.reasoning_effort not in THINKING_BUDGET:
        return None
    effort = f"reasoning_effort '{request.reasoning_effort}'"
    limit = request.token_limit
    if limit is not None and limit <= MIN_THINKING_BUDGET:
        return (
            f"{effort} needs max_tokens above {MIN_THINKING_BUDGET} on {KIND} deployments "
            "(thinking takes at least that many)"
        )
    if request.temperature is not None and request.temperature != 1:
        return f"a temperature other than 1 cannot be combined with {effort} on {KIND} deployments"
    if request.top_p is not None and request.top_p < MIN_THINKING_TOP_P:
        return f"top_p below {MIN_THINKING_TOP_P:g} cannot be combined with {effort} on {KIND}"
    if request.tools and (
        request.tool_choice == "required" or isinstance(request.tool_choice, ToolChoiceFunction)
    ):
        return f"a forced tool_choice cannot be combined with {effort} on {KIND} deployments"
    return None


# --- request -----------------------------------------------------------------------------------


def to_wire(request: ChatRequest, deployment: AnthropicDeployment) -> dict[str, Any]:
    """A ChatRequest -> a Messages API body. Raises InvalidRequest for what cannot be sent."""
    reason = unsupported(request)
    if reason:
        raise Unsupported(reason)
    system, messages = _conversation(request.messages)
    max_tokens, budget = _token_limits(request, deployment)
    body: dict[str, Any] = {
        "model": deployment.upstream_model,
        "messages": messages,
        "max_tokens": max_tokens,
    }
    if system:
        body["system"] = system
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    body.update(_sampling(request, deployment, thinking=budget is not None))
    if request.tools:
        body["tools"] = [
            _tool(t.function.name, t.function.description, t.function.parameters)
            for t in request.tools
        ]
        choice = _tool_choice(request)
        if choice is not None:
            body["tool_choice"] = choice
    if request.stop_list:
        body["stop_sequences"] = request.stop_list
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.stream:
        body["stream"] = True
    return body


def _conversation(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, alternating turns). System and developer messages are hoisted wherever
    they stand, since the Messages API has a single top-level `system`."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if message.role in ("system", "developer"):
            if text := message.text():
                system.append(text)
            continue
        blocks = _blocks(message, i)
        if not blocks:
            continue
        role = "assistant" if message.role == "assistant" else "user"
        # The Messages API requires user and assistant turns to alternate; OpenAI does not.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _blocks(message: Message, i: int) -> list[dict[str, Any]]:
    # `name` and `reasoning_content` have no Messages API counterpart: thinking can only be
    # sent back with the signature Anthropic issued, which an OpenAI client never had.
    content = message.content
    if message.role == "tool":
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": content if isinstance(content, str) else _parts(content or [], i),
            }
        ]
    blocks: list[dict[str, Any]] = []
    if isinstance(content, list):
        blocks = _parts(content, i)
    elif content:
        # Empty text blocks are a 400 upstream, and OpenAI SDKs send "" beside tool calls.
        blocks = [{"type": "text", "text": content}]
    for k, call in enumerate(message.tool_calls or ()):
        blocks.append(_tool_use(call, i, k))
    return blocks


def _parts(parts: list[ContentPart], i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        extra = part.model_extra or {}
        where = f"messages[{i}].content[{j}]"
        if part.type == "text":
            if extra["text"]:
                blocks.append({"type": "text", "text": extra["text"]})
        elif part.type == "image_url":
            blocks.append(_image(extra.get("image_url"), where))
        else:  # `unsupported` names these first; this keeps to_wire total on its own.
            raise Unsupported(
                f"{where}: content parts of type '{part.type}' are not supported by {KIND} "
                "deployments"
            )
    return blocks


def _image(raw: Any, where: str) -> dict[str, Any]:
    url = raw.get("url") if isinstance(raw, dict) else raw
    if not isinstance(url, str):
        raise InvalidRequest(f"{where}: an image_url part needs image_url.url", param=where)
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        params = header.split(";")
        if not comma or params[-1] != "base64" or not params[0]:
            raise InvalidRequest(
                f"{where}: a data: image URL must be base64 (data:<media type>;base64,...)",
                param=where,
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": params[0], "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"{where}: an image URL must be a data: or http(s) URL", param=where)


def _tool_use(call: ToolCallIn, i: int, k: int) -> dict[str, Any]:
    where = f"messages[{i}].tool_calls[{k}].function.arguments"
    text = call.function.arguments
    try:
        # Some clients send "" for a call without arguments; the Messages API needs an object.
        arguments = orjson.loads(text) if text.strip() else {}
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"{where} is not valid JSON ({e})", param=f"messages[{i}]") from None
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"{where} must be a JSON object", param=f"messages[{i}]")
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}


def _token_limits(request: ChatRequest, deployment: AnthropicDeployment) -> tuple[int, int | None]:
    """(max_tokens, thinking budget or None). The Messages API requires max_tokens."""
    default = deployment.defaults.max_tokens or deployment.default_max_tokens
    budget = THINKING_BUDGET.get(request.reasoning_effort or "")
    limit = request.token_limit
    if budget is None:
        return limit or default, None
    if limit is None:
        # The default sizes the visible answer, so the thinking budget comes on top of it.
        return default + budget, budget
    # OpenAI counts reasoning inside max_completion_tokens and Anthropic counts thinking inside
    # max_tokens: the client's cap stays the cap and the budget shrinks to fit under it.
    # `unsupported` has refused caps of MIN_THINKING_BUDGET or less, so the budget stays legal.
    return limit, min(budget, limit - 1)


def _sampling(
    request: ChatRequest, deployment: AnthropicDeployment, *, thinking: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    defaults = deployment.defaults
    temperature = request.temperature
    # Thinking refuses any temperature or a low top_p, so deployment defaults yield to it.
    if temperature is None and defaults.temperature is not None and not thinking:
        # A default is shared config written for OpenAI's 0..2 range; Anthropic's tops out at 1.
        temperature = min(defaults.temperature, MAX_TEMPERATURE)
    if temperature is not None:
        out["temperature"] = temperature
    top_p = request.top_p
    if top_p is None and defaults.top_p is not None and not thinking:
        top_p = defaults.top_p
    if top_p is not None:
        out["top_p"] = top_p
    return out


def _tool(name: str, description: str | None, parameters: dict[str, Any] | None) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": name}
    if description:
        tool["description"] = description
    # OpenAI allows a function without parameters; Anthropic requires an input schema.
    tool["input_schema"] = parameters or {"type": "object"}
    return tool


def _tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, ToolChoiceFunction):
        wire: dict[str, Any] = {"type": "tool", "name": choice.function.name}
    elif choice == "required":
        wire = {"type": "any"}
    else:
        wire = {"type": "auto"}
    if request.parallel_tool_calls is False:
        wire["disable_parallel_tool_use"] = True
    elif choice is None:
        return None
    return wire


# --- response ----------------------------------------------------------------------------------


def _finish(value: Any) -> FinishReason:
    return _FINISH.get(value, "stop") if isinstance(value, str) else "stop"


def _stop_sequence(message: Any) -> str | None:
    """The stop sequence that ended a message (or a message_delta's delta), if one did."""
    value = message.get("stop_sequence") if message.get("stop_reason") == "stop_sequence" else None
    return value if isinstance(value, str) else None


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    cache_read = int(raw.get("cache_read_input_tokens") or 0)
    cache_write = int(raw.get("cache_creation_input_tokens") or 0)
    details = raw.get("output_tokens_details") or {}
    return Usage(
        # Anthropic's input_tokens excludes cached tokens; OpenAI's prompt_tokens includes them.
        prompt_tokens=int(raw.get("input_tokens") or 0) + cache_read + cache_write,
        completion_tokens=int(raw.get("output_tokens") or 0),
        cached_tokens=cache_read,
        reasoning_tokens=int(details.get("thinking_tokens") or 0),
    )


def _arguments(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def from_wire(payload: Any, deployment_name: str) -> ChatResponse:
    """A Messages API reply -> ChatResponse. A malformed payload is the upstream's failure,
    not an answer."""
    try:
        texts: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCall] = []
        for block in payload["content"]:
            kind = block["type"]
            if kind == "text":
                texts.append(str(block["text"]))
            elif kind == "thinking":
                thinking.append(str(block["thinking"]))
            elif kind == "tool_use":
                calls.append(
                    ToolCall(str(block["id"]), str(block["name"]), _arguments(block["input"]))
                )
            # redacted_thinking and server-tool blocks carry nothing a chat client can show.
        choice = Choice(
            index=0,
            content="".join(texts) if texts or not calls else None,
            finish_reason=_finish(payload["stop_reason"]),
            tool_calls=tuple(calls),
            reasoning="".join(thinking) if thinking else None,
            stop_sequence=_stop_sequence(payload),
        )
        return ChatResponse(
            choices=(choice,),
            usage=_usage(payload.get("usage")),
            upstream_model=str(payload.get("model") or ""),
            id=str(payload.get("id") or ""),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UpstreamError(
            f"deployment '{deployment_name}' sent a malformed message ({type(e).__name__}: {e})",
            retryable=True,
        ) from None


# --- stream ------------------------------------------------------------------------------------


class StreamTranslator:
    """Messages API stream events -> Chunks, one event at a time. Pure: no I/O.

    Remembers what later events need: the input usage from message_start and which content
    block is which tool call, because Anthropic numbers content blocks while OpenAI numbers
    tool calls.
    """

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.finish_reason: FinishReason | None = None
        self.stopped = False
        self._usage: dict[str, Any] = {}
        self._tool_of_block: dict[int, int] = {}
        self._tools_with_arguments: set[int] = set()
        self._handlers: dict[str, Callable[[dict[str, Any]], list[Chunk]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "content_block_stop": self._block_stop,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
            "error": self._error,
        }

    @property
    def finished(self) -> bool:
        """Whether the upstream said how the answer ended; without that it is truncated."""
        return self.finish_reason is not None

    def feed(self, event: Any) -> list[Chunk]:
        """The Chunks one event yields. Raises UpstreamError on an error or malformed event."""
        try:
            handler = self._handlers.get(event["type"])
            # Anthropic may add event types (ping is one); its versioning policy says skip them.
            return handler(event) if handler else []
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UpstreamError(
                f"deployment '{self.deployment}' sent a malformed stream event", retryable=True
            ) from None

    def _message_start(self, event: dict[str, Any]) -> list[Chunk]:
        self._usage = dict(event["message"].get("usage") or {})
        return [Chunk(role="assistant")]

    def _block_start(self, event: dict[str, Any]) -> list[Chunk]:
        block = event["content_block"]
        kind = block["type"]
        if kind == "text" and block.get("text"):
            return [Chunk(content=str(block["text"]))]
        if kind == "thinking" and block.get("thinking"):
            return [Chunk(reasoning=str(block["thinking"]))]
        if kind != "tool_use":
            return []
        tool = len(self._tool_of_block)
        self._tool_of_block[int(event["index"])] = tool
        # The input normally arrives as input_json_delta fragments; the start holds {}.
        arguments = _arguments(block["input"]) if block.get("input") else None
        if arguments is not None:
            self._tools_with_arguments.add(tool)
        delta = ToolCallDelta(
            tool, id=str(block["id"]), name=str(block["name"]), arguments=arguments
        )
        return [Chunk(tool_calls=(delta,))]

    def _block_delta(self, event: dict[str, Any]) -> list[Chunk]:
        delta = event["delta"]
        kind = delta["type"]
        if kind == "text_delta":
            return [Chunk(content=str(delta["text"]))]
        if kind == "thinking_delta":
            return [Chunk(reasoning=str(delta["thinking"]))]
        if kind == "input_json_delta" and delta["partial_json"]:
            tool = self._tool_of_block[int(event["index"])]
            self._tools_with_arguments.add(tool)
            fragment = ToolCallDelta(tool, arguments=str(delta["partial_json"]))
            return [Chunk(tool_calls=(fragment,))]
        # signature_delta and citations_delta have no place in an OpenAI chunk.
        return []

    def _block_stop(self, event: dict[str, Any]) -> list[Chunk]:
        tool = self._tool_of_block.get(int(event["index"]))
        if tool is None or tool in self._tools_with_arguments:
            return []
        # A call without arguments streams no input_json_delta at all, and clients that
        # json-parse the accumulated arguments would choke on "".
        return [Chunk(tool_calls=(ToolCallDelta(tool, arguments="{}"),))]

    def _message_delta(self, event: dict[str, Any]) -> list[Chunk]:
        chunks: list[Chunk] = []
        stop_reason = event["delta"].get("stop_reason")
        if isinstance(stop_reason, str):
            self.finish_reason = _finish(stop_reason)
            chunks.append(
                Chunk(
                    finish_reason=self.finish_reason, stop_sequence=_stop_sequence(event["delta"])
                )
            )
        usage = event.get("usage")
        if isinstance(usage, dict):
            # message_delta's counts are cumulative and may restate the input side too.
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            chunks.append(Chunk(usage=_usage(self._usage)))
        return chunks

    def _message_stop(self, event: dict[str, Any]) -> list[Chunk]:
        self.stopped = True
        return []

    def _error(self, event: dict[str, Any]) -> list[Chunk]:
        error = event.get("error") or {}
        kind = error.get("type") or "error"
        message = str(error.get("message") or "no message")[:500]
        raise UpstreamError(
            f"deployment '{self.deployment}' reported an error mid-stream: {kind}: {message}",
            retryable=True,
        )


# --- sender ------------------------------------------------------------------------------------


class AnthropicBackend:
    def __init__(
        self, name: str, deployment: AnthropicDeployment, api_key: str | None, pool: HttpPool
    ) -> None:
        self.name = name
        self.deployment = deployment
        headers = {
            "anthropic-version": deployment.anthropic_version,
            "content-type": "application/json",
        }
        if api_key:
            headers["x-api-key"] = api_key
        self._endpoint = JsonEndpoint(
            pool,
            name,
            f"{deployment.base_url}/v1/messages",
            headers,
            deployment.timeouts,
            None if api_key else deployment.api_key_env,
        )
        # Messages continues a final assistant turn by design.
        self.accepts_prefill = True

    def unsupported(self, request: ChatRequest) -> str | None:
        return unsupported(request)

    def status(self) -> DeploymentStatus:
        return self._endpoint.status()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body = to_wire(request, self.deployment)
        body.pop("stream", None)
        if stream:
            body["stream"] = True
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        payload = await self._endpoint.answer(self._body(request, stream=False))
        return from_wire(self._object(payload), self.name)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        translator = StreamTranslator(self.name)
        body = self._body(request, stream=True)
        async with aclosing(self._endpoint.events(body)) as events:
            async for data in events:
                for chunk in translator.feed(self._decode(data)):
                    yield chunk
                if translator.stopped:
                    break
        if not translator.finished:
            raise UpstreamError(
                f"deployment '{self.name}' ended its stream before the answer was complete",
                retryable=True,
            )

    def _decode(self, raw: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = None
        return self._object(payload)

    def _object(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise UpstreamError(
                f"deployment '{self.name}' sent a response that is not a JSON object",
                retryable=True,
            )
        return payload
