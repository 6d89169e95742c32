"""``store.timeout_s``: parsed and checked (errors name the key and the value), the Redis clients' reply
and connect timeout, never retried after a timeout, and the one allowance a request's calls share."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from costproxy.budgets.batch import allowance, script_sender
from costproxy.budgets.redis import redis_client
from costproxy.config_schema import Node
from costproxy.errors import ConfigError
from costproxy.store import wait as store_wait
from costproxy.store.config import parse_store


def store(section: dict[str, Any]) -> Any:
    return parse_store(Node(section, "costproxy.yaml", "store"), None, None)


def test_the_timeout_defaults_to_one_second_and_takes_fractions() -> None:
    assert store({}).timeout_s == 1.0
    assert store({"timeout_s": 0.25}).timeout_s == 0.25
    assert store({"timeout_s": 3}).timeout_s == 3.0


@pytest.mark.parametrize(("value", "expected"), [
    (0, "must be >= 0.05"), (-1, "must be >= 0.05"), (61, "must be <= 60"), ("1s", "must be a number"),
    (True, "must be a number"),
])
def test_bad_timeouts_are_refused_naming_the_key_and_value(value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        store({"timeout_s": value})
    assert "store.timeout_s" in str(info.value) and expected in str(info.value)


def test_redis_clients_wait_the_timeout_and_retry_a_broken_connection_never_a_timeout() -> None:
    client = redis_client("redis://127.0.0.1:1/0", timeout_s=0.3)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.3
    retried = kwargs["retry"]._supported_errors
    assert RedisConnectionError in retried and RedisTimeoutError not in retried
    assert script_sender(client).timeout_s == 0.3


def test_a_request_shares_one_allowance_outside_a_request_each_call_has_its_own() -> None:
    assert allowance(1.0) == (None, 1.0)
    token = store_wait.begin(0.5)
    try:
        wait, limit = allowance(1.0)
        assert wait is store_wait.current() and limit == 0.5
        assert wait is not None
        wait.left -= 0.4
        assert allowance(1.0)[1] == pytest.approx(0.1) and allowance(0.05)[1] == 0.05
    finally:
        store_wait.end(token)
    assert store_wait.current() is None
