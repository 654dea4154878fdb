"""Embeddings without a server: the vector codec, request validation, rendering, the
OpenAI-compatible converters, the wrappers' pass-through, the batcher, and the bundled model."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hedge import config, trace, vectors
from hedge.backends.base import DeploymentStatus
from hedge.backends.batching import Batcher
from hedge.backends.embedded_embeddings import (
    bundled_model_dir,
    encode_groups,
    load_model,
    unsupported,
)
from hedge.backends.openai_compat import embeddings_from_wire, embeddings_to_wire
from hedge.compose.breaker import Breaker
from hedge.compose.retry import Retrying
from hedge.config import BreakerSettings, EmbeddedEmbeddingsDeployment, RetrySettings
from hedge.errors import ContextLengthExceeded, InvalidRequest, Overloaded, UpstreamError
from hedge.server.embeddings_api import parse_embedding_request, render_embeddings
from hedge.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
)


def req(**fields: Any) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "m", "input": "hello", **fields})


# ---- vectors -------------------------------------------------------------------------------


def test_vectors_round_trip_exactly_as_float32() -> None:
    values = [0.1, -2.5, 3.0e-8, 1.0]
    raw = vectors.pack(values)
    assert len(raw) == 16 and vectors.dimensions(raw) == 4
    assert raw == struct.pack("<4f", *values)  # little-endian float32, as OpenAI's base64
    back = vectors.unpack(raw)
    assert back == [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]
    assert vectors.pack(back) == raw
    assert vectors.from_base64(vectors.to_base64(raw)) == raw


@pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"\x00\x01\x02").decode()])
def test_a_bad_base64_vector_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        vectors.from_base64(text)
    with pytest.raises(ValueError):
        vectors.unpack(b"\x00\x01\x02")


# ---- the request ---------------------------------------------------------------------------


def test_request_inputs() -> None:
    one = req()
    assert one.texts == ["hello"] and one.count == 1 and one.encoding_format == "float"
    many = req(input=["a", "b", "c"])
    assert many.texts == ["a", "b", "c"] and many.count == 3
    tokens = req(input=[1, 2, 3])
    assert tokens.texts is None and tokens.count == 1
    arrays = req(input=[[1, 2], [3]])
    assert arrays.texts is None and arrays.count == 2
    extra = req(input_type="query")
    assert extra.model_extra == {"input_type": "query"}


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"input": ""}, "input", "empty string"),
        ({"input": []}, "input", "empty array"),
        ({"input": ["a", ""]}, "input[1]", "must not be empty"),
        ({"input": ["a", 1]}, "input[1]", "mixes kinds"),
        ({"input": [[1], []]}, "input[1]", "must not be empty"),
        ({"input": [[1], [2, -1]]}, "input[1][1]", "non-negative"),
        ({"input": [True]}, "input[0]", "got bool"),
        ({"input": ["x"] * 2049}, "input", "at most 2048"),
        ({"input": 3.5}, "input", "valid list or a valid string"),
        ({"encoding_format": "hex"}, "encoding_format", "'float' or 'base64'"),
        ({"dimensions": 0}, "dimensions", "greater than or equal to 1"),
        ({"dimensions": 1.5}, "dimensions", "valid integer"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, Any], param: str, says: str) -> None:
    body = {"model": "m", "input": "hello", **fields}
    with pytest.raises(InvalidRequest) as info:
        parse_embedding_request(json.dumps(body).encode())
    assert info.value.param == param, info.value.message
    assert says in info.value.message


def test_a_flat_token_array_is_one_input_of_any_length() -> None:
    assert req(input=list(range(3000))).count == 1


# ---- rendering ------------------------------------------------------------------------------


def test_render_float_and_base64_carry_the_same_values() -> None:
    raw = (vectors.pack([0.25, -0.5]), vectors.pack([1.0, 0.1]))
    response = EmbeddingResponse(raw, Usage(prompt_tokens=7))
    floats = render_embeddings(response, "route", "float")
    assert floats == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.25, -0.5]},
            {"object": "embedding", "index": 1, "embedding": vectors.unpack(raw[1])},
        ],
        "model": "route",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    b64 = render_embeddings(response, "route", "base64")
    for f, b in zip(floats["data"], b64["data"], strict=True):
        decoded = struct.unpack("<2f", base64.b64decode(b["embedding"]))
        assert list(decoded) == f["embedding"]


# ---- OpenAI-compatible upstreams --------------------------------------------------------------


def test_to_wire_names_the_upstream_model_and_keeps_extras() -> None:
    r = req(
        input=["a"],
        encoding_format="base64",
        dimensions=8,
        user="u",
        input_type="query",
        hedge={"policies": ["p"]},
    )
    assert embeddings_to_wire(r, "up") == {
        "model": "up",
        "input": ["a"],
        "dimensions": 8,
        "user": "u",
        "input_type": "query",
    }


def test_from_wire_orders_by_index_and_reads_base64() -> None:
    r = req(input=["a", "b"])
    payload = {
        "data": [
            {"index": 1, "embedding": vectors.to_base64(vectors.pack([3.0, 4.0]))},
            {"index": 0, "embedding": [1.0, 2.0]},
        ],
        "model": "up",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    out = embeddings_from_wire(payload, r, "dep")
    assert [vectors.unpack(v) for v in out.vectors] == [[1.0, 2.0], [3.0, 4.0]]
    assert out.usage == Usage(prompt_tokens=5) and out.upstream_model == "up"


@pytest.mark.parametrize(
    ("payload", "says", "retryable"),
    [
        ({"error": {"message": "boom"}}, "answered with an error", True),
        ({"data": "x"}, "no 'data' array", True),
        ({"data": [{"index": 0, "embedding": [1.0]}]}, "1 vectors", True),
        (
            {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]},
            "sizes [1, 2]",
            True,
        ),
        (
            {"data": [{"index": 0, "embedding": ["a"]}, {"index": 1, "embedding": [1.0]}]},
            "not an array of numbers",
            True,
        ),
        (
            {"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]},
            "not a new integer",
            True,
        ),
    ],
)
def test_from_wire_refuses_a_malformed_answer(
    payload: dict[str, Any], says: str, retryable: bool
) -> None:
    with pytest.raises(UpstreamError) as info:
        embeddings_from_wire(payload, req(input=["a", "b"]), "dep")
    assert says in info.value.message and info.value.retryable is retryable


def test_from_wire_refuses_vectors_of_another_size_than_asked() -> None:
    payload = {"data": [{"index": 0, "embedding": [1.0, 2.0, 3.0]}]}
    with pytest.raises(UpstreamError) as info:
        embeddings_from_wire(payload, req(dimensions=2), "dep")
    assert "3-dimensional" in info.value.message and "dimensions=2" in info.value.message
    assert info.value.retryable is False  # another try would answer the same


# ---- what the embedded backend refuses (pure) ---------------------------------------------------


def test_embedded_refusals_name_the_parameter() -> None:
    assert unsupported(req(), "MiniLM", 384) is None
    dims = unsupported(req(dimensions=128), "MiniLM", 384)
    assert dims is not None and "'dimensions'" in dims and "384" in dims and "cut" in dims
    tokens = unsupported(req(input=[1, 2]), "MiniLM", 384)
    assert tokens is not None and "token-array" in tokens
    extra = unsupported(req(input_type="query"), "MiniLM", 384)
    assert extra is not None and "input_type" in extra


EMBEDDINGS_CONFIG = """\
deployments:
  e:
    kind: embedded_embeddings
    model: all-minilm-l6-v2
    bundled: all-minilm-l6-v2
    max_batch: 8
    max_wait_ms: 2
