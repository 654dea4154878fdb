"""CachedAnswer (its stored form and its replay as a stream) and the memory and SQLite stores.

Both stores pass one contract (`StoreContract`); Redis passes it too, against a real server, in
tests/integration/test_cache_redis.py. Time is a fake clock the test moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from hedge.cache import (
    SCHEMA_VERSION,
    CachedAnswer,
    CacheSettings,
    CacheStore,
    CacheUnavailable,
    CorruptEntry,
    StreamRecorder,
    open_store,
    record_stream,
)
from hedge.cache.memory import MemoryStore
from hedge.cache.sqlite import SqliteStore
from hedge.gateway import replay_as_stream
from hedge.types import ChatResponse, Choice, Chunk, ToolCall, ToolCallDelta, Usage


def answer(text: str = "Paris is the capital of France.", deployment: str = "d1") -> CachedAnswer:
    return CachedAnswer(
        choices=(Choice(index=0, content=text, finish_reason="stop"),),
        usage=Usage(prompt_tokens=12, completion_tokens=7, cached_tokens=2, reasoning_tokens=1),
        upstream_model="model-x",
        deployment=deployment,
        created=1_700_000_000,
        system_fingerprint="fp_1",
        stored_at=1_700_000_001.5,
    )


TOOL_ANSWER = CachedAnswer(
    choices=(
        Choice(
            index=0,
            content=None,
            finish_reason="tool_calls",
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
                ToolCall("call_2", "get_time", "{}"),
            ),
            reasoning="Two lookups are needed.",
        ),
    ),
    usage=Usage(30, 20),
    upstream_model="model-y",
    deployment="d2",
)

MULTI = CachedAnswer(
    choices=(
        Choice(0, "first", "stop", refusal=None, stop_sequence="END"),
        Choice(1, "", "length"),
        Choice(2, "déjà vu ✓ 🙂", "stop", refusal="no"),
    ),
    usage=Usage(1, 2),
    upstream_model="m",
    deployment="d",
)


# ---- CachedAnswer --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [answer(), TOOL_ANSWER, MULTI])
def test_round_trip(value: CachedAnswer) -> None:
    assert CachedAnswer.from_bytes(value.to_bytes()) == value


def test_from_response_and_back() -> None:
    response = ChatResponse(
        choices=(Choice(0, "hi", "stop"),),
        usage=Usage(3, 1),
        upstream_model="up-1",
        id="resp-1",
        created=5,
        system_fingerprint="fp",
    )
    cached = CachedAnswer.from_response(response, "dep", stored_at=9.0)
    assert (cached.deployment, cached.stored_at, cached.upstream_model) == ("dep", 9.0, "up-1")
    back = cached.to_response("new-id")
    assert back.id == "new-id"
    assert (back.choices, back.usage, back.created, back.system_fingerprint) == (
        response.choices,
        response.usage,
        response.created,
        response.system_fingerprint,
    )


def _content_of(chunks: list[Chunk], index: int) -> str:
    return "".join(c.content or "" for c in chunks if c.index == index and c.usage is None)


@pytest.mark.parametrize("piece_chars", [None, 1, 3, 1000])
def test_chunks_carry_the_same_content(piece_chars: int | None) -> None:
    text = "Paris is the capital of France. " * 20
    chunks = answer(text).to_chunks(piece_chars)
    assert _content_of(chunks, 0) == text
    assert chunks[0].role == "assistant"
    finishes = [c.finish_reason for c in chunks if c.finish_reason is not None]
    assert finishes == ["stop"]
    assert chunks[-1].usage == answer().usage
    assert all(c.usage is None for c in chunks[:-1])
    if piece_chars is not None:
        assert all(len(c.content or "") <= piece_chars for c in chunks)


def test_chunks_of_tool_calls() -> None:
    chunks = TOOL_ANSWER.to_chunks()
    deltas = [d for c in chunks for d in c.tool_calls]
    assert [(d.index, d.id, d.name, d.arguments) for d in deltas] == [
        (0, "call_1", "get_weather", '{"city": "Paris"}'),
        (1, "call_2", "get_time", "{}"),
    ]
    assert "".join(c.reasoning or "" for c in chunks) == "Two lookups are needed."
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage == Usage(30, 20)


def test_chunks_of_several_choices() -> None:
    chunks = MULTI.to_chunks(2)
    for choice in MULTI.choices:
        assert _content_of(chunks, choice.index) == choice.content
    assert [(c.index, c.finish_reason) for c in chunks if c.finish_reason] == [
        (0, "stop"),
        (1, "length"),
        (2, "stop"),
    ]


@pytest.mark.parametrize("value", [answer(), TOOL_ANSWER, MULTI])
def test_chunks_match_the_gateways_replay_of_the_same_answer(value: CachedAnswer) -> None:
    # A streamed hit looks exactly like a cascade's replayed answer.
    async def collect() -> tuple[list[Chunk], list[Chunk]]:
        theirs = [c async for c in replay_as_stream(value.to_response())]
        ours = [c async for c in value.stream()]
        return theirs, ours

    theirs, ours = asyncio.run(collect())
    assert ours == theirs == value.to_chunks()


# ---- recording a stream ---------------------------------------------------------------------


def _recorded(chunks: list[Chunk]) -> CachedAnswer | None:
    recorder = StreamRecorder()
    for c in chunks:
        recorder.add(c)
    return recorder.answer(upstream_model="m-up", deployment="d-up")


@pytest.mark.parametrize("value", [answer(), TOOL_ANSWER, MULTI])
@pytest.mark.parametrize("piece_chars", [None, 1, 4])
def test_a_recorded_stream_is_the_answer_it_carried(
    value: CachedAnswer, piece_chars: int | None
) -> None:
    got = _recorded(value.to_chunks(piece_chars))
    assert got is not None
    # A stream carries no refusal field (Chunk has none), so neither does its recording.
    expected = tuple(dataclasses.replace(c, refusal=None) for c in value.choices)
    assert (got.choices, got.usage) == (expected, value.usage)
    assert (got.upstream_model, got.deployment) == ("m-up", "d-up")


def test_tool_call_deltas_in_pieces_are_assembled() -> None:
    chunks = [
        Chunk(role="assistant"),
        Chunk(tool_calls=(ToolCallDelta(0, "c1", "get_weather", ""),)),
        Chunk(tool_calls=(ToolCallDelta(1, "c2", "get_time", None),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments='{"city":'),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments=' "Paris"}'),)),
        Chunk(tool_calls=(ToolCallDelta(1, arguments="{}"),)),
        Chunk(finish_reason="tool_calls"),
        Chunk(usage=Usage(5, 6)),
    ]
    got = _recorded(chunks)
    assert got is not None
    assert got.choices[0].tool_calls == (
        ToolCall("c1", "get_weather", '{"city": "Paris"}'),
        ToolCall("c2", "get_time", "{}"),
    )
    assert got.choices[0].content is None and got.usage == Usage(5, 6)


def test_an_unfinished_stream_records_nothing() -> None:
    assert _recorded([]) is None
    assert _recorded([Chunk(role="assistant", content="Par")]) is None
    two = [Chunk(0, "a", finish_reason="stop"), Chunk(1, "b")]
    assert _recorded(two) is None
    unnamed = [Chunk(tool_calls=(ToolCallDelta(0, arguments="{}"),), finish_reason="tool_calls")]
    assert _recorded(unnamed) is None


class Upstream:
    """An async iterator of chunks that notes whether it was closed."""

    def __init__(self, chunks: list[Chunk], fail_after: int | None = None) -> None:
        self.chunks, self.fail_after, self.closed = chunks, fail_after, False

    def __aiter__(self) -> Upstream:
        return self

    async def __anext__(self) -> Chunk:
        if self.fail_after is not None and not self.fail_after:
            raise RuntimeError("upstream broke")
        if not self.chunks:
            raise StopAsyncIteration
        if self.fail_after is not None:
            self.fail_after -= 1
        return self.chunks.pop(0)

    async def aclose(self) -> None:
        self.closed = True


def test_record_stream_passes_chunks_through_and_records_a_complete_stream() -> None:
    seen: list[CachedAnswer | None] = []
    upstream = Upstream(answer().to_chunks(3))

    async def go() -> list[Chunk]:
        relay = record_stream(upstream, lambda r: seen.append(r.answer(deployment="d")))
        return [c async for c in relay]

    assert asyncio.run(go()) == answer().to_chunks(3)
    assert upstream.closed
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0].choices == answer().choices


def test_record_stream_records_nothing_when_the_client_leaves_or_the_upstream_fails() -> None:
    seen: list[StreamRecorder] = []
    left = Upstream(answer().to_chunks(3))

    async def leave() -> None:
        relay = record_stream(left, seen.append)
        async for _ in relay:
            break
        await relay.aclose()  # what the server does when the client goes away

    asyncio.run(leave())
    assert left.closed and seen == []

    broken = Upstream(answer().to_chunks(3), fail_after=2)

    async def fail() -> None:
        async for _ in record_stream(broken, seen.append):
            pass

    with pytest.raises(RuntimeError, match="upstream broke"):
        asyncio.run(fail())
    assert broken.closed and seen == []


def _stored(**changes: object) -> bytes:
    raw = orjson.loads(answer().to_bytes())
    raw.update(changes)
    return orjson.dumps(raw)


def _choice_changed(**changes: object) -> bytes:
    raw = orjson.loads(answer().to_bytes())
    raw["choices"][0].update(changes)
    return orjson.dumps(raw)


CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"\x00\xff\xfe garbage \x80",
    "truncated": answer().to_bytes()[:-7],
    "not an object": b"[1, 2, 3]",
    "a string": b'"hello"',
    "invalid utf-8": b'{"v": 1, "model": "\xff"}',
    "newer version": _stored(v=SCHEMA_VERSION + 1),
    "older version": _stored(v=0),
    "version true": _stored(v=True),
    "no version": orjson.dumps(
        {k: v for k, v in orjson.loads(answer().to_bytes()).items() if k != "v"}
    ),
    "missing field": orjson.dumps(
        {k: v for k, v in orjson.loads(answer().to_bytes()).items() if k != "deployment"}
    ),
    "usage of strings": _stored(usage=["1", "2", "3", "4"]),
    "usage too short": _stored(usage=[1, 2]),
    "negative tokens": _stored(usage=[-1, 0, 0, 0]),
    "boolean tokens": _stored(usage=[True, 0, 0, 0]),
    "no choices": _stored(choices=[]),
    "choices not a list": _stored(choices={"0": 1}),
    "unknown finish reason": _choice_changed(finish="exploded"),
    "content a number": _choice_changed(content=5),
    "bad tool call": _choice_changed(tools=[["id", "name"]]),
    "tool call of numbers": _choice_changed(tools=[[1, 2, 3]]),
    "index a float": _choice_changed(i=0.5),
    "model null": _stored(model=None),
    "stored_at a string": _stored(stored_at="now"),
}


@pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_bytes_raise_corrupt_entry(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        CachedAnswer.from_bytes(data)


# ---- settings and the factory --------------------------------------------------------------


def test_settings_are_strict() -> None:
    with pytest.raises(ValidationError):
        CacheSettings.model_validate({"enabled": "yes"})
    with pytest.raises(ValidationError):
        CacheSettings.model_validate({"ttl": 5})
    with pytest.raises(ValidationError):
        CacheSettings.model_validate({"backend": "memcached"})
    with pytest.raises(ValidationError):
        CacheSettings(max_bytes=4096, max_entry_bytes=8192)
    assert CacheSettings(ttl_s=60).ttl_s == 60
    assert not CacheSettings().enabled
    assert "~" not in CacheSettings(path="~/x.db").path


def test_open_store(tmp_path: Path) -> None:
    assert isinstance(open_store(CacheSettings()), MemoryStore)
    store = open_store(CacheSettings(backend="sqlite", path=str(tmp_path / "c.db")))
    assert isinstance(store, SqliteStore)
    asyncio.run(store.aclose())
    with pytest.raises(CacheUnavailable, match="HEDGE_CACHE_URL"):
        open_store(CacheSettings(backend="redis"), environ={})


# ---- the store contract ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


MakeStore = Callable[..., CacheStore]

ENTRY_BYTES = len(answer("x" * 100).to_bytes()) + 64  # one ~100-character answer and its key


class StoreContract:
    """What every store does. Subclasses provide `make`: (clock, max_entries, max_bytes,
    max_entry_bytes) -> store."""

    @pytest.fixture
    def make(self) -> MakeStore:
        raise NotImplementedError

    def test_hit_and_miss(self, make: MakeStore) -> None:
        async def go() -> None:
            store = make(Clock())
            await store.start()
            assert await store.get("k1") is None
            assert await store.put("k1", answer(), 60)
            assert await store.get("k1") == answer()
            assert await store.get("k2") is None
            await store.aclose()

        asyncio.run(go())

    def test_no_cross_key_leakage(self, make: MakeStore) -> None:
        async def go() -> None:
            store = make(Clock())
            keys = [f"{i:064x}" for i in range(50)]
            for i, k in enumerate(keys):
                assert await store.put(k, answer(f"answer {i}", f"dep{i}"), 60)
            for i, k in enumerate(keys):
                found = await store.get(k)
                assert found is not None
                assert found.choices[0].content == f"answer {i}"
                assert found.deployment == f"dep{i}"
            assert await store.get(keys[0][:-1] + "z") is None
            await store.aclose()

        asyncio.run(go())

    def test_put_overwrites(self, make: MakeStore) -> None:
        async def go() -> None:
            store = make(Clock())
            await store.put("k", answer("old"), 60)
            await store.put("k", answer("new"), 60)
            found = await store.get("k")
            assert found is not None and found.choices[0].content == "new"
            await store.aclose()

        asyncio.run(go())

    def test_ttl_expiry(self, make: MakeStore) -> None:
        async def go() -> None:
            clock = Clock()
            store = make(clock)
            await store.put("short", answer(), 10)
            await store.put("long", answer(), 100)
            clock.now += 9.9
            assert await store.get("short") is not None
            clock.now += 0.2
            assert await store.get("short") is None
            assert await store.get("long") is not None
            clock.now += 100
            assert await store.get("long") is None
            assert not await store.put("zero", answer(), 0)
            await store.aclose()

        asyncio.run(go())

    def test_eviction_by_entries(self, make: MakeStore) -> None:
        async def go() -> None:
            clock = Clock()
            store = make(clock, max_entries=3)
            for i in range(5):
                clock.now += 1
                await store.put(f"k{i}", answer(f"a{i}"), 600)
            present = [i for i in range(5) if await store.get(f"k{i}") is not None]
            assert present == [2, 3, 4]
            await store.aclose()

        asyncio.run(go())

    def test_eviction_by_bytes(self, make: MakeStore) -> None:
        async def go() -> None:
            clock = Clock()
            store = make(clock, max_bytes=ENTRY_BYTES * 4, max_entry_bytes=ENTRY_BYTES * 2)
            for i in range(12):
                clock.now += 1
                assert await store.put(f"{i:064x}", answer(f"{i:03d}" + "x" * 97), 600)
            present = [i for i in range(12) if await store.get(f"{i:064x}") is not None]
            # The newest ones, as many as fit.
            assert present == list(range(12 - len(present), 12))
            assert 3 <= len(present) <= 4
            await store.aclose()

        asyncio.run(go())

    def test_an_entry_larger_than_the_cap_is_not_stored(self, make: MakeStore) -> None:
        async def go() -> None:
            store = make(Clock(), max_bytes=ENTRY_BYTES * 4, max_entry_bytes=ENTRY_BYTES * 2)
            assert await store.put("small", answer(), 60)
            assert not await store.put("big", answer("y" * ENTRY_BYTES * 3), 60)
            assert await store.get("big") is None
            assert await store.get("small") is not None  # nothing was evicted for it
            await store.aclose()

        asyncio.run(go())

    def test_expired_entries_go_before_live_ones(self, make: MakeStore) -> None:
        async def go() -> None:
            clock = Clock()
            store = make(clock, max_entries=3)
            await store.put("old-live", answer(), 1000)
            clock.now += 1
            await store.put("expiring", answer(), 5)
            clock.now += 10
            await store.put("new1", answer(), 1000)
            await store.put("new2", answer(), 1000)
            assert await store.get("old-live") is not None
            assert await store.get("new1") is not None
            assert await store.get("new2") is not None
            await store.aclose()

        asyncio.run(go())


def memory_maker() -> MakeStore:
    def make(
        clock: Clock,
        max_entries: int = 1000,
        max_bytes: int = 1 << 20,
        max_entry_bytes: int | None = None,
    ) -> CacheStore:
        return MemoryStore(
            max_entries=max_entries,
            max_bytes=max_bytes,
            max_entry_bytes=max_entry_bytes,
            clock=clock,
        )

    return make


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def make(self) -> MakeStore:
        return memory_maker()

    def test_least_recently_used_goes_first(self) -> None:
        async def go() -> None:
            store = MemoryStore(max_entries=2, max_bytes=1 << 20, clock=Clock())
            await store.put("a", answer(), 60)
            await store.put("b", answer(), 60)
            assert await store.get("a") is not None  # a is now the most recently used
            await store.put("c", answer(), 60)
            assert await store.get("b") is None
            assert await store.get("a") is not None
            assert await store.get("c") is not None

        asyncio.run(go())

    def test_bytes_are_accounted(self) -> None:
        async def go() -> None:
            store = MemoryStore(max_entries=10, max_bytes=1 << 20, clock=Clock())
            await store.put("a", answer(), 60)
            await store.put("a", answer("longer text"), 60)
            await store.put("b", answer(), 60)
            expected = len(answer("longer text").to_bytes()) + len(answer().to_bytes()) + 2
            assert store.bytes_used == expected
            assert len(store) == 2
            await store.aclose()
            assert (len(store), store.bytes_used) == (0, 0)

        asyncio.run(go())


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def make(self, tmp_path: Path) -> MakeStore:
        def make(
            clock: Clock,
            max_entries: int = 1000,
            max_bytes: int = 1 << 20,
            max_entry_bytes: int | None = None,
        ) -> CacheStore:
            return SqliteStore(
                tmp_path / "cache.db",
                max_entries=max_entries,
                max_bytes=max_bytes,
                max_entry_bytes=max_entry_bytes,
                clock=clock,
            )

        return make

    def test_a_closed_store_misses_and_closes_again(self, tmp_path: Path) -> None:
        async def go() -> None:
            store = SqliteStore(tmp_path / "c.db", max_entries=10, max_bytes=1 << 20)
            await store.put("k", answer(), 60)
            await store.aclose()
            await store.aclose()
            assert await store.get("k") is None
            assert not await store.put("k", answer(), 60)

        asyncio.run(go())

    def test_wal_mode_and_persistence(self, tmp_path: Path) -> None:
        path = tmp_path / "sub" / "cache.db"

        async def write() -> None:
            store = SqliteStore(path, max_entries=10, max_bytes=1 << 20)
            await store.start()
            await store.put("k", answer(), 3600)
            await store.aclose()

        async def read() -> CachedAnswer | None:
            store = SqliteStore(path, max_entries=10, max_bytes=1 << 20)
            try:
                return await store.get("k")
            finally:
                await store.aclose()

        asyncio.run(write())
        assert asyncio.run(read()) == answer()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_two_stores_on_one_file_share_entries_and_bounds(self, tmp_path: Path) -> None:
        # Two gateway processes of one host, each with its own connection.
        async def go() -> None:
            clock = Clock()
            a = SqliteStore(tmp_path / "c.db", max_entries=3, max_bytes=1 << 20, clock=clock)
            b = SqliteStore(tmp_path / "c.db", max_entries=3, max_bytes=1 << 20, clock=clock)
            await a.put("k1", answer("from a"), 60)
            found = await b.get("k1")
            assert found is not None and found.choices[0].content == "from a"
            for i in range(2, 6):
                clock.now += 1
                await (a if i % 2 else b).put(f"k{i}", answer(), 60)
            assert (await a.totals())[0] == 3
            assert await b.get("k1") is None  # the oldest went, whoever wrote it
            await a.aclose()
            await b.aclose()

        asyncio.run(go())

    def test_totals_follow_puts_overwrites_and_evictions(self, tmp_path: Path) -> None:
        async def go() -> None:
            clock = Clock()
            store = SqliteStore(tmp_path / "c.db", max_entries=5, max_bytes=1 << 20, clock=clock)
            for i in range(8):
                clock.now += 1
                await store.put(f"k{i % 6}", answer(f"{i}"), 60)
            entries, size = await store.totals()
            await store.aclose()
            with sqlite3.connect(tmp_path / "c.db") as conn:
                real = conn.execute("SELECT count(*), total(size) FROM entries").fetchone()
            assert (entries, size) == (real[0], int(real[1]))
            assert entries == 5

        asyncio.run(go())

    @pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
    def test_a_corrupt_entry_is_a_miss_and_is_removed(self, tmp_path: Path, data: bytes) -> None:
        path = tmp_path / "c.db"

        async def go() -> None:
            store = SqliteStore(path, max_entries=10, max_bytes=1 << 20)
            await store.put("bad", answer(), 3600)
            await store.put("good", answer(), 3600)
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE entries SET value = ? WHERE key = 'bad'", (data,))
            assert await store.get("bad") is None
            assert await store.get("good") == answer()
            with sqlite3.connect(path) as conn:
                keys = [r[0] for r in conn.execute("SELECT key FROM entries")]
            assert keys == ["good"]
            await store.aclose()

        asyncio.run(go())

    def test_a_value_of_the_wrong_sql_type_is_a_miss(self, tmp_path: Path) -> None:
        path = tmp_path / "c.db"

        async def go() -> None:
            store = SqliteStore(path, max_entries=10, max_bytes=1 << 20)
            await store.start()
            with sqlite3.connect(path) as conn:
                conn.execute("INSERT INTO entries VALUES ('t', 'text', 4, 0, 1e12)")
                conn.execute("INSERT INTO entries VALUES ('n', X'00', 1, 0, 'soon')")
            assert await store.get("t") is None
            assert await store.get("n") is None
            await store.aclose()

        asyncio.run(go())

    def test_a_file_that_is_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "c.db"
        path.write_bytes(b"this is not a database" * 100)

        async def go() -> None:
            store = SqliteStore(path, max_entries=10, max_bytes=1 << 20)
            with pytest.raises(CacheUnavailable, match="delete it"):
                await store.start()
            # At run time it is a miss and a skipped write, never an exception.
            assert await store.get("k") is None
            assert not await store.put("k", answer(), 60)
            await store.aclose()

        asyncio.run(go())

    def test_a_file_of_another_layout_is_rebuilt(self, tmp_path: Path) -> None:
        path = tmp_path / "c.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE entries (key TEXT, other TEXT)")
            conn.execute("INSERT INTO entries VALUES ('k', 'x')")
            conn.execute("PRAGMA user_version = 99")

        async def go() -> None:
            store = SqliteStore(path, max_entries=10, max_bytes=1 << 20)
            assert await store.get("k") is None
            assert await store.put("k", answer(), 60)
            assert await store.get("k") == answer()
            await store.aclose()

        asyncio.run(go())

    def test_an_unwritable_location(self, tmp_path: Path) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("x")

        async def go() -> None:
            store = SqliteStore(blocker / "c.db", max_entries=10, max_bytes=1 << 20)
            with pytest.raises(CacheUnavailable):
                await store.start()
            assert await store.get("k") is None
            await store.aclose()

        asyncio.run(go())
