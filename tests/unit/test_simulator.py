"""The simulated provider, driven through aiohttp's test client."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from costproxy.tools.simulator import SIM_NAME, SimConfig, Simulator, count_tokens, start_simulator

Client = TestClient[Any, Any]
MakeSim = Callable[..., Awaitable[tuple[Client, Simulator]]]
AUTH = {"Authorization": "Bearer sk-provider"}


@pytest.fixture
def make_sim(aiohttp_client: Any) -> MakeSim:
    async def make(**options: Any) -> tuple[Client, Simulator]:
        sim = Simulator(**options)
        return await aiohttp_client(sim.build_app()), sim

    return make


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


async def post(client: Client, body: Any, path: str = "/v1/chat/completions", **kw: Any) -> Any:
    resp = await client.post(path, json=body, headers=kw.pop("headers", AUTH), **kw)
    assert resp.headers["x-simulated-provider"] == SIM_NAME
    return resp


async def read_sse(resp: aiohttp.ClientResponse) -> list[Any]:
    """Every ``data:`` payload, decoded, with ``[DONE]`` kept as the string."""
    frames: list[Any] = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            data = line[6:].strip()
            frames.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return frames


async def test_chat_answer_is_deterministic_with_usage_and_record(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    system = {"role": "system", "content": "be brief"}
    body = {"model": "any-model-name", "messages": [system, *chat("why is the sky blue")["messages"]]}
    first = await (await post(client, body)).json()
    second = await (await post(client, body)).json()
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert first["model"] == "any-model-name"
    assert first["system_fingerprint"] == SIM_NAME
    assert first["object"] == "chat.completion"
    usage = first["usage"]
    prompt = count_tokens("be brief") + 3 + count_tokens("why is the sky blue") + 3
    answer = first["choices"][0]["message"]["content"]
    assert usage["prompt_tokens"] == prompt == 14
    assert usage["completion_tokens"] == len(answer.split())
    assert usage["total_tokens"] == prompt + len(answer.split())
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    call = sim.calls[0]
    assert (call.path, call.model, call.status) == ("/v1/chat/completions", "any-model-name", 200)
    assert not call.streamed
    assert (call.prompt_tokens, call.completion_tokens) == (prompt, usage["completion_tokens"])
    assert call.usage_sent and call.completed
    assert call.body == body and call.reply == answer and call.response_id == first["id"]


async def test_different_questions_get_different_answers(make_sim: MakeSim) -> None:
    client, _ = await make_sim()
    answers = set()
    for question in ("one", "two", "three", "four", "five"):
        answers.add((await (await post(client, chat(question))).json())["choices"][0]["message"]["content"])
    assert len(answers) > 1


async def test_max_tokens_caps_the_answer(make_sim: MakeSim) -> None:
    client, _ = await make_sim()
    data = await (await post(client, chat("hi [[sim:tokens=50]]", max_completion_tokens=7))).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 7
    assert len(data["choices"][0]["message"]["content"].split()) == 7


async def test_reply_and_cached_directives(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    data = await (await post(client, chat("[[sim:reply=Hello there]] [[sim:cached=2]] a b c d e f"))).json()
    assert data["choices"][0]["message"]["content"] == "Hello there"
    assert data["usage"]["completion_tokens"] == 2
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 2
    assert sim.calls[0].cached_tokens == 2


async def test_cached_never_exceeds_prompt(make_sim: MakeSim) -> None:
    client, _ = await make_sim()
    data = await (await post(client, chat("[[sim:cached=100]]"))).json()
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == data["usage"]["prompt_tokens"]


async def test_paths_without_v1_prefix(make_sim: MakeSim) -> None:
    client, _ = await make_sim()
    assert (await post(client, chat("hi"), "/chat/completions")).status == 200
    models = await (await client.get("/models", headers=AUTH)).json()
    assert "gpt-4o" in [m["id"] for m in models["data"]]


async def test_models_lists_configured_models(make_sim: MakeSim) -> None:
    client, sim = await make_sim(models=("alpha", "beta"))
    resp = await client.get("/v1/models", headers=AUTH)
    assert resp.headers["x-simulated-provider"] == SIM_NAME
    assert [m["id"] for m in (await resp.json())["data"]] == ["alpha", "beta"]
    assert sim.calls[0].method == "GET" and sim.calls[0].status == 200


async def test_auth_is_required_and_recorded(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    missing = await post(client, chat("hi"), headers={})
    assert missing.status == 401
    assert set((await missing.json())["error"]) == {"message", "type", "param", "code"}
    assert (await post(client, chat("hi"), headers={"Authorization": "Bearer sk-a"})).status == 200
    assert (await post(client, chat("hi"), headers={"api-key": "sk-b"})).status == 200
    assert [c.auth for c in sim.calls] == [None, "sk-a", "sk-b"]
    assert [c.status for c in sim.calls] == [401, 200, 200]
    assert sim.calls[1].headers["authorization"] == "Bearer sk-a"


async def test_auth_can_be_off_or_restricted(make_sim: MakeSim) -> None:
    open_client, _ = await make_sim(require_auth=False)
    assert (await post(open_client, chat("hi"), headers={})).status == 200
    strict, _ = await make_sim(accepted_keys=("sk-good",))
    bad = await post(strict, chat("hi"), headers={"Authorization": "Bearer cp-client-key"})
    assert bad.status == 401 and (await bad.json())["error"]["code"] == "invalid_api_key"
    assert (await post(strict, chat("hi"), headers={"Authorization": "Bearer sk-good"})).status == 200


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        ("429", "requests", "rate_limit_exceeded"),
        ("500", "server_error", None),
        ("503", "server_error", None),
        ("400", "invalid_request_error", "invalid_value"),
    ],
)
async def test_http_faults_have_openai_shape(make_sim: MakeSim, fault: str, kind: str, code: Any) -> None:
    client, sim = await make_sim()
    resp = await post(client, chat(f"hi [[sim:fault={fault}]]"))
    assert resp.status == int(fault)
    error = (await resp.json())["error"]
    assert (error["type"], error["code"], error["param"]) == (kind, code, None)
    assert error["message"]
    assert ("retry-after" in resp.headers) is (fault == "429")
    assert (sim.calls[0].status, sim.calls[0].fault, sim.calls[0].usage_sent) == (int(fault), fault, False)


async def test_retry_after_value(make_sim: MakeSim) -> None:
    client, _ = await make_sim()
    resp = await post(client, chat("[[sim:fault=429]] [[sim:retry_after=7]]"))
    assert resp.headers["retry-after"] == "7"


async def test_malformed_json_body(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    resp = await post(client, chat("[[sim:malformed]]"))
    assert resp.status == 200
    with pytest.raises(ValueError):
        orjson.loads(await resp.read())
    assert sim.calls[0].fault == "malformed" and not sim.calls[0].usage_sent


async def test_malformed_stream_sends_a_garbage_frame(make_sim: MakeSim) -> None:
    client, _ = await make_sim()
    resp = await post(client, chat("[[sim:fault=malformed]]", stream=True))
    lines = [line async for line in resp.content if line.startswith(b"data: ")]
    orjson.loads(lines[0][6:])
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(lines[1][6:])


async def test_drop_closes_the_connection_before_answering(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post("/v1/chat/completions", json=chat("[[sim:drop]]"), headers=AUTH)
    call = sim.calls[0]
    assert (call.status, call.dropped, call.completed, call.usage_sent) == (0, True, False, False)


async def test_latency_delays_the_answer(make_sim: MakeSim) -> None:
    client, _ = await make_sim()
    started = time.monotonic()
    assert (await post(client, chat("[[sim:latency_ms=200]]"))).status == 200
    assert time.monotonic() - started >= 0.2


async def test_timeout_hangs_until_the_client_gives_up(make_sim: MakeSim) -> None:
    client, sim = await make_sim(hang_s=5.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await client.post(
            "/v1/chat/completions",
            json=chat("[[sim:fault=timeout]]"),
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    assert time.monotonic() - started < 5  # the simulator answers after hang_s at the earliest
    assert sim.calls[0].fault == "timeout" and not sim.calls[0].completed


async def test_stream_with_usage(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    resp = await post(client, chat("tell me", stream=True, stream_options={"include_usage": True}))
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = await read_sse(resp)
    assert frames[-1] == "[DONE]"
    usage_chunk, finish = frames[-2], frames[-3]
    words = frames[1:-3]
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(f["choices"][0]["delta"]["content"] for f in words)
    assert len(words) == len(text.split()) > 0
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == len(words)
    assert all(f["usage"] is None for f in frames[:-2])
    assert all(f["system_fingerprint"] == SIM_NAME for f in frames[:-1])
    call = sim.calls[0]
    assert call.streamed and call.usage_sent and call.completed
    assert call.chunks_sent == len(frames) - 1
    assert (call.completion_tokens, call.reply) == (len(words), text)
    assert usage_chunk["usage"]["prompt_tokens"] == call.prompt_tokens


async def test_stream_without_usage_unless_asked(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    frames = await read_sse(await post(client, chat("tell me", stream=True)))
    assert all("usage" not in f for f in frames[:-1])
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"
    assert not sim.calls[0].usage_sent and sim.calls[0].completed


async def test_no_usage_even_when_asked(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    asked = chat("[[sim:no_usage]]", stream=True, stream_options={"include_usage": True})
    frames = await read_sse(await post(client, asked))
    assert all(f == "[DONE]" or f["choices"] for f in frames)
    plain = await (await post(client, chat("[[sim:no_usage]]"))).json()
    assert "usage" not in plain
    assert [c.usage_sent for c in sim.calls] == [False, False]
    assert sim.calls[0].completion_tokens > 0


async def test_drop_after_streams_n_frames_then_disconnects(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    body = chat("[[sim:drop_after=3]] [[sim:tokens=10]]", stream=True, stream_options={"include_usage": True})
    resp = await post(client, body)
    lines: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async for line in resp.content:
            lines.append(line)
    frames = [orjson.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
    assert len(frames) == 3
    call = sim.calls[0]
    assert (call.chunks_sent, call.completion_tokens, call.dropped) == (3, 2, True)
    assert (call.completed, call.usage_sent) == (False, False)


async def test_chunk_delay(make_sim: MakeSim) -> None:
    client, _ = await make_sim(chunk_delay_ms=20)
    started = time.monotonic()
    frames = await read_sse(await post(client, chat("[[sim:tokens=5]]", stream=True)))
    assert len(frames) == 8  # role, 5 words, finish, [DONE]
    assert time.monotonic() - started >= 0.12


async def test_plans_by_model_and_count(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    sim.plan(model="gpt-4o", fault="500", times=2)
    other = {**chat("hi"), "model": "gpt-4o-mini"}
    target = {**chat("hi"), "model": "gpt-4o"}
    statuses = [(await post(client, b)).status for b in (other, target, target, target)]
    assert statuses == [200, 500, 500, 200]
    sim.reset()
    assert sim.calls == [] and (await post(client, target)).status == 200


async def test_plan_for_every_request_and_header_control(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    sim.plan(reply="planned answer")
    data = await (await post(client, chat("hi"))).json()
    assert data["choices"][0]["message"]["content"] == "planned answer"
    headers = {**AUTH, "x-sim-fault": "503"}
    assert (await post(client, chat("hi"), headers=headers)).status == 503


async def test_unknown_directives_fail_loudly(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    resp = await post(client, chat("[[sim:faul=429]]"))
    assert resp.status == 400 and "faul" in (await resp.json())["error"]["message"]
    assert (await post(client, chat("[[sim:fault=999]]"))).status == 400
    assert (await post(client, chat("[[sim:tokens=many]]"))).status == 400
    with pytest.raises(ValueError, match="bogus"):
        sim.plan(bogus=1)


async def test_tool_call(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "required": ["city"]}},
    }
    data = await (await post(client, chat("weather? [[sim:tool_call]]", tools=[tool]))).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    called = choice["message"]["tool_calls"][0]
    assert called["function"]["name"] == "get_weather"
    assert orjson.loads(called["function"]["arguments"]) == {"city": "sim"}
    assert data["usage"]["completion_tokens"] == sim.calls[0].completion_tokens == 2
    frames = await read_sse(await post(client, chat("[[sim:tool_call]]", tools=[tool], stream=True)))
    assert frames[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert frames[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_embeddings(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    body = {"model": "text-embedding-3-small", "input": ["hello world", "hello world", "other"]}
    data = await (await post(client, body, "/v1/embeddings")).json()
    vectors = [d["embedding"] for d in data["data"]]
    assert len(vectors[0]) == 8 and vectors[0] == vectors[1] != vectors[2]
    assert data["usage"] == {"prompt_tokens": 2 + 2 + 1, "total_tokens": 5}
    assert sim.calls[0].prompt_tokens == 5 and sim.calls[0].usage_sent
    sized = await (await post(client, {**body, "dimensions": 16}, "/embeddings")).json()
    assert len(sized["data"][0]["embedding"]) == 16
    packed = await (await post(client, {**body, "encoding_format": "base64"}, "/v1/embeddings")).json()
    decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert decoded == pytest.approx(vectors[0], rel=1e-6)


async def test_legacy_completions(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "say something nice", "max_tokens": 3}
    data = await (await post(client, body, "/v1/completions")).json()
    assert data["object"] == "text_completion" and data["choices"][0]["finish_reason"] == "length"
    assert len(data["choices"][0]["text"].split()) == 3
    assert data["usage"]["prompt_tokens"] == count_tokens("say something nice") == 4
    frames = await read_sse(await post(client, {**body, "stream": True}, "/completions"))
    assert "".join(f["choices"][0]["text"] for f in frames[:-1]) == data["choices"][0]["text"]
    assert sim.calls[1].streamed and sim.calls[1].completed


async def test_azure_deployment_route(make_sim: MakeSim) -> None:
    client, sim = await make_sim()
    path = "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-06-01"
    resp = await post(client, {"messages": chat("hi")["messages"]}, path, headers={"api-key": "az"})
    data = await resp.json()
    assert data["model"] == "my-gpt4o"
    assert (sim.calls[0].auth, sim.calls[0].query) == ("az", {"api-version": "2024-06-01"})
    no_version = await post(client, chat("hi"), "/openai/deployments/my-gpt4o/chat/completions")
    assert no_version.status == 404


async def test_bad_request_bodies(make_sim: MakeSim) -> None:
    client, _ = await make_sim()
    resp = await client.post("/v1/chat/completions", data=b"{not json", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"
    assert (await post(client, {"messages": [{"role": "user", "content": "hi"}]})).status == 400
    assert (await post(client, {"model": "m", "messages": []})).status == 400


async def test_start_simulator_serves_on_loopback() -> None:
    runner, base_url, sim = await start_simulator(config=SimConfig(require_auth=False))
    try:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base_url}/chat/completions", json=chat("hi")) as resp:
                assert resp.status == 200
                assert resp.headers["x-simulated-provider"] == SIM_NAME
        assert sim.calls[0].completed
    finally:
        await runner.cleanup()
