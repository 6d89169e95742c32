"""What a request needs, from its OpenAI body: the ``RequestProfile`` the selection engine reads.

``analyze`` is pure: the caller counts the input tokens (``analyzer.tokens``) and passes the number,
so this module depends on no tokenizer.  Required capabilities come from the body:

- ``tools`` or ``functions`` (non-empty) → ``tools``
- an ``image_url`` content part → ``vision``
- ``response_format.type == "json_schema"`` → ``json_schema``; ``"json_object"`` → ``json_mode``
- ``stream: true`` → ``streaming``
- ``reasoning_effort`` → ``reasoning``

Expected output tokens are a per-task heuristic (``_OUTPUT_BY_TASK``), bounded by the request's
``max_completion_tokens`` / ``max_tokens``:

- fixed typical answer lengths for open-ended tasks (code 450, math 350, reasoning 300,
  question answering 150, creative writing 600, chat 200, extraction 150, classification 10);
- summarization: 15 % of the input (at least 60, at most 600);
- translation: about the size of the input (the text is re-emitted in another language), at most 2,000;
- a prompt that asks for a single letter, word or yes/no: 5 tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from costproxy.analyzer.ngrams import hashed_ngrams
from costproxy.analyzer.tasks import TASK_TYPES, TaskEstimate, detect_task
from costproxy.records import frozen
from costproxy.request import asked_output_cap

_OUTPUT_BY_TASK = {
    "code_generation": 450,
    "math": 350,
    "reasoning": 300,
    "summarization": 200,
    "translation": 300,
    "extraction": 150,
    "classification": 10,
    "question_answering": 150,
    "creative_writing": 600,
    "general_chat": 200,
}
_SHORT_ANSWER_TOKENS = 5
_SYSTEM_ROLES = ("system", "developer")


@frozen
class RequestProfile:
    input_tokens: int
    expected_output_tokens: int
    max_output_tokens: int | None  # from the request (max_completion_tokens / max_tokens)
    task_type: str
    difficulty: float  # [0, 1]
    required_capabilities: frozenset[str]
    task_source: str = "detected"  # "detected" | "hint"
    features: tuple[float, ...] = ()  # tasks.FEATURE_NAMES of the query, for quality predictors
    ngrams: tuple[int, ...] = ()  # ngrams.hashed_ngrams of the query, for the text quality model


def _text_of(content: Any, capabilities: set[str]) -> str:
    """Text of a message's content (string or list of parts); notes image parts as ``vision``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" or "image_url" in part:
            capabilities.add("vision")
    return "\n".join(texts)


def _texts(body: Mapping[str, Any], capabilities: set[str]) -> tuple[str, str]:
    """(last user message, system prompt); a completions ``prompt`` counts as the user message."""
    messages = body.get("messages")
    user, system = "", []
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            text = _text_of(message.get("content"), capabilities)
            role = message.get("role")
            if role in _SYSTEM_ROLES:
                system.append(text)
            elif role == "user":
                user = text
    prompt = body.get("prompt")
    if not user and isinstance(prompt, str):
        user = prompt
    elif not user and isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        user = prompt[-1]
    return user, "\n".join(system)


def _capabilities(body: Mapping[str, Any], found: set[str]) -> frozenset[str]:
    if body.get("tools") or body.get("functions"):
        found.add("tools")
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if kind == "json_schema":
            found.add("json_schema")
        elif kind == "json_object":
            found.add("json_mode")
    if body.get("stream") is True:
        found.add("streaming")
    if body.get("reasoning_effort"):
        found.add("reasoning")
    return frozenset(found)


def _max_output(body: Mapping[str, Any]) -> int | None:
    return asked_output_cap(body)


def expected_output_tokens(estimate: TaskEstimate, input_tokens: int, max_output: int | None) -> int:
    """The per-task heuristic of the module docstring, bounded by the request's cap."""
    task = estimate.task_type
    if estimate.short_answer:
        expected = _SHORT_ANSWER_TOKENS
    elif task == "summarization":
        expected = max(60, min(600, input_tokens * 15 // 100))
    elif task == "translation":
        expected = max(50, min(2_000, input_tokens))
    else:
        expected = _OUTPUT_BY_TASK.get(task, 200)
    return min(expected, max_output) if max_output is not None else expected


def analyze(body: Mapping[str, Any], input_tokens: int, task_hint: str | None = None, *,
            features: bool = True, ngrams: bool = True) -> RequestProfile:
    """Profile an OpenAI chat (or completions) body whose input tokens were already counted.

    ``task_hint`` (e.g. from ``X-Costproxy-Task-Type``) replaces the detected task type when it
    names one of ``TASK_TYPES`` (unknown hints are ignored); difficulty is still estimated from the text.
    ``features=False`` skips the query features (only quality predictors read them) and
    ``ngrams=False`` hashing the query's n-grams (only a text quality model reads them).
    """
    found: set[str] = set()
    user, system = _texts(body, found)
    capabilities = _capabilities(body, found)
    hint = task_hint if task_hint in TASK_TYPES else None
    estimate = detect_task(user, system, input_tokens, hint, features=features)
    max_output = _max_output(body)
    return RequestProfile(
        input_tokens=input_tokens,
        expected_output_tokens=expected_output_tokens(estimate, input_tokens, max_output),
        max_output_tokens=max_output,
        task_type=estimate.task_type,
        difficulty=estimate.difficulty,
        required_capabilities=capabilities,
        task_source="hint" if hint else "detected",
        features=estimate.features,
        ngrams=hashed_ngrams(user) if ngrams else (),
    )

