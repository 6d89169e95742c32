"""Budgets as data: periods (time zones, DST, month ends), status, chains, YAML and JSON parsing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest

from costproxy.budgets.codec import (
    override_from_json,
    spec_from_json,
    spec_to_json,
    usage_from_json,
    usd,
)
from costproxy.budgets.config import parse_budget_config
from costproxy.budgets.model import (
    BudgetIndex,
    BudgetInvalid,
    BudgetOverride,
    BudgetSpec,
    Threshold,
    ThresholdAction,
    active_span,
    applies_to,
    approved,
    effective_limit,
    period_window,
    window_at,
)
from costproxy.budgets.status import (
    Counters,
    build_status,
    burn,
    burn_ratio,
    crossed,
    gate_amount,
    restrictions_of,
    status_of,
)
from costproxy.budgets.status_json import status_to_json
from costproxy.errors import ConfigError, InvalidRequest
from costproxy.identity.principal import Principal

USD = 1_000_000_000


def spec(**changes: Any) -> BudgetSpec:
    base = BudgetSpec(id="b", scope_type="team", scope_id="core", limit_nanos=100 * USD)
    return replace(base, **changes)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ms(text: str) -> int:
    return int(at(text).timestamp() * 1000)


# --- periods -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("period", "now", "key", "start", "end"), [
    ("daily", "2026-11-25T13:00:00Z", "2026-11-25", "2026-11-25T00:00:00Z", "2026-11-26T00:00:00Z"),
    ("weekly", "2026-11-25T13:00:00Z", "2026-W48", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
    ("monthly", "2026-11-30T23:59:59Z", "2026-11", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
    ("monthly", "2026-12-31T23:59:59Z", "2026-12", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("monthly", "2028-02-29T12:00:00Z", "2028-02", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
    ("monthly", "2027-02-28T12:00:00Z", "2027-02", "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"),
    ("quarterly", "2026-11-25T13:00:00Z", "2026-Q4", "2026-10-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("quarterly", "2026-03-31T23:00:00Z", "2026-Q1", "2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z"),
    ("annual", "2026-11-25T13:00:00Z", "2026", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
])
def test_calendar_periods_utc(period: str, now: str, key: str, start: str, end: str) -> None:
    window = period_window(spec(period=period), at(now))
    assert (window.key, window.start_ms, window.end_ms) == (key, ms(start), ms(end))
    assert window.contains(ms(now))
    assert not window.contains(ms(end))


def test_weekly_iso_year_boundaries() -> None:
    # 2026-12-31 is a Thursday of ISO week 2026-W53; 2027-01-04 (Monday) starts 2027-W01.
    assert period_window(spec(period="weekly"), at("2026-12-31T12:00:00Z")).key == "2026-W53"
    assert period_window(spec(period="weekly"), at("2027-01-03T12:00:00Z")).key == "2026-W53"
    assert period_window(spec(period="weekly"), at("2027-01-04T00:00:00Z")).key == "2027-W01"
    # 2024-12-30 (Monday) belongs to ISO year 2025.
    assert period_window(spec(period="weekly"), at("2024-12-31T12:00:00Z")).key == "2025-W01"


def test_time_zone_decides_the_day_and_month() -> None:
    ny = spec(period="monthly", timezone="America/New_York")
    # 03:00 UTC on March 1st is still February 28th in New York.
    window = period_window(ny, at("2026-03-01T03:00:00Z"))
    assert window.key == "2026-02"
    assert window.start_ms == ms("2026-02-01T05:00:00Z")
    assert window.end_ms == ms("2026-03-01T05:00:00Z")
    tokyo = spec(period="daily", timezone="Asia/Tokyo")
    assert period_window(tokyo, at("2026-11-25T15:30:00Z")).key == "2026-11-26"
    kolkata = spec(period="daily", timezone="Asia/Kolkata")
    assert period_window(kolkata, at("2026-11-25T18:29:59Z")).start_ms == ms("2026-11-24T18:30:00Z")


def test_dst_days_are_23_and_25_hours_long() -> None:
    ny = spec(period="daily", timezone="America/New_York")
    spring = period_window(ny, at("2026-03-08T12:00:00Z"))
    autumn = period_window(ny, at("2026-11-01T12:00:00Z"))
    assert spring.end_ms is not None and spring.start_ms is not None
    assert autumn.end_ms is not None and autumn.start_ms is not None
    assert spring.end_ms - spring.start_ms == 23 * 3_600_000
    assert autumn.end_ms - autumn.start_ms == 25 * 3_600_000
    berlin = spec(period="monthly", timezone="Europe/Berlin")
    march = period_window(berlin, at("2026-03-15T00:00:00Z"))
    assert march.start_ms == ms("2026-02-28T23:00:00Z")  # CET
    assert march.end_ms == ms("2026-03-31T22:00:00Z")  # CEST


def test_midnight_skipped_by_dst_starts_the_day_at_the_first_instant() -> None:
    # Havana jumps from 00:00 to 01:00 on 2026-03-08: the day starts at 05:00 UTC.
    havana = spec(period="daily", timezone="America/Havana")
    window = period_window(havana, at("2026-03-08T12:00:00Z"))
    assert window.key == "2026-03-08"
    assert window.start_ms == ms("2026-03-08T05:00:00Z")
    previous = period_window(havana, at("2026-03-08T04:59:59Z"))
    assert previous.key == "2026-03-07" and previous.end_ms == window.start_ms


def test_consecutive_windows_tile_time_without_gaps() -> None:
    for period in ("daily", "weekly", "monthly", "quarterly", "annual"):
        budget = spec(period=period, timezone="America/New_York")
        window = window_at(budget, ms("2026-01-01T00:00:00Z"))
        for _ in range(14):
            assert window.end_ms is not None
            following = window_at(budget, window.end_ms)
            assert following.start_ms == window.end_ms and following.key != window.key
            assert window_at(budget, window.end_ms - 1).key == window.key
            window = following


def test_total_period_and_active_span() -> None:
    total = spec(period="total", start_date=date(2026, 1, 1), end_date=date(2026, 1, 31), timezone="Europe/Paris")
    window = period_window(total, at("2026-01-15T00:00:00Z"))
    assert window.key == "total"
    assert window.start_ms == ms("2025-12-31T23:00:00Z")
    assert window.end_ms == ms("2026-01-31T23:00:00Z")  # end date is inclusive
    assert active_span(total) == (window.start_ms, window.end_ms)
    assert period_window(spec(period="total"), at("2026-01-15T00:00:00Z")).end_ms is None


def test_non_recurring_budget_covers_only_its_first_period() -> None:
    once = spec(period="monthly", recurring=False, start_date=date(2026, 11, 10))
    assert active_span(once) == (ms("2026-11-10T00:00:00Z"), ms("2026-12-01T00:00:00Z"))
    with pytest.raises(BudgetInvalid, match="start_date"):
        spec(recurring=False)


# --- status, thresholds, actions -----------------------------------------------------------------


@pytest.mark.parametrize(("spent", "status"), [
    (0, "normal"), (49_999_999_999, "normal"), (50 * USD, "warning"), (79 * USD, "warning"),
    (80 * USD, "critical"), (100 * USD - 1, "critical"), (100 * USD, "exhausted"), (150 * USD, "exhausted"),
])
def test_status_from_default_thresholds(spent: int, status: str) -> None:
    assert status_of(spec(), spent, 100 * USD) == status


def test_status_with_custom_and_single_thresholds() -> None:
    single = spec(thresholds=(Threshold(90),))
    assert status_of(single, 89 * USD, 100 * USD) == "normal"
    assert status_of(single, 90 * USD, 100 * USD) == "warning"
    assert status_of(spec(thresholds=()), 99 * USD, 100 * USD) == "normal"
    assert status_of(spec(limit_nanos=0), 0, 0) == "exhausted"


def test_thresholds_cross_once_and_exactly() -> None:
    budget = spec(limit_nanos=3)  # 50 % of 3 nanos is 1.5: reached at 2, not at 1
    assert [t.percent for t in crossed(budget, 3, 0, 1)] == []
    assert [t.percent for t in crossed(budget, 3, 1, 2)] == [50]
    assert [t.percent for t in crossed(budget, 3, 2, 3)] == [80, 100]
    assert crossed(budget, 3, 3, 10) == ()
    assert Threshold(50).amount(3) == 2 and Threshold(80).amount(3) == 3


def test_threshold_actions_become_constraints() -> None:
    actions = [ThresholdAction("notify"), ThresholdAction("restrict-models", tiers=frozenset({"economy", "standard"})),
               ThresholdAction("restrict-models", tiers=frozenset({"economy"}), max_price_per_mtok="2.5"),
               ThresholdAction("restrict-models", max_price_per_mtok="0.60"), ThresholdAction("auto-downgrade")]
    found = restrictions_of(actions, "b1")
    assert (found.allowed_tiers, found.max_price_per_mtok_output) == (frozenset({"economy"}), "0.60")
    assert found.downgrade and found.may_switch and found.same_provider  # no targets: same provider only
    assert found.reasons == ("budget b1: restrict-models",) * 3 + ("budget b1: auto-downgrade",)
    with pytest.raises(BudgetInvalid):
        ThresholdAction("restrict-models")
    with pytest.raises(BudgetInvalid):
        ThresholdAction("notify", tiers=frozenset({"economy"}))
    with pytest.raises(BudgetInvalid):
        ThresholdAction("auto-downgrade", max_price_per_mtok="1")


def test_auto_downgrade_targets_limit_where_a_named_model_may_go() -> None:
    targeted = ThresholdAction("auto-downgrade", tiers=frozenset({"economy"}), models=frozenset({"small"}))
    found = restrictions_of([targeted], "b1")
    assert found.allowed_tiers == frozenset({"economy"}) and found.allowed_models == frozenset({"small"})
    assert found.may_switch and not found.same_provider
    pinned = restrictions_of([ThresholdAction("auto-downgrade", tiers=frozenset({"economy"}), same_provider=True)],
                             "b1")
    assert pinned.same_provider
    assert restrictions_of([ThresholdAction("restrict-models", tiers=frozenset({"economy"}))], "b1").may_switch is False


def test_gate_and_overrides() -> None:
    gated = spec(thresholds=(Threshold(50), Threshold(90, (ThresholdAction("require-approval"),))))
    assert gate_amount(gated, 100 * USD) == 90 * USD
    assert gate_amount(spec(), 100 * USD) is None
    now = ms("2026-11-25T12:00:00Z")
    increase = BudgetOverride("o1", "b", "increase", now - 1000, now + 1000, amount_nanos=5 * USD, reason="launch")
    approval = BudgetOverride("o2", "b", "approval", now - 1000, now + 1000, reason="ok by finance")
    revoked = replace(increase, id="o3", revoked_at_ms=now - 10)
    assert effective_limit(gated, [increase, revoked], now) == 105 * USD
    assert effective_limit(gated, [increase], now + 1000) == 100 * USD  # expired
    assert approved([approval], now) and not approved([approval], now + 1000)
    with pytest.raises(BudgetInvalid, match="reason"):
        BudgetOverride("o", "b", "approval", now, now + 1, reason=" ")
    with pytest.raises(BudgetInvalid, match="expires"):
        BudgetOverride("o", "b", "increase", now, now, amount_nanos=1, reason="x")


def test_burn_rate_and_projection_are_integer_maths() -> None:
    day = 86_400_000
    assert burn(10 * USD, 2 * day, 10 * day) == (5 * USD, 50 * USD)
    assert burn(10 * USD, 10 * day, 10 * day) == (1 * USD, 10 * USD)  # period over: projection is spend
    assert burn(1 * USD, 60_000, day)[0] == 24 * USD  # measured over at least an hour
    assert burn(7, day, None) == (7, None)
    assert burn_ratio(50, 100, day, 2 * day) == pytest.approx(1.0)
    assert burn_ratio(75, 100, day, 2 * day) == pytest.approx(1.5)


def test_build_status_and_json() -> None:
    budget = spec(period="daily", thresholds=(Threshold(50), Threshold(80, (ThresholdAction("auto-downgrade"),))))
    now = ms("2026-11-25T12:00:00Z")
    window = window_at(budget, now)
    status = build_status(budget, window, Counters(85 * USD, 5 * USD, {50: now - 5, 80: now}, now), (), now)
    assert status.status == "critical" and status.remaining_nanos == 10 * USD
    assert status.burn_rate_nanos_per_day == 170 * USD and status.projected_nanos == 170 * USD
    body = status_to_json(status)
    assert body["currentAmount"] == "85" and body["remaining"] == "10" and body["percentUsed"] == 85.0
    assert body["status"] == "critical" and body["costRestrictions"]["downgrading"] is True
    assert [a["threshold"] for a in body["activeAlerts"]] == [50, 80]
    assert body["daysRemaining"] == 0.5 and body["periodKey"] == "2026-11-25"


# --- chains --------------------------------------------------------------------------------------


def test_chain_matches_every_scope_widest_first() -> None:
    specs = [spec(id="k", scope_type="key", scope_id="key1"), spec(id="u", scope_type="user", scope_id="alice"),
             spec(id="o", scope_type="org", scope_id="acme"), spec(id="t2", scope_type="team", scope_id="core"),
             spec(id="t1", scope_type="team", scope_id="core"), spec(id="p", scope_type="project", scope_id="p1"),
             spec(id="other", scope_type="team", scope_id="ml")]
    index = BudgetIndex(specs)
    principal = Principal(key_id="key1", user="alice", team="core", org="acme", project="p1")
    assert [s.id for s in index.chain(principal, 0)] == ["o", "t1", "t2", "p", "u", "k"]
    assert index.chain(Principal(key_id="nobody"), 0) == ()
    assert [s.id for s in index.for_scope("team", "core")] == ["t1", "t2"]


def test_chain_respects_org_and_dates() -> None:
    acme_team = spec(id="acme-core", org="acme")
    dated = spec(id="dated", start_date=date(2026, 11, 1), end_date=date(2026, 11, 30))
    index = BudgetIndex([acme_team, dated])
    inside = ms("2026-11-15T00:00:00Z")
    assert [s.id for s in index.chain(Principal(team="core", org="acme"), inside)] == ["acme-core", "dated"]
    assert [s.id for s in index.chain(Principal(team="core", org="beta"), inside)] == ["dated"]
    assert [s.id for s in index.chain(Principal(team="core", org="acme"), ms("2026-12-01T00:00:00Z"))] == [
        "acme-core"]
    assert applies_to(acme_team, Principal(team="core", org="acme"))
    assert not applies_to(acme_team, Principal(team="core"))


# --- YAML ----------------------------------------------------------------------------------------


def test_yaml_section_parses_with_defaults() -> None:
    config = parse_budget_config({"reservation_ttl_s": 60, "definitions": [
        {"id": "acme-monthly", "scope_type": "org", "scope_id": "acme", "limit_usd": "5000.5",
         "timezone": "Europe/Berlin", "on_exhausted": "downgrade", "tags": ["finance"],
         "thresholds": [50, {"percent": 80, "actions": ["notify", {"type": "restrict-models",
                                                                     "tiers": ["economy"]}]},
                        {"percent": 95, "actions": ["auto-downgrade"], "channels": ["slack"]}]},
        {"id": "alice-daily", "scope_type": "user", "scope_id": "alice", "limit_usd": 2.5, "period": "daily",
         "on_exhausted": "notify", "parent": "acme-monthly", "start_date": date(2026, 1, 1)},
    ]}, "config/costproxy.yaml")
    org, user = config.static
    assert config.settings.reservation_ttl_s == 60
    assert org.limit_nanos == 5000_500_000_000 and org.source == "config" and org.read_only
    assert [t.percent for t in org.thresholds] == [50, 80, 95]
    assert org.thresholds[1].actions[1].tiers == frozenset({"economy"})
    assert org.hard and not user.hard
    assert user.limit_nanos == 2_500_000_000 and user.period == "daily" and user.parent_id == "acme-monthly"
    assert parse_budget_config([{"id": "x", "scope_type": "key", "scope_id": "k", "limit_usd": "1"}],
                               "f.yaml").static[0].thresholds == spec().thresholds
    assert parse_budget_config(None, "f.yaml").static == ()


def _yaml_error(item: dict[str, Any]) -> str:
    base = {"id": "x", "scope_type": "team", "scope_id": "core", "limit_usd": "10"}
    with pytest.raises(ConfigError) as info:
        parse_budget_config([{**base, **item}], "config/costproxy.yaml")
    return str(info.value)


@pytest.mark.parametrize(("item", "where", "what"), [
    ({"perod": "daily"}, "budgets[0].perod", "unknown key"),
    ({"period": "hourly"}, "budgets[0].period", "must be one of"),
    ({"scope_type": "tenant"}, "budgets[0].scope_type", "must be one of"),
    ({"timezone": "Mars/Olympus"}, "budgets[0].timezone", "IANA"),
    ({"limit_usd": "0.0000000001"}, "budgets[0].limit_usd", "precision"),
    ({"limit_usd": "ten"}, "budgets[0].limit_usd", "not a decimal"),
    ({"limit_usd": -1}, "budgets[0].limit_usd", "must not be negative (got -1)"),
    ({"on_exhausted": "explode"}, "budgets[0].on_exhausted", "block, downgrade, notify"),
    ({"thresholds": [{"percent": 50, "actions": ["page-everyone"]}]}, "budgets[0].thresholds[0].actions[0].type",
     "must be one of"),
    ({"thresholds": [{"percent": 50, "actions": [{"type": "restrict-models"}]}]},
     "budgets[0].thresholds[0].actions[0].type", "needs tiers"),
    ({"thresholds": [0]}, "budgets[0].thresholds[0].percent", "1 to 1000"),
    ({"thresholds": [{"percent": 50.5}]}, "budgets[0].thresholds[0].percent", "whole percent"),
    ({"thresholds": [50, 50]}, "budgets[0].thresholds", "same percent"),
    ({"start_date": "2026-02-01", "end_date": "2026-01-01"}, "budgets[0].end_date", "before start_date"),
    ({"start_date": "01/02/2026"}, "budgets[0].start_date", "YYYY-MM-DD"),
    ({"recurring": False}, "budgets[0].recurring", "start_date"),
    ({"id": "has space"}, "budgets[0].id", "letters"),
    ({"parent": "nope"}, "budgets[0].parent", "names no budget"),
    ({"currency": "EUR"}, "budgets[0].currency", "USD"),
])
def test_yaml_errors_name_file_path_and_value(item: dict[str, Any], where: str, what: str) -> None:
    message = _yaml_error(item)
    assert message.startswith(f"config/costproxy.yaml: {where}:"), message
    assert what in message


def test_yaml_duplicate_ids_and_bad_settings() -> None:
    item = {"id": "x", "scope_type": "team", "scope_id": "core", "limit_usd": "10"}
    with pytest.raises(ConfigError, match=r"budgets\[1\]\.id: duplicate budget id"):
        parse_budget_config([item, item], "f.yaml")
    with pytest.raises(ConfigError, match=r"budgets\.reservation_ttl_s: must be >= 1"):
        parse_budget_config({"reservation_ttl_s": 0}, "f.yaml")
    with pytest.raises(ConfigError, match=r"budgets\.definitons: unknown key"):
        parse_budget_config({"definitons": []}, "f.yaml")


# --- JSON ----------------------------------------------------------------------------------------


def test_json_round_trip_in_relaycore_vocabulary() -> None:
    body = {"id": "team-core", "name": "Core team", "scopeType": "organization", "scopeId": "acme",
            "amount": "1234.5", "currency": "USD", "period": "quarterly", "timezone": "Asia/Tokyo",
            "startDate": "2026-01-01", "recurring": True, "tags": ["eng"], "parentBudgetId": None,
            "alerts": [{"threshold": 75, "actions": ["notify", {"type": "restrict-models",
                                                               "maxPricePerMTok": "1.5"}],
                        "notificationChannels": ["webhook"], "message": "75% gone"}]}
    parsed = spec_from_json(body)
    assert parsed.scope_type == "org" and parsed.limit_nanos == 1234_500_000_000
    assert parsed.thresholds[0].actions[1].max_price_per_mtok == "1.5"
    out = spec_to_json(parsed)
    assert out["scopeType"] == "organization" and out["amount"] == "1234.5" and out["hardLimit"] is True
    assert spec_from_json(out) == parsed  # output fields such as createdAt are accepted back
    assert spec_from_json({**body, "hardLimit": False}).on_exhausted == "notify"


def test_json_partial_update_and_errors() -> None:
    base = spec_from_json({"id": "b1", "scopeType": "team", "scopeId": "core", "amount": 10})
    patched = spec_from_json({"amount": "20", "period": "daily"}, base=base)
    assert (patched.limit_nanos, patched.period, patched.scope_id) == (20 * USD, "daily", "core")
    with pytest.raises(InvalidRequest) as info:
        spec_from_json({"id": "b1", "scopeType": "team", "scopeId": "core", "amount": "1",
                        "alerts": [{"threshold": 50, "actions": ["nope"]}]})
    assert info.value.param == "alerts[0].actions[0].type"
    with pytest.raises(InvalidRequest) as info:
        spec_from_json({"id": "b1", "scopeType": "galaxy", "scopeId": "core", "amount": "1"})
    assert info.value.param == "scopeType" and "organization" in info.value.message
    with pytest.raises(InvalidRequest, match="cannot be changed"):
        spec_from_json({"id": "b2"}, base=base)
    with pytest.raises(InvalidRequest) as info:
        spec_from_json({"id": "b1", "scopeType": "team", "scopeId": "core"})
    assert info.value.param == "amount"


def test_override_and_usage_json() -> None:
    now = ms("2026-11-25T12:00:00Z")
    override = override_from_json({"type": "increase", "amount": "50", "durationMinutes": 60,
                                   "reason": "launch day"}, budget_id="b", override_id="o1", actor="ops",
                                  now_ms=now)
    assert override.amount_nanos == 50 * USD and override.expires_at_ms == now + 3_600_000
    with pytest.raises(InvalidRequest) as info:
        override_from_json({"type": "increase", "expiresAt": "2026-11-25T13:00:00Z", "reason": "x"},
                           budget_id="b", override_id="o1", actor=None, now_ms=now)
    assert info.value.param == "amount" and "positive" in info.value.message
    usage = usage_from_json({"amount": "0.000123", "source": "relaycore", "timestamp": "2026-11-25T11:00:00Z",
                             "metadata": {"requestId": "r1", "modelId": "gpt-4o", "teamId": "core"}}, now_ms=now)
    assert usage.amount_nanos == 123_000 and usage.timestamp_ms == now - 3_600_000 and usage.team == "core"
    with pytest.raises(InvalidRequest) as info:
        usage_from_json({"amount": 1, "source": "someone"}, now_ms=now)
    assert info.value.param == "source"
    for source in ("proxy", "RelayCore"):  # the message lists exactly what is accepted: "proxy" is not
        with pytest.raises(InvalidRequest) as info:
            usage_from_json({"amount": 1, "source": source}, now_ms=now)
        assert info.value.param == "source" and "relaycore, auterity, manual (got" in info.value.message, info.value


def test_usd_strings_are_exact_and_short() -> None:
    assert usd(0) == "0" and usd(1) == "0.000000001" and usd(12_500_000_000) == "12.5"
    assert usd(5000 * USD) == "5000"


def test_spec_validation_in_the_dataclass() -> None:
    with pytest.raises(BudgetInvalid) as info:
        spec(scope_type="galaxy")
    assert info.value.field == "scope_type"
    with pytest.raises(BudgetInvalid):
        spec(thresholds=(Threshold(80), Threshold(50)))
    with pytest.raises(BudgetInvalid):
        spec(scope_type="org", scope_id="acme", org="beta")
    assert spec(scope_type="org", scope_id="acme").partition == "acme"
    assert spec(org="acme").partition == "acme" and spec().partition == ""


def test_now_outside_utc_is_accepted() -> None:
    local = datetime(2026, 11, 25, 1, 0, tzinfo=UTC).astimezone()
    assert period_window(spec(period="daily"), local).key == "2026-11-25"


def test_compiled_status_and_reached_match_status_of_and_each_threshold() -> None:
    from costproxy.budgets.book import compile_spec
    from costproxy.budgets.status import status_of

    specs = [BudgetSpec(id="a", scope_type="team", scope_id="t", limit_nanos=1000, period="monthly"),
             BudgetSpec(id="b", scope_type="team", scope_id="t", limit_nanos=1000, period="monthly",
                        thresholds=(Threshold(30), Threshold(90), Threshold(150))),
             BudgetSpec(id="c", scope_type="team", scope_id="t", limit_nanos=1000, period="monthly", thresholds=())]
    for spec in specs:
        compiled = compile_spec(spec, ())
        for limit in (0, 1, 999, 1000, 10**12):
            for spent in (0, 1, 299, 300, 499, 500, 799, 800, 899, 900, 999, 1000, 1499, 1500, 10**13):
                assert compiled.status(spent, limit) == status_of(spec, spent, limit)
                assert compiled.reached(spent, limit) == [t for t in spec.thresholds if t.reached(spent, limit)]


def test_with_metadata_is_replace_of_the_metadata_only() -> None:
    from costproxy.ledger.entry import COLUMNS, LedgerEntry, with_metadata

    assert COLUMNS[-1] == "metadata"  # with_metadata passes every other field positionally, in order
    entry = LedgerEntry(request_id="r", ts_ms=5, endpoint="chat/completions", status="ok", http_status=200,
                        key_id="k", user="u", team="t", org="o", project="p", requested_model="m",
                        served_model="s", provider="v", decision_id="d", prompt_tokens=1, completion_tokens=2,
                        cached_tokens=3, cache_write_tokens=4, cache_write_1h_tokens=5, cost_nanos=6,
                        baseline_nanos=7, usage_reported=False, stream=True, latency_ms=8, error_code="e",
                        task_type="x", correlation_id="c", tenant="n", source="manual", metadata={"rules": ["r"]})
    tagged = with_metadata(entry, {"budgets": {"b": "2026-11"}})
    assert tagged == replace(entry, metadata={"budgets": {"b": "2026-11"}})
