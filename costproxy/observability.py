"""Structured logs (structlog → JSON), OpenTelemetry tracing and Prometheus metrics.

structlog follows its production recipe: contextvars first (request id, principal, …), the JSON
renderer last.  Tracing uses the OpenTelemetry SDK when an exporter is configured and the no-op
tracer otherwise, so a deployment that does not collect traces pays nothing for them.
Metrics live in a per-app ``CollectorRegistry`` served at ``GET /metrics``.
"""

from __future__ import annotations

import collections
import io
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from costproxy.errors import ConfigError
from costproxy.money import format_usd
from costproxy.pipeline.events import Event, Listener, RequestCompleted, UpstreamFailed
from costproxy.settings import LoggingSettings, TracingSettings

if TYPE_CHECKING:  # the SDK (~1 MB, ~0.2 s to import) is loaded only when tracing is on: make_tracing
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class LogWriter:
    """Log lines go to one writer thread through a bounded buffer.

    The event loop never waits on a log line, nor pays for waking a thread per line: ``write``
    appends to a deque (thread-safe, no lock), and the writer thread takes everything waiting every
    ``interval_s`` and writes it in one call.  When ``capacity`` lines are waiting (stdout is a pipe
    nobody reads, a disk that stalls) a line is dropped and counted (``dropped``, exported as
    ``costproxy_log_lines_dropped_total``), never waited on.
    """

    def __init__(self, stream: Sink, capacity: int = 10_000, interval_s: float = 0.02) -> None:
        self.stream = stream
        self.capacity = capacity
        self.interval_s = interval_s
        self._lines: collections.deque[bytes] = collections.deque()
        self._full = 0  # counted on the event loop
        self._lost = 0  # counted by the writer thread (a broken stream)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="costproxy-log-writer", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._full + self._lost

    def write(self, line: bytes) -> None:
        if len(self._lines) >= self.capacity:
            self._full += 1
            if _DROP_COUNTERS:
                _DROP_COUNTERS[0].inc()
            return
        self._lines.append(line)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        lines = self._lines
        while lines:
            batch: list[bytes] = []
            while lines and len(batch) < 4096:
                batch.append(lines.popleft())
            try:
                self.stream.write(b"".join(batch))
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: the lines are lost, not the server
                self._lost += len(batch)
                if _DROP_COUNTERS:
                    _DROP_COUNTERS[0].inc(len(batch))

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is waiting (bounded wait), then stop the thread."""
        if not self._thread.is_alive():  # e.g. in a forked worker: the thread stayed in the parent
            return
        self._stop.set()
        self._thread.join(timeout_s)


class _QueuedLogger:
    """A structlog logger whose every method hands the rendered line to the process's current
    ``LogWriter``: looked up on each line, not kept, because structlog caches a logger on first use
    and a worker forked from a supervisor that had logged would otherwise keep writing to the
    supervisor's writer, whose thread did not fork (its lines were lost)."""

    __slots__ = ()

    def msg(self, message: str | bytes) -> None:
        line = message if isinstance(message, bytes) else message.encode("utf-8", "replace")
        if _WRITER:
            _WRITER[0].write(line + b"\n")

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


_WRITER: list[LogWriter] = []  # the process's writer: structlog's configuration is process-wide too
# With several workers, drops are counted in prometheus_client's shared files (make_metrics) as well:
# a collector reading this process's writer would report only the worker that answered the scrape.
_DROP_COUNTERS: list[Counter] = []
_QUEUED = _QueuedLogger()


def configure_logging(settings: LoggingSettings, stream: Any = None) -> LogWriter:
    """JSON lines rendered by orjson straight to bytes (or a console renderer for humans), written
    by a ``LogWriter`` thread so that a slow or blocked output never stalls a request."""
    renderer: Any = (structlog.processors.JSONRenderer(serializer=orjson.dumps) if settings.json
                     else structlog.dev.ConsoleRenderer())
    target: Sink = sys.stderr.buffer if stream is None else stream
    if isinstance(stream, io.TextIOBase):
        target = _TextSink(stream)
    for old in _WRITER:
        old.close()
    _WRITER[:] = [LogWriter(target, settings.queue_lines)]
    writer = _WRITER[0]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=lambda *args: _QUEUED,
        cache_logger_on_first_use=True,
    )
    return writer


