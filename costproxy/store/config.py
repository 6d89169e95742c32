"""The ``store:`` section of ``costproxy.yaml``: where budgets, keys and the ledger live.

    store:
      url: sqlite:///data/costproxy.sqlite3   # relative to the working directory; redis://host:6379/0,
                                              # rediss://…, or memory:// (tests); $COSTPROXY_STORE_URL wins
      local_path: ../data/costproxy-replica-{host}-{port}.sqlite3   # Redis mode: this replica's own
                                              # SQLite file, relative to the config file's directory

Pure: ``load_settings`` passes the environment override and, for the packaged defaults, the
directory that relative paths stand for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from costproxy.config_schema import Node
from costproxy.errors import ConfigError

DEFAULT_STORE_URL = "sqlite:///data/costproxy.sqlite3"
# {host} and {port} (hostname, server port) keep replicas started from one config directory apart.
DEFAULT_LOCAL_PATH = "../data/costproxy-replica-{host}-{port}.sqlite3"
STORE_URL_FORMS = "must be sqlite:///path, redis://host:port/db, rediss://host:port/db or memory://"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = DEFAULT_STORE_URL  # sqlite:///path, redis://host:port/db, rediss://…, memory://
    local_path: str = DEFAULT_LOCAL_PATH  # template, used with a redis:// store only


def parse_store(node: Node, override: str | None, local_base: str | None = None) -> StoreSettings:
    """``override``: ``$COSTPROXY_STORE_URL``; ``local_base``: where a relative ``local_path`` is
    resolved now (else later, against the config file's directory)."""
    url_node = node.child("url", DEFAULT_STORE_URL)
    url = url_node.str()
    if not valid_store_url(url):
        raise url_node.error(STORE_URL_FORMS, url)
    if override:
        if not valid_store_url(override):
            raise ConfigError("$COSTPROXY_STORE_URL", "", STORE_URL_FORMS, override)
        url = override
    local_path = _parse_local_path(node.child("local_path", DEFAULT_LOCAL_PATH))
    node.done()
    if local_base is not None and not os.path.isabs(local_path):
        local_path = os.path.normpath(os.path.join(local_base, local_path))
    return StoreSettings(url=url, local_path=local_path)


def valid_store_url(url: str) -> bool:
    if url.startswith("sqlite:///"):
        return len(url) > len("sqlite:///")
    return url.startswith(("redis://", "rediss://")) or url == "memory://"


def _parse_local_path(node: Node) -> str:
    template = node.str()
    try:
        template.format(host="host", port=0)
    except (KeyError, IndexError, ValueError):
        raise node.error("may use only the placeholders {host} and {port}", template) from None
    return template
