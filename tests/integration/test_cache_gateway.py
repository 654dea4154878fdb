"""The response cache through the running gateway: hits skip the upstream, streams replay,
Cache-Control is honoured, and two gateway processes share one Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai
from tests.redis_server import find_redis_server, throwaway_redis

CONFIG = """\
deployments:
  up:
    kind: openai_compat
    base_url: {url}
    upstream_model: echo-cached
    hosting: hosted
  embedder:
    kind: openai_compat
    base_url: {url}
    upstream_model: embed-8#emb
    hosting: hosted
routes:
  cached:
    deployments: [up]
    cache: {{enabled: true, backend: {backend}{extra}}}
  plain:
    deployments: [up]
  vectors:
    deployments: [embedder]
    cache: {{enabled: true, backend: {backend}{extra}}}
"""


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)


def ask(gw: Gateway, text: str, route: str = "cached", **extra: Any) -> tuple[dict[str, str], str]:
    raw = client(gw).chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": text}], **extra
    )
    return dict(raw.headers), raw.parse().choices[0].message.content or ""


def ask_stream(gw: Gateway, text: str, **extra: Any) -> tuple[dict[str, str], str]:
    with client(gw).chat.completions.with_streaming_response.create(
        model="cached", messages=[{"role": "user", "content": text}], stream=True, **extra
    ) as raw:
        return dict(raw.headers), "".join(
            c.choices[0].delta.content or "" for c in raw.parse() if c.choices
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, FakeOpenAI]]:
    tmp = tmp_path_factory.mktemp("cache")
    with (
        fake_openai() as fake,
        run_gateway(
            CONFIG.format(url=fake.url, backend="sqlite", extra=f", path: {tmp / 'cache.db'}"), tmp
        ) as gw,
    ):
        yield gw, fake


def test_a_repeated_deterministic_request_is_served_from_the_cache(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, fake = setup
    first, text = ask(gw, "one", temperature=0)
    assert first["x-hedge-cache"] == "miss"
    hits = len(fake.hits)
    second, again = ask(gw, "one", temperature=0)
    assert second["x-hedge-cache"] == "hit" and again == text
    assert second["x-hedge-deployment"] == "up"
    assert len(fake.hits) == hits, "a hit never reaches the upstream"


def test_streams_are_cached_and_replayed_with_the_same_content(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, fake = setup
    h1, streamed = ask_stream(gw, "two", seed=7)
    assert h1["x-hedge-cache"] == "miss" and streamed == "echo: two"
    hits = len(fake.hits)
    h2, replayed = ask_stream(gw, "two", seed=7)
    assert h2["x-hedge-cache"] == "hit" and replayed == streamed
    h3, whole = ask(gw, "two", seed=7)  # streamed and plain requests share entries
    assert h3["x-hedge-cache"] == "hit" and whole == streamed
    assert len(fake.hits) == hits


def test_sampled_requests_and_cache_control_bypass(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, fake = setup
    headers, _ = ask(gw, "three", temperature=0.8)
    assert headers["x-hedge-cache"] == "bypass"
    ask(gw, "four", temperature=0)
    hits = len(fake.hits)
    no_cache, _ = ask(gw, "four", temperature=0, extra_headers={"Cache-Control": "no-cache"})
    assert no_cache["x-hedge-cache"] == "miss" and len(fake.hits) == hits + 1
    no_store, _ = ask(gw, "five", temperature=0, extra_headers={"Cache-Control": "no-store"})
    assert no_store["x-hedge-cache"] == "bypass"
    again, _ = ask(gw, "five", temperature=0)
    assert again["x-hedge-cache"] == "miss", "no-store left nothing behind"
    plain, _ = ask(gw, "four", route="plain", temperature=0)
    assert "x-hedge-cache" not in plain


def test_embeddings_are_cached_per_input_list(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, fake = setup
    api = client(gw)
    first = api.embeddings.with_raw_response.create(model="vectors", input=["a", "b"])
    assert first.headers["x-hedge-cache"] == "miss"
    hits = len(fake.hits)
    second = api.embeddings.with_raw_response.create(model="vectors", input=["a", "b"])
    assert second.headers["x-hedge-cache"] == "hit"
    assert second.headers["x-hedge-deployment"] == "embedder"
    assert len(fake.hits) == hits, "a hit never reaches the upstream"
    vectors = [d.embedding for d in first.parse().data]
    assert [d.embedding for d in second.parse().data] == vectors and len(vectors) == 2
    assert second.parse().usage.prompt_tokens == first.parse().usage.prompt_tokens
    # One entry for both encodings (the SDK asks for base64 unless told otherwise).
    floats = api.embeddings.with_raw_response.create(
        model="vectors", input=["a", "b"], encoding_format="float"
    )
    assert floats.headers["x-hedge-cache"] == "hit"
    assert [np.float32(x) for d in floats.parse().data for x in d.embedding] == [
        np.float32(x) for v in vectors for x in v
    ]
    other = api.embeddings.with_raw_response.create(model="vectors", input=["b", "a"])
    assert other.headers["x-hedge-cache"] == "miss"
    assert len(fake.hits) == hits + 1
    no_store = api.embeddings.with_raw_response.create(
        model="vectors", input=["c"], extra_headers={"Cache-Control": "no-store"}
    )
    assert no_store.headers["x-hedge-cache"] == "bypass"


@pytest.mark.skipif(find_redis_server() is None, reason="redis-server is not installed")
def test_two_gateway_processes_share_one_redis(tmp_path: Path) -> None:
    binary = find_redis_server()
    assert binary is not None
    with throwaway_redis(binary) as redis, fake_openai() as fake:
        cfg = CONFIG.format(url=fake.url, backend="redis", extra="")
        env = {"HEDGE_CACHE_URL": redis.url}
        with run_gateway(cfg, tmp_path, env=env) as gw1, run_gateway(cfg, tmp_path, env=env) as gw2:
            h1, text = ask(gw1, "shared", temperature=0)
            assert h1["x-hedge-cache"] == "miss"
            hits = len(fake.hits)
            misses = 0
            for _ in range(20):  # the write is in the background: give it a moment
                h2, again = ask(gw2, "shared", temperature=0)
                if h2["x-hedge-cache"] == "hit":
                    break
                misses += 1
            assert h2["x-hedge-cache"] == "hit" and again == text
            assert h2["x-hedge-deployment"] == "up"
            # only gw2's misses (if the write was still in flight) reached the upstream
            assert len(fake.hits) == hits + misses
