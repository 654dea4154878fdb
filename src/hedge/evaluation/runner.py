"""Run a suite's cases through the gateway for each candidate, and keep every result.

`candidates_for` turns `--routes` / `--deployments` into candidates (a deployment becomes a
route of its own, `eval:<deployment>`, so it is served through the same plan, policies and
accounting as any route), and `gateway_settings` narrows the config to what they need, so an
evaluation of one embedded model does not load the others.

`execute` sends (case, candidate) pairs with at most `concurrency` in flight, case by case so
that every candidate advances together, retries retryable failures with backoff, scores each
answer and commits its result at once. Pairs already stored are skipped: a run killed at any
point continues where it stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hedge.config import (
    EmbeddedEmbeddingsDeployment,
    HedgeConfig,
    Route,
    Settings,
)
from hedge.errors import UpstreamError
from hedge.evaluation.progress import Progress
from hedge.evaluation.scorers import JudgeScorer, score_case
from hedge.evaluation.store import Candidate, CaseResult, EvalStore, RunInfo
from hedge.evaluation.suite import Case, Suite
from hedge.evaluation.targets import Answer, CallFailed, Target, sleep_before_retry
from hedge.types import ChatRequest, ChatResponse

T = TypeVar("T")
DEPLOYMENT_ROUTE_PREFIX = "eval:"


class PlanError(Exception):
    """The evaluation asked for cannot run as given; the message says what to fix."""


def route_yaml(route: Route) -> dict[str, Any]:
    """A route's settings as hedge.yaml would write them (defaults left out)."""
    raw = route.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    if route.cascade is not None:
        raw.pop("deployments", None)  # implied by the stages; a route may not have both
    return raw


def candidates_for(
    config: HedgeConfig, routes: Sequence[str], deployments: Sequence[str]
) -> list[Candidate]:
    out: list[Candidate] = []
    for name in routes:
        route = config.routes.get(name)
        if route is None:
            raise PlanError(
                f"--routes: unknown route '{name}' (known: {', '.join(sorted(config.routes))}). "
                "Fix: name routes defined in hedge.yaml."
            )
        out.append(Candidate(name, name, "route", route_yaml(route)))
    for name in deployments:
        dep = config.deployments.get(name)
        if dep is None:
            raise PlanError(
                f"--deployments: unknown deployment '{name}' (known: "
                f"{', '.join(sorted(config.deployments))}). Fix: name deployments defined in "
                "hedge.yaml."
            )
        if isinstance(dep, EmbeddedEmbeddingsDeployment):
            raise PlanError(
                f"--deployments: '{name}' serves embeddings only; an evaluation needs chat "
                "deployments."
            )
        out.append(
            Candidate(DEPLOYMENT_ROUTE_PREFIX + name, name, "deployment", {"deployments": [name]})
        )
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise PlanError("a candidate is named twice. Fix: list each route or deployment once.")
    if not out:
        raise PlanError("nothing to evaluate. Fix: pass --routes a,b or --deployments d1,d2.")
    return out


def judge_routes(suite: Suite) -> list[str]:
    return [s.route for s in suite.header.scorers if isinstance(s, JudgeScorer)]


def gateway_settings(
    settings: Settings,
    candidates: Sequence[Candidate],
    extra_routes: Sequence[str] = (),
    db: str | None = None,
) -> Settings:
    """The settings for an in-process gateway serving only the candidates (and judges): each
    deployment candidate gets its own route, and nothing else is loaded. With `db`, the
    ledger is kept in that SQLite file, beside the results, so they still join."""
    cfg = settings.config
    routes: dict[str, Route] = {}
    for name in extra_routes:
        if name not in cfg.routes:
            raise PlanError(
                f"the suite's judge uses route '{name}', which hedge.yaml does not define "
                f"(known: {', '.join(sorted(cfg.routes))}). Fix: define it, or change the "
                "judge's 'route'."
            )
        routes[name] = cfg.routes[name]
    for c in candidates:
        if c.kind == "route":
            routes[c.name] = cfg.routes[c.name]
        else:
            routes[c.name] = Route.model_validate(
                {
                    "deployments": [c.label],
                    "accept_single_point_of_failure": True,
                    "description": f"hedge eval: deployment {c.label} alone",
                }
            )
    used = {d for r in routes.values() for d in r.deployments}
    deployments = {n: d for n, d in cfg.deployments.items() if n in used}
    update: dict[str, Any] = {"routes": routes, "deployments": deployments}
    if db is not None:
        update["ledger"] = cfg.ledger.model_copy(update={"backend": "sqlite", "path": db})
    narrowed = cfg.model_copy(update=update)
    return dataclasses.replace(
        settings, config=narrowed, ledger_dsn=None if db else settings.ledger_dsn
    )


