"""Feedback on answers, and the learner that turns it into online estimates.

``POST /api/v1/feedback``   ``{requestId, score | thumbs, source, comment?}`` (``learning/feedback.py``):
                            201 when new, 200 when the same source had already said something about
                            that request (replaced; the same content changes nothing)
``GET  /api/v1/feedback?requestId=``   every source's feedback on a request, with its ledger entry's
                            model, task and difficulty bucket

Who may: the admin token; the ``cp-`` key that made the request (the middleware accepts client keys
on these paths only); a read-only token for requests of the scopes it sees (a scope-limited token:
only requests whose key, user, team, project or org is one of its scopes).

``learning_ctx`` (a ``cleanup_ctx`` entry, after the services) builds the ``Learner`` on the
backend's store, hands its estimates to the router, and re-reads the shared estimates every
``learning.refresh_interval_s`` in the background, so selection never does I/O for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from costproxy.background import cancel_and_wait, stop_if_cancelled
from costproxy.cache.capture import Capture
from costproxy.errors import Forbidden, InvalidRequest, NotFound, StoreUnavailable
from costproxy.http.budgets_api import actor, viewer
from costproxy.http.keys_api import json_body
from costproxy.http.state import ADMIN_ROLE, BACKEND, JUDGE, LEARNER, LEDGER, PRINCIPAL, ROUTER, SERVICES, SETTINGS
from costproxy.learning.feedback import MAX_ID_CHARS, parse_feedback
from costproxy.learning.judge import Judge, Sample, answer_text
from costproxy.learning.service import Learner
from costproxy.learning.store import LearningStore, SqliteLearningStore
from costproxy.ledger.entry import LedgerEntry
from costproxy.pipeline.run import UnaryResult
from costproxy.registry import ModelSpec
from costproxy.request import Api, ChatRequest, RequestContext
from costproxy.wire import query_value

log = structlog.get_logger("costproxy.learning")

FEEDBACK_PATH = "/api/v1/feedback"
LEDGER_WAIT_S = 3.0  # Redis mode: how long to wait for a request's entry to reach this replica's mirror


def _chain(entry: LedgerEntry) -> list[tuple[str, str]]:
    pairs = (("key", entry.key_id), ("user", entry.user), ("team", entry.team), ("project", entry.project),
             ("org", entry.org))
    return [(kind, value) for kind, value in pairs if value]


def _not_found(request_id: str) -> NotFound:
    """One answer for a request id never seen and for one the caller may not see."""
    return NotFound(f"no request with id {request_id!r} that this caller may see (feedback names the "
                    "x-costproxy-request-id of a request this proxy served)", param="requestId")


def _authorize(request: web.Request, entry: LedgerEntry) -> None:
    """Admin; the key that made the request; a read-only token that sees one of its scopes."""
    principal = request.get(PRINCIPAL)
    if principal is not None:
        if principal.key_id is None or principal.key_id != entry.key_id:
            raise _not_found(entry.request_id)  # the same answer as for an id never seen: no oracle
        return
    if request.get(ADMIN_ROLE) == "admin":
        return
    token = viewer(request)
    if token is None or not any(token.sees(kind, value) for kind, value in _chain(entry)):
        raise _not_found(entry.request_id)


def _may_send(request: web.Request, source: str) -> None:
    """Who may claim a source: feedback moves ``auto`` traffic for every caller of a cell, so the
    sources an operator trusts most are not open to every key.  ``judge`` is the proxy's own judge
    only; ``eval`` is the admin token's or an evaluation system's behind a trusted proxy; ``user``
    and ``agent`` anyone allowed to see the request."""
    if source == "judge":
        raise Forbidden("source 'judge' is recorded only by the proxy's own judge (learning.judge); an external "
                        "evaluation system sends source 'eval'", param="source")
    if source != "eval":
        return
    principal = request.get(PRINCIPAL)
    trusted = principal is not None and principal.via.startswith("trusted-proxy")
    if not trusted and not (principal is None and request.get(ADMIN_ROLE) == "admin"):
        raise Forbidden("source 'eval' is sent by the admin token or by an evaluation system through a trusted "
                        "proxy (trusted_proxies); a key or a read-only token sends 'user' or 'agent'",
                        param="source")


async def _entry(request: web.Request, request_id: str) -> LedgerEntry:
    ledger = request.app[LEDGER]
    deadline = time.monotonic() + (LEDGER_WAIT_S if request.app[BACKEND].kind == "redis" else 0.0)
    while True:
        entries = await ledger.entries_for(request_id)
        if entries:
            served = [e for e in entries if e.served_model is not None]
            return (served or entries)[-1]
        if time.monotonic() >= deadline:
            raise _not_found(request_id)
        await asyncio.sleep(0.1)


async def post_feedback(request: web.Request) -> web.Response:
    given = parse_feedback(await json_body(request))
    entry = await _entry(request, given.request_id)
    _authorize(request, entry)
    _may_send(request, given.source)
    principal = request.get(PRINCIPAL)
    who = f"key:{principal.key_id}" if principal is not None else actor(request)
    learner = request.app[LEARNER]
    feedback, created = await learner.record(given, entry, who, int(time.time() * 1000))
    if learner.settings.enabled:
        request.app[ROUTER].estimates = learner.estimates
    return web.json_response(feedback.to_json(), status=201 if created else 200)


async def get_feedback(request: web.Request) -> web.Response:
    request_id = query_value(request.query, "requestId")
    if request_id is None or not request_id.strip() or len(request_id) > MAX_ID_CHARS:
        raise InvalidRequest(f"give ?requestId= (a request id of at most {MAX_ID_CHARS} characters)",
                             param="requestId")
    entry = await _entry(request, request_id)
    _authorize(request, entry)
    stored = await request.app[LEARNER].store.feedback_for(request_id)
    return web.json_response({"requestId": request_id, "model": entry.served_model, "taskType": entry.task_type,
                              "status": entry.status, "data": [f.to_json() for f in stored]})


def add_routes(app: web.Application) -> None:
    app.router.add_post(FEEDBACK_PATH, post_feedback)
    app.router.add_get(FEEDBACK_PATH, get_feedback)


# --- the learner ---------------------------------------------------------------------------------


def _store(app: web.Application) -> LearningStore:
    backend = app[BACKEND]
    redis = getattr(backend.accounts, "redis", None)
    if backend.kind == "redis" and redis is not None:
        from costproxy.learning.redis import RedisLearningStore

        return RedisLearningStore(redis, app[SETTINGS].budgets.settings.key_prefix, label=backend.label)
    return SqliteLearningStore(backend.local)


async def learning_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS].learning
    store = _store(app)
    await store.open()
    learner = app[LEARNER] = Learner(store, settings)
    judge = app[JUDGE] = None
    if settings.judge.enabled:
        config = app[SETTINGS]
        judge = app[JUDGE] = Judge(settings.judge, config.registry, config.providers, app[SERVICES].upstream,
                                   learner=learner, accounts=app[BACKEND].accounts, quality=_quality_of(app))
    task = asyncio.create_task(_refresh(app, learner), name="costproxy-learning-refresh")
    yield
    await cancel_and_wait([task])
    if judge is not None:
        await judge.stop()


def _quality_of(app: web.Application) -> Callable[[ModelSpec, str, int], float]:
    """A model's expected quality on a task and difficulty bucket, as selection sees it now: the
    posterior mean where feedback has measured the cell, else the (hot-reloaded) quality profile's."""

    def quality(model: ModelSpec, task_type: str, bucket: int) -> float:
        prior = app[ROUTER].quality.cell(model.id, model.tier, task_type, bucket).value
        learned = app[LEARNER].estimates.lookup(task_type, bucket, model.id, prior)
        return prior if learned is None else learned.mean

    return quality


