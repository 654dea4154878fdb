"""Cascades: a cheap stage drafts, its validators decide, and only rejected drafts escalate.

Each stage is one deployment with the route's usual fail-over across the stage's list, or,
when the stage has an agreement validator, all of its deployments answering in parallel as
voters (the majority answer is the draft). The stage's validators run in order; the first
rejection escalates to the next stage with its reason recorded. The last stage's answer is
returned even when its own gates reject it: the client always gets an answer, and the verdict
travels with it (headers, ledger).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from hedge import validators
from hedge.compose import fallback
from hedge.compose.retry import Retrying
from hedge.config import Reasoning, Stage
from hedge.errors import HedgeError, UpstreamError
from hedge.types import ChatRequest, ChatResponse

_EFFORT = {"none": "none", "low": "low", "medium": "medium", "high": "high"}


@dataclass(frozen=True, slots=True)
class CompiledStage:
    index: int  # 1-based, as people count stages
    spec: Stage
    candidates: tuple[Retrying, ...]  # admitted by policy and able to serve, in order

    @property
    def votes(self) -> validators.AgreementCheck | None:
        return next(
            (v for v in self.spec.validators if isinstance(v, validators.AgreementCheck)), None
        )


@dataclass(slots=True)
class CascadeResult:
    response: ChatResponse
    stage: int
    answered_by: str
    accepted: bool | None  # None: the last stage had no validators to judge it
    rejections: list[str] = field(default_factory=list)


def stage_request(
    request: ChatRequest, stage: Stage, route_reasoning: Reasoning | None
) -> ChatRequest:
    """The request as this stage sends it: its own sampling overrides and reasoning effort."""
    update: dict[str, object] = {}
    p = stage.params
    if p.temperature is not None:
        update["temperature"] = p.temperature
    if p.top_p is not None:
        update["top_p"] = p.top_p
    if p.max_tokens is not None:
        update["max_tokens"] = min(p.max_tokens, request.token_limit or p.max_tokens)
        update["max_completion_tokens"] = None
    reasoning = stage.reasoning if stage.reasoning is not None else route_reasoning
    if isinstance(reasoning, str):
        update["reasoning_effort"] = _EFFORT[reasoning]
    elif isinstance(reasoning, int):
        update["reasoning_effort"] = effort_for_budget(reasoning)
    update["stream"] = False  # a draft must be whole before it can be judged
    update["stream_options"] = None
    return request.model_copy(update=update)


def effort_for_budget(tokens: int) -> str:
    """A token budget expressed as the coarse effort most providers take."""
    if tokens == 0:
        return "none"
    return "low" if tokens <= 2048 else "medium" if tokens <= 8192 else "high"


async def run(
    stages: Sequence[CompiledStage],
    request: ChatRequest,
    route: str,
    route_reasoning: Reasoning | None,
    windows: dict[str, int | None],
    ask: Callable[[str, ChatRequest], Awaitable[ChatResponse]],
) -> CascadeResult:
    rejections: list[str] = []
    last_error: HedgeError | None = None
    live = [s for s in stages if s.candidates]
    for position, stage in enumerate(live):
        final = position == len(live) - 1
        staged = stage_request(request, stage.spec, route_reasoning)
        try:
            draft, name, voters = await _draft(stage, staged, route, windows)
        except UpstreamError as e:
            if final:
                raise
            rejections.append(f"stage {stage.index}: failed ({e.message})")
            last_error = e
            continue
        verdict = await _judge(stage, staged, draft, voters, ask)
        if verdict is None or verdict.accepted or final:
            if verdict is not None and not verdict.accepted:
                rejections.append(f"stage {stage.index}: {verdict.reason}")
            return CascadeResult(
                draft,
                stage.index,
                name,
                None if verdict is None else verdict.accepted,
                rejections,
            )
        rejections.append(f"stage {stage.index}: {verdict.reason}")
    raise last_error or UpstreamError("no cascade stage could run", retryable=False)


async def _draft(
    stage: CompiledStage, request: ChatRequest, route: str, windows: dict[str, int | None]
) -> tuple[ChatResponse, str, list[ChatResponse]]:
    """The stage's draft answer, who gave it, and the other voters' answers."""
    votes = stage.votes
    if votes is None or len(stage.candidates) == 1:
        response, winner = await fallback.first_success(
            stage.candidates, lambda c: c.complete(request), windows, None, route
        )
        return response, winner.name, []
    results = await asyncio.gather(
        *(c.complete(request) for c in stage.candidates), return_exceptions=True
    )
    answers = [
        (c.name, r)
        for c, r in zip(stage.candidates, results, strict=True)
        if isinstance(r, ChatResponse)
    ]
    if not answers:
        errors = [r for r in results if isinstance(r, BaseException)]
        raise next((e for e in errors if isinstance(e, UpstreamError)), None) or UpstreamError(
            f"every voter of stage {stage.index} failed", retryable=False
        )
    texts = [r.choices[0].content or "" for _, r in answers]
    value, _ = validators.majority(texts, votes.normalize)
    pick = next(
        (
            i
            for i, t in enumerate(texts)
            if value is not None and validators.normalize(t, votes.normalize) == value
        ),
        0,
    )
    name, draft = answers[pick]
    return draft, name, [r for i, (_, r) in enumerate(answers) if i != pick]


async def _judge(
    stage: CompiledStage,
    request: ChatRequest,
    draft: ChatResponse,
    voters: list[ChatResponse],
    ask: Callable[[str, ChatRequest], Awaitable[ChatResponse]],
) -> validators.Verdict | None:
    """The first rejection among the stage's validators, or an acceptance; None without any."""
    if not stage.spec.validators:
        return None
    ctx = validators.ValidationContext(request=request, voters=voters, ask=ask)
    verdict: validators.Verdict | None = None
    for spec in stage.spec.validators:
        verdict = await validators.check(spec, draft, ctx)
        if not verdict.accepted:
            return verdict
    return verdict
