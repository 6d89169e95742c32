"""The ``cache:`` section of ``costproxy.yaml``: the response cache's settings.

``load_settings`` is the one caller (so ``check-config`` and ``serve`` share every check)::

    cache:
      enabled: true
      default_ttl_s: 3600          # for x-costproxy-cache: on, and a rule's cache action without ttl_s
      max_entry_bytes: 1048576     # answers larger than this are not stored
      max_bytes: 268435456         # all entries together; the soonest to expire are evicted first
      share: principal             # principal | user | project | team | org | global (see cache.policy)
      header: trusted              # who may send x-costproxy-cache: trusted (chaining proxies) | all | none

Nothing is cached unless a request asks (the header) or a steering rule's ``cache`` action does.
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from costproxy.cache.policy import HEADER_SOURCES, MAX_TTL_S, SHARES, CacheSettings
from costproxy.config_schema import Node


def parse_cache_settings(value: Any, file: str, path: str = "cache") -> CacheSettings:
    node = Node(value if value is not None else {}, file, path)
    d = CacheSettings()
    settings = CacheSettings(
        enabled=node.child("enabled", d.enabled).bool(),
        default_ttl_s=node.child("default_ttl_s", d.default_ttl_s).int(minimum=1, maximum=MAX_TTL_S),
        max_entry_bytes=node.child("max_entry_bytes", d.max_entry_bytes).int(minimum=1024, maximum=1 << 30),
        max_bytes=node.child("max_bytes", d.max_bytes).int(minimum=1024, maximum=1 << 40),
        share=node.child("share", d.share).str(choices=SHARES),
        header=node.child("header", d.header).str(choices=HEADER_SOURCES),
    )
    node.done()
    if settings.max_entry_bytes > settings.max_bytes:
        raise node.child("max_entry_bytes").error("must be at most max_bytes", settings.max_entry_bytes)
    return settings
