"""``UpstreamStream.events``: SSE events split from whatever pieces the connection delivers."""

from __future__ import annotations

from typing import Any

import pytest

from costproxy.errors import UpstreamBadResponse, UpstreamUnavailable
from costproxy.providers import client
from costproxy.providers.client import UpstreamStream
from costproxy.providers.config import ProviderSettings


class _Content:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


class _Response:
    def __init__(self, pieces: list[bytes]) -> None:
        self.content = _Content(pieces)

    def close(self) -> None:
        pass


def _stream(pieces: list[bytes]) -> UpstreamStream:
    return UpstreamStream(_Response(pieces), ProviderSettings(name="fake", base_url="http://127.0.0.1:1"))  # type: ignore[arg-type]


async def _events(stream: UpstreamStream) -> list[tuple[bytes, Any, bool]]:
    return [(raw, data, stream.pending) async for raw, data in stream.events()]


async def test_events_of_one_piece_are_pending_until_the_last() -> None:
    stream = _stream([b'data: {"a":1}\n\ndata: {"a":2}\r\n\r\n: keep-alive\n\n', b"data: [DONE]\n\n"])
    events = await _events(stream)
    assert events == [(b'data: {"a":1}\n\n', {"a": 1}, True), (b'data: {"a":2}\n\n', {"a": 2}, True),
                      (b": keep-alive\n\n", None, False), (b"data: [DONE]\n\n", None, False)]
    assert stream.done


async def test_an_event_split_across_pieces_is_whole_once_its_blank_line_arrives() -> None:
    pieces = [b"da", b'ta: {"text": "hel', b'lo"}\n', b"\n", b"data: [DO", b"NE]\n\n"]
    assert [(raw, data) for raw, data, _ in await _events(_stream(pieces))] == [
        (b'data: {"text": "hello"}\n\n', {"text": "hello"}), (b"data: [DONE]\n\n", None)]


async def test_a_last_event_without_its_blank_line_still_counts() -> None:
    events = await _events(_stream([b'data: {"a":1}\n\ndata: [DONE]']))
    assert [data for _, data, _ in events] == [{"a": 1}, None]


async def test_streams_that_break_off_or_run_away_are_provider_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UpstreamUnavailable):
        await _events(_stream([b'data: {"a":1}\n\n']))
    with pytest.raises(UpstreamBadResponse):
        await _events(_stream([b"data: {not json}\n\n"]))
    monkeypatch.setattr(client, "MAX_EVENT_LINE", 64)
    with pytest.raises(UpstreamBadResponse):
        await _events(_stream([b"data: " + b"x" * 40, b"x" * 40]))


async def test_events_received_before_the_connection_broke_are_still_relayed() -> None:
    """aiohttp raises a broken connection's error before it hands over what it had received: the
    events in its buffer were lost (the client saw only the error, the ledger charged no output)."""
    import asyncio
    from unittest import mock

    import aiohttp

    reader = aiohttp.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    reader.feed_data(b'data: {"a":1}\n\ndata: {"a":')
    reader.feed_data(b'2}\n\n')
    reader.set_exception(aiohttp.ClientPayloadError("connection lost"))
    response = _Response([])
    response.content = reader  # type: ignore[assignment]
    stream = UpstreamStream(response, ProviderSettings(name="fake", base_url="http://127.0.0.1:1"))  # type: ignore[arg-type]
    seen: list[Any] = []
    with pytest.raises(UpstreamUnavailable):
        async for _, data in stream.events():
            seen.append(data)
    assert seen == [{"a": 1}, {"a": 2}]
