"""The architecture, enforced: core modules are sans-IO and arrows point down only (DESIGN §2)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "costproxy"

CORE = [
    "money.py", "errors.py", "registry.py", "config_schema.py",
    "routing/policy.py", "routing/selection.py", "routing/quality.py", "routing/breakers.py", "routing/concrete.py",
    "routing/config.py",
    "identity/principal.py", "budgets/model.py", "budgets/status.py", "budgets/codec.py", "budgets/reports.py",
    "budgets/status_json.py", "wire.py",
    "budgets/config.py", "alerts/webhooks.py", "alerts/config.py", "identity/sessions.py", "providers/config.py",
    "store/config.py",
    "analyzer/tasks.py", "analyzer/profile.py", "analyzer/tokens.py", "analyzer/media.py",
    "analyzer/worst_case.py",
    "steering/fields.py", "steering/conditions.py", "steering/actions.py", "steering/rules.py",
    "steering/evaluate.py",
    "protocols/anthropic.py", "protocols/anthropic_stream.py", "protocols/messages.py", "protocols/messages_stream.py",
    "protocols/responses.py", "protocols/responses_stream.py", "protocols/shapes.py", "protocols/usage.py",
    "ratelimits/gcra.py", "ratelimits/model.py", "ratelimits/config.py",
    "cache/policy.py", "cache/config.py", "cache/capture.py", "cache/replay.py",
    "learning/estimates.py", "learning/config.py", "learning/feedback.py",
]
IO_MODULES = {"aiohttp", "redis", "sqlite3", "aiosqlite", "socket", "asyncio", "structlog", "opentelemetry",
              "prometheus_client", "urllib", "http", "subprocess"}
UPPER_LAYERS = ("costproxy.ledger", "costproxy.store", "costproxy.providers", "costproxy.http", "costproxy.cli",
                "costproxy.pipeline", "costproxy.settings", "costproxy.tools", "costproxy.budgets.sqlite",
                "costproxy.budgets.redis", "costproxy.alerts.manager", "costproxy.alerts.sender")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_modules_do_no_io_and_import_no_upper_layer() -> None:
    problems = []
    for relative in CORE:
        path = PACKAGE / relative
        assert path.exists(), f"{relative} is listed as core but does not exist"
        for name in imports_of(path):
            root = name.split(".")[0]
            if root in IO_MODULES or name.startswith(UPPER_LAYERS):
                problems.append(f"{relative} imports {name}")
    assert not problems, "core modules must stay sans-IO:\n" + "\n".join(problems)


def test_nothing_imports_the_http_layer_from_below() -> None:
    lower = [p for p in PACKAGE.rglob("*.py") if p.parts[-2] != "http" and p.name not in ("cli.py", "__main__.py")
             and p.parts[-2] != "tools"]
    problems = [f"{p.relative_to(PACKAGE)} imports {name}" for p in lower for name in imports_of(p)
                if name.startswith(("costproxy.http", "costproxy.cli", "costproxy.tools"))]
    assert not problems, "\n".join(problems)


def test_no_module_is_over_the_hard_size_limit() -> None:
    too_big = [f"{p.relative_to(PACKAGE)}: {n} lines" for p in PACKAGE.rglob("*.py")
               if (n := len(p.read_text().splitlines())) > 800]
    assert not too_big, too_big
