"""``store.ledger_url`` and the trim settings: parsed, checked (every error names path and value,
never a password), overridden by ``$COSTPROXY_LEDGER_URL``; shown and checked by check-config."""

from __future__ import annotations

from typing import Any

import pytest

from costproxy.budgets.config import parse_budget_config
from costproxy.config_schema import Node
from costproxy.errors import ConfigError
from costproxy.ledger.trim import id_order, next_id
from costproxy.store.config import parse_store, redacted_url


def store(section: dict[str, Any], override: str | None = None) -> Any:
    return parse_store(Node(section, "costproxy.yaml", "store"), None, None, override)


def test_ledger_url_is_optional_and_kept_as_given() -> None:
    assert store({}).ledger_url is None
    url = "postgresql://costproxy:s3cret@db.internal:5433/ledger?sslmode=require"
    assert store({"ledger_url": url}).ledger_url == url
    assert store({"ledger_url": "postgres:///ledger"}).ledger_url == "postgres:///ledger"  # local socket
    assert store({"ledger_url": url}, "postgresql://other/db").ledger_url == "postgresql://other/db"


@pytest.mark.parametrize(("value", "expected"), [
    ("mysql://db/ledger", "the scheme must be postgresql://"),
    ("postgresql://db", "name the database"),
    ("postgresql://db/", "name the database"),
    ("postgresql://u:pw@db:99999/x", "the port must be a number"),
    ("postgresql://db:abc/x", "the port must be a number"),
    ("postgresql://db/led ger", "no whitespace"),
    (5432, "must be a string"),
    (["postgresql://db/x"], "must be a string"),
])
def test_bad_ledger_urls_are_refused_naming_path_and_value(value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        store({"ledger_url": value})
    message = str(info.value)
    assert "store.ledger_url" in message and expected in message
    assert "pw" not in message


def test_the_environment_override_is_checked_too() -> None:
    with pytest.raises(ConfigError) as info:
        store({}, "postgresql://u:topsecret@db")
    assert "$COSTPROXY_LEDGER_URL" in str(info.value) and "topsecret" not in str(info.value)


def test_passwords_are_redacted() -> None:
    assert redacted_url("postgresql://u:p@h/d") == "postgresql://u:***@h/d"
    assert redacted_url("postgresql://u@h/d") == "postgresql://u@h/d"


def test_trim_settings() -> None:
    settings = parse_budget_config({"ledger_trim_interval_s": 2, "mirror_expiry_s": 3600}, "f").settings
    assert (settings.ledger_trim_interval_s, settings.mirror_expiry_s) == (2, 3600)
    defaults = parse_budget_config({}, "f").settings
    assert (defaults.ledger_trim_interval_s, defaults.mirror_expiry_s) == (5.0, 86_400.0)
    for bad in ({"mirror_expiry_s": 10}, {"ledger_trim_interval_s": 0}, {"mirror_expiry_s": "soon"}):
        with pytest.raises(ConfigError):
            parse_budget_config(bad, "f")


def test_stream_ids_order_numerically() -> None:
    assert id_order("9-5") < id_order("10-0") and next_id("1700000000000-3") == "1700000000000-4"


def test_check_config_shows_the_ledger_without_its_password(write_config: Any, capsys: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from costproxy.cli import main

    monkeypatch.setenv("SIM_API_KEY", "x")
    config = str(write_config("http://127.0.0.1:9", extra={"store": {
        "url": "sqlite:///x.sqlite3", "ledger_url": "postgresql://cp:hunter2@db:5432/ledger"}}))
    assert main(["check-config", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "ledger:   postgresql://cp:***@db:5432/ledger (PostgreSQL" in out and "hunter2" not in out
    monkeypatch.setenv("COSTPROXY_LEDGER_URL", "postgresql://db")
    assert main(["check-config", "--config", config]) == 2
    assert "$COSTPROXY_LEDGER_URL" in capsys.readouterr().err
