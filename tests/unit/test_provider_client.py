"""The provider client (``providers/client.py``) over an in-memory session: what it sends (URL,
query, auth, headers) and how each answer or failure of a provider comes back (the ``ProviderError``
tree, SSE frames). ``MemorySession`` stands where the app's ``aiohttp.ClientSession`` sits and plays
the provider, the way httpx's ``MockTransport`` does; no socket is opened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from costproxy.errors import (
    UpstreamBadResponse,
    UpstreamHTTPError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from costproxy.providers.client import UpstreamClient
from costproxy.providers.config import ProviderSettings

OPENAI = ProviderSettings(name="openai", base_url="https://api.example/v1", api_key="sk-test")
PAYLOAD = orjson.dumps({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]})
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class Lines:
    """A response body delivered piece by piece (each list item is one network read, as
    ``readany`` returns it; b"" at the end); an exception in the list is raised when reached."""

    def __init__(self, lines: list[bytes | BaseException]) -> None:
        self.lines = lines
        self._next = 0

    async def readany(self) -> bytes:
        if self._next >= len(self.lines):
            return b""
        piece = self.lines[self._next]
        self._next += 1
        if isinstance(piece, BaseException):
            raise piece
        return piece

    async def _iterate(self) -> AsyncIterator[bytes]:
        for line in self.lines:
            if isinstance(line, BaseException):
                raise line
            yield line

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()


@dataclass
class Reply:
    status: int = 200
    body: bytes = orjson.dumps(ANSWER)
    headers: dict[str, str] = field(default_factory=dict)
    lines: list[bytes | BaseException] = field(default_factory=list)
    released: bool = False
    closed: bool = False
    _content: Lines | None = None

    @property
    def content(self) -> Lines:
        """One body per reply: reads go on where the last one stopped."""
        if self._content is None:
            self._content = Lines(self.lines)
        return self._content

    @property
    def content_type(self) -> str:
        """As aiohttp reads it: the header's media type; a stream's fake replies default to SSE."""
        header = {k.lower(): v for k, v in self.headers.items()}.get("content-type")
        if header is None:
            return "text/event-stream" if self.lines else "application/json"
        return header.split(";")[0].strip().lower()

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


@dataclass
class Sent:
    url: str
    body: bytes
    params: dict[str, str] | None
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout


class Pending:
    """What ``session.post`` returns: awaitable (streams) and an async context manager (unary)."""

    def __init__(self, outcome: Reply | BaseException) -> None:
        self.outcome = outcome

    def _get(self) -> Reply:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def __await__(self) -> Any:
        async def answer() -> Reply:
            return self._get()

        return answer().__await__()

    async def __aenter__(self) -> Reply:
        return self._get()

    async def __aexit__(self, *exc: object) -> None:
        return None


@dataclass
class MemorySession:
    outcomes: list[Reply | BaseException]
    sent: list[Sent] = field(default_factory=list)

    def post(self, url: str, *, data: bytes, params: dict[str, str] | None, headers: dict[str, str],
             timeout: aiohttp.ClientTimeout) -> Pending:
        self.sent.append(Sent(url, data, params, headers, timeout))
        return Pending(self.outcomes.pop(0))


def client(*outcomes: Reply | BaseException) -> tuple[UpstreamClient, MemorySession]:
    session = MemorySession(list(outcomes))
    return UpstreamClient(session), session  # type: ignore[arg-type]


# --- what is sent --------------------------------------------------------------------------------


async def test_a_call_posts_the_payload_with_auth_and_request_id() -> None:
    upstream, session = client(Reply())
    response = await upstream.call(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    [sent] = session.sent
    assert sent.url == "https://api.example/v1/chat/completions" and sent.body == PAYLOAD
    assert sent.headers["authorization"] == "Bearer sk-test" and sent.headers["x-request-id"] == "req-1"
    assert sent.timeout.total == OPENAI.timeouts.read and sent.params is None
    assert (response.status, response.data) == (200, ANSWER)


async def test_azure_anthropic_and_custom_auth_shape_the_request() -> None:
    azure = ProviderSettings(name="az", base_url="https://az.example/openai", kind="azure", api_key="k",
                             auth="api-key", api_version="2024-10-21")
    anthropic = ProviderSettings(name="an", base_url="https://an.example/v1", kind="anthropic", api_key="k2",
                                 auth="x-api-key", headers={"x-team": "core"})
    upstream, session = client(Reply(), Reply())
    await upstream.call(azure, "chat/completions", "my-deployment", PAYLOAD, "req-1")
    await upstream.call(anthropic, "messages", "claude", PAYLOAD, "req-2", headers={"anthropic-beta": "tools"})
    to_azure, to_anthropic = session.sent
    assert to_azure.url == "https://az.example/openai/deployments/my-deployment/chat/completions"
    assert to_azure.params == {"api-version": "2024-10-21"} and to_azure.headers["api-key"] == "k"
    assert "authorization" not in to_azure.headers
    assert to_anthropic.headers["x-api-key"] == "k2" and to_anthropic.headers["x-team"] == "core"
    assert to_anthropic.headers["anthropic-version"] and to_anthropic.headers["anthropic-beta"] == "tools"


async def test_the_request_id_of_one_call_does_not_leak_into_the_next() -> None:
    upstream, session = client(Reply(), Reply())
    await upstream.call(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1", headers={"x-once": "1"})
    await upstream.call(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-2")
    assert session.sent[1].headers["x-request-id"] == "req-2" and "x-once" not in session.sent[1].headers


# --- failures ------------------------------------------------------------------------------------


async def test_a_429_is_rate_limited_with_its_retry_after() -> None:
    body = orjson.dumps({"error": {"message": "slow down", "type": "requests"}})
    upstream, _ = client(Reply(429, body, {"Retry-After": "7"}))
    with pytest.raises(UpstreamRateLimited) as info:
        await upstream.call(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    assert info.value.retryable and info.value.headers == {"retry-after": "7"}
    assert "slow down" in info.value.message


@pytest.mark.parametrize(("status", "body", "retryable", "says"), [
    (400, orjson.dumps({"error": {"message": "bad tool schema"}}), False, "bad tool schema"),
    (503, b"<html>upstream down</html>", True, "HTTP 503"),
    (529, orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}), True,
     "Overloaded"),
])
async def test_error_statuses_keep_the_providers_words(status: int, body: bytes, retryable: bool, says: str) -> None:
    upstream, _ = client(Reply(status, body))
    with pytest.raises(UpstreamHTTPError) as info:
        await upstream.call(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    assert (info.value.status, info.value.retryable) == (status, retryable) and says in info.value.message


@pytest.mark.parametrize(("raised", "expected", "says"), [
    (TimeoutError(), UpstreamTimeout, "did not answer within"),
    (aiohttp.ConnectionTimeoutError(), UpstreamTimeout, "could not be connected to"),
    (aiohttp.ClientConnectionError("refused"), UpstreamUnavailable, "unreachable"),
])
async def test_transport_failures_map_into_the_provider_error_tree(raised: BaseException, expected: type,
                                                                    says: str) -> None:
    upstream, _ = client(raised)
    with pytest.raises(expected) as info:
        await upstream.call(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    assert says in str(info.value) and info.value.retryable


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
async def test_a_200_that_is_not_a_json_object_is_a_bad_response(body: bytes) -> None:
    upstream, _ = client(Reply(200, body))
    with pytest.raises(UpstreamBadResponse) as info:
        await upstream.call(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    assert info.value.billed and not info.value.retryable  # accepted: charged, never retried elsewhere


# --- streams -------------------------------------------------------------------------------------


async def read_all(stream: Any) -> list[tuple[bytes, Any]]:
    return [event async for event in stream.events()]


async def test_a_stream_yields_each_event_raw_and_parsed() -> None:
    lines: list[bytes | BaseException] = [b'data: {"n": 1}\r\n', b"\r\n", b": keep-alive\n", b"\n",
                                          b"event: delta\n", b'data: {"n": 2}\n', b"\n", b"data: [DONE]\n", b"\n"]
    upstream, session = client(Reply(lines=lines))
    stream = await upstream.open_stream(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    events = await read_all(stream)
    assert [data for _, data in events] == [{"n": 1}, None, {"n": 2}, None] and stream.done
    assert events[0][0] == b'data: {"n": 1}\n\n' and events[2][0] == b'event: delta\ndata: {"n": 2}\n\n'
    timeout = session.sent[0].timeout
    assert timeout.total is None and timeout.sock_read == OPENAI.timeouts.stream_idle  # no cut on long answers


@pytest.mark.parametrize(("lines", "expected"), [
    ([b'data: {"n": 1}\n', b"\n"], UpstreamUnavailable),  # ended before its last event
    ([b'data: {"n": 1}\n', b"\n", aiohttp.ClientPayloadError("reset")], UpstreamUnavailable),
    ([b'data: {"n": 1}\n', b"\n", TimeoutError()], UpstreamTimeout),  # idle longer than stream_idle
    ([b"data: {not json\n", b"\n"], UpstreamBadResponse),
])
async def test_a_broken_stream_raises_after_what_it_delivered(lines: list[bytes | BaseException],
                                                              expected: type) -> None:
    upstream, _ = client(Reply(lines=lines))
    stream = await upstream.open_stream(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    delivered: list[Any] = []
    with pytest.raises(expected):
        async for _, data in stream.events():
            delivered.append(data)
    assert delivered == ([] if expected is UpstreamBadResponse else [{"n": 1}])


async def test_a_stream_refused_before_its_first_byte_is_an_error_and_released() -> None:
    refused = Reply(400, orjson.dumps({"error": {"message": "stream_options not supported"}}))
    upstream, _ = client(refused)
    with pytest.raises(UpstreamHTTPError, match="stream_options not supported"):
        await upstream.open_stream(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    assert refused.released  # the connection goes back to the pool


async def test_closing_a_stream_closes_the_response() -> None:
    reply = Reply(lines=[b"data: [DONE]\n", b"\n"])
    upstream, _ = client(reply)
    stream = await upstream.open_stream(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    stream.close()
    assert reply.closed


@pytest.mark.parametrize("content_type", ["text/html", "application/json",
                                          "application/octet-stream"])  # (what aiohttp reads without the header)
async def test_a_stream_answered_with_no_event_stream_is_a_bad_response_before_any_event(content_type: str) -> None:
    reply = Reply(200, b"<html>oops</html>", {"Content-Type": content_type}, lines=[b"<html>oops</html>\n", b"\n"])
    upstream, _ = client(reply)
    with pytest.raises(UpstreamBadResponse, match="not text/event-stream") as info:
        await upstream.open_stream(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    assert info.value.billed and not info.value.retryable and reply.closed


async def test_an_event_stream_with_parameters_is_a_stream() -> None:
    reply = Reply(headers={"Content-Type": "Text/Event-Stream; charset=utf-8"}, lines=[b"data: [DONE]\n", b"\n"])
    upstream, _ = client(reply)
    stream = await upstream.open_stream(OPENAI, "chat/completions", "gpt-x", PAYLOAD, "req-1")
    assert [data for _, data in await read_all(stream)] == [None]
