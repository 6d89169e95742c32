"""``costproxy explain``: which rules fire and which model would serve a request, and why.

Runs the real analyzer, steering rules and selection engine offline: no model is called and no
budget is touched (budgets are assumed untouched; use ``POST /api/v1/models/select`` on a running
proxy to see a decision under live budget pressure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from costproxy.analyzer.encodings import load_encodings
from costproxy.analyzer.tokens import TokenCounter
from costproxy.budgets.accounts import BudgetView
from costproxy.errors import ProxyError
from costproxy.identity.principal import Principal
from costproxy.learning.service import stored_estimates
from costproxy.money import format_usd
from costproxy.registry import ENDPOINT_KIND
from costproxy.request import RequestContext
from costproxy.routing.route import RouteInput
from costproxy.routing.router import Explanation, build_router
from costproxy.settings import config_path_from, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costproxy explain", description=__doc__)
    parser.add_argument("--config", help="costproxy.yaml (default: $COSTPROXY_CONFIG or config/costproxy.yaml)")
    parser.add_argument("--file", help="an OpenAI request body as JSON ('-' for stdin)")
    parser.add_argument("--model", default="auto", help="model to request (default: auto)")
    parser.add_argument("--message", help="the user message (instead of --file)")
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--endpoint", default="chat/completions", choices=tuple(ENDPOINT_KIND))
    for scope in ("user", "team", "org", "project"):
        parser.add_argument(f"--{scope}")
    parser.add_argument("--json", action="store_true", help="print the explanation as JSON")
    return parser


def _body(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        body = json.loads(text)
        if not isinstance(body, dict):
            raise SystemExit("--file must hold a JSON object")
        body.setdefault("model", args.model)
        return body
    if not args.message:
        raise SystemExit("give --message TEXT or --file body.json")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.message})
    return {"model": args.model, "messages": messages}


def explain_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings(config_path_from(args.config))
    router = build_router(settings)
    if settings.learning.enabled:
        router.estimates = asyncio.run(stored_estimates(settings))  # what feedback taught, as the server reads it
    counter = TokenCounter(load_encodings(directory=settings.encodings_dir))
    body = _body(args)
    model = settings.registry.resolve(str(body["model"]))
    encoding = model.encoding if model else "o200k_base"
    tokens = counter.count_chat(body.get("messages") or [], encoding, tools=body.get("tools"))
    principal = Principal(user=args.user, team=args.team, org=args.org, project=args.project, via="cli")
    ctx = RequestContext(request_id="explain", principal=principal, endpoint=args.endpoint)
    try:
        explanation = router.explain(RouteInput(ctx=ctx, body=body, requested=str(body["model"]),
                                                input_tokens=tokens, budget=BudgetView()))
    except ProxyError as exc:  # the answer the proxy would give, e.g. no provider key is set
        if args.json:
            print(json.dumps(exc.body(), indent=2))
        print(f"costproxy explain: the proxy would refuse this request: {exc.status} {exc.code}: {exc}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_as_json(explanation), indent=2, default=str))
    else:
        _print(explanation)
    return 0


def _as_json(e: Explanation) -> dict[str, Any]:
    return {
        "chain": [m.id for m in e.route.chain],
        "taskType": e.profile.task_type, "difficulty": e.profile.difficulty,
        "inputTokens": e.profile.input_tokens, "expectedOutputTokens": e.profile.expected_output_tokens,
        "rulesFired": [f._asdict() for f in e.steering.fired],
        "shadowRules": [f._asdict() for f in e.steering.fired if f.mode == "shadow"],
        "reasons": list(e.route.reasons),
        "scores": [asdict(s) for s in (e.decision.scores if e.decision else ())],
    }


def _print(e: Explanation) -> None:
    p = e.profile
    needs = sorted(p.required_capabilities) or "nothing special"
    print(f"request: {p.input_tokens} input tokens, ~{p.expected_output_tokens} expected output, task "
          f"{p.task_type} (difficulty {p.difficulty:.2f}), needs {needs}")
    fired = e.steering.fired
    print("rules fired: " + (", ".join(f"{f.rule_id} ({f.mode}{'' if f.applied else ', not applied'})"
                                       for f in fired) or "none"))
    print(f"model: {e.route.chain[0].id}   fallbacks: {', '.join(m.id for m in e.route.chain[1:]) or 'none'}")
    for reason in e.route.reasons:
        print(f"  - {reason}")
    if e.decision is None:
        print("(served as requested: no policy asked to switch the model)")
        return
    print(f"\n{'model':40} {'quality':>8} {'est. cost USD':>14} {'worst case USD':>15}  eligible")
    for s in sorted(e.decision.scores, key=lambda s: s.expected_cost_nanos):
        mark = ("yes" if s.proven else "yes, unproven on this task") if s.eligible else f"no: {s.reason_excluded}"
        print(f"{s.model:40} {s.expected_quality:8.3f} {format_usd(s.expected_cost_nanos):>14} "
              f"{format_usd(s.worst_case_nanos):>15}  {mark}")
        if s.learned is not None:
            post = s.learned
            print(f"{'':40}   learned: prior {post.prior:.3f}, evidence {post.evidence:g}, posterior "
                  f"{post.mean:.3f} [{post.lower:.3f}, {post.upper:.3f}]")
