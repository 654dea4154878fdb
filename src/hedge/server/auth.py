"""API keys and per-key limits at the door: an ASGI wrapper around the gateway's app.

With no key ever created the gateway is open, and the start-up rule (`guard`) has bound it to
loopback; the only per-request cost then is one attribute check. Once a key exists (created
before start, or later with `hedge keys create` while the server runs) every request but the
open paths (/healthz, /readyz, the /dashboard page) needs a valid one, as
`Authorization: Bearer hk_...` or `x-api-key: hk_...`, from then on: revoking every key
leaves the door shut.

For the endpoints that reach an upstream (chat, embeddings, messages) the key's limits are
checked here, before the app sees the request: body size, message count, max_tokens ceiling,
allowed routes, requests and tokens per minute, and a budget reservation (see hedge.limits).
After the app has answered (streams included), the reservation is settled to the real cost,
read from the request's Trace: the gateway makes it current for the task serving the request,
which is this one, so the wrapper needs no hook in the handlers.

The key's record travels to `caller_of` in the ASGI scope, under "hedge.key".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from hedge.config import Settings
from hedge.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    ConfigError,
    HedgeError,
    InvalidRequest,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
)
from hedge.keys import KeyRecord, KeyStore, KeyStoreError, split_key, verify
from hedge.limits import (
    Estimate,
    Hold,
    Limits,
    Refusal,
    RoutePrice,
    actual,
    estimate,
    open_limits,
    period_end,
    period_id,
    route_prices,
)
from hedge.server import anthropic_api
from hedge.server.asgi import (
    PARSED_BODY,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    bearer_token,
    header,
    is_loopback,
    read_body,
    send_error,
)
from hedge.trace import current as current_trace

log = logging.getLogger("hedge.auth")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
SCOPE_KEY = "hedge.key"
# Open without a key: health, and the dashboard's page (which holds no data: it asks for the
# admin key and sends it with every call it makes). The API's description needs a key, like
# /v1/models: it names the routes.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/dashboard"})
METERED = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/messages"})


class KeyCache:
    """The store's active keys, in memory. A background task re-reads the file when its
    signature (mtime and size of the file and its WAL) changes, checked every `refresh_s`:
    a created or revoked key takes effect within that time, with no query per request."""

    def __init__(self, store: KeyStore, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.records: dict[str, KeyRecord] = {}
        self.revoked: frozenset[str] = frozenset()
        # Once any key has been seen, keys stay required, even with every key revoked or
        # the file gone: revoking the last key while rotating must shut the door, not open it.
        self.required = False
        self._signature: object = None

    def load(self) -> None:
        signature = self.store.signature()
        every = self.store.all()
        self.records = {r.id: r for r in every if r.revoked is None}
        self.revoked = frozenset(r.id for r in every if r.revoked is not None)
        self.required = self.required or bool(every)
        self._signature = signature

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            if self.store.signature() == self._signature:
                continue
            try:
                await asyncio.to_thread(self.load)
            except KeyStoreError as e:
                # Keep serving with the keys last read: a locked or half-written file must
                # not open the gateway nor shut everyone out.
                log.warning("keeping the last keys read: %s", e)


def check_exposure(settings: Settings, host: str) -> None:
    """The start-up rule: with no active API key the gateway may only bind a loopback
    address, and says so. Raises ConfigError (what, why, how to fix) otherwise."""
    store = KeyStore(settings.keys_path)
    try:
        active = store.active()
    except KeyStoreError as e:
        raise ConfigError(str(e)) from None
    if active:
        return
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to bind {host}: no API key exists (key store {settings.keys_path}), "
            "so anyone who can reach that address could spend on your upstreams. Fix: "
            "create a key first, e.g. `hedge keys create --name my-app --budget 10 --rpm "
            "60`, and give it to your clients; or bind 127.0.0.1 for local use only."
        )
    print(
        "hedge: no API keys configured: the gateway is open to local callers only "
        f"(bound to {host}); `hedge keys create` adds a key and turns authentication on.",
        file=sys.stderr,
    )


def guard(app: ASGIApp, settings: Settings) -> Guard:
    """The app behind the key check and the key's limits."""
    cache = KeyCache(KeyStore(settings.keys_path), settings.config.keys.refresh_s)
    try:
        cache.load()
    except KeyStoreError as e:
        raise ConfigError(str(e)) from None
    limits = open_limits(settings.config, settings.limits_url, settings.keys_path)
    return Guard(app, settings, cache, limits)


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings, keys: KeyCache, limits: Limits) -> None:
        self.app = app
        self.keys = keys
        self.limits = limits
        cfg = settings.config
        self._max_body = cfg.server.max_body_bytes
        self._admin_keyed = cfg.server.admin_key_env is not None
        self._prices = {name: dep.prices for name, dep in cfg.deployments.items()}
        self._route_prices: dict[str, RoutePrice] = route_prices(cfg)
        self._default_completion = {
            name: self._completion_default(settings, name) for name in cfg.routes
        }
        self._hold_s = {name: r.deadline_s + 60 for name, r in cfg.routes.items()}
        self._refresher: asyncio.Task[None] | None = None

    @staticmethod
    def _completion_default(settings: Settings, route: str) -> int:
        """What a request without max_tokens is assumed to generate: the largest sampling
        default of the route's deployments, else limits.default_completion_tokens."""
        cfg = settings.config
        found = [cfg.deployments[d].defaults.max_tokens for d in cfg.routes[route].deployments]
        known = [n for n in found if n is not None]
        if known and len(known) == len(found):
            return max(known)
        return cfg.limits.default_completion_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys.required:
            await self._guarded(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._refresher = asyncio.create_task(self.keys.run())
        try:
            await self.app(scope, receive, send)
        finally:
            self._refresher.cancel()
            with contextlib.suppress(BaseException):
                await self._refresher
            await self.limits.aclose()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            if path.startswith("/admin/") or path == "/metrics":
                # The admin key (server.admin_key_env) is checked by the admin API itself; a
                # client key never opens these (metrics name routes, keys and spend).
                if not self._admin_keyed:
                    raise PermissionDenied(
                        "Admin endpoints are closed while API keys are configured and no "
                        "admin key is: set server.admin_key_env to the name of a variable "
                        "holding an admin key, and send it as 'Authorization: Bearer <key>'."
                    )
                await self.app(scope, receive, send)
                return
            record = self.authenticate(scope)
            scope[SCOPE_KEY] = record
            if path not in METERED or scope["method"] != "POST":
                await self.app(scope, receive, send)
                return
            body, admitted = await self._admit(scope, receive, record)
        except ClientGone:
            return  # left while sending its body: nobody to answer
        except HedgeError as e:
            await self._send_error(send, path, e)
            return
        await self._serve(scope, receive, send, body, record, admitted)

    def authenticate(self, scope: Scope) -> KeyRecord:
        token = bearer_token(scope)
        if not token:
            token = (header(scope, b"x-api-key") or b"").strip()
        if not token:
            raise AuthenticationFailed(
                "Missing API key: send 'Authorization: Bearer hk_...' (or 'x-api-key: hk_...'"
                "). An operator creates keys with `hedge keys create`."
            )
        # The key itself is never echoed nor logged: only whether it was valid.
        parts = split_key(token.decode("latin-1"))
        if parts is None:
            raise AuthenticationFailed(
                "Invalid API key: hedge keys look like 'hk_<id>_<secret>'. Check for a "
                "truncated or mistyped key."
            )
        key_id, secret = parts
        record = self.keys.records.get(key_id)
        if record is None or not verify(record, secret):
            if key_id in self.keys.revoked:
                raise AuthenticationFailed(
                    "This API key has been revoked. Ask the operator for a new one.",
                    code="revoked_api_key",
                )
            raise AuthenticationFailed(
                "Invalid API key: unknown or mistyped. Check the key, or ask the operator "
                "for a new one."
            )
        return record

    async def _admit(
        self, scope: Scope, receive: Receive, record: KeyRecord
    ) -> tuple[bytes, Admitted]:
        """The request's body (rewritten when the key's max_tokens ceiling must be added)
        once every limit admits it; raises the refusal otherwise."""
        limit = min(record.max_body_bytes or self._max_body, self._max_body)
        try:
            body = await read_body(scope, receive, limit)
        except PayloadTooLarge as e:
            if limit == self._max_body:
                raise
            raise PayloadTooLarge(
                f"The request body exceeds this API key's limit of {limit} bytes "
                f"(key '{record.name}', max_body_bytes). Send a smaller request."
            ) from e
        data = _json_object(body)
        model = data.get("model") if isinstance(data.get("model"), str) else None
        embeddings = scope["path"] == "/v1/embeddings"
        asked = _max_tokens(data)
        check_ceilings(record, data, model, asked, embeddings)
        if record.max_tokens is not None and not embeddings and asked is None and data:
            # Without a limit (no field, or null) an upstream may generate to its context's
            # end: the ceiling is made explicit so it binds there too.
            data = {**data, "max_tokens": record.max_tokens}
            body = orjson.dumps(data)
            asked = record.max_tokens
        completion = 0
        if not embeddings:
            completion = asked or self._default_completion.get(model or "", 0)
            choices = data.get("n")
            if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
                completion *= choices  # each choice may use the whole max_tokens
        price = self._route_prices.get(model or "")
        est = estimate(len(body), completion, price)
        rates = self.limits.rates
        if record.rpm is not None:
            wait = await rates.take(f"{record.id}:rpm", 1, record.rpm)
            if wait is not None:
                raise _rate_limited(record, f"{record.rpm} requests per minute", wait)
        if record.tpm is not None:
            wait = await rates.take(f"{record.id}:tpm", est.prompt_tokens, record.tpm)
            if wait is not None:
                raise _rate_limited(record, f"{record.tpm} tokens per minute", wait)
        hold: Hold | None = None
        if record.budget_usd is not None:
            now = time.time()
            period = period_id(record.period, now)
            hold_s = self._hold_s.get(model or "", 360.0)
            got = await self.limits.budgets.reserve(
                record.id, period, record.budget_usd, est.usd, hold_s
            )
            if isinstance(got, Refusal):
                raise _over_budget(record, got, est, now)
            hold = got
        if data:
            scope[PARSED_BODY] = data
        return body, Admitted(est, hold)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        record: KeyRecord,
        admitted: Admitted,
    ) -> None:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        current_trace.set(None)
        try:
            await self.app(scope, replay, send)
        finally:
            # Settled even when the client left or the task is cancelled: a hold must not
            # outlive its request by more than the time it takes to write the spend.
            await asyncio.shield(self._settle(record, admitted))

    async def _settle(self, record: KeyRecord, admitted: Admitted) -> None:
        cost = actual(current_trace.get(), self._prices)
        est = admitted.estimate
        usd = cost.usd if cost.known else max(cost.usd, est.usd)
        tokens = cost.tokens if cost.known else est.prompt_tokens + est.completion_tokens
        try:
            if admitted.hold is not None:
                await self.limits.budgets.settle(admitted.hold, usd)
            if record.tpm is not None:
                await self.limits.rates.adjust(
                    f"{record.id}:tpm", tokens - est.prompt_tokens, record.tpm
                )
        except HedgeError as e:
            log.warning("could not settle key %s: %s", record.id, e.message)

    async def _send_error(self, send: Send, path: str, error: HedgeError) -> None:
        if path == "/v1/messages":
            await anthropic_api.send_error(send, error)
        else:
            await send_error(send, error)


