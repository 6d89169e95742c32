"""The judge: a sampled share of ``auto`` answers compared with the reference model's answer.

Off by default (``learning.judge``).  For a sampled ``auto`` chat completion (unary, or streamed: the
stream the client received is then captured and assembled) answered by a model other than the
reference, in the background (never on the request's path):

1. the worst case of both calls — the reference answer (``max_output_tokens``) and the verdict (a few
   tokens) — is charged to the judge's own budget for the UTC day (``daily_budget_usd``, shared by
   replicas through the store); when it does not fit, nothing is called (logged once per day);
2. the reference model answers the same messages; the judge model reads the question, the reference
   answer and the served answer and says how good the served one is, from 0 to 10;
3. the verdict is relative — 10 means "as good as the reference" — while feedback scores are absolute
   (the chance the answer was right), so the verdict / 10 times the reference model's quality on the
   request's task and difficulty bucket (its posterior mean where feedback has measured it, else the
   quality profile's estimate) is recorded as feedback with ``source: judge``, the raw verdict in its
   comment (the estimates learn from it like from any other source, weighted by
   ``source_weights.judge``).  Recorded raw, a cheap model that matched a reference right 70 % of
   the time would have been credited with 100 %, above the reference itself;
4. both calls are ledgered as evaluation overhead: entries with ``source: judge``, no caller (no
   budget of any caller is charged), ``metadata.kind = "evaluation"`` and the judged request's id;
   the day's charge is corrected from the worst case to what the calls cost.

A failed call or an unreadable verdict records nothing (logged); the judge never raises into the
request that was sampled.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import structlog

from costproxy.budgets.accounts import Accounts
from costproxy.errors import ProxyError, StoreUnavailable
from costproxy.identity.principal import Principal
from costproxy.learning.config import JudgeSettings
from costproxy.learning.feedback import FeedbackInput
from costproxy.learning.service import Learner, entry_cell
from costproxy.ledger.entry import LedgerEntry
from costproxy.providers.config import ProviderSettings
from costproxy.providers.transport import Upstream
from costproxy.records import frozen
from costproxy.registry import ModelSpec, Registry, Usage

log = structlog.get_logger("costproxy.learning")

VERDICT_TOKENS = 8
PROMPT = (
    "You grade answers. Compare the CANDIDATE answer with the REFERENCE answer to the same conversation. "
    "Reply with one integer from 0 (wrong or useless) to 10 (as correct and useful as the reference), "
    "and nothing else.\n\nCONVERSATION:\n{question}\n\nREFERENCE ANSWER:\n{reference}\n\n"
    "CANDIDATE ANSWER:\n{candidate}"
)
_NUMBER = re.compile(r"\b(10|[0-9])\b")


@frozen
class Sample:
    """A request the judge may look at: its entry, the messages and the answer it got."""

    entry: LedgerEntry
    messages: Sequence[Mapping[str, Any]]
    answer: str


def answer_text(data: Mapping[str, Any]) -> str | None:
    """The first choice's text of a chat completion body."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) else None


def verdict(text: str | None) -> float | None:
    """The first integer 0..10 of the judge's reply, as a score in [0, 1]."""
    found = _NUMBER.search(text or "")
    return None if found is None else int(found.group(1)) / 10


def _conversation(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content')}" for m in messages
                     if isinstance(m.get("content"), str))


