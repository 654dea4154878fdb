"""hedge replay on a tiny hand-made recording (tests/fixtures/replay, invented rows).

Every expected figure is computed by hand from the fixture's README: per call, acme/tiny costs
$0.001001, acme/small $0.002002, acme/mid $0.003003 and acme/big $0.010030. The test split of
task `quiz` is q1..q4 (q7 is left out: acme/big has no row for it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hedge.backends.replay import NotRecorded, ReplayBackend, load_recording
from hedge.config import Prices, ReplayDeployment
from hedge.errors import UpstreamError
from hedge.replay import (
    Figures,
    Point,
    ReplayRefused,
    ReplayReport,
    choose,
    oracle,
    pareto_front,
    recorded_outcome,
    run_replay,
    select_prompts,
    single_model,
    split_of,
)
from hedge.types import ChatRequest, Chunk

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "replay"
OUTCOMES = FIXTURE / "outcomes.jsonl"
TINY, SMALL, MID, BIG = 0.001001, 0.002002, 0.003003, 0.010030
MODELS = ("acme/tiny", "acme/small", "acme/mid", "acme/big")
PRICES = {
    "acme/tiny": Prices(input=1, output=1),
    "acme/small": Prices(input=2, output=2),
    "acme/mid": Prices(input=3, output=3),
    "acme/big": Prices(input=10, output=30),
}

DEPLOYMENTS = """
ledger: {{backend: none}}
deployments:
  tiny:
    {{kind: replay, recording: {rec}, recorded_model: acme/tiny, prices: {{input: 1, output: 1}}}}
  small:
    {{kind: replay, recording: {rec}, recorded_model: acme/small, prices: {{input: 2, output: 2}}}}
  mid: {{kind: replay, recording: {rec}, recorded_model: acme/mid, prices: {{input: 3, output: 3}}}}
  big:
    {{kind: replay, recording: {rec}, recorded_model: acme/big, prices: {{input: 10, output: 30}}}}
  ghost: {{kind: replay, recording: {rec}, recorded_model: acme/ghost}}
  live:
    kind: openai_compat
    hosting: self-hosted
    base_url: http://127.0.0.1:9
    upstream_model: x
routes:
  big: {{deployments: [big]}}
  tiny_then_big: {{deployments: [tiny, big]}}
  ghost: {{deployments: [ghost]}}
  live: {{deployments: [live]}}
  two_voters:
    cascade:
      stages:
        - deployments: [tiny, small]
          validators: [{{kind: agreement, k: 2, normalize: choice_letter}}]
        - deployments: [big]
  three_voters:
    cascade:
      stages:
        - deployments: [tiny, small, mid]
          validators: [{{kind: agreement, k: 2, normalize: choice_letter}}]
        - deployments: [big]
  judged:
    cascade:
      stages:
        - deployments: [tiny]
          validators: [{{kind: judge, deployment: big, rubric: "is it right?"}}]
        - deployments: [big]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "hedge.yaml"
    path.write_text(DEPLOYMENTS.format(rec=OUTCOMES), encoding="utf-8")
    return path


def replay(config: Path, route: str) -> ReplayReport:
    return run_replay(OUTCOMES, config, route, split="test", tasks=["quiz"])


# ---- the recording and the pure figures -----------------------------------------------------


def test_selection_leaves_out_prompts_a_model_has_no_row_for() -> None:
    rec = load_recording(OUTCOMES)
    sel = select_prompts(rec, split="test", tasks=["quiz"], models=MODELS)
    assert sel.prompt_ids == ("quiz/q1", "quiz/q2", "quiz/q3", "quiz/q4")
    assert sel.excluded == {"no scored row for acme/big": 1}
    train = select_prompts(rec, split="train", tasks=["quiz"], models=MODELS)
    assert train.prompt_ids == ("quiz/q5", "quiz/q6")


def test_recorded_outcome_is_the_harness_lookup() -> None:
    row = recorded_outcome(OUTCOMES, "quiz/q2", "acme/mid")
    assert row is not None and row.correct == 1.0 and row.response == "B)"
    assert recorded_outcome(OUTCOMES, "quiz/q7", "acme/big") is None


