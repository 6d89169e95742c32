"""After ``pip install`` of the wheel, costproxy runs from an empty directory on its packaged defaults.

The wheel is built from a copy of the sources (the worktree is never written to) and installed
without dependencies into a fresh virtualenv; the dependencies come from the test's own
environment through a ``.pth`` line (the venv equivalent of ``--system-site-packages``), which
appends that site directory *after* the fresh one without running its ``.pth`` files, so the
editable install of the checkout stays invisible: the test asserts ``costproxy`` is imported from
the fresh venv.  Takes ~30-60 s (mostly the wheel build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.e2e.harness import Serving, get_json

ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.startswith(("COSTPROXY_", "PYTHON", "VIRTUAL_ENV")) and not k.endswith("_API_KEY")}


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def build_and_install(tmp_path: Path) -> Path:
    """The ``bin`` directory of a fresh venv holding only the wheel."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "costproxy", source / "costproxy", ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path / "wheel")],
        tmp_path)
    [wheel] = (tmp_path / "wheel").glob("costproxy-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], tmp_path)
    fresh = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    (Path(fresh.stdout.strip()) / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.mark.timeout(600)
def test_the_wheel_serves_from_an_empty_directory(tmp_path: Path) -> None:
    bin_dir = build_and_install(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    imported = run([str(bin_dir / "python"), "-c", "import costproxy.defaults as d; print(d.DEFAULTS_DIR)"], empty)
    defaults = Path(imported.stdout.strip())
    assert defaults.is_relative_to(tmp_path / "venv"), defaults
    shipped = sorted(p.relative_to(defaults) for p in defaults.rglob("*") if "__pycache__" not in p.parts)

    checked = run([str(bin_dir / "costproxy"), "check-config"], empty)
    assert checked.stdout.splitlines()[0] == f"config:   {defaults / 'config' / 'costproxy.yaml'} (from packaged " \
                                             "defaults)"
    assert "13 rules" in checked.stdout and "ollama" in checked.stdout and checked.stdout.endswith("valid\n")

    server = Serving([str(bin_dir / "costproxy"), "serve", "--port", "0"], cwd=empty, env=CLEAN_ENV)
    try:
        port = server.wait_listening()
        assert get_json(f"http://127.0.0.1:{port}/healthz") == {"status": "ok"}
        assert "no provider is usable" in "".join(server.output)
    finally:
        assert server.stop() == 0
    assert (empty / "data" / "costproxy.sqlite3").is_file()  # the data lands in ./data, not the package
    assert sorted(p.relative_to(defaults) for p in defaults.rglob("*") if "__pycache__" not in p.parts) == shipped

    run([str(bin_dir / "costproxy"), "init", "site"], empty)
    assert (empty / "site" / "rules" / "README.md").read_bytes() == (ROOT / "rules" / "README.md").read_bytes()
