"""Wire-neutral values that flow through the gateway.

`ChatRequest` is the one validated shape of a chat request, whatever door it came in by and
whatever wire format the chosen upstream speaks. It follows the OpenAI chat-completions field
names because that is the lingua franca every provider maps onto. Responses and stream chunks
are plain slotted dataclasses: the gateway builds them itself, so they need no validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FieldError(ValueError):
    """A rule across fields was broken. `path` (dotted, relative to the object whose validator
    raised) names the field to blame, so the client's error points at the right `param`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class _Strict(BaseModel):
    # strict: "0.5" is not a temperature and true is not a token count.
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCallIn(_Strict):
    """A tool call inside an assistant message the client sends back."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(BaseModel):
    """One part of a multi-part message: text, image_url, input_audio, file... passed through."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")
    type: str

    @model_validator(mode="after")
    def _text_has_text(self) -> ContentPart:
        if self.type == "text" and not isinstance((self.model_extra or {}).get("text"), str):
            raise FieldError("text", "a content part of type 'text' needs a string field 'text'")
        return self


class Message(BaseModel):
    # extra="allow": SDKs echo back fields such as `refusal`, `annotations` or `audio` when a
    # previous response message is appended to the conversation; refusing them would break
    # ordinary client code. Unknown fields are passed on only to OpenAI-compatible upstreams.
    model_config = ConfigDict(strict=True, frozen=True, extra="allow")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _role_rules(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise FieldError(
                "tool_call_id",
                "a message with role 'tool' needs the 'id' of the tool call it answers",
            )
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise FieldError("content", "an assistant message needs 'content' or 'tool_calls'")
        elif self.content is None:
            raise FieldError("content", f"a message with role '{self.role}' needs 'content'")
        if self.tool_calls is not None and self.role != "assistant":
            raise FieldError("tool_calls", "only assistant messages may carry 'tool_calls'")
        return self

    def text(self) -> str:
        """The message's text, with multi-part text parts joined (non-text parts dropped)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str((p.model_extra or {}).get("text", "")) for p in self.content if p.type == "text"
        )


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _valid_name(self) -> FunctionDef:
        if not _FUNCTION_NAME.match(self.name):
            raise FieldError(
                "name",
                "function names must be 1-64 characters of letters, digits, '_' or '-' "
                f"(got {self.name!r})",
            )
        return self


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class ToolChoiceFunction(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction


class JsonSchemaFormat(_Strict):
    name: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise FieldError(
                "json_schema", "response_format of type 'json_schema' needs a 'json_schema' object"
            )
        return self


class StreamOptions(_Strict):
    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0, le=2)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
PositiveInt = Annotated[int, Field(ge=1)]


def _token_id(key: str) -> str:
    if not key.isascii() or not key.isdigit():
        raise ValueError('logit_bias keys must be token ids written as strings, such as "50256"')
    return key


TokenId = Annotated[str, AfterValidator(_token_id)]


class HedgeOptions(_Strict):
    """hedge's own request options, in the body field `hedge`; never sent upstream.
    The same narrowing as the X-Hedge-Policy and X-Hedge-Data-Class headers."""

    policies: list[str] = Field(default_factory=list)
    data_class: str | None = None


class ChatRequest(BaseModel):
    """A validated chat-completions request.

    Unknown top-level fields are kept in `model_extra`: provider-specific knobs (vLLM's `top_k`,
    `chat_template_kwargs`...) reach OpenAI-compatible upstreams untouched, and every other
    backend refuses them by name rather than dropping them silently.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    hedge: HedgeOptions | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[TokenId, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    user: str | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        if self.stream_options is not None and not self.stream:
            raise FieldError(
                "stream_options", "'stream_options' is only allowed when 'stream' is true"
            )
        if isinstance(self.tool_choice, ToolChoiceFunction):
            names = sorted({t.function.name for t in self.tools or ()})
            if self.tool_choice.function.name not in names:
                raise FieldError(
                    "tool_choice",
                    f"names function '{self.tool_choice.function.name}', which is not among "
                    f"'tools' ({', '.join(names) or 'none given'})",
                )
        elif self.tool_choice in ("auto", "required") and not self.tools:
            raise FieldError(
                "tool_choice", f"tool_choice '{self.tool_choice}' needs a non-empty 'tools' list"
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise FieldError("top_logprobs", "'top_logprobs' needs 'logprobs' set to true")
        return self

    @property
    def token_limit(self) -> int | None:
        """The completion budget, whichever of the two spellings the client used."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def choices_wanted(self) -> int:
        return self.n or 1

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    content: str | None
    finish_reason: FinishReason | None
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    refusal: str | None = None
    # Which of the request's stop sequences ended the answer, where the upstream says so
    # (Anthropic does, OpenAI's wire does not): the Messages front door reports it.
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class ChatResponse:
    choices: tuple[Choice, ...]
    usage: Usage
    upstream_model: str
    id: str = ""
    created: int = 0
    system_fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call: id and name come first, arguments in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed delta for one choice, or (with `usage` and no delta) the final usage."""

    index: int = 0
    content: str | None = None
    reasoning: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    role: Literal["assistant"] | None = None
    usage: Usage | None = None
    stop_sequence: str | None = None  # with finish_reason, as in Choice


# ---- embeddings ---------------------------------------------------------------------------

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on the items of one request's `input`


def _input_kind(item: Any) -> str | None:
    """What one item of an `input` array is: a string, a token id, an array of token ids."""
    if isinstance(item, str):
        return "a string"
    if isinstance(item, int) and not isinstance(item, bool):
        return "a token id"
    if isinstance(item, list):
        return "an array of token ids"
    return None


def _check_embedding_input(value: Any) -> None:
    """Rules of OpenAI's `input` that a type cannot say, with the item to blame. Values of a
    wrong type altogether are left to the field's own type check."""
    if isinstance(value, str):
        if not value:
            raise FieldError("input", "'input' must not be an empty string")
        return
    if not isinstance(value, list):
        return
    if not value:
        raise FieldError("input", "'input' must not be an empty array")
    first = _input_kind(value[0])
    # A flat array of token ids is one input; otherwise each item is one.
    if first != "a token id" and len(value) > MAX_EMBEDDING_INPUTS:
        raise FieldError(
            "input",
            f"'input' has {len(value)} items; send at most {MAX_EMBEDDING_INPUTS} per request",
        )
    for i, item in enumerate(value):
        kind = _input_kind(item)
        if kind is None:
            raise FieldError(
                f"input[{i}]",
                "each item of 'input' must be a string, a token id or an array of token ids "
                f"(got {'null' if item is None else type(item).__name__})",
            )
        if kind != first:
            raise FieldError(
                f"input[{i}]",
                f"'input' mixes kinds: item 0 is {first} and item {i} is {kind}; send all "
                "strings, all token ids or all arrays of token ids",
            )
        if kind == "a string" and not item:
            raise FieldError(f"input[{i}]", "an input string must not be empty")
        if kind == "a token id" and item < 0:
            raise FieldError(f"input[{i}]", f"a token id is a non-negative integer (got {item})")
        if kind == "an array of token ids":
            if not item:
                raise FieldError(f"input[{i}]", "an array of token ids must not be empty")
            for j, token in enumerate(item):
                if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                    raise FieldError(
                        f"input[{i}][{j}]",
                        f"a token id is a non-negative integer (got {token!r})",
                    )


class EmbeddingRequest(BaseModel):
    """A validated embeddings request (OpenAI's `POST /v1/embeddings`).

    As with chat, unknown top-level fields are kept in `model_extra`: OpenAI-compatible
    upstreams receive them, every other backend refuses them by name.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None
    hedge: HedgeOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _input_rules(cls, data: Any) -> Any:
        if isinstance(data, dict) and "input" in data:
            _check_embedding_input(data["input"])
        return data

    @property
    def texts(self) -> list[str] | None:
        """The inputs as texts, in order; None when they are token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return [str(item) for item in self.input]
        return None

    @property
    def count(self) -> int:
        """How many vectors the answer holds: one per text or token array."""
        if isinstance(self.input, str):
            return 1
        if self.input and isinstance(self.input[0], int):
            return 1  # a flat array of token ids is one input
        return len(self.input)


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    """One vector per input, in input order, each as little-endian float32 bytes (the form
    OpenAI's base64 encoding carries); usage counts input tokens only."""

    vectors: tuple[bytes, ...]
    usage: Usage
    upstream_model: str = ""
