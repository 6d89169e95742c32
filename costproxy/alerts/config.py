"""The ``alerts:`` section of ``costproxy.yaml``: how budget and request events become webhooks.

Every key is optional::

    alerts:
      enabled: true
      source: costproxy              # the envelope's ``source``
      queue_size: 10000              # events waiting for the background task
      max_attempts: 8                # per delivery, first attempt included
      backoff_base_s: 2              # 2, 4, 8 … s windows with full jitter
      backoff_max_s: 600
      timeout_s: 10                  # per attempt
      concurrency: 16                # simultaneous POSTs
      request_event_interval_s: 10   # 0: send every request.blocked / model.switched
      history_per_subscription: 1000 # deliveries kept per subscription
      events_kept: 1000              # recent events for GET /api/v1/events
      refresh_interval_s: 2          # how soon other replicas' changes are seen
      maintenance_interval_s: 60     # resume deliveries a dead replica left pending, prune history

``webhooks:`` is not a section: subscriptions are managed through ``/api/v1/webhooks``.  Pure: no
I/O; ``load_settings`` is the one caller.
"""

from __future__ import annotations

from typing import Any

from costproxy.config_schema import Node
from costproxy.records import frozen


@frozen
class AlertSettings:
    enabled: bool = True
    source: str = "costproxy"
    queue_size: int = 10_000
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    timeout_s: float = 10.0
    concurrency: int = 16
    request_event_interval_s: float = 10.0
    history_per_subscription: int = 1000
    events_kept: int = 1000
    refresh_interval_s: float = 2.0
    maintenance_interval_s: float = 60.0  # resume orphaned deliveries, prune history


def parse_alert_settings(value: Any, file: str) -> AlertSettings:
    """Read the ``alerts:`` section (``None``: every default)."""
    node = Node(value, file, "alerts")
    d = AlertSettings()
    settings = AlertSettings(
        enabled=node.child("enabled", d.enabled).bool(), source=node.child("source", d.source).str(),
        queue_size=node.child("queue_size", d.queue_size).int(minimum=1),
        max_attempts=node.child("max_attempts", d.max_attempts).int(minimum=1, maximum=50),
        backoff_base_s=node.child("backoff_base_s", d.backoff_base_s).number(minimum=0.001),
        backoff_max_s=node.child("backoff_max_s", d.backoff_max_s).number(minimum=0.001),
        timeout_s=node.child("timeout_s", d.timeout_s).number(minimum=0.01),
        concurrency=node.child("concurrency", d.concurrency).int(minimum=1),
        request_event_interval_s=node.child("request_event_interval_s", d.request_event_interval_s).number(minimum=0),
        history_per_subscription=node.child("history_per_subscription", d.history_per_subscription).int(minimum=1),
        events_kept=node.child("events_kept", d.events_kept).int(minimum=1),
        refresh_interval_s=node.child("refresh_interval_s", d.refresh_interval_s).number(minimum=0.05),
        maintenance_interval_s=node.child("maintenance_interval_s", d.maintenance_interval_s).number(minimum=0.05),
    )
    node.done()
    if settings.backoff_max_s < settings.backoff_base_s:
        raise node.child("backoff_max_s").error("must be >= backoff_base_s", settings.backoff_max_s)
    return settings
