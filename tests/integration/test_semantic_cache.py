"""The semantic cache through the running gateway, with the real all-MiniLM-L6-v2 embedder.

The answering upstream is the loopback fake, which echoes the last user message: an answer
therefore says which prompt it was produced for, so a hit served for the wrong prompt shows.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai

CONFIG = """\
policies:
  hosted-only:
    hosting: hosted
deployments:
  up:
    kind: openai_compat
    base_url: {url}
    upstream_model: echo-semantic
    hosting: hosted
  minilm:
    kind: embedded_embeddings
    model: all-minilm-l6-v2
    bundled: all-minilm-l6-v2
routes:
  semantic:
    deployments: [up]
    cache:
      enabled: true
      semantic: {{enabled: true, embedder: minilm, threshold: 0.9}}
  conversational:
    deployments: [up]
    cache:
      enabled: true
      semantic: {{enabled: true, embedder: minilm, threshold: 0.9, multi_turn: true}}
  exact-only:
    deployments: [up]
    cache: {{enabled: true}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, FakeOpenAI]]:
    tmp = tmp_path_factory.mktemp("semantic")
    with fake_openai() as fake, run_gateway(CONFIG.format(url=fake.url), tmp) as gw:
        # The embedder serves no route, so /readyz does not wait for it; until it is loaded
        # every lookup is a plain miss.
        deadline = time.monotonic() + 120
        while readiness(gw)["deployments"]["minilm"]["state"] != "ready":
            assert time.monotonic() < deadline, "the embedder did not load"
            time.sleep(0.2)
        yield gw, fake


def readiness(gw: Gateway) -> dict[str, Any]:
    with urllib.request.urlopen(f"{gw.url}/readyz", timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


def ask(
    gw: Gateway, messages: list[dict[str, Any]], route: str = "semantic", **extra: Any
) -> tuple[dict[str, str], str]:
    api = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=60)
    raw = api.chat.completions.with_raw_response.create(
        model=route, messages=messages, temperature=0, **extra
    )  # type: ignore[call-overload]
    return dict(raw.headers), raw.parse().choices[0].message.content or ""


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def upstream_calls(fake: FakeOpenAI) -> int:
    return len(fake.hits_for("echo-semantic"))


def test_a_paraphrase_is_answered_from_the_cache(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, fake = setup
    first, answer = ask(gw, user("Who is the author of Pride and Prejudice?"))
    assert first["x-hedge-cache"] == "miss"
    before = upstream_calls(fake)
    again, cached = ask(gw, user("Who wrote Pride and Prejudice?"))
    assert again["x-hedge-cache"] == "semantic-hit"
    assert cached == answer == "echo: Who is the author of Pride and Prejudice?"
    assert 0.9 <= float(again["x-hedge-cache-similarity"]) < 1
    assert upstream_calls(fake) == before, "a semantic hit never reaches the upstream"


def test_an_unrelated_prompt_and_another_system_prompt_miss(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, _ = setup
    ask(gw, user("What is the chemical symbol for gold?"))
    headers, answer = ask(gw, user("Give me a recipe for pancakes."))
    assert headers["x-hedge-cache"] == "miss" and answer == "echo: Give me a recipe for pancakes."
    # The same paraphrase under another system prompt is another scope: never matched.
    system = [{"role": "system", "content": "Answer in French."}]
    headers, answer = ask(gw, [*system, *user("Which chemical symbol stands for gold?")])
    assert headers["x-hedge-cache"] == "miss"
    assert answer == "echo: Which chemical symbol stands for gold?"


def test_conversations_and_tools_are_left_out_unless_enabled(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, _ = setup
    history = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi! How can I help?"},
    ]
    ask(gw, [*history, *user("How do I center a div in CSS?")])
    headers, _ = ask(gw, [*history, *user("What's the CSS to center a div?")])
    assert headers["x-hedge-cache"] == "miss", "multi-turn is not matched by default"
    ask(gw, [*history, *user("How do I center a div in CSS?")], route="conversational")
    headers, answer = ask(
        gw, [*history, *user("What's the CSS to center a div?")], route="conversational"
    )
    assert headers["x-hedge-cache"] == "semantic-hit"
    assert answer == "echo: How do I center a div in CSS?"
    # ... and only with the same history.
    other = [{"role": "user", "content": "Bonjour."}, history[1]]
    headers, _ = ask(gw, [*other, *user("What's the CSS to center a div?")], route="conversational")
    assert headers["x-hedge-cache"] == "miss"

    tool = {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    }
    offered: dict[str, Any] = {"tools": [tool], "tool_choice": "none"}
    ask(gw, user("How many ounces are in a pound?"), **offered)
    headers, _ = ask(gw, user("A pound contains how many ounces?"), **offered)
    assert headers["x-hedge-cache"] == "miss", "tool-calling requests are not matched by default"


def test_a_policy_that_refuses_the_embedder_keeps_the_prompt_from_it(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    """The embedder sees the prompt, so it must pass the policies in force: under a policy
    that admits only hosted deployments, the in-process embedder is not asked, and the
    request is a plain exact-cache miss."""
    gw, _ = setup
    policy = {"X-Hedge-Policy": "hosted-only"}
    ask(gw, user("What year did World War II end?"), extra_headers=policy)
    headers, answer = ask(gw, user("In which year did the Second World War end?"))
    assert headers["x-hedge-cache"] == "miss", "scopes differ by policy"
    headers, answer = ask(
        gw, user("In which year did the Second World War end?"), extra_headers=policy
    )
    assert headers["x-hedge-cache"] == "miss"
    assert answer == "echo: In which year did the Second World War end?"


def test_exact_only_routes_do_not_match_by_meaning(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, _ = setup
    ask(gw, user("What is a prime number?"), route="exact-only")
    headers, _ = ask(gw, user("Define a prime number."), route="exact-only")
    assert headers["x-hedge-cache"] == "miss"
    headers, _ = ask(gw, user("What is a prime number?"), route="exact-only")
    assert headers["x-hedge-cache"] == "hit" and "x-hedge-cache-similarity" not in headers
