"""Times of 309 digits or more, as a string or a JSON number, on every time input: a 400 naming the
field (turned into a float they overflowed: a 500 internal_error).  ``wire.instant_ms`` is the
parser they share."""

from __future__ import annotations

from typing import Any

import pytest

from costproxy.wire import TimeInvalid, instant_ms
from tests.conftest import ADMIN_TOKEN, ProxyFactory

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LONG = "9" * 400


@pytest.mark.parametrize("value", [LONG, LONG + ".5", "-" + LONG, "9" * 5000, 10**400, -(10**400),
                                   "0" * 400 + "1" * 400],
                         ids=["digits", "decimal", "negative", "5000-digits", "int", "negative-int", "zeros"])
def test_instant_ms_refuses_a_number_too_large_for_a_float(value: Any) -> None:
    with pytest.raises(TimeInvalid):
        instant_ms(value)


def test_instant_ms_still_reads_seconds_milliseconds_and_leading_zeros() -> None:
    assert instant_ms("1700000000") == instant_ms(1700000000) == 1_700_000_000_000
    assert instant_ms("0001700000000123") == 1_700_000_000_123
    assert instant_ms("1700000000.25") == 1_700_000_000_250


@pytest.mark.parametrize("long_value", [LONG, 10**400], ids=["string", "json-number"])
async def test_every_time_input_answers_400_naming_its_field(make_proxy: ProxyFactory, long_value: Any) -> None:
    proxy = await make_proxy()
    budget = {"id": "to", "name": "t", "scopeType": "team", "scopeId": "core", "amount": "1", "period": "daily"}
    resp = await proxy.client.post("/api/v1/budgets", headers=ADMIN, json=budget)
    assert resp.status == 201, await resp.text()
    cases: list[tuple[str, str, dict[str, Any] | None, dict[str, str] | None, str]] = [
        ("POST", "/api/v1/budgets/to/usage", {"amount": "0.01", "source": "manual", "timestamp": long_value},
         None, "timestamp"),
        ("POST", "/api/v1/budgets/to/overrides", {"type": "increase", "amount": "1", "reason": "r",
                                                  "expiresAt": long_value}, None, "expiresAt"),
        ("POST", "/api/v1/budgets/to/overrides", {"type": "increase", "amount": "1", "reason": "r",
                                                  "startsAt": long_value, "durationMinutes": 5}, None, "startsAt"),
        ("POST", "/api/v1/keys", {"name": "x", "expiresAt": long_value}, None, "expiresAt"),
        ("POST", "/api/v1/tokens", {"name": "x", "expiresAt": long_value}, None, "expiresAt"),
    ]
    if isinstance(long_value, str):
        cases += [("GET", "/api/v1/analytics/spend", None, {"from": long_value}, "from"),
                  ("GET", "/api/v1/analytics/rules", None, {"from": long_value}, "from"),
                  ("GET", "/api/v1/budgets/to/reports", None, {"timeRange": long_value + "/1"}, "timeRange")]
    for method, path, body, query, param in cases:
        resp = await proxy.client.request(method, path, headers=ADMIN, json=body, params=query)
        answer = await resp.json()
        assert resp.status == 400 and answer["error"]["code"] == "invalid_request", (path, answer)
        assert answer["error"]["param"] == param, (path, answer)
