"""Traces with OpenTelemetry, optional: a thin wrapper that is a no-op unless it is turned on.

Install the `otel` extra (`pip install 'webhook-app[otel]'`) and set the standard variables:
`OTEL_TRACES_EXPORTER` (`otlp`, the default once an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, or
`console`), `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
`OTEL_SERVICE_NAME` (default `webhook-app`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`...,
which the SDK reads itself; `OTEL_SDK_DISABLED=true` turns it off. Without them, or without the
SDK installed, every function here does nothing and costs next to nothing.

Spans: the intake (`webhook intake`), each job attempt (`job attempt`) and each Commerce Layer
call (`commercelayer <METHOD> <route>`). The intake's context is stored beside the job as W3C
`traceparent`/`tracestate` (`carrier()`), and the worker's attempt continues it (`span(...,
parent=...)`), so one trace runs from receipt to PATCH across processes.

This is the only module that imports opentelemetry (an import-linter contract keeps it so).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

_tracer: Any = None
_provider: Any = None

KINDS = ("internal", "server", "client", "consumer", "producer")


class Span:
    """What the code may do with a span; the no-op one does nothing."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def set(self, key: str, value: Any) -> None:
        if self._span is not None and value is not None:
            self._span.set_attribute(key, value)

    @property
    def trace_id(self) -> str | None:
        """The trace id as 32 hex digits (None when tracing is off)."""
        if self._span is None:
            return None
        ctx = self._span.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else None


def enabled() -> bool:
    return _tracer is not None


def wanted(environ: Mapping[str, str]) -> bool:
    """Do the standard variables ask for traces?"""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Set up the SDK for this process if the environment asks for it (call after any fork)."""
    env = os.environ if environ is None else environ
    if _tracer is not None or not wanted(env):
        return _tracer is not None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("OTEL_* variables are set but opentelemetry-sdk is not installed (pip install 'webhook-app[otel]')")
        return False
    kind = (env.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower().split(",")[0]
    exporter: SpanExporter
    if kind == "console":
        exporter = ConsoleSpanExporter()
    elif kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http (the otel extra)")
            return False
        exporter = OTLPSpanExporter()
    else:
        log.warning("unsupported OTEL_TRACES_EXPORTER; traces stay off", extra={"exporter": kind[:40]})
        return False
    name = env.get("OTEL_SERVICE_NAME") or "webhook-app"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    return True


def use_provider(provider: Any) -> None:
    """Trace with this SDK TracerProvider (tests pass one with an in-memory exporter)."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("webhook_app")


def shutdown() -> None:
    """Flush and stop (at process exit); tracing is off afterwards."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


@contextmanager
def span(
    name: str,
    *,
    kind: str = "internal",
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span around the block, the current one's child (or `parent`'s, a stored carrier)."""
    if _tracer is None:
        yield Span()
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    context = extract({k.lower(): v for k, v in parent.items()}) if parent else None
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    with _tracer.start_as_current_span(
        name, context=context, kind=getattr(trace.SpanKind, kind.upper()), attributes=attrs
    ) as s:
        yield Span(s)


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, ...), to store; {} when off."""
    if _tracer is None:
        return {}
    from opentelemetry.propagate import inject

    out: dict[str, str] = {}
    inject(out)
    return out
