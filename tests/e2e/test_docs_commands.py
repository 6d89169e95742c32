"""Every command in docs/ runs.

Commands are the ``$ `` lines of the ```` ```console ```` blocks of the pages in ``PAGES``. They run in
order, with ``bash`` and the real ``curl``, in a workspace holding copies of the repository's
``config/`` and ``rules/`` (its Redis key prefix made unique), with the venv's ``costproxy`` first on
PATH and ``COSTPROXY_ADMIN_TOKEN`` set.  The documented addresses are replaced by the test's own:
``http://127.0.0.1:8080`` by a ``costproxy serve --port 0`` started for the test, the Redis URL by
database 13 of the suite's Redis, the PostgreSQL URL by a database of its own.  A command that
serves (``costproxy serve``) is started, must become ready and must drain and exit 0 on SIGTERM;
every other command must exit 0, and a ``curl`` must get a 2xx answer.

Blocks fenced ```` ```console not-run=REASON ```` are shown to the reader as not run (the page says
so above them) and are listed in ``NOT_RUN`` with the reason; the test fails if the two disagree.

docs/api.md is generated: ``test_api_reference_is_the_served_document`` renders the document the
app serves and compares, and ``test_the_generator_reads_a_served_proxy`` runs the generator's
``--check`` against a proxy it starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from costproxy.http.openapi import document
from tests.conftest_pg import pg_server, pg_url  # noqa: F401 - fixtures
from tests.conftest_redis import REDIS_DB, RedisSpace, redis_endpoint, redis_space  # noqa: F401 - fixtures
from tests.docs_support import DOCS, ROOT
from tests.e2e.harness import Serving

PAGES = ("configuration.md", "rules.md", "budgets.md", "deployment.md", "monitoring.md", "troubleshooting.md",
         "faq.md", "api.md")
DOCUMENTED_HOST = "http://127.0.0.1:8080"
DOCUMENTED_REDIS = "redis://127.0.0.1:6379/0"
DOCUMENTED_PG = "postgresql://costproxy@db:5432/costproxy"
ADMIN_TOKEN = "docs-admin-token-0123456789"
DOCKER = "needs Docker: no Docker daemon or compose plugin in the test environment, and it builds images"
NOT_RUN = {
    ("deployment.md", "docker build -t costproxy ."): DOCKER,
    ("deployment.md", "docker run -p 8080:8080 -v costproxy-data:/data -e OPENAI_API_KEY -e COSTPROXY_ADMIN_TOKEN "
                      "costproxy"): DOCKER,
    ("deployment.md", "cd deploy"): DOCKER + " (first step of the compose walk-through)",
    ("deployment.md", "export COSTPROXY_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"):
        DOCKER + " (sets the compose file's secret)",
    ("deployment.md", "export POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"):
        DOCKER + " (sets the compose file's secret)",
    ("deployment.md", "export OPENAI_API_KEY=sk-your-key"): DOCKER + " and a real provider key",
    ("deployment.md", "docker compose up -d --build"): DOCKER,
    ("deployment.md", "docker compose --profile monitoring up -d prometheus"): DOCKER,
}
FENCE = re.compile(r"^```console(?:[ \t]+not-run=(\w+))?[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Command:
    page: str
    text: str
    not_run: str | None  # the marker's reason word, e.g. "docker"


def commands() -> list[Command]:
    found = []
    for page in PAGES:
        for match in FENCE.finditer((DOCS / page).read_text(encoding="utf-8")):
            found += [Command(page, line[2:].strip(), match.group(1)) for line in match.group(2).splitlines()
                      if line.startswith("$ ")]
    return found


def test_the_commands_not_run_are_exactly_the_marked_ones_and_say_why() -> None:
    marked = {(c.page, c.text) for c in commands() if c.not_run}
    assert marked == set(NOT_RUN)
    for command in commands():
        if command.not_run:
            page = (DOCS / command.page).read_text(encoding="utf-8")
            assert "**Not run by the docs test: needs Docker.**" in page
    assert len([c for c in commands() if not c.not_run]) >= 15


def workspace(tmp_path: Path, prefix: str) -> Path:
    root = tmp_path / "workspace"
    shutil.copytree(ROOT / "config", root / "config")
    shutil.copytree(ROOT / "rules", root / "rules")
    with (root / "config" / "costproxy.yaml").open("a", encoding="utf-8") as config:
        config.write(f"\nbudgets: {{key_prefix: {prefix}}}\n")  # this test's own Redis keys
    return root


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTPROXY_") and not k.endswith("_API_KEY")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COSTPROXY_ADMIN_TOKEN"] = ADMIN_TOKEN
    return env


@pytest.fixture
def served(tmp_path: Path, redis_space: RedisSpace) -> Iterator[tuple[Path, str]]:  # noqa: F811
    root = workspace(tmp_path, redis_space.prefix)
    env = {**environment(), "OPENAI_API_KEY": "sk-placeholder"}
    server = Serving([sys.executable, "-m", "costproxy", "serve", "--port", "0"], cwd=root, env=env)
    try:
        port = server.wait_listening()
        wait_ready(f"http://127.0.0.1:{port}")
        yield root, f"http://127.0.0.1:{port}"
    finally:
        assert server.stop() == 0


def wait_ready(base: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} did not become ready")


def localised(text: str, base: str, redis_url: str, pg: str) -> str:
    text = text.replace(DOCUMENTED_HOST, base).replace(DOCUMENTED_REDIS, redis_url).replace(DOCUMENTED_PG, pg)
    if text.startswith("curl ") and "|" not in text:
        text = text.replace("curl -s ", "curl -s -w '\\n%{http_code}' ", 1)
    return text


def run_serving(text: str, cwd: Path, env: dict[str, str]) -> str | None:
    server = Serving(["bash", "-c", f"exec env {text}"], cwd=cwd, env=env)
    try:
        port = server.wait_listening()
        wait_ready(f"http://127.0.0.1:{port}")
    finally:
        code = server.stop()
    return None if code == 0 else f"exit {code} after SIGTERM:\n{''.join(server.output)[-2000:]}"


def run_one(text: str, cwd: Path, env: dict[str, str]) -> str | None:
    """None when the command succeeded, else what went wrong."""
    if re.search(r"\bcostproxy serve\b", text):
        return run_serving(text, cwd, env)
    result = subprocess.run(["bash", "-o", "pipefail", "-c", text], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    output = (result.stdout + result.stderr)[-2000:]
    if result.returncode != 0:
        return f"exit {result.returncode}:\n{output}"
    if "%{http_code}" in text and not result.stdout.rstrip().splitlines()[-1].startswith("2"):
        return f"HTTP {result.stdout.rstrip().splitlines()[-1]}:\n{output}"
    return None


def test_every_command_in_the_docs_runs(served: tuple[Path, str], redis_space: RedisSpace,  # noqa: F811
                                        pg_url: str) -> None:  # noqa: F811
    root, base = served
    env = environment()
    redis_url = redis_space.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    failures = []
    ran = 0
    for command in commands():
        if command.not_run:
            continue
        problem = run_one(localised(command.text, base, redis_url, pg_url), root, env)
        ran += 1
        if problem:
            failures.append(f"{command.page}: $ {command.text}\n{problem}")
    assert failures == [], "\n\n".join(failures)
    assert ran >= 15


def test_api_reference_is_the_served_document() -> None:
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    served_document = json.loads(json.dumps(document()))  # what GET /openapi.json sends
    assert generator.render(served_document) == (DOCS / "api.md").read_text(encoding="utf-8"), (
        "docs/api.md is stale: run python scripts/gen_api_docs.py")


def test_the_generator_reads_a_served_proxy() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=300, check=False, env=environment())
    assert result.returncode == 0, result.stdout + result.stderr