def test_single_models_and_oracle_by_hand() -> None:
    rec = load_recording(OUTCOMES)
    ids = select_prompts(rec, split="test", tasks=["quiz"], models=MODELS).prompt_ids
    big = single_model(rec, ids, "acme/big", PRICES["acme/big"])
    assert (big.n, big.correct) == (4, 3)
    assert big.cost_usd == pytest.approx(4 * BIG)
    assert big.cost_per_success == pytest.approx(4 * BIG / 3)
    tiny = single_model(rec, ids, "acme/tiny", None)  # priced from the recorded cost_usd
    assert tiny.accuracy == 0.25
    assert tiny.cost_usd == pytest.approx(4 * TINY)
    best, picks = oracle(rec, ids, MODELS, PRICES)
    # q1: tiny is right; q2: small; q3: mid; q4: only big.
    assert best.accuracy == 1.0
    assert best.cost_usd == pytest.approx(TINY + SMALL + MID + BIG)
    assert picks == {"acme/tiny": 1, "acme/small": 1, "acme/mid": 1, "acme/big": 1}


def test_oracle_without_a_correct_model_pays_the_cheapest() -> None:
    rec = load_recording(OUTCOMES)
    best, picks = oracle(rec, ["quiz/q3"], ["acme/tiny", "acme/small"], PRICES)
    assert (best.correct, picks) == (0, {"acme/tiny": 1})
    assert best.cost_usd == pytest.approx(TINY)


def test_split_without_a_recorded_split_is_a_stable_hash() -> None:
    from hedge.backends.replay import RecordedPrompt

    p = RecordedPrompt("x/1", None, None, None, "t", None)
    assert split_of(p, 0.0) == "train" and split_of(p, 1.0) == "test"
    assert split_of(p, 0.5) == split_of(p, 0.5)
    own = RecordedPrompt("x/1", None, None, "train", "t", None)
    assert split_of(own, 1.0) == "train"


def test_pareto_front_and_choice_on_train() -> None:
    pts = [
        Point("a", "model", 1.0, 0.5),
        Point("b", "model", 2.0, 0.4),  # dominated by a
        Point("c", "model", 3.0, 0.9),
        Point("d", "model", 3.0, 0.8),  # dominated by c
    ]
    assert [p.name for p in pareto_front(pts)] == ["a", "c"]
    ref = Figures("ref", 100, 90, 9.0)  # accuracy 0.9, cost/success 0.1
    cheap_bad = Figures("cheap_bad", 100, 80, 1.0)  # below 0.99 x 0.9
    ok = Figures("ok", 100, 89.1, 4.0)  # exactly 0.99 x ref accuracy
    pricier = Figures("pricier", 100, 90, 6.0)
    assert choose([cheap_bad, ok, pricier], ref) is ok
    assert choose([cheap_bad], ref) is None


# ---- the backend ----------------------------------------------------------------------------


def _request(text: str, stream: bool = False) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "r", "messages": [{"role": "user", "content": text}], "stream": stream}
    )


def _backend(model: str) -> ReplayBackend:
    dep = ReplayDeployment.model_validate(
        {"kind": "replay", "recording": str(OUTCOMES), "recorded_model": model}
    )
    return ReplayBackend(model, dep)


def test_backend_answers_with_the_recorded_response_and_tokens() -> None:
    async def go() -> None:
        b = _backend("acme/mid")
        await b.start()
        assert b.status().state == "ready"
        rec = load_recording(OUTCOMES)
        answer = await b.complete(_request(rec.prompts["quiz/q2"].text or ""))
        assert answer.choices[0].content == "B)"
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1000, 1)
        assert "correct" not in repr(answer)
        # The prompt-id convention: the last user message is exactly a prompt_id.
        by_id = await b.complete(_request("dup/d1"))
        assert by_id.choices[0].content == "A"
        chunks: list[Chunk] = [c async for c in b.stream(_request("quiz/q2"))]
        assert "".join(c.content or "" for c in chunks) == "B)"
        assert any(c.finish_reason == "stop" for c in chunks)
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1000

    asyncio.run(go())