def new_run_id(suite: Suite, now: float) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{suite.name}-{stamp}-{os.urandom(2).hex()}"


def select_cases(suite: Suite, limit: int | None, tags: Sequence[str] | None) -> list[Case]:
    cases = [c for c in suite.cases if not tags or set(tags) & set(c.tags)]
    if tags and not cases:
        known = sorted({t for c in suite.cases for t in c.tags})
        raise PlanError(
            f"--tags {','.join(tags)}: no case has these tags (the suite's tags: "
            f"{', '.join(known) or 'none'})."
        )
    return cases if limit is None else cases[:limit]


def pending(
    run: RunInfo, suite: Suite, stored: Sequence[CaseResult], retry_errors: bool
) -> list[tuple[Candidate, Case]]:
    """The (candidate, case) pairs still to run, case by case."""
    done = {(r.candidate, r.case_id) for r in stored if r.status == "ok" or not retry_errors}
    by_id = {c.id: c for c in suite.cases}
    return [
        (candidate, by_id[case_id])
        for case_id in run.case_ids
        for candidate in run.candidates
        if (candidate.name, case_id) not in done
    ]


class Runner:
    """Runs pairs against a target and stores each result as it comes."""

    def __init__(
        self,
        run: RunInfo,
        suite: Suite,
        target: Target,
        store: EvalStore,
        *,
        concurrency: int = 2,
        retries: int = 2,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run = run
        self.suite = suite
        self.target = target
        self.store = store
        self.concurrency = max(1, concurrency)
        self.retries = max(0, retries)
        self.progress = progress
        self.clock = clock
        # One thread owns the store's connection; the event loop never waits on the disk.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hedge-eval-store")

    async def _in_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def execute(self, todo: Sequence[tuple[Candidate, Case]]) -> None:
        queue: Iterator[tuple[Candidate, Case]] = iter(todo)

        async def worker() -> None:
            for candidate, case in queue:  # shared iterator: each pair goes to one worker
                result = await self.one(candidate, case)
                await self._in_db(self.store.put, self.run.run_id, result)
                if self.progress is not None:
                    self.progress.advance(passed=result.passed, error=result.status == "error")

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(todo)))))
        finally:
            self._db.shutdown(wait=True)

    async def one(self, candidate: Candidate, case: Case) -> CaseResult:
        request = self.suite.request(case, candidate.name)
        try:
            answer = await self.call(request)
        except CallFailed as e:
            return CaseResult(
                candidate=candidate.name,
                case_id=case.id,
                passed=False,
                reason="the request failed",
                status="error",
                error=e.message,
                request_id=e.request_id,
                attempts=e.attempts,
                tags=tuple(case.tags),
                ts=self.clock(),
            )
        answered = functools.partial(
            CaseResult,
            candidate=candidate.name,
            case_id=case.id,
            output=answer.text,
            request_id=answer.request_id,
            deployment=answer.deployment,
            latency_ms=answer.latency_ms,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            cost_usd=answer.cost_usd,
            attempts=answer.attempts,
            tags=tuple(case.tags),
            ts=self.clock(),
        )
        try:
            score = await score_case(
                self.suite.header.scorers, case, request, answer.text, self.ask
            )
        except Exception as e:  # a scorer's own failure must not end the whole run
            return answered(
                passed=False,
                reason="the answer could not be scored",
                status="error",
                error=f"scoring failed: {type(e).__name__}: {e}",
            )
        return answered(passed=score.passed, reason=score.reason, score=score.score)

    async def call(self, request: ChatRequest) -> Answer:
        """The target's answer, retrying retryable failures up to `retries` more times."""
        for attempt in range(self.retries + 1):
            try:
                return await self.target.complete(request)
            except CallFailed as e:
                if not e.retryable or attempt == self.retries:
                    raise
                await sleep_before_retry(attempt, e.retry_after_s)
        raise AssertionError("unreachable")

    async def ask(self, route: str, grading: ChatRequest) -> ChatResponse:
        """A judge's grade, through the gateway like every other call."""
        graded = grading.model_copy(update={"model": route})
        try:
            return (await self.call(graded)).response
        except CallFailed as e:  # the judge validator reads a HedgeError as "no grade"
            raise UpstreamError(e.message, retryable=False) from None
