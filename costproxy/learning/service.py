"""The learner of one replica: records feedback and keeps the estimates selection reads.

``Learner.record`` validates nothing (``feedback.parse_feedback`` did) and writes through the
store; the cell comes from the request's ledger entry (served model, task type, difficulty bucket),
so only requests the router classified teach anything, and only answered ones (status ``ok``).
``Learner.estimates`` is an in-process snapshot; ``refresh`` re-reads the shared sums (the app
calls it every ``learning.refresh_interval_s``), and a replica's own feedback shows at once.
Selection reads the snapshot only: it never waits for the store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from costproxy.learning.config import LearningSettings
from costproxy.learning.estimates import OnlineEstimates, z_score
from costproxy.learning.feedback import Feedback, FeedbackInput
from costproxy.learning.store import LearningStore, SqliteLearningStore, contribution
from costproxy.ledger.entry import LedgerEntry
from costproxy.settings import Settings
from costproxy.store.sqlite import SqliteStore

LEARNABLE_STATUSES = ("ok",)
BUCKET_KEY = "difficulty_bucket"  # where the pipeline records the bucket in the ledger entry's metadata


def entry_cell(entry: LedgerEntry) -> tuple[str, int, str] | None:
    """The cell a request's outcome informs, from its ledger entry (``None``: not a routed answer)."""
    bucket = entry.metadata.get(BUCKET_KEY)
    if (entry.status not in LEARNABLE_STATUSES or entry.task_type is None or entry.served_model is None
            or not isinstance(bucket, int) or isinstance(bucket, bool)):
        return None
    return entry.task_type, bucket, entry.served_model


class Learner:
    def __init__(self, store: LearningStore, settings: LearningSettings) -> None:
        self.store = store
        self.settings = settings
        self.estimates = OnlineEstimates({}, settings.prior_strength, z_score(settings.confidence))

    async def refresh(self) -> OnlineEstimates:
        cells = await self.store.evidence()
        self.estimates = OnlineEstimates(cells, self.settings.prior_strength, self.estimates.z)
        return self.estimates

    async def record(self, given: FeedbackInput, entry: LedgerEntry, actor: str,
                     now_ms: int) -> tuple[Feedback, bool]:
        """Store ``given`` for the request of ``entry``; (what is stored, whether it is new)."""
        existing = {f.source: f for f in await self.store.feedback_for(given.request_id)}.get(given.source)
        if existing is not None and existing.same_content(given):
            return existing, False
        cell = entry_cell(entry)
        feedback = Feedback(
            request_id=given.request_id, source=given.source, score=given.score, comment=given.comment,
            model=entry.served_model, task_type=cell[0] if cell else entry.task_type,
            bucket=cell[1] if cell else None, weight=self.settings.source_weights.get(given.source, 1.0)
            if cell else 0.0, actor=actor, created_at_ms=existing.created_at_ms if existing else now_ms,
            updated_at_ms=now_ms)
        previous = await self.store.put(feedback)
        self._learn_locally(previous, feedback)
        return feedback, previous is None

    def _learn_locally(self, previous: Feedback | None, feedback: Feedback) -> None:
        estimates = self.estimates
        for item, sign in ((previous, -1.0), (feedback, 1.0)):
            n, successes = contribution(item)
            if item is not None and item.cell is not None and n:
                estimates = estimates.with_observation(item.cell, sign * n, sign * successes)
        self.estimates = estimates


async def stored_estimates(settings: Settings) -> OnlineEstimates:
    """The estimates a deployment's store holds now (``costproxy explain``): opened, read, closed."""
    from costproxy.lean_imports import import_redis
    from costproxy.store.backend import is_redis_url, local_path, redacted

    config = settings.learning
    if is_redis_url(settings.store.url):
        import_redis()
        from costproxy.budgets.redis import redis_client
        from costproxy.learning.redis import RedisLearningStore

        redis = redis_client(settings.store.url, timeout_s=settings.store.timeout_s)
        try:
            cells = await RedisLearningStore(redis, settings.budgets.settings.key_prefix,
                                             label=redacted(settings.store.url)).evidence()
        finally:
            await redis.aclose()
    elif not await asyncio.to_thread(Path(local_path(settings)).exists):
        cells = {}  # nothing recorded yet (and explain creates no store file)
    else:
        local = SqliteStore(local_path(settings))
        await local.open()
        try:
            store = SqliteLearningStore(local)
            await store.open()
            cells = await store.evidence()
        finally:
            await local.close()
    return OnlineEstimates(cells, config.prior_strength, z_score(config.confidence))
