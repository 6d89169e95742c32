"""Tracing spans per pipeline step, the canonical log line, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from costproxy.http.app import create_app
from tests.conftest import load_test_settings

CHAT = {"model": "big", "messages": [{"role": "user", "content": "hello there"}]}


async def test_spans_continue_traceparent(aiohttp_client: Any, simulator, write_config) -> None:
    from costproxy.http.keys_api import issue_key
    from costproxy.http.state import KEYRING, STORE

    url, _sim = simulator
    exporter = InMemorySpanExporter()
    app = create_app(load_test_settings(write_config(url)), span_exporter=exporter)
    client = await aiohttp_client(app)
    key, record = await issue_key(app[STORE], {"user": "u"}, 0)
    app[KEYRING].add(record)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={
        "Authorization": f"Bearer {key}", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert resp.status == 200
    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    assert {"costproxy.count_tokens", "costproxy.route", "costproxy.reserve", "costproxy.upstream",
            "costproxy.settle", "POST /v1/chat/completions"} <= names
    assert all(format(s.context.trace_id, "032x") == trace_id for s in spans)


async def test_metrics_and_request_log(make_proxy, capsys) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 200
    metrics = await (await proxy.client.get("/metrics")).text()
    assert 'costproxy_requests_total{endpoint="chat/completions",model="big",status="ok"} 1.0' in metrics
    assert "costproxy_cost_nanos_total" in metrics
    out = capsys.readouterr()
    line = next(line for line in (out.out + out.err).splitlines() if "request_completed" in line)
    assert "hello there" not in line and proxy.key not in line  # never log prompts or keys
