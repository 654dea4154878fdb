"""The one use case: serve a chat (or embeddings) request on a route.

The server parses and renders; this module plans (policy, capabilities, deployment health),
then hands the plan to the fail-over loop. Each deployment is wrapped once at start-up:
`Retrying(route's retry settings, Breaker(backend))`, so every route shares one breaker per
deployment and every real upstream call is recorded in the request's Trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hedge import policy
from hedge.backends.base import Backend
from hedge.backends.http import HttpPool
from hedge.cache import CachedAnswer, CacheStore, open_store
from hedge.compose import cascade, fallback
from hedge.compose.breaker import Breaker
from hedge.compose.caching import Embed, Lookup, RouteCache
from hedge.compose.retry import Retrying
from hedge.config import (
    AnthropicDeployment,
    EmbeddedDeployment,
    EmbeddedEmbeddingsDeployment,
    HedgeConfig,
    OpenAICompatDeployment,
    Settings,
)
from hedge.errors import (
    HedgeError,
    InvalidRequest,
    ModelNotFound,
    NotReady,
    PolicyRefused,
    Unsupported,
    UpstreamError,
)
from hedge.ledger import Ledger, NullLedger, RequestRecord, open_ledger, request_record
from hedge.provenance import all_provenance
from hedge.trace import Trace
from hedge.trace import current as current_trace
from hedge.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    ToolCallDelta,
)

if TYPE_CHECKING:
    from hedge.shared_state import RedisSharedState

log = logging.getLogger("hedge.gateway")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking and under which extra constraints: policies added by the request (or,
    later, its API key) and the request's data class. These can only narrow a route."""

    policies: tuple[str, ...] = ()
    data_class: str | None = None
    cache_control: str | None = None  # the request's Cache-Control header
    key: str | None = None  # the caller's API key id, never the secret


def build_backends(settings: Settings, pool: HttpPool) -> dict[str, Backend]:
    """One backend per configured deployment. Imports are deferred so that a gateway with no
    embedded deployment never loads llama.cpp."""
    backends: dict[str, Backend] = {}
    data_dir = Path(settings.config.server.data_dir)
    for name, dep in settings.config.deployments.items():
        if isinstance(dep, EmbeddedDeployment):
            from hedge.backends.embedded import EmbeddedBackend

            backends[name] = EmbeddedBackend(name, dep, data_dir)
        elif isinstance(dep, EmbeddedEmbeddingsDeployment):
            from hedge.backends.embedded_embeddings import EmbeddedEmbeddingsBackend

            backends[name] = EmbeddedEmbeddingsBackend(name, dep)
        elif isinstance(dep, OpenAICompatDeployment):
            from hedge.backends.openai_compat import OpenAICompatBackend

            backends[name] = OpenAICompatBackend(name, dep, settings.secret_for(name), pool)
        elif isinstance(dep, AnthropicDeployment):
            from hedge.backends.anthropic import AnthropicBackend

            backends[name] = AnthropicBackend(name, dep, settings.secret_for(name), pool)
        else:
            from hedge.backends.replay import ReplayBackend

            backends[name] = ReplayBackend(name, dep)
    return backends


