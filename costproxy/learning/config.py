"""The ``learning:`` section of ``costproxy.yaml``: feedback, online estimates and the judge.

``load_settings`` is the one caller (so ``check-config`` and ``serve`` share every check)::

    learning:
      enabled: true              # selection reads the online estimates (feedback is always accepted)
      prior_strength: 20         # observations the quality profile's estimate is worth
      confidence: 0.95           # one-sided level of the lower bound a cheaper model must clear
      mixing: true               # a measured cheaper model may take a share of auto traffic (selection.py)
      refresh_interval_s: 2.0    # how often a replica re-reads the shared estimates
      source_weights: {user: 1.0, agent: 1.0, eval: 1.0, judge: 1.0}
      judge:
        enabled: false
        sample_rate: 0.02        # share of auto requests also answered by the reference model
        reference_model: null    # default: the registry's baseline_model
        judge_model: null        # default: the reference model
        daily_budget_usd: "1.00" # judge and reference calls together, per UTC day
        max_output_tokens: 512   # cap of the reference answer

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any

from costproxy.config_schema import ModelCheck, Node
from costproxy.money import MoneyError, usd_to_nanos
from costproxy.records import frozen

SOURCES = ("user", "agent", "eval", "judge")


@frozen
class JudgeSettings:
    enabled: bool = False
    sample_rate: float = 0.02
    reference_model: str | None = None
    judge_model: str | None = None
    daily_budget_nanos: int = 1_000_000_000  # $1.00
    max_output_tokens: int = 512


@frozen
class LearningSettings:
    enabled: bool = True
    prior_strength: float = 20.0
    confidence: float = 0.95
    mixing: bool = True
    refresh_interval_s: float = 2.0
    source_weights: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(SOURCES, 1.0))
    judge: JudgeSettings = field(default_factory=JudgeSettings)


def _weights(node: Node) -> dict[str, float]:
    weights = dict.fromkeys(SOURCES, 1.0)
    for source, weight in node.items():
        if source not in SOURCES:
            raise weight.error(f"unknown feedback source (known: {', '.join(SOURCES)})", source)
        weights[source] = weight.number(minimum=0.0, maximum=100.0)
    return weights


def _budget(node: Node) -> int:
    try:
        nanos = usd_to_nanos(str(node.value), what="daily_budget_usd")
    except MoneyError as exc:
        raise node.error(str(exc), node.value) from None
    if nanos < 0:
        raise node.error("must not be negative", node.value)
    return nanos


def _optional_model(node: Node, check: ModelCheck | None) -> str | None:
    if node.value is None:
        return None
    model = node.str()
    problem = check(model) if check is not None else None
    if problem is not None:
        raise node.error(problem, model)
    return model


def _judge(node: Node, check: ModelCheck | None) -> JudgeSettings:
    d = JudgeSettings()
    judge = JudgeSettings(
        enabled=node.child("enabled", d.enabled).bool(),
        sample_rate=node.child("sample_rate", d.sample_rate).number(minimum=0.0, maximum=1.0),
        reference_model=_optional_model(node.child("reference_model", None), check),
        judge_model=_optional_model(node.child("judge_model", None), check),
        daily_budget_nanos=_budget(node.child("daily_budget_usd", "1.00")),
        max_output_tokens=node.child("max_output_tokens", d.max_output_tokens).int(minimum=1, maximum=100_000),
    )
    node.done()
    return judge


def parse_learning_settings(value: Any, file: str, path: str = "learning", *,
                            check_model: ModelCheck | None = None) -> LearningSettings:
    node = Node(value if value is not None else {}, file, path)
    d = LearningSettings()
    settings = LearningSettings(
        enabled=node.child("enabled", d.enabled).bool(),
        prior_strength=node.child("prior_strength", d.prior_strength).number(minimum=0.0, maximum=1e6),
        confidence=node.child("confidence", d.confidence).number(minimum=0.5, maximum=0.9999),
        mixing=node.child("mixing", d.mixing).bool(),
        refresh_interval_s=node.child("refresh_interval_s", d.refresh_interval_s).number(minimum=0.05,
                                                                                         maximum=3600.0),
        source_weights=_weights(node.child("source_weights", {})),
        judge=_judge(node.child("judge", {}), check_model),
    )
    node.done()
    return settings
