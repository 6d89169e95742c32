"""The ``budgets:`` section of ``costproxy.yaml``: budget settings and the static (read-only) budgets.

``load_settings`` is the one caller, so ``check-config`` and ``serve`` share every check::

    budgets:
      enabled: true                 # false: no enforcement on the SQLite store (Redis always accounts)
      reservation_ttl_s: 900        # reservations older than this are reclaimed
      refresh_interval_s: 1.0       # Redis: how often counters and definitions are re-read
      checkpoint_interval_s: 10     # SQLite: how often counters are checkpointed
      key_prefix: cp                # Redis: prefix of every key (budgets, client keys, alerts)
      ledger_retention_days: 7      # Redis: how long counters of past periods are kept
      ledger_trim_interval_s: 5     # Redis: how often replicas publish their mirror position and trim
      mirror_expiry_s: 86400        # Redis: a replica silent this long stops holding the ledger trim back
      definitions:
        - id: acme-monthly
          scope_type: org           # org | team | project | user | key
          scope_id: acme
          limit_usd: "5000"
          period: monthly           # daily | weekly | monthly | quarterly | annual | total
          timezone: Europe/Berlin
          on_exhausted: block       # block | downgrade | notify (soft)
          downgrade_to: {tiers: [economy], models: [], same_provider: false}   # for on_exhausted: downgrade
          thresholds:               # default: 50, 80, 100 with notify
            - 50
            - {percent: 80, actions: [notify, {type: restrict-models, tiers: [economy]}]}
            - {percent: 95, actions: [auto-downgrade]}

A plain list under ``budgets:`` is the same as ``definitions:`` with default settings.  Models
named by ``restrict-models``, ``auto-downgrade`` or ``downgrade_to`` must be model ids of the
registry, tiers one of the registry's tiers.
Pure: no I/O; errors are ``ConfigError`` naming file, dotted path and value.
"""

from __future__ import annotations

from typing import Any

from costproxy.budgets.codec import spec_from_yaml
from costproxy.budgets.model import BudgetSpec
from costproxy.config_schema import ModelCheck, Node
from costproxy.records import frozen
from costproxy.registry import TIERS


@frozen
class BudgetSettings:
    enabled: bool = True  # false: no budget enforcement (SQLite store only; Redis always accounts)
    reservation_ttl_s: float = 900.0
    refresh_interval_s: float = 1.0
    checkpoint_interval_s: float = 10.0
    key_prefix: str = "cp"
    ledger_retention_days: int = 7
    ledger_trim_interval_s: float = 5.0
    mirror_expiry_s: float = 86_400.0


@frozen
class BudgetConfig:
    settings: BudgetSettings = BudgetSettings()
    static: tuple[BudgetSpec, ...] = ()


def parse_budget_config(value: Any, file: str, path: str = "budgets",
                        check_model: ModelCheck | None = None) -> BudgetConfig:
    """The ``budgets:`` section (a list of definitions, or a mapping with settings)."""
    node = Node(value, file, path)
    if value is None or isinstance(value, list):
        return BudgetConfig(BudgetSettings(), _parse_static(node, check_model))
    defaults = BudgetSettings()
    settings = BudgetSettings(
        enabled=node.child("enabled", True).bool(),
        reservation_ttl_s=node.child("reservation_ttl_s", defaults.reservation_ttl_s).number(minimum=1),
        refresh_interval_s=node.child("refresh_interval_s", defaults.refresh_interval_s).number(minimum=0.05),
        checkpoint_interval_s=node.child("checkpoint_interval_s", defaults.checkpoint_interval_s).number(
            minimum=0.1),
        key_prefix=_key_prefix(node.child("key_prefix", defaults.key_prefix)),
        ledger_retention_days=node.child("ledger_retention_days", defaults.ledger_retention_days).int(minimum=1),
        ledger_trim_interval_s=node.child("ledger_trim_interval_s", defaults.ledger_trim_interval_s).number(
            minimum=0.05),
        mirror_expiry_s=node.child("mirror_expiry_s", defaults.mirror_expiry_s).number(minimum=60),
    )
    static = _parse_static(node.child("definitions", []), check_model)
    node.done()
    return BudgetConfig(settings, static)


def _key_prefix(node: Node) -> str:
    prefix = node.str()
    if any(character in prefix for character in "{} \t\n"):
        raise node.error("must not contain braces or whitespace (it is part of every Redis key)", prefix)
    return prefix


def _parse_static(node: Node, check_model: ModelCheck | None) -> tuple[BudgetSpec, ...]:
    specs: list[BudgetSpec] = []
    seen: set[str] = set()
    for item in node.elements():
        spec = spec_from_yaml(item)
        if spec.id in seen:
            raise item.child("id").error("duplicate budget id", spec.id)
        seen.add(spec.id)
        _check_targets(item, check_model)
        specs.append(spec)
    for item, spec in zip(node.elements(), specs, strict=True):
        if spec.parent_id is not None and spec.parent_id not in seen:
            raise item.child("parent").error("names no budget defined here", spec.parent_id)
    return tuple(specs)


def _check_targets(item: Node, check_model: ModelCheck | None) -> None:
    """The tiers and models that threshold actions and ``downgrade_to`` name exist (the budget is
    already parsed, so only mappings can hold them)."""
    targets = [item.child("downgrade_to", None)]
    for threshold in item.child("thresholds", []).elements():
        if isinstance(threshold.value, dict):
            targets += threshold.child("actions", []).elements()
    for target in targets:
        if not isinstance(target.value, dict):
            continue
        for tier in target.child("tiers", []).elements():
            tier.str(choices=TIERS)
        for model in target.child("models", []).elements():
            problem = None if check_model is None else check_model(model.str())
            if problem is not None:
                raise model.error(problem, model.value)
