"""The semantic cache's pure parts: which requests qualify, scopes, the index; and the
embeddings entry's serialisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hedge import vectors
from hedge.cache import (
    CachedAnswer,
    CachedEmbedding,
    CacheSettings,
    CorruptEntry,
    SemanticSettings,
    decode_entry,
)
from hedge.cache.keys import cache_key
from hedge.cache.semantic import SemanticIndex, blanked, compatible, prompt_text, unit
from hedge.types import ChatRequest

ON = SemanticSettings(enabled=True, embedder="e")


def request(*messages: dict[str, Any], **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "r", "messages": list(messages), **fields})


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


IMAGE = "data:image/png;base64,AA"
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("req", "settings", "expected"),
    [
        (request(user("hi there")), ON, "hi there"),
        (request({"role": "system", "content": "Be brief."}, user("hi")), ON, "hi"),
        (request(user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])), ON, "ab"),
        (request(user("   ")), ON, None),
        (request(user("a"), {"role": "assistant", "content": "b"}, user("c")), ON, None),
        (
            request(user("a"), {"role": "assistant", "content": "b"}, user("c")),
            ON.model_copy(update={"multi_turn": True}),
            "c",
        ),
        (request(user("a"), {"role": "assistant", "content": "b"}), ON, None),
        (request(user("a"), tools=[TOOL]), ON, None),
        (request(user("a"), tools=[TOOL]), ON.model_copy(update={"tools": True}), "a"),
        (request(user([{"type": "image_url", "image_url": {"url": IMAGE}}])), ON, None),
    ],
)
def test_which_requests_qualify(
    req: ChatRequest, settings: SemanticSettings, expected: str | None
) -> None:
    assert prompt_text(req, settings) == expected


def scope(req: ChatRequest) -> str:
    return cache_key(
        blanked(req), route="r", deployment_scope="d", policy_names=(), data_class=None, tenant=None
    )


def test_the_scope_is_everything_but_the_last_message() -> None:
    a, b = request(user("one")), request(user("two"))
    assert scope(a) == scope(b)
    assert scope(a) != scope(request(user("one"), temperature=0.5))
    assert scope(a) != scope(request({"role": "system", "content": "x"}, user("one")))
    assert a.messages[-1].content == "one", "blanking copies, never edits the request"


def test_nearest_returns_the_most_similar_row_of_the_scope() -> None:
    index = SemanticIndex(max_entries=10)
    index.add("s", unit([1.0, 0.0]), "k1", "one")
    index.add("s", unit([0.6, 0.8]), "k2", "two")
    index.add("other", unit([0.0, 1.0]), "k3", "three")
    key, text, similarity = index.nearest("s", unit([0.0, 1.0])) or ("", "", 0.0)
    assert (key, text) == ("k2", "two") and similarity == pytest.approx(0.8)
    assert index.nearest("missing", unit([1.0, 0.0])) is None
    assert index.nearest("s", unit([1.0, 0.0, 0.0])) is None, "other dimensions never match"


def test_the_index_is_bounded_and_forgets() -> None:
    index = SemanticIndex(max_entries=3)
    for i in range(5):
        index.add("old" if i < 2 else "new", unit([1.0, float(i)]), f"k{i}", f"t{i}")
    assert len(index) == 3
    assert index.nearest("old", unit([1.0, 0.0])) is None, "the least recent scope went first"
    index.forget("new", "k3")
    assert len(index) == 2
    found = [index.nearest("new", unit([1.0, float(i)])) for i in (2, 4)]
    assert {f[0] for f in found if f is not None} == {"k2", "k4"}
    index.add("new", unit([1.0, 4.0]), "k4", "t4")
    assert len(index) == 2, "a key is indexed once"


def test_a_full_scope_keeps_its_newest_rows() -> None:
    index = SemanticIndex(max_entries=3)
    rows = {f"k{i}": unit([1.0, float(i), float(i * i)]) for i in range(8)}
    for key, vector in rows.items():
        index.add("s", vector, key, key)
    assert len(index) == 3
    for key in ("k5", "k6", "k7"):
        assert (index.nearest("s", rows[key]) or ("",))[0] == key
    index.forget("s", "k6")
    index.add("s", rows["k0"], "k0", "k0")
    index.add("s", rows["k1"], "k1", "k1")  # evicts k5, the oldest left
    assert {(index.nearest("s", rows[k]) or ("",))[0] for k in ("k7", "k0", "k1")} == {
        "k7",
        "k0",
        "k1",
    }
    assert (index.nearest("s", rows["k5"]) or ("",))[0] != "k5"


def test_many_rows_grow_and_shrink_consistently() -> None:
    rng = np.random.default_rng(7)
    rows = [unit(rng.normal(size=16)) for _ in range(50)]
    index = SemanticIndex(max_entries=100)
    for i, v in enumerate(rows):
        index.add("s", v, f"k{i}", f"t{i}")
    for i in range(0, 50, 2):
        index.forget("s", f"k{i}")
    for i in range(1, 50, 2):
        key, text, similarity = index.nearest("s", rows[i]) or ("", "", 0.0)
        assert (key, text) == (f"k{i}", f"t{i}")
        assert similarity == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("query", "stored", "expected"),
    [
        ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?", True),
        ("What is 2 + 3?", "What is 2 + 4?", False),
        ("Convert 100 °C to °F.", "Convert 100 °F to °C.", False),
        ("Celsius to Fahrenheit, please", "Fahrenheit to Celsius, please", False),
        ("Does the dog bite the man?", "Does the man bite the dog?", False),
        ("What is 1,000 + 2.5?", "Compute 1,000 + 2.5.", True),
        ("same words", "Same  words!", True),
    ],
)
def test_guards_against_what_embeddings_miss(query: str, stored: str, expected: bool) -> None:
    assert compatible(query, stored) is expected


def test_unit_vectors_from_bytes_and_numbers_agree() -> None:
    raw = vectors.pack([3.0, 4.0])
    assert list(unit(raw)) == pytest.approx([0.6, 0.8])
    assert list(unit([3.0, 4.0])) == pytest.approx([0.6, 0.8])
    assert list(unit([0.0, 0.0])) == [0.0, 0.0]


def test_settings_need_the_exact_cache_and_an_embedder() -> None:
    with pytest.raises(ValueError, match="needs the exact cache on"):
        CacheSettings.model_validate({"semantic": {"enabled": True, "embedder": "e"}})
    with pytest.raises(ValueError, match=r"needs semantic\.embedder"):
        CacheSettings.model_validate({"enabled": True, "semantic": {"enabled": True}})
    with pytest.raises(ValueError, match="less than or equal to 1"):
        SemanticSettings.model_validate({"threshold": 1.5})


EMBEDDING = CachedEmbedding(
    vectors=(vectors.pack([0.5, -1.25]), vectors.pack([1e-8, 3.0])),
    prompt_tokens=7,
    upstream_model="m",
    deployment="d",
    stored_at=12.5,
)


def test_an_embedding_entry_round_trips() -> None:
    entry = decode_entry(EMBEDDING.to_bytes())
    assert entry == EMBEDDING
    assert entry.to_response().vectors == EMBEDDING.vectors  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.replace(b'"vectors":[', b'"vectors":["%%%",'),
        lambda d: d.replace(b'"tokens":7', b'"tokens":"7"'),
        lambda d: d.replace(b'"kind":"embedding"', b'"kind":"audio"'),
        lambda d: d[: len(d) // 2],
    ],
)
def test_a_damaged_embedding_entry_is_refused(mangle: Any) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(mangle(EMBEDDING.to_bytes()))


def test_an_answer_is_never_decoded_as_an_embedding_or_back() -> None:
    with pytest.raises(CorruptEntry, match="embedding where an answer"):
        CachedAnswer.from_bytes(EMBEDDING.to_bytes())
