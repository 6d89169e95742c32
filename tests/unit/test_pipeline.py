"""The pipeline (``pipeline/run.py``) over in-memory services: what it reserves, calls, settles
and announces for unary calls, streams and refusals. No sockets: the upstream and the accounts are
the stand-ins of ``tests/unit/fakes.py``, the router and the token counter are the real ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from costproxy.errors import BudgetExceeded, UpstreamHTTPError, UpstreamUnavailable
from costproxy.ledger.entry import Status
from costproxy.pipeline.events import Event, ModelSwitched, RequestBlocked, RequestCompleted, UpstreamFailed
from costproxy.pipeline.run import StreamRun, run_stream, run_unary
from costproxy.request import Endpoint, RequestContext, parse_request
from costproxy.settings import Settings
from tests.conftest import ConfigFactory, load_test_settings
from tests.polling import eventually
from tests.unit.fakes import ALICE, BookedAccounts, ScriptedUpstream, chunks, completion, pipeline_services

SMALL_NANOS = 12 * 150 + 3 * 600  # 12 prompt and 3 completion tokens at $0.15 / $0.60 per 1M


@pytest.fixture
def settings(write_config: ConfigFactory) -> Settings:
    return load_test_settings(write_config("http://upstream.invalid/v1"))


def ctx(request_id: str = "req-1") -> RequestContext:
    return RequestContext(request_id, ALICE, "chat/completions")


def chat(model: str = "small", **extra: Any) -> Any:
    question = [{"role": "user", "content": "Capital of France?"}]
    return parse_request(Endpoint.CHAT, {"model": model, "messages": question, **extra})


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- unary ---------------------------------------------------------------------------------------


async def test_a_unary_call_reserves_then_settles_the_reported_cost_once(settings: Settings) -> None:
    upstream, accounts, events = ScriptedUpstream([completion("small")]), BookedAccounts(), []
    result = await run_unary(pipeline_services(settings, upstream, accounts, events), ctx(), chat())
    assert [(c.model, c.endpoint, c.request_id) for c in upstream.calls] == [("small", "chat/completions", "req-1")]
    [reservation] = accounts.reserved
    assert reservation.amount_nanos >= SMALL_NANOS  # the worst case covers what was used
    [(settled, entry)] = accounts.settled
    assert settled is reservation and accounts.released == [] and accounts.held() == []
    assert (entry.status, entry.served_model, entry.cost_nanos, entry.usage_reported) == (
        Status.OK, "small", SMALL_NANOS, True)
    assert (entry.prompt_tokens, entry.completion_tokens) == (12, 3)
    assert result.entry == entry and result.data["choices"][0]["message"]["content"] == "Paris."
    assert kinds(events) == ["RequestCompleted"]
    completed = events[0]
    assert isinstance(completed, RequestCompleted) and completed.entry == entry and not completed.fallback


async def test_a_failed_call_releases_its_reservation_and_charges_nothing(settings: Settings) -> None:
    refused = UpstreamHTTPError("provider sim answered HTTP 400: bad tool schema", status=400)
    upstream, accounts, events = ScriptedUpstream([refused]), BookedAccounts(), []
    with pytest.raises(UpstreamHTTPError) as info:
        await run_unary(pipeline_services(settings, upstream, accounts, events), ctx(), chat())
    assert info.value is refused and len(upstream.calls) == 1  # a 400 is not retried elsewhere
    assert accounts.settled == [] and accounts.held() == []
    [(_, entry)] = accounts.released
    assert entry is not None and (entry.status, entry.cost_nanos) == (Status.ERROR, 0)
    assert kinds(events) == ["UpstreamFailed", "RequestCompleted"]


async def test_a_retryable_failure_falls_back_to_the_next_model_and_says_so(settings: Settings) -> None:
    upstream = ScriptedUpstream([UpstreamHTTPError("provider answered HTTP 503", status=503), completion("x")])
    accounts, events = BookedAccounts(), []
    result = await run_unary(pipeline_services(settings, upstream, accounts, events), ctx(), chat("auto"))
    first, second = (c.model for c in upstream.calls)
    assert first != second and result.entry.served_model == second
    assert [e.cost_nanos for _, e in accounts.settled] == [result.entry.cost_nanos] and accounts.held() == []
    failed = [e for e in events if isinstance(e, UpstreamFailed)]
    assert [(e.model, e.error.status) for e in failed] == [(first, 503)]  # type: ignore[attr-defined]
    completed = [e for e in events if isinstance(e, RequestCompleted)]
    assert len(completed) == 1 and completed[0].fallback


async def test_a_named_model_served_by_another_is_announced(write_config: ConfigFactory) -> None:
    rules = {"route.yaml": {"rules": [{"id": "to-small", "name": "pin", "priority": 1, "conditions": [],
                                       "actions": [{"type": "route", "params": {"model": "small"}}]}]}}
    settings = load_test_settings(write_config("http://upstream.invalid/v1", rules=rules))
    upstream, accounts, events = ScriptedUpstream([completion("small")]), BookedAccounts(), []
    result = await run_unary(pipeline_services(settings, upstream, accounts, events), ctx(), chat("big"))
    assert [c.model for c in upstream.calls] == ["small"] and result.entry.served_model == "small"
    assert result.entry.cost_nanos == SMALL_NANOS  # charged at the price of the model that answered
    assert kinds(events) == ["ModelSwitched", "RequestCompleted"]
    switched = events[0]
    assert isinstance(switched, ModelSwitched) and (switched.requested, switched.served) == ("big", "small")
    assert any("to-small" in reason for reason in switched.reasons)


# --- refusals ------------------------------------------------------------------------------------


async def test_a_budget_refusal_is_recorded_and_never_reaches_the_upstream(settings: Settings) -> None:
    upstream, accounts, events = ScriptedUpstream([completion("small")]), BookedAccounts(limit_nanos=1), []
    with pytest.raises(BudgetExceeded):
        await run_unary(pipeline_services(settings, upstream, accounts, events), ctx(), chat())
    assert upstream.calls == [] and accounts.reserved == []
    [entry] = accounts.refusals
    assert (entry.status, entry.cost_nanos, entry.request_id) == (Status.REFUSED, 0, "req-1")
    assert kinds(events) == ["RequestBlocked", "RequestCompleted"]
    blocked = events[0]
    assert isinstance(blocked, RequestBlocked) and blocked.ctx.request_id == "req-1"


class ChangingAccounts(BookedAccounts):
    """Accounts whose budget definitions another replica changes: ``changes_on_reserve`` reloads them
    during the first reserve (as a stale reserve does); ``current`` finds them changed once, lifting
    the limit."""

    def __init__(self, limit_nanos: int | None = None, *, changes_on_reserve: bool = False) -> None:
        super().__init__(limit_nanos)
        self.version = 0
        self.changes_on_reserve = changes_on_reserve
        self.looked = 0

    def definitions_version(self) -> int:
        return self.version

    async def reserve(self, request_id: str, principal: Any, worst_case_nanos: int) -> Any:
        reservation = await super().reserve(request_id, principal, worst_case_nanos)
        if self.changes_on_reserve:
            self.changes_on_reserve, self.version = False, self.version + 1
        return reservation

    async def current(self) -> bool:
        self.looked += 1
        if self.limit_nanos is None:
            return False
        self.limit_nanos, self.version = None, self.version + 1
        return True


async def test_a_plan_whose_definitions_changed_under_its_reserve_is_made_again(settings: Settings) -> None:
    upstream, accounts = ScriptedUpstream([completion("small")]), ChangingAccounts(changes_on_reserve=True)
    result = await run_unary(pipeline_services(settings, upstream, accounts), ctx(), chat())
    first, second = accounts.reserved
    assert [r for r, _ in accounts.released] == [first]  # given back unused, before the call
    assert [r for r, _ in accounts.settled] == [second] and result.entry.cost_nanos == SMALL_NANOS
    assert len(upstream.calls) == 1


async def test_a_refusal_stands_only_on_current_definitions(settings: Settings) -> None:
    upstream, accounts = ScriptedUpstream([completion("small")]), ChangingAccounts(limit_nanos=1)
    result = await run_unary(pipeline_services(settings, upstream, accounts), ctx(), chat())  # raised meanwhile
    assert accounts.looked == 1 and accounts.refusals == [] and result.entry.cost_nanos == SMALL_NANOS
    refused = ChangingAccounts(limit_nanos=1)  # and one whose store holds nothing newer

    async def unchanged() -> bool:
        refused.looked += 1
        return False

    refused.current = unchanged  # type: ignore[method-assign]
    with pytest.raises(BudgetExceeded):
        await run_unary(pipeline_services(settings, ScriptedUpstream([]), refused), ctx(), chat())
    assert refused.looked == 1 and len(refused.refusals) == 1


# --- cancellation --------------------------------------------------------------------------------


async def test_a_request_cancelled_during_the_call_still_gives_its_reservation_back(settings: Settings) -> None:
    hung = asyncio.Event()  # never set: the provider never answers
    upstream, accounts, events = ScriptedUpstream([hung]), BookedAccounts(), []
    task = asyncio.create_task(run_unary(pipeline_services(settings, upstream, accounts, events), ctx(), chat()))
    await eventually(lambda: upstream.calls, what="the upstream call")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(accounts.reserved) == 1 and accounts.held() == []  # settled in ``finally``, shielded
    [(_, entry)] = accounts.settled  # charged: the provider had the call and may bill all of it
    assert entry is not None and entry.status == "client_disconnected" and not entry.usage_reported
    assert entry.error_code == "client_disconnected" and entry.http_status == 499  # not a Python class name
    assert 0 < entry.cost_nanos <= accounts.reserved[0].amount_nanos  # its worst case, estimated
    assert kinds(events) == ["RequestCompleted"]


class HangingReserve(BookedAccounts):
    """Accounts whose reserve waits until cancelled (a store that stalls)."""

    async def reserve(self, request_id: str, principal: Any, worst_case_nanos: int) -> Any:
        await asyncio.Event().wait()


async def cut_by_the_drain_deadline(services: Any, running: Any, started: Any) -> None:
    """Start ``running`` as a proxied request, wait for ``started``, then end it as the drain deadline does."""
    task = asyncio.create_task(running)
    services.in_flight.add(task)
    await eventually(started, what="the request to reach the step that stalls")
    assert services.end_in_flight() == 1
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_cut_while_its_reserve_waits_is_ledgered_as_shutting_down(
        settings: Settings, stream: bool) -> None:
    upstream, accounts, events = ScriptedUpstream([completion("small")]), HangingReserve(), []
    services = pipeline_services(settings, upstream, accounts, events)
    run = run_stream if stream else run_unary
    reached = asyncio.Event()
    original = accounts.view

    async def view(principal: Any) -> Any:
        reached.set()
        return await original(principal)

    accounts.view = view  # type: ignore[method-assign]
    await cut_by_the_drain_deadline(services, run(services, ctx(), chat(stream=stream)), reached.is_set)
    assert upstream.calls == [] and accounts.held() == []
    [entry] = accounts.refusals  # not lost: the ledger says the server ended it, at cost 0
    assert (entry.status, entry.error_code, entry.http_status, entry.cost_nanos) == (
        Status.REFUSED, "server_shutting_down", 503, 0)
    assert kinds(events) == ["RequestCompleted"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_cut_while_the_cache_is_looked_up_releases_its_reservation(
        settings: Settings, stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream, accounts, events = ScriptedUpstream([completion("small")]), BookedAccounts(), []
    services = pipeline_services(settings, upstream, accounts, events)
    looking = asyncio.Event()

    async def stalled_lookup(services_: Any, plan_: Any) -> None:
        looking.set()
        await asyncio.Event().wait()

    monkeypatch.setattr("costproxy.pipeline.cached.lookup", stalled_lookup)
    run = run_stream if stream else run_unary
    await cut_by_the_drain_deadline(services, run(services, ctx(), chat(stream=stream)), looking.is_set)
    assert upstream.calls == [] and len(accounts.reserved) == 1 and accounts.held() == []
    [(released, entry)] = accounts.released  # given back at once, not left to its lease
    assert released is accounts.reserved[0] and entry is None and accounts.settled == []
    [refusal] = accounts.refusals
    assert (refusal.error_code, refusal.cost_nanos) == ("server_shutting_down", 0)


# --- streams -------------------------------------------------------------------------------------


async def open_run(settings: Settings, upstream: ScriptedUpstream, accounts: BookedAccounts,
                   events: list[Event]) -> StreamRun:
    run = await run_stream(pipeline_services(settings, upstream, accounts, events), ctx(), chat(stream=True))
    assert isinstance(run, StreamRun)
    return run


async def test_a_stream_is_relayed_frame_by_frame_then_settled(settings: Settings) -> None:
    upstream = ScriptedUpstream([chunks("small", ["The", " capital", " is", " Paris."])])
    accounts, events, written = BookedAccounts(), [], []
    run = await open_run(settings, upstream, accounts, events)
    assert accounts.settled == [] and len(accounts.reserved) == 1  # held while the stream runs
    started = []

    async def start() -> None:
        started.append(True)

    async def write(data: bytes) -> None:
        written.append(data)

    entry = await run.relay(start, write)
    text = b"".join(written).decode()
    assert started == [True] and "capital" in text and "data: [DONE]" in text
    assert text.rstrip().splitlines()[-1].startswith(": costproxy ")  # the cost comment comes last
    assert upstream.calls[0].stream and upstream.streams[0].closed
    assert (entry.status, entry.cost_nanos, entry.usage_reported) == (Status.OK, SMALL_NANOS, True)
    assert [e for _, e in accounts.settled] == [entry] and accounts.held() == []
    assert kinds(events) == ["RequestCompleted"]


class SlowSettle(BookedAccounts):
    """Accounts whose settle waits until ``go`` is set (a store that takes its time)."""

    def __init__(self) -> None:
        super().__init__()
        self.settling, self.go = asyncio.Event(), asyncio.Event()

    async def settle(self, reservation: Any, entry: Any) -> None:
        self.settling.set()
        await self.go.wait()
        await super().settle(reservation, entry)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_drain_deadline_does_not_cut_a_request_whose_call_is_over(settings: Settings,
                                                                          stream: bool) -> None:
    """Cut while it settled, a finished stream lost its end (the client saw a broken stream, the
    ledger said ok) and a unary answer the caller pays for became a 503: once the upstream call is
    over the request is no longer the drain deadline's to end."""
    upstream = ScriptedUpstream([chunks("small", ["The", " capital"]) if stream else completion("small")])
    accounts, written = SlowSettle(), []
    services = pipeline_services(settings, upstream, accounts, [])

    async def whole() -> Any:
        if not stream:
            return (await run_unary(services, ctx(), chat())).entry
        run = await run_stream(services, ctx(), chat(stream=True))
        assert isinstance(run, StreamRun)

        async def write(data: bytes) -> None:
            written.append(data)

        return await run.relay(_nothing, write)

    task = asyncio.create_task(whole())
    services.in_flight.add(task)
    await eventually(accounts.settling.is_set, what="the settle under way")
    assert services.end_in_flight() == 0  # nothing left to cut
    accounts.go.set()
    entry = await task
    assert entry.status == Status.OK and accounts.held() == []
    if stream:
        assert b"".join(written).decode().rstrip().splitlines()[-1].startswith(": costproxy ")


