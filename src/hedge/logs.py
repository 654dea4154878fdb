"""Logging: one line per event on stderr, as JSON (the default) or as plain text.

Every finished request is logged once by `RequestLog` (a gateway observer) with its request
id, route, answering deployment, status, attempts, latency, cost, cache outcome, the caller's
key id and the error code: metadata only, never a prompt, a completion or a secret. Other
records (start-up, warnings, uvicorn's own) go through the same formatter, so a log shipper
reads one format.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from hedge.ledger import RequestRecord
    from hedge.trace import Trace

LogFormat = Literal["json", "text"]

# The attribute a record's structured fields travel in (logging's `extra=`).
FIELDS = "hedge_fields"

requests_log = logging.getLogger("hedge.requests")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, FIELDS, None)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return text


def configure(level: str, fmt: LogFormat) -> None:
    """Send every logger's records (hedge's and uvicorn's) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def request_fields(record: RequestRecord, error: str | None) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "route": record.route,
        "deployment": record.answered_by,
        "stage": record.stage,
        "status": record.status,
        "error": error,
        "attempts": len(record.attempts),
        "latency_ms": round(record.latency_ms, 3),
        "cost_usd": record.cost_usd,
        "cache": record.cache,
        "key": record.caller_key,
    }


def log_request(record: RequestRecord, trace: Trace, error: str | None) -> None:
    """A gateway observer: one line per finished request, at info (warning for a 5xx)."""
    level = logging.WARNING if record.status >= 500 else logging.INFO
    if requests_log.isEnabledFor(level):
        requests_log.log(level, "request", extra={FIELDS: request_fields(record, error)})