class Admitted:
    __slots__ = ("estimate", "hold")

    def __init__(self, est: Estimate, hold: Hold | None) -> None:
        self.estimate = est
        self.hold = hold


def check_ceilings(
    record: KeyRecord, data: dict[str, Any], model: str | None, asked: int | None, embeddings: bool
) -> None:
    """Refuse a request over the key's fixed ceilings: its routes, message count, max_tokens."""
    if record.routes and model is not None and model not in record.routes:
        raise PermissionDenied(
            f"This API key may not use model '{model}'; it may use: {', '.join(record.routes)}.",
            param="model",
            code="model_not_allowed",
        )
    messages = data.get("messages")
    if (
        record.max_messages is not None
        and isinstance(messages, list)
        and len(messages) > record.max_messages
    ):
        raise InvalidRequest(
            f"This request has {len(messages)} messages; this API key allows at most "
            f"{record.max_messages}. Shorten the conversation.",
            param="messages",
            code="too_many_messages",
        )
    ceiling = None if embeddings else record.max_tokens
    if ceiling is not None and asked is not None and asked > ceiling:
        field = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
        raise InvalidRequest(
            f"'{field}' is {asked}; this API key allows at most {ceiling}. Ask for fewer tokens.",
            param=field,
            code="max_tokens_too_large",
        )


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or {} when it is not one: the app then refuses it with
    the precise reason, and no upstream is called."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _max_tokens(data: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _rate_limited(record: KeyRecord, what: str, wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    return RateLimited(
        f"Rate limit reached for this API key ('{record.name}'): {what}. Retry after {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


def _over_budget(record: KeyRecord, refusal: Refusal, est: Estimate, now: float) -> BudgetExceeded:
    assert record.budget_usd is not None
    end = period_end(record.period, now)
    scope = "in total" if end is None else f"this {record.period} (UTC)"
    resets = (
        ""
        if end is None
        else f" It resets at {time.strftime('%Y-%m-%d %H:%M', time.gmtime(end))} UTC."
    )
    headers = {"x-should-retry": "false"}  # OpenAI's SDKs would otherwise retry a 429
    if end is not None:
        headers["Retry-After"] = str(max(1, math.ceil(end - now)))
    return BudgetExceeded(
        f"Budget exhausted for this API key ('{record.name}'): ${refusal.spent:.6f} spent "
        f"{scope} of ${record.budget_usd:.6f}, ${refusal.held:.6f} held by requests in "
        f"flight, and this request may cost up to ${est.usd:.6f}.{resets} Ask the operator "
        "for a larger budget.",
        headers=headers,
    )
