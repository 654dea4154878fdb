"""`POST /v1/feedback`: a client says whether an answer it got was any good.

The verdict lands in the ledger beside what the request cost, so `hedge costs` can report the
cost per *successful* outcome, not just per request. The body is validated strictly (no
coercion, no unknown fields) because a silently misread verdict would skew every figure built
on it.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from hedge.errors import InvalidRequest, MethodNotAllowed, NotFound
from hedge.ledger import Ledger, NullLedger
from hedge.server.asgi import Receive, Scope, Send, read_body, send_json

# A verdict is a few dozen bytes; anything much larger is not one.
MAX_BODY_BYTES = 16 * 1024
MAX_REQUEST_ID_CHARS = 256
_FIELDS = ("request_id", "success", "score")
_EXAMPLE = '{"request_id": "chatcmpl-...", "success": true, "score": 0.9}'


def parse_feedback(body: bytes) -> tuple[str, bool, float | None]:
    """Bytes -> (request_id, success, score), or an InvalidRequest naming the field at fault."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"The request body is not valid JSON. Send a JSON object such as {_EXAMPLE}.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object such as {_EXAMPLE}.", code="invalid_json"
        )
    unknown = sorted(k for k in data if k not in _FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Invalid '{unknown[0]}': unknown field; the fields are request_id, success and score.",
            param=unknown[0],
        )
    for name in ("request_id", "success"):
        if name not in data:
            raise InvalidRequest(
                f"Invalid '{name}': this field is required. Send a JSON object such as {_EXAMPLE}.",
                param=name,
            )
    request_id = data["request_id"]
    if not isinstance(request_id, str) or not request_id.strip():
        raise InvalidRequest(
            "Invalid 'request_id': send the 'id' of the chat completion being judged, as a "
            f"non-empty string (got {_kind(request_id)}).",
            param="request_id",
        )
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(
            f"Invalid 'request_id': longer than {MAX_REQUEST_ID_CHARS} characters; no request "
            "has such an id.",
            param="request_id",
        )
    success = data["success"]
    if not isinstance(success, bool):
        raise InvalidRequest(
            f"Invalid 'success': send true or false, without quotes (got {_kind(success)}).",
            param="success",
        )
    score = data.get("score")
    if score is not None:
        # bool is an int in Python, but true is not a score.
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise InvalidRequest(
                f"Invalid 'score': send a number from 0 to 1 (got {_kind(score)}).",
                param="score",
            )
        if not math.isfinite(score) or not 0 <= score <= 1:
            raise InvalidRequest(
                f"Invalid 'score': must be from 0 to 1 (got {score}).", param="score"
            )
        score = float(score)
    return request_id, success, score


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {orjson.dumps(value[:40]).decode()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return "an array" if isinstance(value, list) else "an object"


class FeedbackApi:
    """The ASGI handler for `POST /v1/feedback`, given the path is already matched."""

    def __init__(self, ledger: Ledger, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.ledger = ledger
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            raise MethodNotAllowed(
                f"{scope['method']} is not allowed on /v1/feedback; use POST.",
                headers={"Allow": "POST"},
            )
        body = await read_body(scope, receive, self._limit)
        request_id, success, score = parse_feedback(body)
        if isinstance(self.ledger, NullLedger):
            raise NotFound(
                "This gateway keeps no ledger (ledger.backend: none), so it cannot record "
                "feedback. Set ledger.backend to sqlite or postgres.",
                code="ledger_disabled",
            )
        if not await self.ledger.feedback(request_id, success, score):
            raise NotFound(
                f"No request '{request_id}' is recorded on this gateway. Send the 'id' of a "
                "chat completion this gateway answered.",
                param="request_id",
                code="request_not_found",
            )
        await send_json(send, 200, {"request_id": request_id, "recorded": True})
