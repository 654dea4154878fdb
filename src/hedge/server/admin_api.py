"""Operator endpoints: deployment state, and the kill-switch drill (revoke / restore).

Guarded separately from client traffic: with `server.admin_key_env` configured, a bearer key
compared in constant time; without it, loopback clients only, so a gateway bound to a public
address is never administrable by accident.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from hedge.errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from hedge.gateway import Gateway
from hedge.server.asgi import (
    Receive,
    Scope,
    Send,
    bearer_token,
    is_loopback,
    read_body,
    send_json,
)


class AdminApi:
    def __init__(self, gateway: Gateway, admin_key: str | None) -> None:
        self.gateway = gateway
        self._key = admin_key.encode() if admin_key else None
        self._key_configured = gateway.config.server.admin_key_env is not None

    def authorize(self, scope: Scope) -> None:
        if self._key_configured:
            token = bearer_token(scope)
            if self._key is None or not hmac.compare_digest(token, self._key):
                raise AuthenticationFailed(
                    "Admin endpoints need 'Authorization: Bearer <admin key>' "
                    f"(the key in ${self.gateway.config.server.admin_key_env})."
                )
            return
        client = scope.get("client")
        if not is_loopback(client[0] if client else ""):
            raise PermissionDenied(
                "Admin endpoints answer loopback clients only; set server.admin_key_env to "
                "administer this gateway remotely."
            )

    def deployments(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for name, breaker in self.gateway.breakers.items():
            s = breaker.status()
            out[name] = {
                "state": s.state,
                "detail": s.detail,
                "breaker": s.breaker,
                "revoked": breaker.revoked is not None,
            }
            if s.stats is not None:
                out[name]["stats"] = dict(s.stats)
        return {"deployments": out}

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        self.authorize(scope)
        method = scope["method"]
        if path == "/admin/deployments" and method == "GET":
            await send_json(send, 200, self.deployments())
            return
        parts = path.removeprefix("/admin/deployments/").split("/")
        if len(parts) != 2 or parts[1] not in ("revoke", "restore") or method != "POST":
            raise NotFound(
                f"No such admin endpoint: {method} {path}. Known: GET /admin/deployments, "
                "POST /admin/deployments/<name>/revoke, POST /admin/deployments/<name>/restore."
            )
        name, action = parts
        if name not in self.gateway.breakers:
            raise NotFound(
                f"No deployment '{name}' (known: {', '.join(sorted(self.gateway.breakers))}).",
                param="deployment",
            )
        if action == "revoke":
            body = await read_body(scope, receive, 64 * 1024)
            reason = "revoked by an operator (drill)"
            if body.strip():
                try:
                    given = orjson.loads(body).get("reason")
                except (orjson.JSONDecodeError, AttributeError):
                    raise InvalidRequest('The body must be JSON like {"reason": "..."}.') from None
                if isinstance(given, str) and given.strip():
                    reason = given.strip()
            self.gateway.revoke(name, reason)
        else:
            self.gateway.restore(name)
        await send_json(send, 200, {"deployment": name, **self.deployments()["deployments"][name]})
