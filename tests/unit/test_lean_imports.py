"""costproxy.lean_imports: the server imports structlog without rich/greenlet and redis without
the OpenTelemetry metrics SDK, and nothing else loses a module it needs."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from costproxy.lean_imports import without


def test_without_hides_only_for_the_duration_of_the_block() -> None:
    name = "costproxy_lean_imports_probe_module"
    with without(name):
        with pytest.raises(ImportError):
            importlib.import_module(name)
    assert name not in sys.modules  # the None entry is gone: a later import searches normally


def test_without_never_hides_a_module_already_imported() -> None:
    import json as already

    with without("json"):
        assert importlib.import_module("json") is already
    assert sys.modules["json"] is already


def _modules_after(code: str) -> dict[str, bool]:
    script = code + "\nimport json, sys\nprint(json.dumps([m for m in sys.modules if sys.modules[m] is not None]))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name: name in loaded for name in ("rich", "pygments", "greenlet", "opentelemetry.sdk.metrics",
                                              "redis.asyncio", "structlog")}


def test_the_server_imports_leave_out_the_optional_extras() -> None:
    loaded = _modules_after("import costproxy.cli, costproxy.http.server\n"
                            "from costproxy.lean_imports import import_redis\nimport_redis()\n"
                            "import costproxy.budgets.redis, costproxy.ledger.mirror")
    assert loaded == {"rich": False, "pygments": False, "greenlet": False, "opentelemetry.sdk.metrics": False,
                      "redis.asyncio": True, "structlog": True}


def test_the_console_renderer_still_renders_exceptions() -> None:
    import structlog

    renderer = structlog.dev.ConsoleRenderer(colors=False)
    try:
        raise ValueError("boom")
    except ValueError:
        line = renderer(None, "error", {"event": "failed", "exc_info": sys.exc_info()})
    assert "failed" in line and "ValueError: boom" in line and "Traceback" in line


def test_the_hidden_modules_stay_importable_afterwards() -> None:
    loaded = _modules_after("import costproxy\nfrom costproxy.lean_imports import import_redis\nimport_redis()\n"
                            "import opentelemetry.sdk.metrics")
    assert loaded["opentelemetry.sdk.metrics"] and loaded["redis.asyncio"]
