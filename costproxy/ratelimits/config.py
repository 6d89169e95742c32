"""The ``rate_limits:`` section of ``costproxy.yaml``.

``load_settings`` is the one caller, so ``check-config`` and ``serve`` share every check::

    rate_limits:
      enabled: true                 # false: no limit is enforced (the API still edits them)
      on_store_error: allow         # Redis unreachable: allow (count nothing) | refuse (503)
      checkpoint_interval_s: 5      # SQLite: how often buckets are written to the file
      refresh_interval_s: 1         # how soon limits changed through the API (other replicas) apply
      limits:
        - id: every-key
          scope_type: key           # org | team | project | user | key
          scope_id: "*"             # every key, each its own bucket; or one id
          requests_per_minute: 60
          tokens_per_minute: 100000
        - id: search-team
          scope_type: team
          scope_id: search
          requests_per_minute: 600
          burst_requests: 100       # capacity (default: the per-minute figure)

A plain list under ``rate_limits:`` is the same as ``limits:`` with default settings.  Limits from
this file are read-only through the API.  Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from costproxy.config_schema import Node
from costproxy.ratelimits.model import RateLimit, check_unique, read_limit
from costproxy.records import frozen

STORE_ERROR_CHOICES = ("allow", "refuse")


@frozen
class RateLimitSettings:
    enabled: bool = True
    on_store_error: str = "allow"
    checkpoint_interval_s: float = 5.0
    refresh_interval_s: float = 1.0


@frozen
class RateLimitConfig:
    settings: RateLimitSettings = RateLimitSettings()
    static: tuple[RateLimit, ...] = ()


def parse_rate_limits(value: Any, file: str, path: str = "rate_limits") -> RateLimitConfig:
    node = Node(value, file, path)
    if value is None or isinstance(value, list):
        return RateLimitConfig(RateLimitSettings(), _parse_limits(node))
    d = RateLimitSettings()
    settings = RateLimitSettings(
        enabled=node.child("enabled", d.enabled).bool(),
        on_store_error=node.child("on_store_error", d.on_store_error).str(choices=STORE_ERROR_CHOICES),
        checkpoint_interval_s=node.child("checkpoint_interval_s", d.checkpoint_interval_s).number(minimum=0.1),
        refresh_interval_s=node.child("refresh_interval_s", d.refresh_interval_s).number(minimum=0.05),
    )
    static = _parse_limits(node.child("limits", []))
    node.done()
    return RateLimitConfig(settings, static)


def _parse_limits(node: Node) -> tuple[RateLimit, ...]:
    limits: list[RateLimit] = []
    for item in node.elements():
        limit = read_limit(item, 0, "config")
        if any(known.id == limit.id for known in limits):
            raise item.child("id").error("duplicate rate limit id", limit.id)
        clash = check_unique(limits, limit)
        if clash is not None:
            raise item.child("scope_id").error(clash, limit.scope_id)
        limits.append(limit)
    return tuple(limits)
