"""The fingerprint that tells a replayed usage record from a different one under the same
idempotency key, and the ledger entry of a record refused for it."""

from __future__ import annotations

from typing import Any

from costproxy.budgets.book import reused_entry, usage_entry, usage_fingerprint
from costproxy.budgets.codec import usage_from_json
from costproxy.budgets.model import BudgetSpec
from costproxy.ledger.entry import with_metadata

SPEC = BudgetSpec(id="team", scope_type="team", scope_id="core", limit_nanos=10**10)
FIRST = {"amount": "412.50", "source": "relaycore", "description": "nightly", "timestamp": "2026-11-25T10:00:00Z",
         "metadata": {"requestId": "rc-1", "modelId": "gpt-4o", "userId": "alice", "teamId": "search",
                      "projectId": "p1", "tags": ["a", "b"]}}


def fingerprint(body: dict[str, Any], *, budget_id: str = "team", now_ms: int = 0) -> str:
    record = usage_from_json(body, now_ms=now_ms)
    return usage_fingerprint(budget_id, record.amount_nanos, record)


def test_one_record_however_it_is_spelled() -> None:
    first = fingerprint(FIRST)
    assert len(first) == 64 and int(first, 16) >= 0  # SHA-256, hex
    respelled = {"amount": 412.5, "source": "relaycore", "description": "nightly",
                 "timestamp": "2026-11-25T10:00:00.000Z",
                 "metadata": {"request_id": "rc-1", "model_id": "gpt-4o", "user_id": "alice", "team_id": "search",
                              "project_id": "p1", "tags": ["a", "b"]}}
    assert fingerprint(respelled, now_ms=99) == first
    assert fingerprint({"amount": "1"}, now_ms=1) == fingerprint({"amount": "1.0", "source": "manual",
                                                                  "description": ""}, now_ms=2)
    # no timestamp sent: the arrival time stands in, and a retry arrives later
    assert fingerprint({"amount": "1"}, now_ms=1) != fingerprint({"amount": "1", "timestamp": 1}, now_ms=1)


def test_every_field_the_client_chose_counts() -> None:
    first = fingerprint(FIRST)
    changed = [{**FIRST, "amount": "412.500000001"}, {**FIRST, "source": "auterity"},
               {**FIRST, "description": "nightly "}, {**FIRST, "timestamp": "2026-11-25T10:00:00.001Z"}]
    changed += [{**FIRST, "metadata": {**FIRST["metadata"], name: value}}
                for name, value in (("requestId", "rc-2"), ("modelId", "gpt-4o-mini"), ("userId", "bob"),
                                    ("teamId", "ads"), ("projectId", None), ("tags", ["b", "a"]))]
    prints = {fingerprint(body) for body in changed}
    assert first not in prints and len(prints) == len(changed)
    assert fingerprint(FIRST, budget_id="org") != first


def test_without_a_record_the_budget_and_the_amount() -> None:
    assert usage_fingerprint("team", 5) == usage_fingerprint("team", 5)
    assert len({usage_fingerprint("team", 5), usage_fingerprint("team", 6), usage_fingerprint("org", 5)}) == 3
    record = usage_from_json({"amount": "0.000000005"}, now_ms=0)
    assert usage_fingerprint("team", 5, record) != usage_fingerprint("team", 5)


def test_the_refused_record_is_a_refusal_that_keeps_what_it_asked_for() -> None:
    entry = usage_entry(usage_from_json(FIRST, now_ms=0), SPEC, "req_1")
    tagged = with_metadata(entry, {**entry.metadata, "budgets": {"team": "2026-11"}})  # as if charged
    refused = reused_entry(tagged, entry.cost_nanos, "rc-1")
    assert (refused.status, refused.http_status, refused.error_code) == ("refused", 409, "idempotency_key_reused")
    assert (refused.cost_nanos, refused.baseline_nanos, refused.usage_reported) == (0, 0, False)
    assert (refused.request_id, refused.user, refused.served_model, refused.source) == (
        "rc-1", "alice", "gpt-4o", "relaycore")
    assert refused.metadata == {"description": "nightly", "tags": ["a", "b"], "budget_id": "team",
                                "refused_amount_nanos": 412_500_000_000, "idempotency_key": "rc-1"}
