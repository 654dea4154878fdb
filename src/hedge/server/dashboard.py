"""The operator's dashboard: one self-contained page at GET /dashboard, and the JSON it polls.

The page (dashboard.html, inline CSS and JS, charts drawn as SVG by its own script) holds no
data and loads nothing from elsewhere; it asks for the admin key and sends it as a bearer token
to `/admin/dashboard/summary` and `/admin/dashboard/catalog`, which the admin API's own guard
protects like every other `/admin/*` endpoint.

What it shows comes from this process (deployment state and breakers, `hedge.recent`'s last
requests and policy refusals) and from the ledger database (spend and successes over time).
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from hedge.catalog import Catalog, Sourced, figures, load_catalog
from hedge.errors import InvalidRequest, MethodNotAllowed, NotFound
from hedge.gateway import Gateway
from hedge.ledger import LedgerError
from hedge.recent import RecentRequests
from hedge.server.admin_api import AdminApi
from hedge.server.asgi import Receive, Scope, Send, send_bytes, send_json

PAGE = resources.files("hedge.server").joinpath("dashboard.html").read_bytes()
PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    # Everything is inline; the page may talk to this gateway only, and never be framed.
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"img-src data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
        b"base-uri 'none'",
    ),
]
WINDOW_S = 3600.0
BUCKET_S = 60.0
MAX_BUCKETS = 1440


class Dashboard:
    def __init__(self, gateway: Gateway, admin: AdminApi, recent: RecentRequests) -> None:
        self.gateway = gateway
        self.admin = admin
        self.recent = recent
        self._catalog: dict[str, Any] | None = None

    async def page(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise MethodNotAllowed(
                f"{scope['method']} is not allowed on /dashboard; use GET.",
                headers={"Allow": "GET"},
            )
        await send_bytes(send, 200, PAGE, PAGE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        self.admin.authorize(scope)
        if scope["method"] != "GET":
            raise MethodNotAllowed(
                f"{scope['method']} is not allowed on {path}; use GET.", headers={"Allow": "GET"}
            )
        if path == "/admin/dashboard/summary":
            window_s, bucket_s = _window(scope.get("query_string", b""))
            await send_json(send, 200, await self.summary(window_s, bucket_s))
        elif path == "/admin/dashboard/catalog":
            await send_json(send, 200, self.catalog())
        else:
            raise NotFound(
                f"No such admin endpoint: GET {path}. Known: GET /admin/dashboard/summary, "
                "GET /admin/dashboard/catalog."
            )

    async def summary(self, window_s: float, bucket_s: float) -> dict[str, Any]:
        now = time.time()
        # Buckets aligned on multiples of bucket_s, so consecutive polls agree on them.
        since = (now - window_s) // bucket_s * bucket_s
        timeline: dict[str, Any] = {
            "since": since,
            "bucket_s": bucket_s,
            "ledger": self.gateway.config.ledger.backend,
            "points": [],
            "error": None,
        }
        try:
            timeline["points"] = await self.gateway.ledger.timeline(since, bucket_s)
        except LedgerError as e:  # the rest of the dashboard still has something to say
            timeline["error"] = e.message
        return {
            "now": now,
            "deployments": self.deployments(),
            "requests": self.recent.requests(),
            "refusals": self.recent.refusals(),
            "timeline": timeline,
        }

    def deployments(self) -> list[dict[str, Any]]:
        routes = self.gateway.config.routes
        out = []
        for name, breaker in self.gateway.breakers.items():
            s = breaker.status()
            p = self.gateway.provenance[name]
            out.append(
                {
                    "name": name,
                    "state": s.state,
                    "detail": s.detail,
                    "breaker": s.breaker,
                    "revoked": breaker.revoked,
                    "routes": [r for r, cfg in routes.items() if name in cfg.deployments],
                    "model": p.model,
                    "licence": p.licence,
                    "origin": p.origin,
                    "open_weights": p.open_weights,
                    "hosting": p.hosting,
                    "operator": p.operator,
                    "operator_jurisdiction": p.operator_jurisdiction,
                    "price_input": p.price_input,
                    "price_output": p.price_output,
                }
            )
        return out

    def catalog(self) -> dict[str, Any]:
        """The catalog records of the models the deployments serve, every figure with the id
        of its source, and those sources. Built once: the catalog does not change while the
        gateway runs."""
        if self._catalog is None:
            self._catalog = catalog_payload(
                load_catalog(self.gateway.config.models),
                {n: p.model for n, p in self.gateway.provenance.items()},
            )
        return self._catalog


def catalog_payload(catalog: Catalog, served: dict[str, str | None]) -> dict[str, Any]:
    models = []
    cited: set[str] = set()
    for model_id in dict.fromkeys(m for m in served.values() if m is not None):
        model = catalog.models[model_id]
        facts: dict[str, Any] = {}
        for field, fact in figures(model):
            if not isinstance(fact, Sourced):
                continue  # benchmarks: not shown here
            facts[field] = {"value": fact.value, "source": fact.source, "also": list(fact.also)}
            cited.update(fact.sources)
        licence = catalog.licence_of(model)
        if licence is not None and licence.source:
            cited.add(licence.source)
        models.append(
            {
                "id": model.id,
                "name": model.name,
                "kind": model.kind,
                "deployments": [d for d, m in served.items() if m == model_id],
                "facts": facts,
                "licence": None
                if licence is None
                else {
                    "id": licence.id,
                    "name": licence.name,
                    "osi_approved": licence.osi_approved,
                    "commercial_use": licence.commercial_use,
                    "source": licence.source,
                },
            }
        )
    sources = {
        sid: {"title": s.title, "publisher": s.publisher, "date": s.date, "url": s.url}
        for sid in sorted(cited)
        for s in (catalog.sources[sid],)
    }
    return {"versions": catalog.versions, "models": models, "sources": sources}


def _window(query: bytes) -> tuple[float, float]:
    """`window_s` and `bucket_s` from the query string, within bounds."""
    params = parse_qs(query.decode("latin-1"))
    values = {"window_s": WINDOW_S, "bucket_s": BUCKET_S}
    for name in values:
        given = params.get(name)
        if given:
            try:
                values[name] = float(given[-1])
            except ValueError:
                raise InvalidRequest(f"'{name}' must be a number of seconds.", param=name) from None
    window_s, bucket_s = values["window_s"], values["bucket_s"]
    if not (1 <= bucket_s <= window_s <= 31 * 86400) or window_s / bucket_s > MAX_BUCKETS:
        raise InvalidRequest(
            f"Need 1 <= bucket_s <= window_s <= {31 * 86400} and at most {MAX_BUCKETS} buckets "
            f"(got window_s={window_s:g}, bucket_s={bucket_s:g}).",
            param="bucket_s",
        )
    return window_s, bucket_s