async def _nothing() -> None:
    return None


async def test_a_client_leaving_mid_stream_is_charged_what_was_generated(settings: Settings) -> None:
    upstream = ScriptedUpstream([chunks("small", ["one", " two", " three", " four"], usage=None)])
    accounts, events = BookedAccounts(), []
    run = await open_run(settings, upstream, accounts, events)
    frames = 0

    async def start() -> None:
        return None

    async def write(data: bytes) -> None:
        nonlocal frames
        frames += 1
        if frames == 3:
            raise ConnectionResetError("client went away")

    entry = await run.relay(start, write)
    assert entry.status == Status.CLIENT_DISCONNECTED and not entry.usage_reported
    assert entry.completion_tokens > 0 and entry.cost_nanos > 0  # counted from the text relayed
    assert [e for _, e in accounts.settled] == [entry] and accounts.held() == []
    assert upstream.streams[0].closed


async def test_a_stream_that_breaks_mid_way_ends_with_an_error_event(settings: Settings) -> None:
    broken = UpstreamUnavailable("provider sim stream broke: ClientPayloadError")
    frames = [*chunks("small", ["half", " an"], usage=None)[:3], broken]
    upstream, accounts, events, written = ScriptedUpstream([frames]), BookedAccounts(), [], []
    run = await open_run(settings, upstream, accounts, events)

    async def start() -> None:
        return None

    async def write(data: bytes) -> None:
        written.append(data)

    entry = await run.relay(start, write)
    assert entry.status == Status.ERROR and accounts.held() == []
    assert b"stream broke" in b"".join(written)  # the client is told, in the stream
    assert kinds(events) == ["RequestCompleted"]
