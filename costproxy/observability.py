"""Structured logs (structlog → JSON), OpenTelemetry tracing and Prometheus metrics.

structlog follows its production recipe: contextvars first (request id, principal, …), the JSON
renderer last.  Tracing uses the OpenTelemetry SDK when an exporter is configured and the no-op
tracer otherwise, so a deployment that does not collect traces pays nothing for them.
Metrics live in a per-app ``CollectorRegistry`` served at ``GET /metrics``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry, Counter, Histogram

from costproxy.settings import LoggingSettings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(settings: LoggingSettings, stream: Any = None) -> None:
    level = _LEVELS[settings.level]
    renderer: Any = structlog.processors.JSONRenderer() if settings.json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


def make_tracer(exporter: SpanExporter | None = None, console: bool = False) -> trace.Tracer:
    """A tracer for the app: SDK-backed with the given exporter, else a no-op tracer."""
    if exporter is None and not console:
        return trace.NoOpTracer()
    provider = TracerProvider(resource=Resource.create({"service.name": "costproxy"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter or ConsoleSpanExporter()))
    return provider.get_tracer("costproxy")


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    cost: Counter
    baseline: Counter
    tokens: Counter
    latency: Histogram
    upstream_errors: Counter
    fallbacks: Counter


def make_metrics() -> Metrics:
    registry = CollectorRegistry()
    return Metrics(
        registry=registry,
        requests=Counter("costproxy_requests", "Requests by endpoint, served model and status",
                         ["endpoint", "model", "status"], registry=registry),
        cost=Counter("costproxy_cost_nanos", "Actual cost in nano-USD", ["model"], registry=registry),
        baseline=Counter("costproxy_baseline_nanos", "Baseline (requested/premium) cost in nano-USD",
                         ["model"], registry=registry),
        tokens=Counter("costproxy_tokens", "Tokens by model and direction", ["model", "direction"],
                       registry=registry),
        latency=Histogram("costproxy_request_seconds", "Request latency", ["endpoint"], registry=registry,
                          buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)),
        upstream_errors=Counter("costproxy_upstream_errors", "Upstream failures by provider and code",
                                ["provider", "code"], registry=registry),
        fallbacks=Counter("costproxy_fallbacks", "Calls served by a fallback model", ["model"],
                          registry=registry),
    )