class _TextSink:
    """Bytes into a text stream (a test's ``StringIO``)."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        return self.stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self.stream.flush()


def log_lines_dropped() -> int:
    return sum(writer.dropped for writer in _WRITER)


@dataclass(frozen=True)
class Tracing:
    tracer: trace.Tracer
    enabled: bool
    shutdown: Callable[[], None]  # flush and stop the exporter (blocking: call it off the loop)


def make_tracing(settings: TracingSettings, exporter: SpanExporter | None = None) -> Tracing:
    """The app's tracer: SDK-backed when an exporter is configured (or given), else no-op.

    Spans are exported in batches off the request path; a test may pass an in-memory exporter,
    which is then flushed synchronously so assertions see every span.
    """
    if exporter is None and settings.exporter not in ("console", "otlp"):
        return Tracing(trace.NoOpTracer(), False, lambda: None)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    if exporter is not None:
        processor: SpanProcessor = SimpleSpanProcessor(exporter)
    elif settings.exporter == "console":
        processor = BatchSpanProcessor(ConsoleSpanExporter())
    else:
        processor = BatchSpanProcessor(_otlp_exporter(settings))
    provider = TracerProvider(resource=Resource.create({"service.name": "costproxy"}))
    provider.add_span_processor(processor)
    return Tracing(provider.get_tracer("costproxy"), True, provider.shutdown)


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError("costproxy.yaml", "tracing.exporter",
                          "otlp needs the exporter package: pip install 'costproxy[otlp]'", "otlp") from None
    exporter: SpanExporter = OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint \
        else OTLPSpanExporter()
    return exporter


@dataclass(frozen=True)
class RequestMetrics:
    """The labelled children for one (endpoint, model, status), resolved once and reused."""

    requests: Any
    cost: Any
    baseline: Any
    tokens_in: Any
    tokens_out: Any
    latency: Any


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
    multiprocess_dir: str | None = None
    _children: dict[tuple[str, str, str], RequestMetrics] = field(default_factory=dict)

    def exposition(self) -> bytes:
        """The Prometheus text format: this process's metrics, or every worker's summed."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def for_request(self, endpoint: str, model: str, status: str) -> RequestMetrics:
        key = (endpoint, model, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = RequestMetrics(
                requests=self.requests.labels(endpoint, model, status), cost=self.cost.labels(model),
                baseline=self.baseline.labels(model), tokens_in=self.tokens.labels(model, "in"),
                tokens_out=self.tokens.labels(model, "out"), latency=self.latency.labels(endpoint))
        return children


class _DroppedLogLines(Collector):
    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("costproxy_log_lines_dropped", _DROPPED_HELP, value=log_lines_dropped())


_DROPPED_HELP = "Log lines dropped because the log output was not keeping up (never waited on)"


def make_metrics(multiprocess_dir: str | None = None) -> Metrics:
    """The app's metrics; with ``multiprocess_dir`` (several workers) values are kept in files there
    and ``exposition`` sums every worker's."""
    registry = CollectorRegistry()
    if multiprocess_dir is None:
        registry.register(_DroppedLogLines())
        _DROP_COUNTERS.clear()
    else:
        _DROP_COUNTERS[:] = [Counter("costproxy_log_lines_dropped", _DROPPED_HELP, registry=registry)]
    return Metrics(
        registry=registry,
        multiprocess_dir=multiprocess_dir,
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


def request_observer(metrics: Metrics) -> Listener:
    """The pipeline-event subscriber that writes the ``request_completed`` log line and counts."""
    log = structlog.get_logger("costproxy")

    def observe(event: Event) -> None:
        if isinstance(event, UpstreamFailed):
            metrics.upstream_errors.labels(event.provider, event.error.code).inc()
            return
        if not isinstance(event, RequestCompleted):
            return
        entry = event.entry
        if event.fallback and entry.served_model:
            metrics.fallbacks.labels(entry.served_model).inc()
        children = metrics.for_request(entry.endpoint, entry.served_model or "-", entry.status)
        children.requests.inc()
        children.cost.inc(entry.cost_nanos)
        children.baseline.inc(entry.baseline_nanos)
        children.tokens_in.inc(entry.prompt_tokens)
        children.tokens_out.inc(entry.completion_tokens)
        children.latency.observe(entry.latency_ms / 1000)
        log.info("request_completed", request_id=entry.request_id, endpoint=entry.endpoint, model=entry.served_model,
                 requested=entry.requested_model, decision_id=entry.decision_id, status=entry.status,
                 http_status=entry.http_status, error_code=entry.error_code, tokens_in=entry.prompt_tokens,
                 tokens_out=entry.completion_tokens, cost_usd=format_usd(entry.cost_nanos),
                 usage="reported" if entry.usage_reported else "estimated", key_id=entry.key_id,
                 team=entry.team, user=entry.user, duration_ms=entry.latency_ms)

    return observe


# The refusal codes deploy/prometheus/alerts.yml alerts on.
ALERTED_REFUSALS = ("budget_exceeded", "exceeds_rate_limit", "rate_limited", "store_unavailable")


def refusal_and_cache_metrics(registry: CollectorRegistry) -> Listener:
    """A pipeline-event subscriber counting ``costproxy_refusals_total`` by error code (a rate limit's
    ``rate_limited`` / ``exceeds_rate_limit``, ``budget_exceeded``, ``rule_rejected``…) and
    ``costproxy_cache_saved_nanos_total``: what answers from the response cache saved (the cost of
    the answers they replayed; hits are ``costproxy_requests_total{status="cache_hit"}``), and
    ``costproxy_usage_clamped_total`` by model: calls whose usage reported more output than the
    provider could have generated, charged the bound instead (``pipeline.settle.plausible_usage``), or
    more provider-side tool calls than the bound sent (``pipeline.settle.charged_tool_calls``)."""
    refusals = Counter("costproxy_refusals", "Requests refused before any upstream call, by error code",
                       ["code"], registry=registry)
    for code in ALERTED_REFUSALS:  # exported from the start at 0: ``increase()`` skips a series' first sample,
        refusals.labels(code)      # so the first burst after a start would not reach deploy/prometheus's alerts
    saved = Counter("costproxy_cache_saved_nanos", "Nano-USD the response cache saved (cost of the answers "
                    "it replayed)", registry=registry)
    clamped = Counter("costproxy_usage_clamped", "Calls whose reported output exceeded what the provider could "
                      "generate (n x the output cap sent), charged that bound", ["model"], registry=registry)

    def observe(event: Event) -> None:
        if not isinstance(event, RequestCompleted):
            return
        entry = event.entry
        if "usage_clamped" in entry.metadata or "tool_calls_clamped" in entry.metadata:
            clamped.labels(entry.served_model or "-").inc()
        if entry.status == "refused":
            refusals.labels(entry.error_code or "refused").inc()
        elif entry.status == "cache_hit":
            saved.inc(max(0, int(entry.metadata.get("cache", {}).get("saved_nanos", 0))))

    return observe


def budget_event_metrics(registry: CollectorRegistry) -> Callable[[Any], None]:
    """A ``BudgetAccounts.subscribe`` listener that counts overruns (a provider billing more than
    was reserved) in ``registry``: ``costproxy_budget_overruns_total`` and
    ``costproxy_budget_overrun_nanos_total``, labelled by the budget's scope type (one count per
    budget charged).  Wire it in the composition root:
    ``accounts.subscribe(budget_event_metrics(app[METRICS].registry))``."""
    overruns = Counter("costproxy_budget_overruns", "Charges above their reservation, per budget charged",
                       ["scope"], registry=registry)
    overrun_nanos = Counter("costproxy_budget_overrun_nanos", "Nano-USD charged above reservations",
                            ["scope"], registry=registry)

    def observe(event: Any) -> None:
        if getattr(event, "kind", None) != "overrun":
            return
        scope = str(getattr(event, "scope_type", None) or "unknown")
        overruns.labels(scope).inc()
        overrun_nanos.labels(scope).inc(max(0, int(getattr(event, "overrun_nanos", 0) or 0)))

    return observe
