"""The CLI as a subprocess, the official openai SDK as the client, the simulator as the provider."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
import yaml
from pydantic import BaseModel, Field

from tests.conftest import ADMIN_TOKEN, TEST_MODELS
from tests.e2e.harness import SimulatorThread, cli, serve
from tests.polling import eventually_sync

ENV = {"SIM_API_KEY": "sk-provider-secret", "COSTPROXY_ADMIN_TOKEN": ADMIN_TOKEN}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("e2e")
    with SimulatorThread(chunk_delay_ms=5) as sim:
        (tmp / "rules").mkdir()
        (tmp / "models.yaml").write_text(yaml.safe_dump(TEST_MODELS))
        config = tmp / "costproxy.yaml"
        provider = {"base_url": sim.url, "api_key_env": "SIM_API_KEY"}
        config.write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1", "port": 8080},
            "store": {"url": f"sqlite:///{tmp / 'ledger.sqlite3'}"},
            "models_file": "models.yaml", "rules_dir": "rules",
            "providers": {"sim": provider, "sim2": provider},
        }))
        created = cli(config, "keys", "create", "--user", "dana", "--team", "ml", "--org", "acme", env=ENV)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().split()[-1]
        assert key.startswith("cp-")
        with serve(config, ENV) as base:
            yield {"config": config, "base": base, "key": key, "sim": sim, "db": tmp / "ledger.sqlite3"}


def ledger_row(db: Path, request_id: str) -> sqlite3.Row:
    def row() -> sqlite3.Row | None:
        conn = sqlite3.connect(db)
        conn.row_factory = sqlite3.Row
        found: sqlite3.Row | None = conn.execute("SELECT * FROM ledger WHERE request_id = ?",
                                                 (request_id,)).fetchone()
        conn.close()
        return found

    return eventually_sync(row, what=f"a ledger entry for {request_id}")


def sync_client(d: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=d["base"] + "/v1", api_key=d["key"], max_retries=0)


def test_sync_unary_cost_matches_ledger(deployment: dict[str, Any]) -> None:
    client = sync_client(deployment)
    raw = client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "How are you doing today?"}])
    completion = raw.parse()
    assert completion.choices[0].message.content
    request_id = raw.headers["x-costproxy-request-id"]
    row = ledger_row(deployment["db"], request_id)
    usage = completion.usage
    assert usage is not None
    expected = usage.prompt_tokens * 150 + usage.completion_tokens * 600  # small: $0.15 / $0.60 per 1M
    assert row["cost_nanos"] == expected
    assert raw.headers["x-costproxy-cost-usd"] == f"{expected / 1e9:.9f}"
    assert (row["user"], row["team"], row["org"]) == ("dana", "ml", "acme")


def test_sync_stream_with_and_without_usage(deployment: dict[str, Any]) -> None:
    client = sync_client(deployment)
    for include in (True, False):
        kwargs: dict[str, Any] = {"stream_options": {"include_usage": True}} if include else {}
        with client.chat.completions.with_streaming_response.create(
                model="big", stream=True, messages=[{"role": "user", "content": "Tell me a story"}],
                **kwargs) as response:
            request_id = response.headers["x-costproxy-request-id"]
            chunks = list(response.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text
        usage_chunks = [c for c in chunks if c.usage is not None]
        assert bool(usage_chunks) is include
        row = ledger_row(deployment["db"], request_id)
        assert row["usage_reported"] == 1 and row["stream"] == 1
        assert row["cost_nanos"] == row["prompt_tokens"] * 2500 + row["completion_tokens"] * 10000
        if include:
            assert usage_chunks[0].usage.completion_tokens == row["completion_tokens"]


def test_async_client_unary_and_stream(deployment: dict[str, Any]) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=deployment["base"] + "/v1", api_key=deployment["key"],
                                    max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="big", messages=[{"role": "user", "content": "ping"}])
        stream = await client.chat.completions.create(
            model="small", stream=True, messages=[{"role": "user", "content": "pong"}])
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        embedding = await client.embeddings.create(model="embed", input="hello world")
        await client.close()
        assert embedding.data[0].embedding
        return [raw.headers["x-costproxy-model"], "".join(parts)]

    model, text = asyncio.run(run())
    assert model == "big" and text


def test_sdk_sees_openai_errors(deployment: dict[str, Any]) -> None:
    client = sync_client(deployment)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    bad = openai.OpenAI(base_url=deployment["base"] + "/v1", api_key="cp-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="big", messages=[{"role": "user", "content": "x"}])


def test_client_disconnect_mid_stream_still_recorded(deployment: dict[str, Any]) -> None:
    body = json.dumps({"model": "big", "stream": True,
                       "messages": [{"role": "user", "content": "[[sim:tokens=400]] write a lot"}]}).encode()
    port = int(deployment["base"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     + f"authorization: Bearer {deployment['key']}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                     + body)
        received = b""
        while received.count(b"data: ") < 10:
            received += sock.recv(65536)
    request_id = next(line.split(b": ", 1)[1].strip().decode() for line in received.split(b"\r\n")
                      if line.lower().startswith(b"x-costproxy-request-id"))
    row = ledger_row(deployment["db"], request_id)
    assert row["status"] == "client_disconnected"
    assert row["completion_tokens"] >= 5 and row["cost_nanos"] > 0


def test_usage_command_and_admin_api(deployment: dict[str, Any]) -> None:
    for model in ("big", "small"):  # its own spend: under xdist this test may run before the others
        raw = sync_client(deployment).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Hi"}])
        ledger_row(deployment["db"], raw.headers["x-costproxy-request-id"])
    result = cli(deployment["config"], "usage", "--by", "team", env=ENV)
    assert result.returncode == 0, result.stderr
    assert "ml" in result.stdout and "TOTAL" in result.stdout
    import urllib.request

    request = urllib.request.Request(deployment["base"] + "/api/v1/usage/summary?groupBy=model",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        data = json.loads(resp.read())
    assert {row["model"] for row in data["data"]} >= {"big", "small"}


def test_check_config_names_file_path_and_value(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(TEST_MODELS))
    config = tmp_path / "costproxy.yaml"
    config.write_text(yaml.safe_dump({"providers": {"sim": {"base_url": "ftp://nope"}, "sim2": {
        "base_url": "http://x"}}, "models_file": "models.yaml"}))
    result = cli(config, "check-config")
    assert result.returncode == 2
    assert "costproxy.yaml: providers.sim.base_url" in result.stderr and "ftp://nope" in result.stderr


class LineItem(BaseModel):
    description: str
    quantity: int = Field(ge=1, le=100)
    unit_price_usd: float


class Invoice(BaseModel):
    number: str
    status: Literal["draft", "sent", "paid"]
    issued: datetime
    lines: list[LineItem]
    customer_email: str | None
    rush: bool


def test_structured_output_parse_helpers_work_through_the_proxy(deployment: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=deployment["base"] + "/v1", api_key=deployment["key"])
    messages = [{"role": "user", "content": "Extract the invoice: #A-12, 2 chairs at $40, sent 1 March."}]
    for model in ("small", "auto"):
        completion = client.chat.completions.parse(model=model, messages=messages, response_format=Invoice)
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Invoice) and parsed.lines and 1 <= parsed.lines[0].quantity <= 100
    again = client.chat.completions.parse(model="small", messages=messages, response_format=Invoice)
    assert again.choices[0].message.parsed == parsed  # deterministic from the schema
    with client.chat.completions.stream(model="small", messages=messages, response_format=Invoice) as stream:
        streamed = stream.get_final_completion().choices[0].message.parsed
    assert streamed == parsed
    response = client.responses.parse(model="small", input=messages[0]["content"], text_format=Invoice)
    assert isinstance(response.output_parsed, Invoice)
    plain = client.chat.completions.create(model="small", messages=messages, response_format={"type": "json_object"})
    answer = json.loads(plain.choices[0].message.content or "")
    assert answer["simulated"] is True and "simulator" in answer["answer"]


def test_langchain_with_structured_output_works_through_the_proxy(deployment: dict[str, Any]) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(model="small", base_url=deployment["base"] + "/v1", api_key=deployment["key"],
                                       max_retries=0)
    extractor = chat.with_structured_output(Invoice, method="json_schema", include_raw=True)
    result = extractor.invoke("Extract the invoice as JSON: #A-12, 2 chairs at $40.")
    assert result["parsing_error"] is None and isinstance(result["parsed"], Invoice)
    assert result["raw"].response_metadata["model_name"] == "small"
