"""Cascades through the running server: SmolLM2 in-process drafts, a loopback fake is the
strong stage (and the judge), and the headers say which stage answered and why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, run_gateway
from tests.fakes.openai_fake import FakeOpenAI, fake_openai

CONFIG = """\
deployments:
  draft:
    kind: embedded
    model: smollm2-135m-instruct
    bundled: smollm2-135m-instruct
    defaults: {{temperature: 0, max_tokens: 12}}
  strong:
    kind: openai_compat
    base_url: {url}
    upstream_model: echo-strong
    hosting: hosted
    prices: {{input: 10, output: 30}}
  voter-a: {{kind: openai_compat, base_url: {url}, hosting: hosted,
            upstream_model: "say:The answer is (B)."}}
  voter-b: {{kind: openai_compat, base_url: {url}, upstream_model: "say:B", hosting: hosted}}
  voter-c: {{kind: openai_compat, base_url: {url}, upstream_model: "say:C", hosting: hosted}}
  judge-yes: {{kind: openai_compat, base_url: {url}, hosting: hosted,
              upstream_model: "say:SCORE: 9"}}
  judge-no: {{kind: openai_compat, base_url: {url}, hosting: hosted,
             upstream_model: "say:SCORE: 2"}}
routes:
  accept-draft:
    cascade:
      stages:
        - deployments: [draft]
          validators: [{{kind: length, min_chars: 1}}]
        - deployments: [strong]
  escalate:
    cascade:
      stages:
        - deployments: [draft]
          validators: [{{kind: regex, pattern: "^NEVER MATCHES$"}}]
        - deployments: [strong]
  json-draft:
    cascade:
      stages:
        - deployments: [draft]
          params: {{max_tokens: 40}}
          validators: [{{kind: json_schema}}]
        - deployments: [strong]
  vote:
    cascade:
      stages:
        - deployments: [voter-a, voter-b, voter-c]
          validators: [{{kind: agreement, k: 2, normalize: choice_letter}}]
        - deployments: [strong]
  vote-split:
    cascade:
      stages:
        - deployments: [voter-a, voter-c]
          validators: [{{kind: agreement, k: 2, normalize: choice_letter}}]
        - deployments: [strong]
  judged-yes:
    cascade:
      stages:
        - deployments: [draft]
          validators: [{{kind: judge, deployment: judge-yes, rubric: "Is it a colour?"}}]
        - deployments: [strong]
  judged-no:
    cascade:
      stages:
        - deployments: [draft]
          validators: [{{kind: judge, deployment: judge-no, rubric: "Is it a colour?"}}]
        - deployments: [strong]
  last-stage-rejects:
    cascade:
      stages:
        - deployments: [draft]
          validators: [{{kind: regex, pattern: "^NEVER$"}}]
        - deployments: [strong]
          validators: [{{kind: regex, pattern: "^NEVER EITHER$"}}]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, FakeOpenAI]]:
    with (
        fake_openai() as fake,
        run_gateway(CONFIG.format(url=fake.url), tmp_path_factory.mktemp("cascade")) as gw,
    ):
        yield gw, fake


def ask(gw: Gateway, route: str, stream: bool = False, **extra: Any) -> tuple[dict[str, str], str]:
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Name a colour."}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model=route,
            messages=messages,
            **extra,  # type: ignore[arg-type]
        )
        return dict(raw.headers), raw.parse().choices[0].message.content or ""
    with client.chat.completions.with_streaming_response.create(
        model=route,
        messages=messages,
        stream=True,
        **extra,  # type: ignore[arg-type]
    ) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return dict(raw.headers), text


@pytest.mark.parametrize("stream", [False, True])
def test_an_accepted_draft_never_reaches_the_strong_stage(
    setup: tuple[Gateway, FakeOpenAI], stream: bool
) -> None:
    gw, fake = setup
    before = len(fake.hits_for("echo-strong"))
    headers, text = ask(gw, "accept-draft", stream)
    assert headers["x-hedge-stage"] == "1" and headers["x-hedge-deployment"] == "draft"
    assert headers["x-hedge-verdict"] == "accepted" and "x-hedge-rejections" not in headers
    assert text.strip()
    assert len(fake.hits_for("echo-strong")) == before


@pytest.mark.parametrize("stream", [False, True])
def test_a_rejected_draft_escalates_and_says_why(
    setup: tuple[Gateway, FakeOpenAI], stream: bool
) -> None:
    gw, fake = setup
    before = len(fake.hits_for("echo-strong"))
    headers, text = ask(gw, "escalate", stream)
    assert headers["x-hedge-stage"] == "2" and headers["x-hedge-deployment"] == "strong"
    assert "stage 1:" in headers["x-hedge-rejections"]
    assert "NEVER MATCHES" in headers["x-hedge-rejections"]
    assert headers["x-hedge-attempts"] == "2"  # the draft and the strong call
    assert text == "echo: Name a colour."
    assert len(fake.hits_for("echo-strong")) == before + 1


def test_a_json_draft_is_accepted_when_it_matches_the_schema(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, _ = setup
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string"}},
        "required": ["colour"],
    }
    headers, text = ask(
        gw,
        "json-draft",
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    # llama.cpp's grammar makes the small model emit schema-valid JSON: no escalation.
    assert headers["x-hedge-stage"] == "1", headers.get("x-hedge-rejections")
    assert "colour" in json.loads(text)


def test_agreeing_voters_answer_with_the_majority(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, fake = setup
    before = len(fake.hits_for("echo-strong"))
    headers, text = ask(gw, "vote")
    assert headers["x-hedge-stage"] == "1" and headers["x-hedge-verdict"] == "accepted"
    assert headers["x-hedge-deployment"] in ("voter-a", "voter-b")  # both said B
    assert text in ("The answer is (B).", "B")
    assert headers["x-hedge-attempts"] == "3"  # every voter was asked
    assert len(fake.hits_for("echo-strong")) == before


def test_disagreeing_voters_escalate(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, _ = setup
    headers, text = ask(gw, "vote-split")
    assert headers["x-hedge-stage"] == "2" and text == "echo: Name a colour."
    assert "agree" in headers["x-hedge-rejections"].lower()


def test_a_judge_accepts_or_escalates(setup: tuple[Gateway, FakeOpenAI]) -> None:
    gw, fake = setup
    headers, _ = ask(gw, "judged-yes")
    assert headers["x-hedge-stage"] == "1" and headers["x-hedge-verdict"] == "accepted"
    assert headers["x-hedge-attempts"] == "2"  # the draft and the judge
    judge_call = fake.hits_for("say:SCORE: 9")[-1].body
    assert "Is it a colour?" in json.dumps(judge_call)  # the rubric reached the judge
    headers, text = ask(gw, "judged-no")
    assert headers["x-hedge-stage"] == "2" and text == "echo: Name a colour."
    assert "stage 1:" in headers["x-hedge-rejections"]


def test_the_last_stage_answers_even_when_its_gate_rejects(
    setup: tuple[Gateway, FakeOpenAI],
) -> None:
    gw, _ = setup
    headers, text = ask(gw, "last-stage-rejects")
    assert headers["x-hedge-stage"] == "2" and headers["x-hedge-verdict"] == "rejected"
    assert text == "echo: Name a colour."
    assert headers["x-hedge-rejections"].count("stage") == 2
