"""A hypothesis-driven fuzzer for ``POST /v1/chat/completions`` bodies (issue 7).

Bodies are drawn up front with hypothesis (deterministic, no database) and sent through the proxy
in front of the simulator: every field set to a value of every JSON type, odd content parts,
nesting thousands of levels deep, invalid UTF-8 and bodies beyond the size limit.  Expected:
no 5xx from the proxy (the simulator never fails on its own), every error in OpenAI's shape, and
nothing charged for a refused request — the budget's counter equals the ledger's sum, refused
entries cost 0, and no request the proxy refused reached the provider.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN_TOKEN, Proxy, ProxyFactory

FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options",
          "temperature", "top_p", "stop", "tools", "functions", "tool_choice", "function_call", "response_format",
          "prediction", "metadata", "user", "seed", "logit_bias", "logprobs", "top_logprobs", "presence_penalty",
          "frequency_penalty", "parallel_tool_calls", "modalities", "audio", "store", "reasoning_effort",
          "service_tier")
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal", "input_text", "video", "", None, 7)
TEAM = {"id": "team-core", "scope_type": "team", "scope_id": "core", "org": "acme", "limit_usd": "0.05",
        "period": "monthly"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EXAMPLES = 300
WRONG_VALUES = (None, True, 0, -1, 2**64, 1.5, -1e308, "", "x", [], [None], {}, {"a": {}}, [[1]])

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def base(text: str = "Say hello.") -> dict[str, Any]:
    return {"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": text}]}


@st.composite
def wrong_field(draw: st.DrawFn) -> dict[str, Any]:
    body = base()
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        body[name] = draw(json_values)
    return body


@st.composite
def odd_part(draw: st.DrawFn) -> Any:
    part: dict[str, Any] = {"type": draw(st.sampled_from(PART_TYPES))}
    for key in draw(st.lists(st.sampled_from(("text", "image_url", "input_audio", "file", "refusal", "url",
                                               "detail", "data", "format")), max_size=3, unique=True)):
        part[key] = draw(st.one_of(json_values, st.fixed_dictionaries({"url": st.text(max_size=40)}),
                                   st.just({"url": "data:image/png;base64,iVBORw0KGgo="}),
                                   st.just({"data": "%%%", "format": "wav"}),
                                   st.just({"file_data": "not base64", "filename": "x.pdf"})))
    return draw(st.one_of(st.just(part), json_values))


@st.composite
def odd_message(draw: st.DrawFn) -> dict[str, Any]:
    body = base()
    message: dict[str, Any] = {"role": draw(st.one_of(st.sampled_from(("user", "system", "assistant", "tool",
                                                                      "developer", "function", "robot")),
                                                      json_values))}
    message["content"] = draw(st.one_of(st.lists(odd_part(), max_size=4), json_values))
    if draw(st.booleans()):
        message[draw(st.sampled_from(("tool_calls", "name", "tool_call_id", "function_call")))] = draw(json_values)
    body["messages"] = draw(st.one_of(st.just([message]), st.lists(json_values, max_size=3)))
    return body


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from((200, 255, 256, 300, 1000, 1030, 5000)))
    opener, closer = draw(st.sampled_from((("[", "]"), ('{"a":', "}"))))
    nested = opener * depth + "1" + closer * depth
    where = draw(st.sampled_from(("metadata", "extra_field", "content", "tools", "response_format")))
    if where == "content":
        return ('{"model":"small","max_tokens":5,"messages":[{"role":"user","content":' + nested + "}]}").encode()
    return ('{"model":"small","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"'
            + where + '":' + nested + "}").encode()


@st.composite
def broken_bytes(draw: st.DrawFn) -> bytes:
    good = json.dumps(base("hello WORD")).encode()
    bad = draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\x00")))
    return draw(st.sampled_from((good.replace(b"WORD", bad), bad + good, good[: draw(st.integers(0, len(good)))],
                                 b'{"model": "small", "messages": [' + bad + b"]}")))


@st.composite
def huge(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from((70_000, 300_000, 2_000_000)))
    return json.dumps(base("word " * (size // 5))).encode()


bodies = st.one_of(wrong_field().map(lambda b: json.dumps(b).encode()),
                   odd_message().map(lambda b: json.dumps(b).encode()),
                   deep(), broken_bytes(), huge(),
                   st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()))


def every_field_wrong() -> list[bytes]:
    """Each field the proxy reads (and a few it passes through) set to a value of every JSON type."""
    return [json.dumps({**base(), name: value}).encode() for name in FIELDS for value in WRONG_VALUES]


def draw_bodies(count: int) -> list[bytes]:
    drawn: list[bytes] = every_field_wrong()

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies)
    def collect(body: bytes) -> None:
        drawn.append(body)

    collect()
    return drawn


async def send(proxy: Proxy, body: bytes, number: int) -> tuple[int, Any, str]:
    headers = {**proxy.auth(), "content-type": "application/json", "X-Request-ID": f"fuzz-{number}"}
    resp = await proxy.client.post("/v1/chat/completions", data=body, headers=headers)
    text = await resp.read()
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text[:300]
    return resp.status, parsed, resp.headers.get("x-costproxy-request-id", "")


def is_openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error) and \
        isinstance(error["message"], str)


async def spent_nanos(proxy: Proxy) -> int:
    resp = await proxy.client.get("/api/v1/budgets/team-core/status", headers=ADMIN)
    status = await resp.json()
    return int(Decimal(str(status["currentAmount"])) * 1_000_000_000)


async def test_chat_bodies_from_the_fuzzer_never_5xx_and_never_charge_a_refusal(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [TEAM]}})
    problems: list[str] = []
    refused: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for number, body in enumerate(draw_bodies(EXAMPLES)):
        status, answer, request_id = await send(proxy, body, number)
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500:
            problems.append(f"{status} for {body[:200]!r}: {answer!r:.300}")
        elif status != 200 and not is_openai_error(answer):
            problems.append(f"{status} not in OpenAI's shape for {body[:200]!r}: {answer!r:.300}")
        elif status != 200 and answer["error"]["code"] != "upstream_error":
            refused[request_id] = status
    print("chat fuzz:", sum(statuses.values()), "bodies", dict(sorted(statuses.items())))
    assert not problems, "\n".join(problems[:20])
    ledger = await proxy.ledger()
    assert sum(e.cost_nanos for e in ledger if e.team == "core") == await spent_nanos(proxy)
    assert all(e.cost_nanos == 0 for e in ledger if e.status == "refused")
    assert all(e.cost_nanos == 0 for e in ledger if e.request_id in refused)
    reached = {call.headers.get("x-request-id") for call in proxy.sim.calls}
    assert not reached & set(refused), f"refused yet sent upstream: {sorted(reached & set(refused))[:10]}"
    assert refused and statuses.get(200), "the fuzzer should produce both refusals and answers"