class Gateway:
    def __init__(
        self,
        config: HedgeConfig,
        backends: dict[str, Backend],
        pool: HttpPool,
        provenance: dict[str, policy.Provenance],
        windows: dict[str, int | None] | None = None,
        ledger: Ledger | None = None,
        caches: dict[str, RouteCache] | None = None,
        state_url: str | None = None,
    ) -> None:
        self.config = config
        self.provenance = provenance
        self.ledger: Ledger = ledger or NullLedger()
        self.prices = {name: dep.prices for name, dep in config.deployments.items()}
        self.windows = windows or {}
        self._pool = pool
        self.breakers = {
            name: Breaker(b, config.deployments[name].breaker) for name, b in backends.items()
        }
        self.backends: dict[str, Backend] = dict(self.breakers)
        # Everything a request needs from its route is resolved once, at start-up.
        self._wrapped: dict[str, dict[str, Retrying]] = {
            name: {d: Retrying(self.breakers[d], route.retry) for d in route.deployments}
            for name, route in config.routes.items()
        }
        self._options = {
            name: fallback.Options(
                hedge_after_s=None if r.hedge_after_ms is None else r.hedge_after_ms / 1000,
                head_chunks=r.stream_head_chunks,
                resume=r.stream_resume,
            )
            for name, r in config.routes.items()
        }
        self.routes: dict[str, tuple[Backend, ...]] = {
            name: tuple(self.breakers[d] for d in route.deployments)
            for name, route in config.routes.items()
        }
        self.data_classes = frozenset(c for p in config.policies.values() for c in p.data_classes)
        # Policy evaluation is pure, and its inputs are configured names only: each distinct
        # (route, policies, data class) is planned once and then reused.
        self._plans: dict[tuple[str, tuple[str, ...], str | None], policy.Plan] = {}
        self._embedder_plans: dict[tuple[str, tuple[str, ...], str | None], bool] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.caches = caches or {}
        # Called with every finished request (record, trace, error code): metrics, dashboard.
        self.observers: list[Callable[[RequestRecord, Trace, str | None], None]] = []
        self._shared: RedisSharedState | None = None
        if config.shared_state.backend == "redis" and state_url:
            from hedge.shared_state import RedisSharedState

            self._shared = RedisSharedState(state_url, config.shared_state)
        for route, cache in self.caches.items():
            cache.embed = self._prompt_embedder(route)

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        pool = HttpPool()
        return cls(
            settings.config,
            build_backends(settings, pool),
            pool,
            all_provenance(settings.config, settings.catalog),
            context_windows(settings),
            open_ledger(settings.config.ledger, settings.ledger_dsn),
            build_caches(settings),
            settings.state_url,
        )

    async def start(self, wait: bool = False) -> None:
        """Start every backend. Model loading runs in the background unless `wait`, so the
        server answers /healthz at once and /readyz tells when each deployment is ready."""
        await self.ledger.start()
        for cache in self.caches.values():
            if cache.store is not None:
                await cache.store.start()
        if self._shared is not None:
            await self._shared.start(self.breakers)
        self._tasks = [asyncio.create_task(b.start()) for b in self.backends.values()]
        if wait:
            await asyncio.gather(*self._tasks)

    async def aclose(self) -> None:
        if self._shared is not None:
            await self._shared.aclose()
        for task in self._tasks:
            task.cancel()
        for backend in self.backends.values():
            await backend.aclose()
        await self._pool.aclose()
        for cache in self.caches.values():
            await cache.aclose()
        await self.ledger.aclose()  # flushes what is queued: a clean stop loses nothing

    def record(self, trace: Trace, status: int, error: str | None = None) -> None:
        """Hand the finished request to the ledger (queued; written off the hot path) and to
        the observers (metrics, the dashboard's recent requests). `error`: the error's code
        when it failed with one."""
        record = request_record(trace, self.prices, status)
        self.ledger.record(record)
        if self.observers:
            # On the loop's next turn: the handler sends its answer first, so metrics, logs
            # and spans never delay it.
            asyncio.get_running_loop().call_soon(self._observe, record, trace, error)

    def _observe(self, record: RequestRecord, trace: Trace, error: str | None) -> None:
        for observe in self.observers:
            try:
                observe(record, trace, error)
            except Exception:  # an observer must never fail a request
                log.exception("request observer %r failed", observe)

    def policy_plan(self, route: str, caller: Caller = Caller()) -> policy.Plan:
        """The route's deployments that its policies and the caller's admit (cached)."""
        key = (route, caller.policies, caller.data_class)
        found = self._plans.get(key)
        if found is None:
            for name in caller.policies:
                if name not in self.config.policies:
                    raise InvalidRequest(
                        f"Unknown policy '{name}' (known: "
                        f"{', '.join(sorted(self.config.policies)) or 'none'}).",
                        param="X-Hedge-Policy",
                    )
            if caller.data_class is not None and caller.data_class not in self.data_classes:
                raise InvalidRequest(
                    f"Unknown data class '{caller.data_class}' (known: "
                    f"{', '.join(sorted(self.data_classes)) or 'none'}): a data class must be "
                    "one that a configured policy has rules for.",
                    param="X-Hedge-Data-Class",
                )
            names = (*self.config.routes[route].policies, *caller.policies)
            unique = tuple(dict.fromkeys(names))
            found = policy.plan(
                route,
                [self.provenance[b.name] for b in self.routes[route]],
                [(n, self.config.policies[n]) for n in unique],
                caller.data_class,
            )
            self._plans[key] = found
        return found

    def plan(
        self,
        request: ChatRequest | EmbeddingRequest,
        caller: Caller = Caller(),
        trace: Trace | None = None,
    ) -> list[Retrying]:
        """The deployments to try for this request, in order. Raises when there are none,
        with every deployment's reason."""
        route = self.config.routes.get(request.model)
        if route is None:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist on this gateway. "
                f"Available models: {', '.join(sorted(self.routes))}.",
                param="model",
            )
        allowed = self.policy_plan(request.model, caller)
        if trace is not None:
            trace.plan = allowed
            trace.caller_key = caller.key
            trace.max_attempts = route.max_attempts
            trace.deadline = trace.started + route.deadline_s
            current_trace.set(trace)  # this task serves this request, stream included
        if not allowed.admitted:
            error = PolicyRefused(
                f"Policy refuses every deployment of model '{request.model}': "
                + "; ".join(str(r) for r in allowed.refusals)
            )
            error.details["refusals"] = [
                {"deployment": r.deployment, "policy": r.policy, "rule": r.rule, "reason": r.reason}
                for r in allowed.refusals
            ]
            raise error
        order = allowed.admitted
        if route.strategy == "balance":
            order = tuple(fallback.balanced_order(order, route.weights))
        wrapped = self._wrapped[request.model]
        admitted: list[Retrying] = []
        reasons: list[str] = []
        for name in order:
            breaker = self.breakers[name]
            state = breaker.status()
            if state.state in ("unavailable", "failed"):
                reasons.append(f"{name}: {state.state}: {state.detail}")
            elif (skip := breaker.refusal()) is not None:
                reasons.append(f"{name}: {skip}")
            elif (why := self._unsupported(name, request)) is not None:
                reasons.append(f"{name}: {why}")
            else:
                admitted.append(wrapped[name])
        if admitted:
            return admitted
        reasons_text = "; ".join(reasons)
        if all(self._unsupported(n, request) is None for n in order):
            raise NotReady(
                f"No deployment of model '{request.model}' is available now ({reasons_text}).",
                headers={"Retry-After": "1"},
            )
        raise Unsupported(
            f"No deployment of model '{request.model}' can serve this request ({reasons_text})."
        )

    async def chat(
        self, request: ChatRequest, trace: Trace, caller: Caller = Caller()
    ) -> ChatResponse:
        cache = self.caches.get(request.model)
        if cache is not None:
            request, trace.prompt_tokens_saved = cache.prepare(request)
        candidates = self.plan(request, caller, trace)
        lookup = await self._lookup(cache, request, caller, trace)
        if lookup is not None and lookup.hit is not None:
            trace.answered_by = lookup.hit.deployment
            return lookup.hit.to_response(trace.request_id)
        if self.config.routes[request.model].cascade is not None:
            response = await self._cascade(request, trace, candidates)
        else:
            response, winner = await fallback.first_success(
                candidates,
                lambda c: c.complete(request),
                self.windows,
                self._options[request.model].hedge_after_s,
                request.model,
            )
            trace.answered_by = winner.name
        if cache is not None and lookup is not None and trace.answered_by is not None:
            cache.remember_response(lookup, response, trace.answered_by)
        return response

    async def _lookup(
        self, cache: RouteCache | None, request: ChatRequest, caller: Caller, trace: Trace
    ) -> Lookup[CachedAnswer] | None:
        if cache is None or trace.plan is None:
            return None
        lookup = await cache.lookup(
            request,
            trace.plan,
            caller.data_class,
            caller.cache_control,
            caller.key,
            semantic_allowed=self._embedder_admitted(request.model, caller),
        )
        trace.cache = lookup.header.decode()
        trace.similarity = lookup.similarity
        return lookup

    def _embedder_admitted(self, route: str, caller: Caller) -> bool:
        """Whether the policies in force let the route's semantic embedder see the prompt:
        it is sent there as surely as to the deployments that answer."""
        embedder = self.config.routes[route].cache.semantic.embedder
        if embedder is None:
            return False
        key = (route, caller.policies, caller.data_class)
        admitted = self._embedder_plans.get(key)
        if admitted is None:
            plan = self.policy_plan(route, caller)
            admitted = not policy.judge(
                self.provenance[embedder],
                [(n, self.config.policies[n]) for n in plan.policies],
                caller.data_class,
            )
            self._embedder_plans[key] = admitted
        return admitted

    def _prompt_embedder(self, route: str) -> Embed | None:
        """The semantic cache's embedder for a route: one call to its deployment (through
        its breaker) under a trace of its own, so it is not counted among the request's
        attempts; a failure or a slow answer is a miss."""
        settings = self.config.routes[route].cache.semantic
        if not settings.enabled or settings.embedder is None:
            return None
        name, timeout_s = settings.embedder, settings.timeout_s

        async def embed(text: str) -> bytes | None:
            own = Trace(route=f"{route}:semantic-cache", max_attempts=1)
            own.deadline = own.started + timeout_s
            current_trace.set(own)  # inside this task only
            response = await self.breakers[name].embed(EmbeddingRequest(model=name, input=text))
            return response.vectors[0]

        async def guarded(text: str) -> bytes | None:
            if self.breakers[name].status().state != "ready":
                return None  # still loading, or cut off: a miss now, not a wait
            try:
                return await asyncio.create_task(embed(text))
            except (HedgeError, OSError, TimeoutError) as e:
                log.warning("semantic cache: embedding the prompt failed, a miss: %s", e)
                return None

        return guarded

    async def embed(
        self, request: EmbeddingRequest, trace: Trace, caller: Caller = Caller()
    ) -> EmbeddingResponse:
        """Embeddings through the same plan, policies, breakers, fail-over and cache as chat."""
        candidates = self.plan(request, caller, trace)
        if self.config.routes[request.model].cascade is not None:
            raise Unsupported(
                f"The model '{request.model}' is a cascade, which answers chat completions "
                "only; embeddings need a route with plain deployments."
            )
        cache = self.caches.get(request.model)
        lookup = None
        if cache is not None and trace.plan is not None:
            lookup = await cache.lookup_embedding(
                request, trace.plan, caller.data_class, caller.cache_control, caller.key
            )
            trace.cache = lookup.header.decode()
            if lookup.hit is not None:
                trace.answered_by = lookup.hit.deployment
                return lookup.hit.to_response()
        response, winner = await fallback.first_success(
            candidates,
            lambda c: c.embed(request),
            self.windows,
            self._options[request.model].hedge_after_s,
            request.model,
        )
        trace.answered_by = winner.name
        if cache is not None and lookup is not None:
            cache.remember_embedding(lookup, response, winner.name)
        return response

    async def stream(
        self, request: ChatRequest, trace: Trace, caller: Caller = Caller()
    ) -> AsyncIterator[Chunk]:
        """Returns once a deployment has produced the head of its stream: until then,
        failures move on to the next deployment without the client seeing anything."""
        cache = self.caches.get(request.model)
        if cache is not None:
            request, trace.prompt_tokens_saved = cache.prepare(request)
        candidates = self.plan(request, caller, trace)
        lookup = await self._lookup(cache, request, caller, trace)
        if lookup is not None and lookup.hit is not None:
            trace.answered_by = lookup.hit.deployment
            return lookup.hit.stream()
        if self.config.routes[request.model].cascade is not None:
            # A draft must be whole before it can be judged: the accepted answer is then
            # replayed to the client as a stream.
            answer = await self._cascade(request, trace, candidates)
            chunks = replay_as_stream(answer)
        else:
            chunks = await self._stream(request, trace, candidates)
        if cache is not None and lookup is not None and trace.answered_by is not None:
            return cache.recording(lookup, chunks, trace.answered_by)
        return chunks

    async def _stream(
        self, request: ChatRequest, trace: Trace, candidates: list[Retrying]
    ) -> AsyncIterator[Chunk]:
        options = self._options[request.model]
        opened, winner = await fallback.first_success(
            candidates,
            lambda c: fallback.open_stream(c, request, options.head_chunks),
            self.windows,
            options.hedge_after_s,
            request.model,
        )
        trace.answered_by = winner.name
        later = candidates[[c.name for c in candidates].index(winner.name) + 1 :]

        def resumed(on: fallback.Candidate) -> None:
            trace.resumed_on = on.name

        return fallback.relay(opened, winner, later, request, options, resumed)

    async def _cascade(
        self, request: ChatRequest, trace: Trace, candidates: list[Retrying]
    ) -> ChatResponse:
        route = self.config.routes[request.model]
        assert route.cascade is not None
        admitted = {c.name: c for c in candidates}
        stages = [
            cascade.CompiledStage(
                i + 1, spec, tuple(admitted[d] for d in spec.deployments if d in admitted)
            )
            for i, spec in enumerate(route.cascade.stages)
        ]

        async def ask(deployment: str, judged: ChatRequest) -> ChatResponse:
            if deployment not in admitted:
                raise UpstreamError(
                    f"judge '{deployment}' is not admitted for this request "
                    "(policy, capability or health)",
                    retryable=False,
                )
            return await admitted[deployment].complete(judged)

        result = await cascade.run(
            stages, request, request.model, route.reasoning, self.windows, ask
        )
        trace.answered_by = result.answered_by
        trace.stage = result.stage
        trace.rejections = result.rejections
        trace.accepted = result.accepted
        return result.response

    def _unsupported(self, deployment: str, request: ChatRequest | EmbeddingRequest) -> str | None:
        """Why the deployment cannot serve this request: first what its model is (an
        OpenAI-compatible server is asked for chat or embeddings alike, but a chat model
        cannot embed), then what its backend can do."""
        breaker = self.breakers[deployment]
        serves = self.provenance[deployment].serves
        if isinstance(request, EmbeddingRequest):
            if serves == "chat":
                return f"its model '{self.provenance[deployment].model}' is a chat model"
            return breaker.embedding_unsupported(request)
        if serves == "embedding":
            return f"its model '{self.provenance[deployment].model}' is an embedding model"
        return breaker.unsupported(request)

    def revoke(self, deployment: str, reason: str) -> None:
        self.breakers[deployment].revoke(reason)

    def restore(self, deployment: str) -> None:
        self.breakers[deployment].restore()


