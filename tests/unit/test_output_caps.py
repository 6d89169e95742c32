"""Output caps and the reservation: what the proxy reserves for a request's output must bound
every output-cap field it forwards, whichever of them the upstream honours.

OpenAI refuses ``max_tokens`` with ``max_completion_tokens`` in one request, but an
OpenAI-compatible upstream may accept both and honour either; the reservation covers the larger
and a cap the proxy applies lowers every field the request carries."""

from __future__ import annotations

from typing import Any

import pytest

from costproxy.pipeline.run import run_unary
from costproxy.request import Endpoint, RequestContext, parse_request
from costproxy.settings import Settings
from tests.conftest import ConfigFactory, load_test_settings
from tests.unit.fakes import ALICE, BookedAccounts, ScriptedUpstream, completion, pipeline_services

SMALL_IN, SMALL_OUT = 150, 600  # nano-USD per token of "small" ($0.15 / $0.60 per 1M)


@pytest.fixture
def settings(write_config: ConfigFactory) -> Settings:
    return load_test_settings(write_config("http://upstream.invalid/v1"))


def ctx() -> RequestContext:
    return RequestContext("req-1", ALICE, "chat/completions")


def chat(**extra: Any) -> Any:
    return parse_request(Endpoint.CHAT, {"model": "small", "messages": [{"role": "user", "content": "Hi"}], **extra})


async def test_both_caps_reserve_for_the_larger_one(settings: Settings) -> None:
    upstream, accounts = ScriptedUpstream([completion("small")]), BookedAccounts()
    await run_unary(pipeline_services(settings, upstream, accounts, []), ctx(),
                    chat(max_completion_tokens=5, max_tokens=3000))
    [reservation] = accounts.reserved
    assert reservation.amount_nanos >= 3000 * SMALL_OUT  # an upstream honouring max_tokens may bill 3000
    [call] = upstream.calls
    assert (call.body["max_completion_tokens"], call.body["max_tokens"]) == (5, 3000)  # both forwarded as asked


@pytest.mark.parametrize("fields", [{"max_completion_tokens": 5, "max_tokens": 100_000},
                                    {"max_completion_tokens": 100_000, "max_tokens": 5},
                                    {"max_tokens": 100_000}, {"max_completion_tokens": 100_000}])
async def test_a_budget_cap_lowers_every_cap_field_the_request_carries(settings: Settings,
                                                                       fields: dict[str, int]) -> None:
    limit = 1_000_000  # $0.001: room for about 1,600 output tokens of "small", not 4,096
    upstream, accounts = ScriptedUpstream([completion("small")]), BookedAccounts(limit_nanos=limit)
    await run_unary(pipeline_services(settings, upstream, accounts, []), ctx(), chat(**fields))
    [reservation] = accounts.reserved
    [call] = upstream.calls
    forwarded = {key: call.body[key] for key in ("max_completion_tokens", "max_tokens") if key in call.body}
    assert set(forwarded) == set(fields)  # no field added, none dropped
    allowed = reservation.amount_nanos // SMALL_OUT
    assert reservation.amount_nanos <= limit
    for key, value in forwarded.items():
        assert value <= min(fields[key], allowed), (key, value, reservation)  # never above the asked or reserved
    assert max(forwarded.values()) >= 16  # still a useful answer


def test_an_integer_too_large_for_json_numbers_says_so() -> None:
    """orjson reads an integer beyond 64 bits as a float: the error names the field and the reason,
    not just "must be an integer"."""
    import orjson

    from costproxy.errors import InvalidRequest
    from costproxy.request import Endpoint, parse_request

    body = orjson.loads(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
                        b'"max_tokens": 100000000000000000000000}')
    with pytest.raises(InvalidRequest, match="too large") as raised:
        parse_request(Endpoint.CHAT, body)
    assert raised.value.param == "max_tokens"
