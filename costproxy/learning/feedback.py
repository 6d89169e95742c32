"""A piece of feedback on one request: what ``POST /api/v1/feedback`` accepts (sans-IO, pure).

Body (camelCase, snake_case accepted)::

    {"requestId": "…", "score": 0.8, "source": "user", "comment": "…"}
    {"requestId": "…", "thumbs": "up", "source": "agent"}

``score`` is a number in [0, 1] (1: the answer was right); ``thumbs`` ``up``/``down`` stands for 1
and 0.  Exactly one of the two.  ``source`` is one of ``config.SOURCES``.  A request has at most
one piece of feedback per source: sending it again replaces it (same content: nothing changes).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from costproxy.errors import InvalidRequest
from costproxy.learning.config import SOURCES
from costproxy.learning.estimates import Cell
from costproxy.records import frozen
from costproxy.wire import canonical, iso, spellings

FIELDS = ("requestId", "score", "thumbs", "source", "comment")
THUMBS = {"up": 1.0, "down": 0.0}
MAX_ID_CHARS = 256
MAX_COMMENT_CHARS = 4_000


@frozen
class FeedbackInput:
    request_id: str
    score: float
    source: str
    comment: str | None = None


@frozen
class Feedback:
    """Feedback as stored: with the cell it informs (``None``: the request was not routed by task)."""

    request_id: str
    source: str
    score: float
    comment: str | None
    model: str | None
    task_type: str | None
    bucket: int | None
    weight: float  # what it counted for in the estimates (0: nothing)
    actor: str
    created_at_ms: int
    updated_at_ms: int

    @property
    def cell(self) -> Cell | None:
        if self.model is None or self.task_type is None or self.bucket is None:
            return None
        return self.task_type, self.bucket, self.model

    def same_content(self, other: FeedbackInput) -> bool:
        return self.score == other.score and self.comment == other.comment

    def stored(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "source": self.source, "score": self.score,
                "comment": self.comment, "model": self.model, "taskType": self.task_type,
                "difficultyBucket": self.bucket, "weight": self.weight, "learned": self.cell is not None
                and self.weight > 0, "createdBy": self.actor, "createdAt": iso(self.created_at_ms),
                "updatedAt": iso(self.updated_at_ms)}


def feedback_from_stored(text: str | bytes) -> Feedback:
    return Feedback(**json.loads(text))


def _score(body: dict[str, Any], names: dict[str, str]) -> float:
    score, thumbs = body.get("score"), body.get("thumbs")
    if (score is None) == (thumbs is None):
        raise InvalidRequest("give exactly one of 'score' (a number in [0, 1]) and 'thumbs' ('up' or 'down')",
                             param="score")
    if thumbs is not None:
        if thumbs not in THUMBS:
            raise InvalidRequest(f"'{names['thumbs']}' must be 'up' or 'down'", param=names["thumbs"])
        return THUMBS[thumbs]
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
        raise InvalidRequest(f"'{names['score']}' must be a number in [0, 1]", param=names["score"])
    return float(score)


def parse_feedback(body: dict[str, Any]) -> FeedbackInput:
    """Validate a feedback body; every problem is a 400 naming the field as the client spelled it."""
    names = {**{n: n for n in FIELDS}, **spellings(body, FIELDS)}
    data = canonical(body, FIELDS)
    request_id = data.get("requestId")
    if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > MAX_ID_CHARS:
        raise InvalidRequest(f"'{names['requestId']}' must be a non-empty string of at most {MAX_ID_CHARS} "
                             "characters (the x-costproxy-request-id of the request)", param=names["requestId"])
    source = data.get("source")
    if source not in SOURCES:
        raise InvalidRequest(f"'{names['source']}' must be one of {', '.join(SOURCES)}", param=names["source"])
    comment = data.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
        raise InvalidRequest(f"'{names['comment']}' must be a string of at most {MAX_COMMENT_CHARS} characters",
                             param=names["comment"])
    return FeedbackInput(request_id=request_id, score=_score(data, names), source=str(source), comment=comment)
