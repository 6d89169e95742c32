"""``store.outage``: a failed Redis call reads as the operation, the store and what Redis did."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from costproxy.errors import StoreUnavailable
from costproxy.store.outage import reachable, unavailable

LABEL = "redis://10.0.0.5:6379/0"


def reply(error: str) -> BaseException:
    """The exception redis-py makes of an error reply (what ``ScriptChannel`` raises too)."""
    parsed: BaseException = BaseParser.parse_error(error)  # type: ignore[no-untyped-call]
    return parsed


@pytest.mark.parametrize(("error", "says"), [
    (reply("OOM command not allowed when used memory > 'maxmemory'. script: 3fca7271, on @user_script:66."),
     "is out of memory: Redis refuses writes above its maxmemory "
     "(OOM command not allowed when used memory > 'maxmemory')"),
    (reply("READONLY You can't write against a read only replica."), "is a read-only replica"),
    (reply("LOADING Redis is loading the dataset in memory"), "is still loading its data set"),
    (reply("NOPERM this user has no permissions to run the 'evalsha' command"), "refused costproxy's credentials"),
    (reply("ERR Error running script, something broke"), "answered with an error: Error running script"),
    (RedisTimeoutError("Timeout reading from 10.0.0.5:6379"), "did not answer within store.timeout_s"),
    (RedisConnectionError("Error 111 connecting to 10.0.0.5:6379. Connection refused."),
     "is unreachable: Error 111 connecting"),
    (ConnectionResetError("reset by peer"), "is unreachable: reset by peer"),
])
def test_each_failure_reads_as_what_it_is(error: BaseException, says: str) -> None:
    message = unavailable("budget store", LABEL, error, "reserve on the budgets acme").message
    assert message.startswith(f"cannot reserve on the budgets acme: the budget store ({LABEL}) {says}"), message
    assert "script:" not in message
    assert ("unreachable" in message) == says.startswith("is unreachable")


async def test_reachable_turns_redis_errors_into_a_503() -> None:
    with pytest.raises(StoreUnavailable) as info, reachable(LABEL, "key store", "create the key"):
        raise reply("OOM command not allowed when used memory > 'maxmemory'.")
    assert info.value.status == 503 and info.value.code == "store_unavailable"
    assert info.value.message.startswith(f"cannot create the key: the key store ({LABEL}) is out of memory")
    with pytest.raises(ValueError), reachable(LABEL, "key store", "create the key"):
        raise ValueError("not a store failure")
