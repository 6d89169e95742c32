"""What routing did and which rules are in force (admin and unscoped read-only tokens).

``GET /api/v1/decisions?limit=``        recent routing decisions, newest first (kept in memory: the
                                        last 10,000), each with what it saved (from the ledger)
``GET /api/v1/rules``                   the steering rule set in force: every rule, the files, the
                                        digest, when it was loaded, and the last reload's validation
                                        result (a failed reload keeps the last good set and lists
                                        each error with file, rule id and field)
``GET /api/v1/analytics/rules?range=``  per applied rule: requests, spend, baseline and saving of the
                                        requests it touched; and the requests no rule touched
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp import web

from costproxy.budgets.codec import iso, percent, usd
from costproxy.errors import InvalidRequest
from costproxy.http.analytics_api import now_ms, span, sums_json
from costproxy.http.state import LEDGER, ROUTER
from costproxy.ledger import analytics
from costproxy.ledger.analytics import LedgerFilter
from costproxy.routing.decisions import DecisionRecord
from costproxy.routing.router import SelectionRouter
from costproxy.steering.rules import Rule


def _limit(request: web.Request, default: int = 50) -> int:
    try:
        return min(500, max(1, int(request.query.get("limit", str(default)))))
    except ValueError:
        raise InvalidRequest("'limit' must be an integer", param="limit") from None


def decision_summary(record: DecisionRecord, outcome: dict[str, Any] | None) -> dict[str, Any]:
    d = record.decision
    chosen = d.score(d.model)
    summary: dict[str, Any] = {
        "id": d.id, "requestId": record.request_id, "requestedModel": record.requested_model, "model": d.model,
        "createdAt": iso(int(record.created_at * 1000)), "taskType": d.task_type, "mode": d.mode,
        "expectedQuality": round(d.expected_quality, 4), "qualityTarget": round(d.quality_target, 4),
        "estimatedCost": usd(d.estimated_cost_nanos), "provider": chosen.provider if chosen else None,
        "rulesFired": [f.rule_id for f in record.fired], "candidates": record.candidates,
        "eligible": record.eligible, "mixShare": d.mix_share, "outcome": None,
    }
    if outcome is not None:
        saving = outcome["baseline_nanos"] - outcome["cost_nanos"]
        summary["outcome"] = {"servedModel": outcome["served_model"], "status": outcome["status"],
                              "cost": usd(outcome["cost_nanos"]), "baseline": usd(outcome["baseline_nanos"]),
                              "saving": usd(saving), "savingPercent": percent(saving, outcome["baseline_nanos"]),
                              "usageReported": bool(outcome["usage_reported"])}
    return summary


async def list_decisions(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    limit = _limit(request)
    records = []
    for record in reversed(router.decisions.values()):  # newest first
        records.append(record)
        if len(records) >= limit:
            break
    outcomes = await analytics.decision_outcomes(request.app[LEDGER], [r.decision_id for r in records])
    return web.json_response({"data": [decision_summary(r, outcomes.get(r.decision_id)) for r in records],
                              "kept": len(router.decisions)})


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def rule_json(rule: Rule) -> dict[str, Any]:
    return {"id": rule.id, "name": rule.name, "description": rule.description, "priority": rule.priority,
            "enabled": rule.enabled, "mode": rule.mode, "rollout": rule.rollout, "continue": rule.continue_,
            "file": rule.file, "operator": rule.operator,
            "conditions": [{"field": c.field, "operator": c.operator, "value": _plain(c.value)}
                           for c in rule.conditions],
            "actions": [{"type": a.type, "params": _plain(dict(a.params))} for a in rule.actions]}


def quality_json(router: SelectionRouter) -> dict[str, Any]:
    """The quality file in force and its last hot reload (shown beside the rules' status)."""
    holder = router.quality_file
    if holder is None:
        return {"file": None, "source": router.quality.source, "digest": "", "loadedAt": None, "valid": True,
                "lastReload": None}
    last = holder.last_result
    reload = None if last is None else {"at": iso(int(last.at * 1000)), "ok": last.ok, "summary": last.summary(),
                                        "error": last.error or None}
    return {"file": str(holder.path), "source": holder.current.source, "digest": holder.digest,
            "loadedAt": iso(int(holder.loaded_at * 1000)), "valid": last is None or last.ok, "lastReload": reload}


async def rules(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    holder = router.rules
    if holder is None:
        return web.json_response({"directory": None, "rules": [], "files": [], "digest": "", "loadedAt": None,
                                  "valid": True, "lastReload": None, "quality": quality_json(router)})
    current, last = holder.current, holder.last_result
    reload = None if last is None else {
        "at": iso(int(last.at * 1000)), "ok": last.ok, "summary": last.summary(),
        "errors": [{"file": e.file, "ruleId": e.rule_id, "field": e.field, "message": e.message}
                   for e in last.errors]}
    return web.json_response({
        "directory": str(holder.directory), "digest": current.digest, "files": list(current.files),
        "loadedAt": iso(int(holder.loaded_at * 1000)) if holder.loaded_at else None,
        "valid": last is None or last.ok, "lastReload": reload, "rules": [rule_json(r) for r in current.rules],
        "quality": quality_json(router)})


async def rule_savings(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    start, end, label = span(request, now_ms(), default="30d")
    per_rule, untouched = await analytics.rule_sums(request.app[LEDGER], LedgerFilter(start_ms=start, end_ms=end))
    known = {r.id: r for r in router.rules.current.rules} if router.rules is not None else {}
    data = []
    for rule_id, sums in sorted(per_rule.items(), key=lambda item: (-item[1].saving_nanos, item[0])):
        rule = known.get(rule_id)
        data.append({"ruleId": rule_id, "name": rule.name if rule else None, "inForce": rule is not None,
                     **sums_json(sums)})
    return web.json_response({"currency": "USD", "range": label, "from": iso(start), "to": iso(end),
                              "data": data, "noRule": sums_json(untouched)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/decisions", list_decisions)
    app.router.add_get("/api/v1/rules", rules)
    app.router.add_get("/api/v1/analytics/rules", rule_savings)