def test_backend_refuses_what_is_not_recorded() -> None:
    async def go() -> None:
        b = _backend("acme/big")
        await b.start()
        with pytest.raises(UpstreamError) as missing:
            await b.complete(_request("quiz/q7"))
        assert not missing.value.retryable and "quiz/q7" in missing.value.message
        with pytest.raises(NotRecorded, match="not in the recording"):
            await b.complete(_request("code/c1"))
        with pytest.raises(UpstreamError, match="recorded 2 times"):
            await b.complete(_request("Say A."))
        with pytest.raises(UpstreamError, match="not in the recording"):
            await b.complete(_request("a prompt nobody recorded"))
        ghost = _backend("acme/ghost")
        await ghost.start()
        assert ghost.status().state == "failed"
        assert "acme/ghost" in (ghost.status().detail or "")

    asyncio.run(go())


# ---- through the real gateway ---------------------------------------------------------------


def test_single_deployment_route_matches_the_hand_computation(config: Path) -> None:
    report = replay(config, "big")
    f = report.route_figures
    assert (f.n, f.correct) == (4, 3)
    assert f.cost_usd == pytest.approx(4 * BIG)
    assert f.cost_per_success == pytest.approx(4 * BIG / 3)
    single = report.singles["acme/big"]
    assert single.correct == f.correct
    assert single.cost_usd == pytest.approx(f.cost_usd)
    assert report.oracle.cost_usd == pytest.approx(TINY + SMALL + MID + BIG)
    assert report.failed_calls == 0 and report.errors == {}


def test_fail_over_route_answers_from_the_first_deployment(config: Path) -> None:
    report = replay(config, "tiny_then_big")
    f = report.route_figures
    assert f.correct == 1
    assert f.cost_usd == pytest.approx(4 * TINY)
    assert report.by_model == {"acme/tiny": 4}


def test_judge_validator_is_refused(config: Path) -> None:
    with pytest.raises(ReplayRefused, match="no judge outputs are recorded"):
        replay(config, "judged")


def test_unrecorded_answers_are_refused_not_simulated(config: Path) -> None:
    with pytest.raises(ReplayRefused, match=r"answer text is not recorded .*code: 1"):
        run_replay(OUTCOMES, config, "big", split="test", tasks=["code"])


def test_missing_recordings_are_refused(config: Path, tmp_path: Path) -> None:
    with pytest.raises(ReplayRefused, match="acme/ghost"):
        replay(config, "ghost")
    with pytest.raises(ReplayRefused, match="not a replay"):
        replay(config, "live")
    with pytest.raises(ReplayRefused, match="no such recording"):
        run_replay(tmp_path / "nothing.jsonl", config, "big")


# ---- cascades (the executor in hedge.compose.cascade) ---------------------------------------


def test_two_stage_agreement_cascade_by_hand(config: Path) -> None:
    # q1: tiny and small agree on A (right); q2: C vs B -> big (right); q3: both D (wrong);
    # q4: A vs B -> big (right). Both voters are paid on every prompt, big on two.
    report = replay(config, "two_voters")
    f = report.route_figures
    assert (f.n, f.correct) == (4, 3)
    assert f.cost_usd == pytest.approx(4 * (TINY + SMALL) + 2 * BIG)
    assert f.cost_per_success == pytest.approx((4 * (TINY + SMALL) + 2 * BIG) / 3)
    assert report.by_stage == {"1": 2, "2": 2}


def test_agreement_normalizes_choice_letters(config: Path) -> None:
    # q2: small says "B", mid says "B)": two votes for B, accepted at stage 1 (right).
    # Only q4 (A, B, C) escalates.
    report = replay(config, "three_voters")
    f = report.route_figures
    assert f.correct == 3
    assert f.cost_usd == pytest.approx(4 * (TINY + SMALL + MID) + BIG)
    assert report.by_stage == {"1": 3, "2": 1}
