"""Budget definitions changed on one Redis replica bind every other replica's next reserve.

The replicas here re-read definitions once an hour (``refresh_interval_s: 3600``), so nothing but
the version check of the reserve script (``lua.py``, "Definitions versions") can make the other
replica see a change: each test changes a definition on ``one`` and reserves on ``two`` at once,
without sleeping or polling.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import redis as sync_redis

from costproxy.budgets.book import BudgetReservation
from costproxy.budgets.lua import RedisKeys
from costproxy.budgets.model import BudgetOverride, BudgetSpec
from costproxy.budgets.redis import STALE_RELOADS, RedisBudgetAccounts
from costproxy.errors import BudgetExceeded, StoreUnavailable
from costproxy.identity.principal import Principal
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.integration.test_budget_redis import ALICE, USD, Opener, budget, entry, replica, section  # noqa: F401

pytestmark = pytest.mark.redis

HOUR = 3600.0  # no poll within a test: only the reserve's version check can carry a change


def dyn(limit: int, **fields: object) -> BudgetSpec:
    return BudgetSpec(id="dyn", scope_type="user", scope_id="alice", limit_nanos=limit, period="total",
                      **fields)  # type: ignore[arg-type]


async def pair(replica: Opener, *definitions: dict[str, object]) -> tuple[RedisBudgetAccounts, RedisBudgetAccounts]:  # noqa: F811
    one = await replica(section(*definitions, refresh=HOUR))
    two = await replica(section(*definitions, refresh=HOUR))
    return one, two


async def spend(accounts: RedisBudgetAccounts, request_id: str, nanos: int) -> BudgetReservation:
    held = await accounts.reserve(request_id, ALICE, nanos)
    assert isinstance(held, BudgetReservation)
    await accounts.settle(held, entry(request_id, nanos))
    return held



def counting_loads(accounts: RedisBudgetAccounts) -> list[int]:
    """Count ``accounts``' reloads of the definitions (in the list's one element)."""
    loads, real_load = [0], accounts.budgets.load

    async def counted() -> None:
        loads[0] += 1
        await real_load()

    accounts.budgets.load = counted  # type: ignore[method-assign]
    return loads

async def test_a_budget_created_on_one_replica_binds_the_others_next_reserve(replica: Opener) -> None:  # noqa: F811
    one, two = await pair(replica)
    assert (await two.reserve("before", ALICE, 5)).budget_ids == ()  # no budget for alice yet
    await one.budgets.create(dyn(10), actor="admin")
    with pytest.raises(BudgetExceeded, match="'dyn'"):
        await two.reserve("over", ALICE, 11)
    held = await two.reserve("fits", ALICE, 10)
    assert held.budget_ids == ("dyn",)  # charged to the new budget, not to none
    await two.settle(held, entry("fits", 10))
    with pytest.raises(BudgetExceeded):
        await two.reserve("full", ALICE, 1)
    assert (await two.status("dyn")).spent_nanos == 10


async def test_a_budget_in_another_partition_binds_a_chain_that_does_not_know_it(replica: Opener) -> None:  # noqa: F811
    """``two`` reserves on alice's team budget (partition ``acme``); the new budget has no org
    (partition ``_``), so the check cannot be per budget key: it is per partition and version."""
    one, two = await pair(replica, budget("team", "team", "core", "5", period="monthly"))
    assert (await two.reserve("warm", ALICE, 1)).budget_ids == ("team",)
    await one.budgets.create(dyn(10), actor="admin")  # org None: another partition
    with pytest.raises(BudgetExceeded, match="'dyn'"):
        await two.reserve("over", ALICE, 11)
    assert set((await two.reserve("fits", ALICE, 10)).budget_ids) == {"team", "dyn"}


async def test_a_lowered_limit_refuses_at_once_on_the_other_replica(replica: Opener) -> None:  # noqa: F811
    one, two = await pair(replica)
    await one.budgets.create(dyn(10 * USD), actor="admin")
    await spend(two, "spent", USD)
    await one.budgets.update(dyn(USD), actor="admin")  # down to what was spent
    with pytest.raises(BudgetExceeded, match="'dyn'"):
        await two.reserve("after", ALICE, 1)
    await one.budgets.update(dyn(2 * USD), actor="admin")  # and up again: room at once
    assert (await two.reserve("raised", ALICE, USD)).budget_ids == ("dyn",)


async def test_a_deleted_budget_is_no_longer_charged_by_the_other_replica(replica: Opener) -> None:  # noqa: F811
    one, two = await pair(replica)
    await one.budgets.create(dyn(USD), actor="admin")
    await spend(two, "spent", USD)
    await one.budgets.delete("dyn", actor="admin")
    held = await two.reserve("after", ALICE, 2 * USD)
    assert held.budget_ids == ()
    assert two.budgets.get("dyn") is None


async def test_hard_soft_toggles_and_overrides_bind_at_once(replica: Opener) -> None:  # noqa: F811
    one, two = await pair(replica)
    await one.budgets.create(dyn(USD), actor="admin")
    await spend(two, "spent", USD)
    await one.budgets.update(replace(dyn(USD), on_exhausted="notify"), actor="admin")  # soft: never refuses
    soft = await two.reserve("soft", ALICE, USD)
    await two.release(soft, None)
    await one.budgets.update(dyn(USD), actor="admin")  # hard again
    with pytest.raises(BudgetExceeded):
        await two.reserve("hard", ALICE, 1)
    now = one.now_ms()
    granted = await one.budgets.grant(BudgetOverride(id="ovr-1", budget_id="dyn", kind="increase",
                                                     starts_at_ms=now - 1000, expires_at_ms=now + 3_600_000,
                                                     amount_nanos=USD, reason="launch week"), actor="admin")
    increased = await two.reserve("increased", ALICE, USD)  # the temporary increase, at once
    await two.release(increased, None)
    await one.budgets.revoke(granted.id, actor="admin")
    with pytest.raises(BudgetExceeded):
        await two.reserve("revoked", ALICE, 1)


async def test_a_missing_version_copy_is_reloaded_and_seeded(replica: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    one, two = await pair(replica)
    await one.budgets.create(dyn(10), actor="admin")
    copy = RedisKeys(redis_space.prefix).defs_seen("")
    client = sync_redis.Redis.from_url(redis_space.url)
    try:
        with pytest.raises(BudgetExceeded):  # two knows the budget now
            await two.reserve("warm", ALICE, 11)
        client.delete(copy)  # evicted, flushed, or a partition no writer had seen
        loads = counting_loads(two)
        results = await asyncio.gather(*(two.reserve(f"r{i}", ALICE, 11) for i in range(10)), return_exceptions=True)
        assert all(isinstance(r, BudgetExceeded) and "'dyn'" in r.message for r in results)
        assert loads[0] == 1  # the others found the copy seeded by the first
        assert int(client.get(copy) or -1) == two.budgets.version == one.budgets.version
    finally:
        client.close()


async def test_definitions_that_keep_changing_give_up_after_a_bound(
        replica: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    one, two = await pair(replica)
    await one.budgets.create(dyn(10), actor="admin")
    client = sync_redis.Redis.from_url(redis_space.url)
    try:  # a copy no reload can reach stands for a writer that changes the definitions faster
        client.set(RedisKeys(redis_space.prefix).defs_seen(""), 10**9)
        loads = counting_loads(two)
        with pytest.raises(StoreUnavailable, match="kept changing"):
            await two.reserve("r", ALICE, 1)
        assert loads[0] == STALE_RELOADS
    finally:
        client.close()


async def test_a_request_without_budgets_learns_of_a_new_one(replica: Opener) -> None:  # noqa: F811
    """A caller of another org with no budget at all: its reserve checks its own partition."""
    bob = Principal(key_id="k-bob", user="bob", org="globex")
    one, two = await pair(replica)
    assert (await two.reserve("before", bob, 5)).budget_ids == ()
    await one.budgets.create(BudgetSpec(id="bob", scope_type="user", scope_id="bob", limit_nanos=4,
                                        org="globex"), actor="admin")
    with pytest.raises(BudgetExceeded, match="'bob'"):
        await two.reserve("after", bob, 5)


async def test_requests_that_find_the_definitions_stale_together_share_one_reload(replica: Opener) -> None:  # noqa: F811
    one, two = await pair(replica)
    assert (await two.reserve("warm", ALICE, 1)).budget_ids == ()
    loads = counting_loads(two)
    await one.budgets.create(dyn(10, org="acme"), actor="admin")  # alice's partition: its copy exists
    results = await asyncio.gather(*(two.reserve(f"r{i}", ALICE, 1) for i in range(30)), return_exceptions=True)
    held = [r for r in results if isinstance(r, BudgetReservation)]
    assert len(held) == 10 and all(r.budget_ids == ("dyn",) for r in held)  # 10 fit, none escaped the budget
    assert all(isinstance(r, BudgetExceeded) for r in results if r not in held)
    assert loads[0] == 1
