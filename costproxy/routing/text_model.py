"""The text quality model: per-model weights over the hashed word n-grams of a prompt's query.

It corrects the profile's estimate of a model's quality on one request (the bucket, task or
predictor estimate of ``quality.py``) by what the words of the query say::

    p = 1 / (1 + exp(-(logit(base) + Σ_{i in ngrams} w[i] / sqrt(len(ngrams)))))

``ngrams`` are ``analyzer.ngrams.hashed_ngrams`` of the request (distinct bucket indices), so
an n-gram the model never saw weighs nothing and the estimate falls back to the base: traffic
unlike the calibration data is routed by the profiles alone.  ``costproxy calibrate`` fits the
weights (a residual L2-penalised logistic regression, ``tools/text_fit.py``); the quality file
stores them compactly, per model, as int8 quantised weights (base64) and one scale::

    text_model:
      scheme: "crc32 word 1-2 grams of the query, 4096 buckets, v1"   # analyzer.ngrams.NGRAM_SCHEME
      models:
        gpt-4o-mini: {scale: 0.0041, weights: "AAEC…"}   # NGRAM_BUCKETS signed bytes; w = byte · scale

A file written with another ``scheme`` is refused (the buckets would mean other words).
Scoring is pure Python: one table lookup per n-gram of the query (a few hundred at most).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from costproxy.analyzer.ngrams import NGRAM_BUCKETS, NGRAM_SCHEME
from costproxy.config_schema import Node

_CLIP = 30.0
_EDGE = 1e-4  # a base estimate of exactly 0 or 1 has no logit: keep it off the edge


@dataclass(frozen=True)
class TextModel:
    """Per-model n-gram weights (``NGRAM_BUCKETS`` floats each)."""

    weights: Mapping[str, tuple[float, ...]]
    scheme: str = NGRAM_SCHEME

    def adjust(self, model_id: str, base: float, ngrams: Sequence[int]) -> float | None:
        """The base estimate corrected by the query's n-grams, or ``None`` without weights for the model."""
        weights = self.weights.get(model_id)
        if weights is None or not ngrams:
            return None
        base = min(1.0 - _EDGE, max(_EDGE, base))
        # itemgetter picks every n-gram's weight in one C call (2-3x faster than map over __getitem__)
        total = weights[ngrams[0]] if len(ngrams) == 1 else sum(itemgetter(*ngrams)(weights))
        z = math.log(base / (1.0 - base)) + total / math.sqrt(len(ngrams))
        return 1.0 / (1.0 + math.exp(-max(-_CLIP, min(_CLIP, z))))


def quantize(weights: Sequence[float]) -> tuple[float, str]:
    """(scale, base64 of signed bytes) with ``w ≈ byte · scale``."""
    largest = max((abs(w) for w in weights), default=0.0)
    scale = largest / 127.0 if largest > 0 else 1.0
    raw = bytes(max(-127, min(127, round(w / scale))) & 0xFF for w in weights)
    return scale, base64.b64encode(raw).decode("ascii")


def dequantize(scale: float, text: str) -> tuple[float, ...]:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    return tuple((b - 256 if b > 127 else b) * scale for b in raw)


def _parse_weights(node: Node) -> tuple[float, ...]:
    scale = node.child("scale").number(minimum=0.0)
    text_node = node.child("weights")
    try:
        weights = dequantize(scale, text_node.str())
    except (binascii.Error, ValueError):
        raise text_node.error("must be base64 of signed bytes (costproxy calibrate writes it)") from None
    if len(weights) != NGRAM_BUCKETS:
        raise text_node.error(f"needs {NGRAM_BUCKETS} weights, got {len(weights)}")
    node.done()
    return weights


def parse_text_model(node: Node) -> TextModel | None:
    """The ``text_model`` section of a quality file (``None`` when absent)."""
    if node.value is None:
        return None
    scheme_node = node.child("scheme")
    scheme = scheme_node.str()
    if scheme != NGRAM_SCHEME:
        raise scheme_node.error(f"this version hashes n-grams as {NGRAM_SCHEME!r} (recalibrate with it)", scheme)
    weights = {model_id: _parse_weights(model_node) for model_id, model_node in node.child("models", {}).items()}
    node.done()
    return TextModel(weights=weights, scheme=scheme)


def text_model_document(model: TextModel) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for model_id, weights in sorted(model.weights.items()):
        scale, text = quantize(weights)
        models[model_id] = {"scale": float(f"{scale:.6g}"), "weights": text}
    return {"scheme": model.scheme, "models": models}