def capture_for_judge(request: web.Request, ctx: RequestContext, chat: ChatRequest) -> Capture | None:
    """A capture of a chat stream the judge drew (``Judge.wants``), else ``None`` (nothing is copied)."""
    judge = request.app.get(JUDGE)
    if judge is None or chat.api is not Api.CHAT or not judge.wants(str(chat.body.get("model") or "")):
        return None
    return Capture(Api.CHAT, ctx.endpoint)


def offer_stream_to_judge(request: web.Request, chat: ChatRequest, entry: LedgerEntry, capture: Capture) -> None:
    """Hand a drawn stream's assembled answer to the judge (an unfinished stream is not judged)."""
    judge, messages = request.app.get(JUDGE), chat.body.get("messages")
    whole = capture.answer()
    answer = None if whole is None else answer_text(whole)
    if judge is not None and isinstance(messages, list) and answer is not None:
        judge.offer(Sample(entry, messages, answer), drawn=True)


def offer_to_judge(request: web.Request, chat: ChatRequest, result: UnaryResult) -> None:
    """Hand a unary chat answer to the judge, which samples it or not (never awaited)."""
    judge = request.app.get(JUDGE)
    if judge is None or chat.api is not Api.CHAT:
        return
    messages, answer = chat.body.get("messages"), answer_text(result.data)
    if isinstance(messages, list) and answer is not None:
        judge.offer(Sample(result.entry, messages, answer))


async def _refresh(app: web.Application, learner: Learner) -> None:
    """Re-read the shared estimates now and then; a store away keeps the last ones."""
    router = app[ROUTER]
    while True:
        stop_if_cancelled()
        try:
            estimates = await learner.refresh()
            router.estimates = estimates if learner.settings.enabled else None
        except StoreUnavailable as exc:
            log.warning("learning_refresh_failed", error=str(exc))
        await asyncio.sleep(learner.settings.refresh_interval_s)