async def replay_as_stream(answer: ChatResponse) -> AsyncIterator[Chunk]:
    """A whole answer as the chunks a stream of it would have carried."""
    for choice in answer.choices:
        yield Chunk(
            index=choice.index,
            content=choice.content,
            reasoning=choice.reasoning,
            tool_calls=tuple(
                ToolCallDelta(i, t.id, t.name, t.arguments) for i, t in enumerate(choice.tool_calls)
            ),
            role="assistant",
        )
        yield Chunk(
            index=choice.index,
            finish_reason=choice.finish_reason,
            stop_sequence=choice.stop_sequence,
        )
    yield Chunk(usage=answer.usage)


def build_caches(settings: Settings) -> dict[str, RouteCache]:
    """One cache layer per route that caches or compacts; routes with equal cache settings
    share a store (keys include the route, so entries never mix)."""
    stores: dict[str, CacheStore] = {}
    out: dict[str, RouteCache] = {}
    for name, route in settings.config.routes.items():
        if not (route.cache.enabled or route.compaction.enabled):
            continue
        store = None
        if route.cache.enabled:
            ident = route.cache.model_dump_json() + settings.cache_urls.get(name, "")
            if ident not in stores:
                stores[ident] = open_store(route.cache, redis_url=settings.cache_urls.get(name))
            store = stores[ident]
        out[name] = RouteCache(name, route, route.cache, route.compaction, store)
    return out


def context_windows(settings: Settings) -> dict[str, int | None]:
    """Each deployment's context window: configured, else n_ctx for an embedded model, else
    the catalog's figure; None when nobody reports it."""
    out: dict[str, int | None] = {}
    for name, dep in settings.config.deployments.items():
        window = dep.context_window
        if window is None and isinstance(dep, EmbeddedDeployment):
            window = dep.n_ctx
        if window is None and dep.model is not None:
            window = settings.catalog.models[dep.model].context_window.value
        out[name] = window
    return out
