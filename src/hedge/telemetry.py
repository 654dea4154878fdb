"""Optional OpenTelemetry traces: one span per request, one child span per upstream attempt.

Off unless `server.tracing` says where spans go (`otlp`: the OTLP/HTTP exporter, configured by
the standard OTEL_EXPORTER_OTLP_* variables; `console`: JSON on stdout, for a look) and the
OpenTelemetry SDK is installed (`pip install 'hedge[otel]'`). Spans are built from the finished
request's trace, after the answer went out, with the times it recorded: the request path pays
nothing for them, and a span never holds a prompt, a completion or a secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from hedge.errors import ConfigError

if TYPE_CHECKING:
    from hedge.ledger import RequestRecord
    from hedge.trace import Trace

Tracing = Literal["off", "otlp", "console"]
Observer = Callable[["RequestRecord", "Trace", "str | None"], None]


def tracing_observer(
    kind: Tracing, service: str = "hedge"
) -> tuple[Observer, Callable[[], None]] | None:
    """A gateway observer that exports spans, and the function that flushes them at shutdown;
    None when tracing is off. Raises ConfigError when it is on but the SDK is missing."""
    if kind == "off":
        return None
    try:
        from opentelemetry import trace as otel
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ConfigError(
            f"server.tracing is {kind} but the OpenTelemetry SDK is not installed. Fix: "
            "pip install 'hedge[otel]', or set server.tracing: off."
        ) from None
    exporter: Any
    if kind == "console":
        # One JSON object per line, like hedge's logs.
        exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                "server.tracing is otlp but opentelemetry-exporter-otlp-proto-http is not "
                "installed. Fix: pip install 'hedge[otel]'."
            ) from None
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("hedge")

    def observe(record: RequestRecord, trace: Trace, error: str | None) -> None:
        # Trace times are perf_counter readings; spans want Unix nanoseconds.
        offset = time.time() - time.perf_counter()

        def ns(perf: float) -> int:
            return int((perf + offset) * 1e9)

        end = trace.started + record.latency_ms / 1000
        span = tracer.start_span(
            f"hedge {record.route}",
            start_time=ns(trace.started),
            attributes=_clean(
                {
                    "hedge.request_id": record.request_id,
                    "hedge.route": record.route,
                    "hedge.deployment": record.answered_by,
                    "hedge.stage": record.stage,
                    "hedge.cache": record.cache,
                    "hedge.key": record.caller_key,
                    "hedge.cost_usd": record.cost_usd,
                    "hedge.attempts": len(record.attempts),
                    "http.response.status_code": record.status,
                    "error.type": error,
                }
            ),
        )
        if record.status >= 500:
            span.set_status(otel.Status(otel.StatusCode.ERROR, error or str(record.status)))
        context = otel.set_span_in_context(span)
        for attempt, row in zip(trace.attempts, record.attempts, strict=False):
            child = tracer.start_span(
                f"attempt {attempt.deployment}",
                context=context,
                start_time=ns(attempt.started),
                attributes=_clean(
                    {
                        "hedge.deployment": attempt.deployment,
                        "hedge.error": attempt.error,
                        "gen_ai.usage.input_tokens": row.prompt_tokens,
                        "gen_ai.usage.output_tokens": row.completion_tokens,
                        "hedge.cost_usd": row.cost_usd,
                    }
                ),
            )
            if attempt.error:
                child.set_status(otel.Status(otel.StatusCode.ERROR, attempt.error[:200]))
            child.end(end_time=ns(attempt.started + attempt.seconds))
        span.end(end_time=ns(end))

    return observe, provider.shutdown


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attributes cannot be None."""
    return {k: v for k, v in attributes.items() if v is not None}
