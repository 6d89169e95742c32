"""``store.local_path``: each Redis-mode replica gets a SQLite file of its own by default."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from costproxy.errors import ConfigError
from costproxy.settings import Settings, load_settings
from costproxy.store.backend import local_path as ledger_path

ROOT = Path(__file__).resolve().parents[2]


def settings(tmp_path: Path, store: dict[str, str], **env: str) -> Settings:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    (tmp_path / "rules").mkdir(exist_ok=True)
    (config_dir / "models.yaml").write_text((ROOT / "config" / "models.yaml").read_text())
    document = yaml.safe_load((ROOT / "config" / "costproxy.yaml").read_text())
    document["store"] = store
    (config_dir / "costproxy.yaml").write_text(yaml.safe_dump(document))
    return load_settings(config_dir / "costproxy.yaml", env)


def test_default_is_unique_per_host_and_port(tmp_path: Path) -> None:
    loaded = settings(tmp_path, {"url": "redis://127.0.0.1:6379/0"}, COSTPROXY_PORT="9090")
    host = socket.gethostname()
    assert ledger_path(loaded) == str(tmp_path / "data" / f"costproxy-replica-{host}-9090.sqlite3")


def test_relative_to_the_config_file_or_absolute(tmp_path: Path) -> None:
    relative = settings(tmp_path, {"url": "redis://r:6379/0", "local_path": "state/{port}.sqlite3"})
    assert ledger_path(relative) == str(tmp_path / "config" / "state" / "8080.sqlite3")
    absolute = settings(tmp_path, {"url": "redis://r:6379/0", "local_path": str(tmp_path / "{host}.db")})
    assert ledger_path(absolute) == str(tmp_path / f"{socket.gethostname()}.db")


def test_sqlite_mode_is_unchanged(tmp_path: Path) -> None:
    loaded = settings(tmp_path, {"url": f"sqlite:///{tmp_path}/one.sqlite3", "local_path": "ignored.sqlite3"})
    assert ledger_path(loaded) == f"{tmp_path}/one.sqlite3"


@pytest.mark.parametrize("bad", ["replica-{pid}.sqlite3", "replica-{}.sqlite3", "replica-{port.sqlite3", ""])
def test_bad_templates_name_the_key(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, {"url": "redis://r:6379/0", "local_path": bad})
    assert "store.local_path" in str(err.value)
