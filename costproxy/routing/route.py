"""The contract between the pipeline and the router: what routing reads and what it answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from costproxy.budgets.accounts import BudgetView
from costproxy.cache.policy import CacheDirective
from costproxy.records import frozen
from costproxy.registry import ModelSpec
from costproxy.request import RequestContext
from costproxy.routing.policy import EMPTY, Constraints

MIN_USEFUL_OUTPUT = 16  # output tokens: a request is capped to fit a budget only if it may still say this much


@frozen
class RouteInput:
    ctx: RequestContext
    body: Mapping[str, Any]
    requested: str
    input_tokens: int
    budget: BudgetView
    constraints: Constraints = EMPTY  # demands of the request's API (e.g. models that speak it natively)


@frozen
class Route:
    chain: tuple[ModelSpec, ...]  # primary first, then fallbacks
    decision_id: str | None = None
    max_output_tokens: int | None = None  # cap demanded by rules/budgets
    task_type: str | None = None
    reasons: tuple[str, ...] = ()
    baseline: ModelSpec | None = None
    rules: tuple[str, ...] = ()  # ids of the steering rules applied (recorded in the ledger's metadata)
    cache: CacheDirective | None = None  # a steering rule's cache action
    difficulty_bucket: int | None = None  # of a selected model's decision (what feedback on it teaches)


class Router(Protocol):
    def route(self, request: RouteInput) -> Route: ...

    def record_result(self, model: ModelSpec, ok: bool) -> None: ...