routes:
  r: {deployments: [e]}
"""


def test_config_kind() -> None:
    dep = config.parse(EMBEDDINGS_CONFIG, "hedge.yaml", {}).config.deployments["e"]
    assert isinstance(dep, EmbeddedEmbeddingsDeployment)
    assert (dep.max_batch, dep.max_wait_ms, dep.hosting) == (8, 2.0, "self-hosted")


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("    bundled: all-minilm-l6-v2\n", "", "set exactly one of 'bundled' or 'model_path'"),
        ("    max_wait_ms: 2\n", "    max_wait_ms: 2\n    model_path: /m\n", "exactly one"),
        ("max_batch: 8", "max_batch: 0", "deployments.e.max_batch"),
        ("max_wait_ms: 2", "max_wait_ms: -1", "deployments.e.max_wait_ms"),
        ("bundled: all-minilm-l6-v2", "bundled: bert-9000", "deployments.e.bundled"),
    ],
)
def test_config_kind_refusals(old: str, new: str, says: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.parse(EMBEDDINGS_CONFIG.replace(old, new), "hedge.yaml", {})
    assert says in str(info.value)


# ---- the wrappers pass embeddings through with the same accounting ---------------------------


class ChatOnly:
    name = "chat"
    accepts_prefill = False

    def unsupported(self, request: ChatRequest) -> str | None:
        return None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError

    async def stream(self, request: ChatRequest) -> Any:
        yield Chunk()

    def status(self) -> DeploymentStatus:
        return DeploymentStatus("ready")

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class FlakyEmbedder(ChatOnly):
    name = "emb"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def embedding_unsupported(self, request: EmbeddingRequest) -> str | None:
        return "no dimensions" if request.dimensions else None

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise UpstreamError("flaky", retryable=True)
        return EmbeddingResponse((vectors.pack([1.0]),), Usage(prompt_tokens=3))


@pytest.fixture
def fresh_trace() -> Iterator[trace.Trace]:
    t = trace.Trace(route="r")
    token = trace.current.set(t)
    yield t
    trace.current.reset(token)


def test_a_chat_only_backend_refuses_embeddings(fresh_trace: trace.Trace) -> None:
    breaker = Breaker(ChatOnly(), BreakerSettings())
    assert breaker.embedding_unsupported(req()) == "serves chat completions only, not embeddings"
    with pytest.raises(UpstreamError, match="chat completions only"):
        asyncio.run(breaker.embed(req()))


def test_breaker_and_retry_count_embed_calls_like_completions(fresh_trace: trace.Trace) -> None:
    inner = FlakyEmbedder(failures=1)
    breaker = Breaker(inner, BreakerSettings(failures=2))
    retrying = Retrying(breaker, RetrySettings(backoff_initial_s=0, backoff_max_s=0))
    assert retrying.embedding_unsupported(req(dimensions=2)) == "no dimensions"
    out = asyncio.run(retrying.embed(req()))
    assert out.usage.prompt_tokens == 3 and inner.calls == 2
    assert [a.error for a in fresh_trace.attempts] == ["flaky", None]
    assert fresh_trace.attempts[1].usage == Usage(prompt_tokens=3)
    # Failures open the breaker for embeddings as for chat.
    failing = Breaker(FlakyEmbedder(failures=99), BreakerSettings(failures=2))
    for _ in range(2):
        with pytest.raises(UpstreamError):
            asyncio.run(failing.embed(req()))
    assert failing.breaker_state() == "open" and failing.refusal() is not None


# ---- the batcher ----------------------------------------------------------------------------


class Recorder:
    """A batch function that doubles numbers, records each call and its thread, and fails a
    group holding a negative number."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[list[int]]] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, groups: list[list[int]]) -> list[list[int] | BaseException]:
        self.calls.append(groups)
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return [
            UpstreamError("negative", retryable=False)
            if any(x < 0 for x in g)
            else [x * 2 for x in g]
            for g in groups
        ]

    @property
    def sizes(self) -> list[int]:
        return [sum(len(g) for g in call) for call in self.calls]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="hedge-test")
    yield pool
    pool.shutdown()


