"""The JSON vocabulary of /api/v1: times in and out, aliases, scope names."""

from __future__ import annotations

from typing import Any

import pytest

from costproxy.errors import InvalidRequest
from costproxy.wire import (
    MAX_TIMESTAMP_MS,
    TimeInvalid,
    canonical,
    instant_ms,
    iso,
    iso_seconds,
    query_value,
    scope_kind,
    snake,
    spellings,
    with_deprecated,
)

NOON = 1_795_600_800_000  # 2026-11-25T10:00:00Z


@pytest.mark.parametrize("value", [
    "2026-11-25T10:00:00Z", "2026-11-25T10:00:00.000Z", "2026-11-25T11:00:00+01:00", "2026-11-25T10:00:00",
    "2026-11-25t10:00:00z", " 2026-11-25T10:00:00Z ", NOON, NOON // 1000, float(NOON // 1000), str(NOON // 1000),
    str(NOON), "1795600800.0"])
def test_a_time_is_iso_or_unix_seconds_or_milliseconds(value: Any) -> None:
    assert instant_ms(value) == NOON


def test_dates_are_midnight_utc_and_the_two_unix_units_never_overlap() -> None:
    assert instant_ms("2026-11-25") == NOON - 10 * 3_600_000
    assert instant_ms(99_999_999_999) == 99_999_999_999_000  # seconds: the year 5138
    assert instant_ms(100_000_000_000) == 100_000_000_000  # milliseconds: 1973
    assert instant_ms(0) == 0 and instant_ms("1970-01-01T00:00:00Z") == 0


@pytest.mark.parametrize("value", [
    None, True, False, "", "   ", "tomorrow", "2026-13-01", "2026-11-25T25:00:00Z", -1, -0.5, float("inf"),
    float("nan"), 10**30, MAX_TIMESTAMP_MS + 1, "99999-01-01T00:00:00Z", "1969-12-31T23:59:59Z", [NOON],
    {"at": NOON}, "0001-01-01T00:00:00+14:00"])
def test_anything_else_is_refused_with_the_rule(value: Any) -> None:
    with pytest.raises(TimeInvalid) as info:
        instant_ms(value)
    assert "ISO 8601" in str(info.value) or "1970" in str(info.value)


def test_answers_are_iso_utc_with_milliseconds() -> None:
    assert iso(NOON) == "2026-11-25T10:00:00.000Z"
    assert iso(NOON + 7) == "2026-11-25T10:00:00.007Z"
    assert iso(None) is None and iso(0) is None
    assert iso_seconds(NOON / 1000) == "2026-11-25T10:00:00.000Z" and iso_seconds(None) is None
    assert instant_ms(iso(NOON + 123)) == NOON + 123  # round trip


def test_snake_spellings_and_aliases_become_the_camel_case_key() -> None:
    names = ("scopeType", "scopeId", "amount", "maxPricePerMTok")
    assert [snake(n) for n in names] == ["scope_type", "scope_id", "amount", "max_price_per_mtok"]
    body = {"scope_type": "team", "scopeId": "x", "limit_usd": "5"}
    assert canonical(body, names, {"limit_usd": "amount"}) == {"scopeType": "team", "scopeId": "x", "amount": "5"}
    assert spellings(body, names, {"limit_usd": "amount"}) == {"scopeType": "scope_type", "scopeId": "scopeId",
                                                              "amount": "limit_usd"}


def test_a_key_twice_or_unknown_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as info:
        canonical({"scopeId": "a", "scope_id": "b"}, ("scopeId",))
    assert info.value.param == "scopeId" and "given twice" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        canonical({"scopeId": "a", "colour": "red"}, ("scopeId",), where="alerts[2]")
    assert info.value.param == "alerts[2].colour" and "known: scopeId" in info.value.message
    assert canonical({"colour": "red"}, ("scopeId",), strict=False) == {"colour": "red"}


def test_scopes_queries_and_deprecated_names() -> None:
    assert scope_kind("organization") == scope_kind("org") == "org" and scope_kind("key") == "key"
    for bad in ("galaxy", None, 5, "Organization"):
        with pytest.raises(InvalidRequest) as info:
            scope_kind(bad)
        assert info.value.param == "scopeType"
    assert query_value({"group_by": "team"}, "groupBy") == "team"
    assert query_value({"groupBy": "model", "group_by": "team"}, "groupBy") == "model"
    assert query_value({}, "groupBy") is None
    assert with_deprecated({"userId": "a"}, {"user": "a", "userId": "old"}) == {"userId": "a", "user": "a"}
