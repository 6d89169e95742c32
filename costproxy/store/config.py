"""The ``store:`` section of ``costproxy.yaml``: where budgets, keys and the ledger live.

    store:
      url: sqlite:///data/costproxy.sqlite3   # relative to the working directory; redis://host:6379/0,
                                              # rediss://…, or memory:// (tests); $COSTPROXY_STORE_URL wins
      local_path: ../data/costproxy-replica-{host}-{port}.sqlite3   # Redis mode: this replica's own
                                              # SQLite file, relative to the config file's directory
      ledger_url: postgresql://costproxy@db:5432/costproxy   # optional: the ledger every replica writes
                                              # and reports read; $COSTPROXY_LEDGER_URL wins; the
                                              # password from $PGPASSWORD / ~/.pgpass, or in the URL
      ledger_timeout_s: 15                    # the longest one PostgreSQL ledger call (a report, a
                                              # shipped batch, the migration lock) waits for the server
      timeout_s: 1                            # Redis mode: the longest one request waits for Redis,
                                              # all its calls together; then 503 store_unavailable

Pure: ``load_settings`` passes the environment override and, for the packaged defaults, the
directory that relative paths stand for.
"""

from __future__ import annotations

import os

from costproxy.config_schema import Node
from costproxy.errors import ConfigError
from costproxy.records import frozen

DEFAULT_STORE_URL = "sqlite:///data/costproxy.sqlite3"
# {host} and {port} (hostname, server port) keep replicas started from one config directory apart.
DEFAULT_LOCAL_PATH = "../data/costproxy-replica-{host}-{port}.sqlite3"
STORE_URL_FORMS = "must be sqlite:///path, redis://host:port/db, rediss://host:port/db or memory://"
DEFAULT_TIMEOUT_S = 1.0
DEFAULT_LEDGER_TIMEOUT_S = 15.0
LEDGER_URL_FORMS = "must be postgresql://[user[:password]@][host][:port]/database[?option=value&…]"


@frozen
class StoreSettings:
    url: str = DEFAULT_STORE_URL  # sqlite:///path, redis://host:port/db, rediss://…, memory://
    local_path: str = DEFAULT_LOCAL_PATH  # template, used with a redis:// store only
    ledger_url: str | None = None  # postgresql://…: the shared PostgreSQL ledger (needs costproxy[postgres])
    timeout_s: float = DEFAULT_TIMEOUT_S  # Redis: how long a request waits for the store, all its calls together
    ledger_timeout_s: float = DEFAULT_LEDGER_TIMEOUT_S  # PostgreSQL ledger: the longest one call waits


def parse_store(node: Node, override: str | None, local_base: str | None = None,
                ledger_override: str | None = None) -> StoreSettings:
    """``override``: ``$COSTPROXY_STORE_URL``; ``local_base``: where a relative ``local_path`` is
    resolved now (else later, against the config file's directory); ``ledger_override``:
    ``$COSTPROXY_LEDGER_URL``."""
    url_node = node.child("url", DEFAULT_STORE_URL)
    url = url_node.str()
    if not valid_store_url(url):
        raise url_node.error(STORE_URL_FORMS, url)
    if override:
        if not valid_store_url(override):
            raise ConfigError("$COSTPROXY_STORE_URL", "", STORE_URL_FORMS, override)
        url = override
    local_path = _parse_local_path(node.child("local_path", DEFAULT_LOCAL_PATH))
    ledger_node = node.child("ledger_url", None)
    ledger_url = None if ledger_node.value is None else ledger_node.str()
    if ledger_url is not None and ledger_url_problem(ledger_url):
        raise ledger_node.error(f"{LEDGER_URL_FORMS}: {ledger_url_problem(ledger_url)}", redacted_url(ledger_url))
    if ledger_override:
        if ledger_url_problem(ledger_override):
            raise ConfigError("$COSTPROXY_LEDGER_URL", "", f"{LEDGER_URL_FORMS}: {ledger_url_problem(ledger_override)}",
                              redacted_url(ledger_override))
        ledger_url = ledger_override
    timeout_s = node.child("timeout_s", DEFAULT_TIMEOUT_S).number(minimum=0.05, maximum=60)
    ledger_timeout_s = node.child("ledger_timeout_s", DEFAULT_LEDGER_TIMEOUT_S).number(minimum=0.1, maximum=600)
    node.done()
    if local_base is not None and not os.path.isabs(local_path):
        local_path = os.path.normpath(os.path.join(local_base, local_path))
    return StoreSettings(url=url, local_path=local_path, ledger_url=ledger_url, timeout_s=timeout_s,
                         ledger_timeout_s=ledger_timeout_s)


def valid_store_url(url: str) -> bool:
    if url.startswith("sqlite:///"):
        return len(url) > len("sqlite:///")
    return url.startswith(("redis://", "rediss://")) or url == "memory://"


def ledger_url_problem(url: str) -> str | None:
    """What is wrong with a PostgreSQL URL, or None (checked by hand: this module does no I/O)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return "the scheme must be postgresql://"
    location = rest.split("?", 1)[0]
    authority, slash, database = location.rpartition("@")[2].partition("/")
    if not slash or not database or "/" in database:
        return "name the database after the host (…/costproxy)"
    port = authority.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in authority.rsplit("]", 1)[-1] else ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return f"the port must be a number from 1 to 65535 (got {port!r})"
    if any(c.isspace() for c in url):
        return "no whitespace"
    return None


def redacted_url(url: str) -> str:
    """A URL fit for messages and logs: the password replaced."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


def _parse_local_path(node: Node) -> str:
    template = node.str()
    try:
        template.format(host="host", port=0)
    except (KeyError, IndexError, ValueError):
        raise node.error("may use only the placeholders {host} and {port}", template) from None
    return template