def batcher(process: Recorder, executor: ThreadPoolExecutor, **kw: Any) -> Batcher[int, int]:
    options: dict[str, Any] = {"max_batch": 64, "max_wait_s": 0.02, "max_queue": 1000, **kw}
    return Batcher(process, executor, **options)


def test_concurrent_requests_share_one_call_off_the_loop(executor: ThreadPoolExecutor) -> None:
    process = Recorder()

    async def main() -> list[list[int]]:
        b = batcher(process, executor)
        out = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(10)))
        assert b.stats().calls == 1 and b.stats().items == 20 and b.stats().largest == 20
        return out

    out = asyncio.run(main())
    assert out == [[2 * i, 2 * (i + 100)] for i in range(10)]
    assert len(process.calls) == 1 and process.sizes == [20]
    assert process.threads == {"hedge-test_0"}


def test_no_call_is_larger_than_max_batch(executor: ThreadPoolExecutor) -> None:
    process = Recorder()

    async def main() -> list[list[int]]:
        b = batcher(process, executor, max_batch=8)
        return await asyncio.gather(*(b.submit([i] * 3) for i in range(10)))

    out = asyncio.run(main())
    assert out == [[2 * i] * 3 for i in range(10)]
    assert max(process.sizes) <= 8 and sum(process.sizes) == 30
    assert len(process.calls) == 5  # whole groups of 3: two per call, then none left over


def test_a_request_larger_than_max_batch_is_split_and_answered_in_order(
    executor: ThreadPoolExecutor,
) -> None:
    process = Recorder()
    out = asyncio.run(batcher(process, executor, max_batch=4).submit(list(range(10))))
    assert out == [2 * i for i in range(10)]
    assert process.sizes == [4, 4, 2]


