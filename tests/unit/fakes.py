"""In-memory stand-ins for the services the pipeline runs on, through their protocols.

``ScriptedUpstream`` plays the ``Upstream`` protocol (``providers/transport.py``) the way httpx's
``MockTransport`` plays a transport: each call takes the next scripted answer (a chat completion,
a stream of frames, or an error to raise) and is recorded. ``BookedAccounts`` plays ``Accounts``
and writes down what the pipeline asked of it, so a test can check that every reservation was
settled or released exactly once. ``pipeline_services`` builds ``Services`` over both with the
test registry of ``tests/conftest.py``; nothing opens a socket or a file beyond the config.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson
import tiktoken

from costproxy.analyzer.encodings import load_encodings
from costproxy.analyzer.tokens import TokenCounter
from costproxy.budgets.accounts import BudgetView, Reservation
from costproxy.errors import BudgetExceeded
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry, as_refusal
from costproxy.pipeline.events import Event
from costproxy.pipeline.services import Services
from costproxy.providers.transport import UpstreamResponse
from costproxy.routing.router import build_router
from costproxy.settings import ProviderSettings, Settings

ALICE = Principal(key_id="k-alice", user="alice", team="core", org="acme")


def completion(model: str, text: str = "Paris.", prompt: int = 12, completion_tokens: int = 3) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                      "total_tokens": prompt + completion_tokens}}


def chunks(model: str, words: list[str], usage: tuple[int, int] | None = (12, 3)) -> list[Any]:
    """The data of a chat stream's events: role, one per word, finish, usage; ``None`` is [DONE]."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
    frames: list[Any] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
    frames += [{**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words]
    frames.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage is not None:
        frames.append({**base, "choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                                         "total_tokens": sum(usage)}})
    return [*frames, None]


@dataclass
class Call:
    provider: str
    endpoint: str
    model: str
    body: dict[str, Any]
    request_id: str
    stream: bool


class MemoryStream:
    """An ``UpstreamStream`` over a list of event data (``None`` is ``[DONE]``); an exception in
    the list is raised when reached (a stream that breaks)."""

    def __init__(self, events: list[Any]) -> None:
        self._events = events
        self.done = False
        self.closed = False

    async def events(self) -> AsyncIterator[tuple[bytes, Any]]:
        for item in self._events:
            await asyncio.sleep(0)
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self.done = True
                yield b"data: [DONE]\n\n", None
                return
            yield b"data: " + orjson.dumps(item) + b"\n\n", item

    def close(self) -> None:
        self.closed = True


@dataclass
class ScriptedUpstream:
    """Answers calls from ``script`` in order: a dict (a completion), a list (a stream's events),
    an exception (raised), or an ``asyncio.Event`` (wait for it forever: a hung provider)."""

    script: list[Any] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    streams: list[MemoryStream] = field(default_factory=list)

    async def _next(self, provider: ProviderSettings, endpoint: str, model: str, payload: bytes,
                    request_id: str, stream: bool) -> Any:
        self.calls.append(Call(provider.name, endpoint, model, orjson.loads(payload), request_id, stream))
        item = self.script.pop(0)
        if isinstance(item, asyncio.Event):
            await item.wait()
        if isinstance(item, BaseException):
            raise item
        return item

    async def call(self, provider: ProviderSettings, endpoint: str, upstream_model: str, payload: bytes,
                   request_id: str, *, headers: Mapping[str, str] | None = None) -> UpstreamResponse:
        data = await self._next(provider, endpoint, upstream_model, payload, request_id, False)
        return UpstreamResponse(200, {}, orjson.dumps(data), data)

    async def open_stream(self, provider: ProviderSettings, endpoint: str, upstream_model: str, payload: bytes,
                          request_id: str, *, headers: Mapping[str, str] | None = None) -> MemoryStream:
        stream = MemoryStream(await self._next(provider, endpoint, upstream_model, payload, request_id, True))
        self.streams.append(stream)
        return stream


@dataclass
class BookedAccounts:
    """``Accounts`` that remember every call; ``limit_nanos`` refuses worst cases above it."""

    limit_nanos: int | None = None
    reserved: list[Reservation] = field(default_factory=list)
    settled: list[tuple[Reservation, LedgerEntry]] = field(default_factory=list)
    released: list[tuple[Reservation, LedgerEntry | None]] = field(default_factory=list)
    refusals: list[LedgerEntry] = field(default_factory=list)

    async def view(self, principal: Principal) -> BudgetView:
        return BudgetView(remaining_nanos=self.limit_nanos)

    async def reserve(self, request_id: str, principal: Principal, worst_case_nanos: int) -> Reservation:
        if self.limit_nanos is not None and worst_case_nanos > self.limit_nanos:
            raise BudgetExceeded(f"budget 'team' cannot fit this request: worst case {worst_case_nanos}")
        reservation = Reservation(request_id, worst_case_nanos, ("team",))
        self.reserved.append(reservation)
        return reservation

    async def renew(self, reservation: Reservation, ttl_s: float | None = None) -> bool:
        return True

    async def settle(self, reservation: Reservation, entry: LedgerEntry) -> None:
        self.settled.append((reservation, entry))

    async def release(self, reservation: Reservation, entry: LedgerEntry | None) -> None:
        self.released.append((reservation, entry))

    async def record_refusal(self, entry: LedgerEntry) -> None:
        self.refusals.append(as_refusal(entry))

    def definitions_version(self) -> int:
        return 0

    async def current(self) -> bool:
        return False

    def held(self) -> list[Reservation]:
        """Reservations neither settled nor released."""
        done = [r for r, _ in self.settled] + [r for r, _ in self.released]
        return [r for r in self.reserved if r not in done]


@cache
def _encodings() -> dict[str, tiktoken.Encoding]:
    return load_encodings()


def pipeline_services(settings: Settings, upstream: ScriptedUpstream, accounts: BookedAccounts,
                      events: list[Event] | None = None) -> Services:
    services = Services(settings=settings, registry=settings.registry, counter=TokenCounter(_encodings()),
                        upstream=upstream, accounts=accounts, router=build_router(settings))
    if events is not None:
        services.events.subscribe(events.append)
    return services