class Judge:
    def __init__(self, settings: JudgeSettings, registry: Registry, providers: Mapping[str, ProviderSettings],
                 upstream: Upstream, *, learner: Learner, accounts: Accounts,
                 draw: Callable[[], float] = random.random, clock: Callable[[], float] = time.time,
                 quality: Callable[[ModelSpec, str, int], float] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.providers = providers
        self.upstream = upstream
        self.learner = learner
        self.accounts = accounts
        self.draw = draw
        self.clock = clock
        self.quality = quality  # (model, task type, bucket) -> its expected quality there
        reference = settings.reference_model or registry.baseline_model
        self.reference = registry.models.get(reference or "")
        self.judge = registry.models.get(settings.judge_model or reference or "")
        self.tasks: set[asyncio.Task[None]] = set()
        self._refused_day: str | None = None

    def wants(self, requested_model: str) -> bool:
        """Draw whether a request for ``requested_model`` is judged, before its answer exists (a
        stream's answer is captured only when it is)."""
        return (self.settings.enabled and self.reference is not None and self.judge is not None
                and requested_model.startswith("auto") and self.draw() < self.settings.sample_rate)

    def offer(self, sample: Sample, *, drawn: bool = False) -> bool:
        """Start judging ``sample`` in the background if it is drawn (``drawn``: ``wants`` said so
        already); whether it was."""
        entry = sample.entry
        if (self.reference is None or entry.status != "ok" or entry.served_model in (None, self.reference.id)
                or not (drawn or self.wants(entry.requested_model or ""))):
            return False
        task = asyncio.create_task(self.run(sample), name=f"costproxy-judge-{entry.request_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def day(self) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self.clock()))

    async def run(self, sample: Sample) -> None:
        reference, judge = self.reference, self.judge
        assert reference is not None and judge is not None
        day, rid = self.day(), sample.entry.request_id
        prompt_tokens = sample.entry.prompt_tokens
        worst = (reference.worst_case_cost(prompt_tokens, self.settings.max_output_tokens)
                 + judge.worst_case_cost(2 * prompt_tokens + self.settings.max_output_tokens
                                         + sample.entry.completion_tokens + 200, VERDICT_TOKENS))
        try:
            if not await self.learner.store.charge(day, worst, self.settings.daily_budget_nanos):
                if self._refused_day != day:
                    log.warning("judge_budget_exhausted", day=day, cap_nanos=self.settings.daily_budget_nanos)
                    self._refused_day = day
                return
            spent = await self._judge(sample, reference, judge)
            await self.learner.store.charge(day, spent - worst, self.settings.daily_budget_nanos + worst)
        except (ProxyError, StoreUnavailable, ValueError) as exc:
            log.warning("judge_failed", request_id=rid, error=str(exc))

    async def _judge(self, sample: Sample, reference: ModelSpec, judge: ModelSpec) -> int:
        """Both calls, their ledger entries and the feedback; what the calls cost."""
        rid = sample.entry.request_id
        body = {"messages": list(sample.messages), "max_tokens": self.settings.max_output_tokens}
        ref_data, ref_cost = await self._call(reference, body, f"{rid}:judge-reference", rid)
        ref_answer = answer_text(ref_data) or ""
        question = PROMPT.format(question=_conversation(sample.messages), reference=ref_answer,
                                 candidate=sample.answer)
        judged, judge_cost = await self._call(judge, {"messages": [{"role": "user", "content": question}],
                                                      "max_tokens": VERDICT_TOKENS, "temperature": 0},
                                              f"{rid}:judge-verdict", rid)
        score = verdict(answer_text(judged))
        if score is None:
            log.warning("judge_verdict_unreadable", request_id=rid)
        else:
            absolute, note = self.absolute(score, sample.entry, reference)
            given = FeedbackInput(rid, absolute, "judge",
                                  comment=f"judge {judge.id}: {round(score * 10)}/10 against {reference.id}{note}")
            await self.learner.record(given, sample.entry, "judge", int(self.clock() * 1000))
        return ref_cost + judge_cost

    def absolute(self, score: float, entry: LedgerEntry, reference: ModelSpec) -> tuple[float, str]:
        """The relative verdict ``score`` as an absolute quality (module docstring, step 3), and a note
        saying how; unchanged when the request has no cell (it teaches nothing then) or no quality is known."""
        cell = entry_cell(entry)
        if cell is None or self.quality is None:
            return score, ""
        reference_quality = min(1.0, max(0.0, self.quality(reference, cell[0], cell[1])))
        value = round(score * reference_quality, 6)
        return value, f", whose quality here is {reference_quality:.3f}: {value:.3f}"

    async def _call(self, model: ModelSpec, body: dict[str, Any], call_id: str,
                    judged: str) -> tuple[dict[str, Any], int]:
        started = self.clock()
        payload = orjson.dumps({**body, "model": model.upstream_model})
        response = await self.upstream.call(self.providers[model.provider], "chat/completions",
                                            model.upstream_model, payload, call_id)
        if response.status != 200:
            raise ValueError(f"{model.id} answered HTTP {response.status}")
        usage_data = response.data.get("usage") or {}
        usage = Usage(prompt_tokens=int(usage_data.get("prompt_tokens", 0)),
                      completion_tokens=int(usage_data.get("completion_tokens", 0)))
        cost = model.cost(usage)
        entry = LedgerEntry(
            request_id=call_id, ts_ms=int(self.clock() * 1000), endpoint="chat/completions", status="ok",
            http_status=200, requested_model=model.id, served_model=model.id, provider=model.provider,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, cost_nanos=cost,
            baseline_nanos=cost, latency_ms=int((self.clock() - started) * 1000), source="judge",
            metadata={"kind": "evaluation", "judged_request": judged})
        reservation = await self.accounts.reserve(call_id, Principal(via="judge"), cost)
        await self.accounts.settle(reservation, entry)
        return response.data, cost