def test_a_bad_group_fails_alone(executor: ThreadPoolExecutor) -> None:
    process = Recorder()

    async def main() -> list[Any]:
        b = batcher(process, executor)
        return await asyncio.gather(
            b.submit([1]), b.submit([-1, 2]), b.submit([3]), return_exceptions=True
        )

    good1, bad, good2 = asyncio.run(main())
    assert good1 == [2] and good2 == [6]
    assert isinstance(bad, UpstreamError) and bad.message == "negative"
    assert len(process.calls) == 1


def test_a_failing_batch_function_fails_its_batch(executor: ThreadPoolExecutor) -> None:
    def explode(groups: list[list[int]]) -> list[list[int] | BaseException]:
        raise RuntimeError("kaput")

    async def main() -> None:
        b: Batcher[int, int] = Batcher(
            explode, executor, max_batch=8, max_wait_s=0.0, max_queue=100, name="dep"
        )
        with pytest.raises(UpstreamError, match="deployment 'dep' failed: RuntimeError: kaput"):
            await b.submit([1])

    asyncio.run(main())


def test_waits_at_most_max_wait_and_not_at_all_when_full(executor: ThreadPoolExecutor) -> None:
    process = Recorder()

    async def main() -> tuple[float, float]:
        lone = batcher(process, executor, max_wait_s=0.2)
        t0 = time.perf_counter()
        await lone.submit([1])
        waited = time.perf_counter() - t0
        full = batcher(process, executor, max_batch=4, max_wait_s=30)
        t0 = time.perf_counter()
        await full.submit([1, 2, 3, 4])
        return waited, time.perf_counter() - t0

    waited, full = asyncio.run(main())
    assert 0.19 <= waited < 2.0
    assert full < 1.0


def test_a_cancelled_request_is_never_processed(executor: ThreadPoolExecutor) -> None:
    process = Recorder()

    async def main() -> list[int]:
        b = batcher(process, executor, max_wait_s=0.1)
        gone = asyncio.ensure_future(b.submit([7]))
        await asyncio.sleep(0.01)
        gone.cancel()
        out = await b.submit([8])
        assert b.stats().queued == 0
        return out

    assert asyncio.run(main()) == [16]
    assert process.calls == [[[8]]]


def test_a_full_queue_is_a_retryable_overload(executor: ThreadPoolExecutor) -> None:
    process = Recorder(delay=0.2)

    async def main() -> None:
        b = batcher(process, executor, max_batch=2, max_wait_s=0.0, max_queue=4)
        first = asyncio.ensure_future(b.submit([1, 2, 3, 4]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await b.submit([5])
        assert info.value.retryable
        assert await first == [2, 4, 6, 8]

    asyncio.run(main())


def test_closing_fails_what_is_queued(executor: ThreadPoolExecutor) -> None:
    process = Recorder()

    async def main() -> None:
        b = batcher(process, executor, max_wait_s=10)
        waiting = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.01)
        await b.aclose()
        with pytest.raises(UpstreamError, match="shut down"):
            await waiting
        with pytest.raises(UpstreamError, match="shutting down"):
            await b.submit([2])

    asyncio.run(main())
    assert process.calls == []


# ---- the bundled model, loaded for real -----------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Any:
    """all-MiniLM-L6-v2 from its package, loaded with every outbound connection refused: a
    load that tried to reach a hub would fail here."""
    real_connect = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"test: no network ({address})")
        real_connect(self, address)

    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        return load_model(bundled_model_dir("all-minilm-l6-v2"))
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]


def test_the_bundled_model_loads_offline_and_encodes(minilm: Any) -> None:
    (out,) = encode_groups(minilm, [[(0, "hello world")]], "dep")
    assert isinstance(out, list)
    ((raw, tokens),) = out
    values = vectors.unpack(raw)
    assert len(values) == 384 and tokens == 4  # [CLS] hello world [SEP]
    assert abs(sum(v * v for v in values) - 1.0) < 1e-4  # the model normalises its output


def test_a_too_long_text_fails_its_group_only(minilm: Any) -> None:
    long = "word " * 300
    ok, bad, ok2 = encode_groups(minilm, [[(0, "a")], [(0, "b"), (1, long)], [(0, "c")]], "dep")
    assert isinstance(bad, ContextLengthExceeded)
    assert "input[1] is 302 tokens" in bad.message and "at most 256" in bad.message
    assert bad.param == "input"
    assert isinstance(ok, list) and isinstance(ok2, list)
    (alone,) = encode_groups(minilm, [[(0, "c")]], "dep")
    assert isinstance(alone, list)
    together = vectors.unpack(ok2[0][0])
    apart = vectors.unpack(alone[0][0])
    assert max(abs(x - y) for x, y in zip(together, apart, strict=True)) < 1e-5
