"""Pure parts of the console: sessions and their expiry, the sign-in throttle, calendar buckets in
the viewer's zone, the month-end forecast, the CSV of a spend table, and the vendored assets."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from costproxy.http.analytics_api import csv_text, forecast_nanos, spend_body
from costproxy.identity.sessions import LoginThrottle, SessionStore, csrf_matches
from costproxy.ledger.analytics import BucketRow, LedgerFilter, Sums, bucket_labels, fold, local_midnight, local_month

VENDOR = Path(__file__).resolve().parents[2] / "costproxy" / "ui" / "static" / "vendor"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_sessions_expire_when_idle_or_old_and_keep_only_a_digest() -> None:
    store = SessionStore(idle_s=60, max_age_s=300)
    sid, session = store.create("admin", "admin", 1000.0)
    assert sid not in repr(store._by_digest) and len(sid) >= 43 and session.csrf != sid
    assert store.lookup(sid, 1059.0) is not None  # touched: idle clock restarts
    assert store.lookup(sid, 1118.0) is not None
    assert store.lookup(sid + "x", 1118.0) is None
    assert store.lookup(sid, 1179.0) is None  # 61 s idle
    sid2, _ = store.create("admin", "admin", 2000.0)
    for now in range(2050, 2300, 50):
        assert store.lookup(sid2, float(now)) is not None
    assert store.lookup(sid2, 2301.0) is None  # absolute age
    assert store.expires_at(session) == min(session.last_seen + 60, session.created_at + 300)


def test_sessions_end_by_id_by_token_and_by_capacity() -> None:
    store = SessionStore(capacity=2)
    a, _ = store.create("read-only:tok_1", "t", 0.0, token_id="tok_1")
    b, _ = store.create("read-only:tok_1", "t", 0.0, token_id="tok_1")
    assert store.end_for_token("tok_1") == 2 and store.lookup(a, 1.0) is None and store.lookup(b, 1.0) is None
    first, _ = store.create("admin", "admin", 0.0)
    second, s2 = store.create("admin", "admin", 0.0)
    store.create("admin", "admin", 0.0)
    assert store.lookup(first, 1.0) is None and store.lookup(second, 1.0) is not None and len(store) == 2
    assert store.end(second) and not store.end(second)
    assert csrf_matches(s2, s2.csrf) and not csrf_matches(s2, None) and not csrf_matches(s2, s2.csrf + "x")


def test_login_throttle_counts_failures_per_address_within_a_window() -> None:
    throttle = LoginThrottle(limit=3, window_s=60)
    for i in range(3):
        assert throttle.allowed("1.2.3.4", float(i))
        throttle.failed("1.2.3.4", float(i))
    assert not throttle.allowed("1.2.3.4", 10.0) and throttle.allowed("5.6.7.8", 10.0)
    assert throttle.allowed("1.2.3.4", 62.0)  # the first failures left the window
    throttle.succeeded("1.2.3.4")
    assert throttle.allowed("1.2.3.4", 3.0)


def test_filter_sql_never_interpolates_values() -> None:
    where, params = LedgerFilter(start_ms=1, end_ms=2, equals=(("team", "x' OR 1=1 --"), ("user", None)),
                                 scopes=(("team", "a"), ("key_id", "k"))).where()
    assert "x'" not in where and params == [1, 2, "x' OR 1=1 --", "a", "k"]
    assert "l.user IS NULL" in where and "(l.team = ? OR l.key_id = ?)" in where
    assert LedgerFilter(scopes=()).where() == ("FALSE", [])


def test_buckets_follow_the_viewers_zone_including_half_hour_offsets_and_dst() -> None:
    hours = bucket_labels(ms("2026-03-01T00:00"), ms("2026-03-01T03:00"), "hour", "Asia/Kolkata")
    assert hours == ["2026-03-01T05:00", "2026-03-01T06:00", "2026-03-01T07:00", "2026-03-01T08:00"]
    days = bucket_labels(ms("2026-03-28T00:00"), ms("2026-04-01T00:00"), "day", "Europe/Berlin")
    assert days == ["2026-03-28", "2026-03-29", "2026-03-30", "2026-03-31", "2026-04-01"]
    assert bucket_labels(ms("2026-01-01T00:00"), ms("2026-01-20T00:00"), "week", "UTC") == [
        "2026-W01", "2026-W02", "2026-W03", "2026-W04"]
    assert local_midnight(ms("2026-06-01T23:30"), "Europe/Berlin") == ms("2026-06-01T22:00")
    start, end, name = local_month(ms("2026-12-31T23:30"), "Europe/Berlin")
    assert (start, end, name) == (ms("2026-12-31T23:00"), ms("2027-01-31T23:00"), "January 2027")


def test_fold_sums_exactly_and_orders_by_spend() -> None:
    rows = [BucketRow("a", ms("2026-03-01T10:00"), Sums(1, 5, 9)),
            BucketRow("a", ms("2026-03-01T10:15"), Sums(2, 7, 9)),
            BucketRow(None, ms("2026-03-01T11:00"), Sums(1, 100, 100)),
            BucketRow("b", ms("2026-03-02T00:00"), Sums(1, 1, 1))]
    series = fold(rows, "hour", "UTC")
    assert [s.key for s in series] == [None, "a", "b"]
    assert series[1].points == {"2026-03-01T10:00": 12} and series[1].total == Sums(3, 12, 18)
    labels = bucket_labels(ms("2026-03-01T10:00"), ms("2026-03-02T01:00"), "hour", "UTC")
    body = spend_body("team", series, labels, top=1)
    assert [s["label"] for s in body["series"]] == ["(none)", "(other)"] and body["series"][1]["other"] == 2
    assert body["totals"]["amount"] == "0.000000113" and body["rows"][0]["percent"] == 88.5


def test_forecast_carries_the_recent_pace_to_month_end() -> None:
    day = 86_400_000
    assert forecast_nanos(spent=10_000, recent=7_000, recent_ms=7 * day, remaining_ms=10 * day) == 20_000
    assert forecast_nanos(spent=5, recent=5, recent_ms=0, remaining_ms=day) == 5


def test_csv_guards_against_formulas_and_keeps_exact_money() -> None:
    series = fold([BucketRow("=HYPERLINK(1)", 0, Sums(1, 1, 2)), BucketRow("plain", 0, Sums(1, 3, 3))], "day", "UTC")
    text = csv_text(spend_body("user", series, ["1970-01-01"], 8))
    lines = text.splitlines()
    assert lines[1].startswith("plain,1,0.000000003,") and lines[2].startswith("'=HYPERLINK(1),1,0.000000001,")
    assert lines[-1].startswith("TOTAL,2,0.000000004,0.000000005,0.000000001,")


@pytest.mark.parametrize("name", ["chart.umd.min.js", "chart.js.LICENSE.md"])
def test_vendored_assets_match_their_pinned_manifest(name: str) -> None:
    manifest = json.loads((VENDOR / "VENDORED.json").read_text())
    entry = manifest[name]
    assert entry["package"] == "chart.js@4.6.1" and entry["integrity"].startswith("sha512-")
    assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == entry["sha256"]


def test_sql_buckets_are_hours_only_where_the_zone_keeps_whole_hour_offsets() -> None:
    from costproxy.ledger.analytics import sql_bucket_ms

    span = (ms("2026-03-01T00:00"), ms("2026-04-30T00:00"))  # across the DST change in Europe
    assert sql_bucket_ms("Europe/Berlin", *span) == 3_600_000
    assert sql_bucket_ms("Asia/Kolkata", *span) == 900_000
    assert sql_bucket_ms("Australia/Lord_Howe", ms("2026-04-04T00:00"), ms("2026-04-06T00:00")) == 900_000


def test_browser_tests_fail_naming_a_missing_chromium(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.e2e import console_stack

    monkeypatch.setattr(console_stack, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        console_stack.require_browser()
