"""One ledger entry per request: the audit record of what was asked, served and charged."""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from dataclasses import asdict, field, replace
from enum import StrEnum
from typing import Any

from costproxy.money import format_usd
from costproxy.records import frozen


class Status(StrEnum):
    """How a request ended, as the ledger records it."""

    OK = "ok"  # the provider answered
    ERROR = "error"  # the provider failed, or the proxy ended the call (lease lost)
    CLIENT_DISCONNECTED = "client_disconnected"  # the client hung up mid-stream; charged what was generated
    REFUSED = "refused"  # refused before any upstream call (bad request, budget, rule, store); cost 0
    CACHE_HIT = "cache_hit"  # answered from the response cache: cost 0; metadata.cache says what it saved
    LAPSED = "lapsed"  # its process died mid-request (either store): charged the reserved worst case, usage unknown


@frozen
class LedgerEntry:
    request_id: str
    ts_ms: int
    endpoint: str
    status: str
    http_status: int
    key_id: str | None = None
    user: str | None = None
    team: str | None = None
    org: str | None = None
    project: str | None = None
    requested_model: str | None = None
    served_model: str | None = None
    provider: str | None = None
    decision_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # part of prompt_tokens written to the provider's prompt cache
    cache_write_1h_tokens: int = 0  # part of cache_write_tokens written with a 1-hour lifetime
    cost_nanos: int = 0
    baseline_nanos: int = 0
    usage_reported: bool = True
    stream: bool = False
    latency_ms: int = 0
    error_code: str | None = None
    task_type: str | None = None
    correlation_id: str | None = None
    tenant: str | None = None
    source: str = "proxy"  # proxy | relaycore | auterity | manual
    metadata: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["cost_usd"] = format_usd(self.cost_nanos)
        data["baseline_usd"] = format_usd(self.baseline_nanos)
        return data


COLUMNS: tuple[str, ...] = tuple(LedgerEntry.__dataclass_fields__)
_ALL_BUT_METADATA = operator.attrgetter(*COLUMNS[:-1])  # metadata is the last field (with_metadata)


def with_metadata(entry: LedgerEntry, metadata: dict[str, Any]) -> LedgerEntry:
    """``replace(entry, metadata=metadata)`` at half the cost: every settled request pays for one
    (the budgets it was charged to), and ``replace`` looks up the 31 fields one by one each time."""
    return LedgerEntry(*_ALL_BUT_METADATA(entry), metadata)  # type: ignore[call-arg]


def as_refusal(entry: LedgerEntry) -> LedgerEntry:
    """``entry`` as the ledger records a refused request: status ``refused``, nothing charged or
    counted (the provider was never called); the error code and HTTP status stay as given."""
    return replace(entry, status=Status.REFUSED.value, cost_nanos=0, baseline_nanos=0, prompt_tokens=0,
                   completion_tokens=0, cached_tokens=0, usage_reported=False,
                   error_code=entry.error_code or "refused")


def entry_from_row(row: Mapping[str, Any]) -> LedgerEntry:
    """A ledger row of either store (SQLite: metadata as JSON text, booleans as 0/1; PostgreSQL:
    jsonb and booleans) as the entry it records."""
    data = {name: row[name] for name in COLUMNS}
    metadata = data["metadata"]
    data["metadata"] = json.loads(metadata or "{}") if isinstance(metadata, str | bytes | None) else dict(metadata)
    data["usage_reported"] = bool(data["usage_reported"])
    data["stream"] = bool(data["stream"])
    return LedgerEntry(**data)
