"""Expected answer quality per model, task type and difficulty: what the selection engine trades
against cost.

A quality is a number in [0, 1] — the expected share of requests of that kind the model answers
acceptably (accuracy on an evaluation set).  Profiles live in a YAML file (``config/quality.yaml``
holds documented priors; ``costproxy calibrate`` writes fitted ones in the same format)::

    version: 1
    source: "what these numbers are and where they come from"
    fitted_on:                     # optional: data, split, command, date (costproxy calibrate writes it)
      data: my_eval.csv.gz
      split: "train (2205 rows)"
      command: "costproxy calibrate --data my_eval.csv.gz --out config/quality.yaml"
      date: "2026-11-29"
    difficulty_buckets:            # upper edges of the difficulty buckets, strictly increasing in (0, 1)
      default: [0.35, 0.55]        # 3 buckets: easy < 0.35 <= medium < 0.55 <= hard
      question_answering: [0.4]    # optional per-task edges (calibration uses per-task quantiles)
    tier_priors: {economy: 0.62, standard: 0.74, premium: 0.84}
    models:
      gpt-4o-mini:
        overall: 0.74
        tasks:
          code_generation: {overall: 0.72, buckets: [0.80, 0.72, 0.60], samples: 0}
          classification: 0.86     # short form: the task's overall quality only
    predictors:                    # optional: per-request estimates (costproxy calibrate writes them)
      features: [words, long_words, ...]   # costproxy.analyzer.tasks.FEATURE_NAMES, in that order
      models:
        gpt-4o-mini:
          question_answering: [-0.4, 1.2, ...]   # bias, then one weight per feature
    text_model: {scheme: "...", models: {gpt-4o-mini: {scale: 0.004, weights: "base64"}}}
                                   # optional: n-gram weights per model (format: text_model.py)
    registry:                      # optional: models not in models.yaml (calibrated data sets)
      models: {...}                # the models.yaml format (costproxy/registry.py)
    calibration: {...}             # optional: how ``costproxy calibrate`` made the file (free-form)

Lookup falls back from the most specific estimate to the least: model+task+bucket → model+task
→ model overall → the model's tier prior (→ ``default_prior`` for an unknown tier).  ``estimate``
first tries the request's own estimate: when the file has a predictor for the model and task and the
request has query features, the expected quality is the logistic
``1 / (1 + exp(-(bias + Σ weight·feature)))`` — a probability that this model answers this prompt
acceptably, a few dozen multiplications in pure Python.  The ``features`` list must name exactly the
analyzer's current ``FEATURE_NAMES`` (a stale file is an error, not a silent misreading).  With a
``text_model``, that estimate is finally corrected by the words of the request's query
(``text_model.py``; level ``text``).
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

from costproxy.analyzer.tasks import FEATURE_NAMES, TASK_TYPES
from costproxy.config_schema import Node
from costproxy.records import frozen
from costproxy.registry import TIERS, Registry, parse_registry
from costproxy.routing.text_model import TextModel, parse_text_model, text_model_document

QUALITY_FORMAT_VERSION = 1
DEFAULT_BUCKET_EDGES = (0.35, 0.55)
FITTED_ON_KEYS = ("data", "split", "command", "date")
LEVELS = ("text", "predictor", "bucket", "task", "model", "tier", "default")
Predictors = Mapping[tuple[str, str], tuple[float, ...]]  # (model, task) → (bias, *weights)


@frozen
class TaskQuality:
    overall: float | None
    buckets: tuple[float | None, ...] = ()
    samples: int = 0


@frozen
class ModelQuality:
    overall: float | None
    tasks: Mapping[str, TaskQuality] = field(default_factory=dict)


class Cell(NamedTuple):
    """What the profiles say of one model for one task and bucket (``QualityProfiles.cell``)."""

    value: float
    level: str  # LEVELS
    support: int | None  # QualityProfiles.support
    tier: str  # the tier it was looked up with (a registry reload may change a model's tier)


@dataclass(frozen=True)
class QualityProfiles:
    models: Mapping[str, ModelQuality]
    tier_priors: Mapping[str, float]
    bucket_edges: Mapping[str, tuple[float, ...]] = field(
        default_factory=lambda: {"default": DEFAULT_BUCKET_EDGES}
    )
    source: str = ""
    default_prior: float = 0.6
    registry: Registry | None = None  # models a calibrated data set brings along
    calibration: Mapping[str, Any] = field(default_factory=dict)  # settings of costproxy calibrate
    predictors: Predictors = field(default_factory=dict)
    text: TextModel | None = None  # per-model n-gram weights (text_model.py)
    fitted_on: Mapping[str, str] = field(default_factory=dict)  # FITTED_ON_KEYS: what the numbers come from
    # Cells by (task, bucket), then model id (``cell``): profiles never change, and selection asks
    # for the same few hundred combinations on every request.
    _tables: dict[tuple[str, int], dict[str, Cell]] = field(default_factory=dict, init=False, compare=False,
                                                             repr=False)
    # Whether the file records how many calibration rows stand behind its numbers (``samples``, as
    # ``costproxy calibrate`` writes them); hand-written priors record none.  Set by __post_init__.
    counted: bool = field(default=False, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        counted = any(t.samples > 0 for m in self.models.values() for t in m.tasks.values())
        object.__setattr__(self, "counted", counted)

    def support(self, model_id: str, task_type: str) -> int | None:
        """Calibration rows behind ``model_id``'s estimate for ``task_type``: its task entry's
        ``samples``, 0 when the model or the task has no entry (the estimate is a fallback from other
        tasks or the tier) — or ``None`` when the file counts nothing (written priors, taken as written)."""
        if not self.counted:
            return None
        model = self.models.get(model_id)
        task = model.tasks.get(task_type) if model is not None else None
        return task.samples if task is not None else 0

    def edges(self, task_type: str) -> tuple[float, ...]:
        edges = self.bucket_edges.get(task_type)
        return edges if edges is not None else self.bucket_edges.get("default", DEFAULT_BUCKET_EDGES)

    def bucket(self, task_type: str, difficulty: float) -> int:
        """Index of the difficulty bucket (0 = easiest) for this task."""
        return bisect_right(self.edges(task_type), difficulty)

    def lookup(self, model_id: str, tier: str, task_type: str, bucket: int) -> tuple[float, str]:
        """(expected quality, level it came from: one of ``LEVELS``)."""
        model = self.models.get(model_id)
        if model is not None:
            task = model.tasks.get(task_type)
            if task is not None:
                if 0 <= bucket < len(task.buckets):
                    value = task.buckets[bucket]
                    if value is not None:
                        return value, "bucket"
                if task.overall is not None:
                    return task.overall, "task"
            if model.overall is not None:
                return model.overall, "model"
        prior = self.tier_priors.get(tier)
        if prior is not None:
            return prior, "tier"
        return self.default_prior, "default"

    def table(self, task_type: str, bucket: int) -> dict[str, Cell]:
        """Model id → ``Cell`` for one task and bucket, filled by ``cell`` as models are asked for:
        what selection reads per candidate when the request's own estimate is not needed (no
        predictors, no text model)."""
        key = (task_type, bucket)
        found = self._tables.get(key)
        if found is None:
            if len(self._tables) > 4_096:
                self._tables.clear()
            found = self._tables[key] = {}
        return found

    def cell(self, model_id: str, tier: str, task_type: str, bucket: int) -> Cell:
        """``lookup`` and ``support`` of one model, remembered in ``table``."""
        table = self.table(task_type, bucket)
        found = table.get(model_id)
        if found is None or found.tier != tier:
            value, level = self.lookup(model_id, tier, task_type, bucket)
            found = table[model_id] = Cell(value, level, self.support(model_id, task_type), tier)
        return found

    def expected(self, model_id: str, tier: str, task_type: str, difficulty: float) -> float:
        return self.lookup(model_id, tier, task_type, self.bucket(task_type, difficulty))[0]

    def estimate(self, model_id: str, tier: str, task_type: str, bucket: int,
                 features: Sequence[float], ngrams: Sequence[int] = ()) -> tuple[float, str]:
        """The request's own estimate: from its query features when a predictor exists, else ``lookup``;
        then corrected by the text model from the query's n-grams when it has weights for the model."""
        value, level = self._base_estimate(model_id, tier, task_type, bucket, features)
        if self.text is not None and ngrams:
            adjusted = self.text.adjust(model_id, value, ngrams)
            if adjusted is not None:
                return adjusted, "text"
        return value, level

    def _base_estimate(self, model_id: str, tier: str, task_type: str, bucket: int,
                       features: Sequence[float]) -> tuple[float, str]:
        if features and self.predictors:
            weights = self.predictors.get((model_id, task_type))
            if weights is not None:
                z = weights[0] + sum(map(operator.mul, weights[1:], features))
                return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)))), "predictor"
        found = self.cell(model_id, tier, task_type, bucket)
        return found.value, found.level


# --- parsing ------------------------------------------------------------------------------------


def _quality(node: Node) -> float:
    return node.number(minimum=0.0, maximum=1.0)


def _opt_quality(node: Node) -> float | None:
    return None if node.value is None else _quality(node)


def _parse_edges(node: Node) -> dict[str, tuple[float, ...]]:
    result: dict[str, tuple[float, ...]] = {}
    for task, edges_node in node.items():
        if task != "default" and task not in TASK_TYPES:
            raise edges_node.error(f"unknown task type (known: default, {', '.join(TASK_TYPES)})", task)
        edges = tuple(e.number(minimum=0.0, maximum=1.0) for e in edges_node.elements())
        if any(b <= a for a, b in pairwise(edges)):
            raise edges_node.error("bucket edges must be strictly increasing", list(edges))
        result[task] = edges
    result.setdefault("default", DEFAULT_BUCKET_EDGES)
    return result


def _parse_task(node: Node, n_buckets: int) -> TaskQuality:
    if not isinstance(node.value, dict):
        return TaskQuality(overall=_quality(node))
    buckets_node = node.child("buckets", [])
    buckets = tuple(_opt_quality(b) for b in buckets_node.elements())
    if buckets and len(buckets) != n_buckets:
        raise buckets_node.error(f"needs {n_buckets} values (one per difficulty bucket)", list(buckets))
    task = TaskQuality(
        overall=_opt_quality(node.child("overall", None)),
        buckets=buckets,
        samples=node.child("samples", 0).int(minimum=0),
    )
    node.done()
    return task


def _parse_model(node: Node, edges: Mapping[str, tuple[float, ...]]) -> ModelQuality:
    tasks: dict[str, TaskQuality] = {}
    for task_type, task_node in node.child("tasks", {}).items():
        if task_type not in TASK_TYPES:
            raise task_node.error(f"unknown task type (known: {', '.join(TASK_TYPES)})", task_type)
        n_buckets = len(edges.get(task_type, edges["default"])) + 1
        tasks[task_type] = _parse_task(task_node, n_buckets)
    model = ModelQuality(overall=_opt_quality(node.child("overall", None)), tasks=tasks)
    node.done()
    return model


def _parse_predictors(node: Node) -> dict[tuple[str, str], tuple[float, ...]]:
    if node.value is None:
        return {}
    names_node = node.child("features")
    names = tuple(names_node.str_list())
    if names != FEATURE_NAMES:
        raise names_node.error(f"must list the analyzer's features in order: {', '.join(FEATURE_NAMES)} "
                               "(recalibrate with this version)", list(names))
    result: dict[tuple[str, str], tuple[float, ...]] = {}
    for model_id, model_node in node.child("models", {}).items():
        for task_type, weights_node in model_node.items():
            if task_type not in TASK_TYPES:
                raise weights_node.error(f"unknown task type (known: {', '.join(TASK_TYPES)})", task_type)
            weights = tuple(w.number() for w in weights_node.elements())
            if len(weights) != len(FEATURE_NAMES) + 1:
                raise weights_node.error(f"needs {len(FEATURE_NAMES) + 1} numbers (bias, then one weight "
                                         "per feature)", list(weights))
            result[(model_id, task_type)] = weights
    node.done()
    return result


def parse_quality(document: Any, file: str) -> QualityProfiles:
    """Build ``QualityProfiles`` from a parsed quality YAML; errors name file, dotted path and value."""
    root = Node(document, file)
    root.child("version", QUALITY_FORMAT_VERSION).int(minimum=1, maximum=QUALITY_FORMAT_VERSION)
    edges = _parse_edges(root.child("difficulty_buckets", {}))
    tier_priors: dict[str, float] = {}
    for tier, prior_node in root.child("tier_priors", {}).items():
        if tier not in TIERS:
            raise prior_node.error(f"unknown tier (known: {', '.join(TIERS)})", tier)
        tier_priors[tier] = _quality(prior_node)
    models = {model_id: _parse_model(node, edges) for model_id, node in root.child("models", {}).items()}
    predictors = _parse_predictors(root.child("predictors", None))
    text = parse_text_model(root.child("text_model", None))
    fitted_on_node = root.child("fitted_on", {})
    fitted_on = {key: fitted_on_node.child(key).str() for key in FITTED_ON_KEYS if fitted_on_node.has(key)}
    fitted_on_node.done()
    registry_node = root.child("registry", None)
    registry = None if registry_node.value is None else parse_registry(registry_node.value, file)
    profiles = QualityProfiles(
        models=models,
        tier_priors=tier_priors,
        bucket_edges=edges,
        source=root.child("source", "").str(allow_empty=True),
        default_prior=_quality(root.child("default_prior", 0.6)),
        registry=registry,
        calibration=root.child("calibration", {}).mapping(),
        predictors=predictors,
        text=text,
        fitted_on=fitted_on,
    )
    root.done()
    return profiles


# --- writing (pure: returns the document; the caller dumps it) ----------------------------------


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def quality_document(profiles: QualityProfiles, registry: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The YAML document for ``profiles`` (``parse_quality`` reads it back unchanged)."""
    models: dict[str, Any] = {}
    for model_id, model in profiles.models.items():
        tasks: dict[str, Any] = {}
        for task_type, task in model.tasks.items():
            entry: dict[str, Any] = {"overall": _rounded(task.overall)}
            if task.buckets:
                entry["buckets"] = [_rounded(b) for b in task.buckets]
            entry["samples"] = task.samples
            tasks[task_type] = entry
        models[model_id] = {"overall": _rounded(model.overall), "tasks": tasks}
    document: dict[str, Any] = {
        "version": QUALITY_FORMAT_VERSION,
        "source": profiles.source,
        **({"fitted_on": dict(profiles.fitted_on)} if profiles.fitted_on else {}),
        "difficulty_buckets": {task: [round(e, 4) for e in edges]
                               for task, edges in profiles.bucket_edges.items()},
        "tier_priors": {tier: round(p, 4) for tier, p in profiles.tier_priors.items()},
        "default_prior": round(profiles.default_prior, 4),
        "models": models,
    }
    if profiles.predictors:
        by_model: dict[str, dict[str, list[float]]] = {}
        for (model_id, task_type), weights in sorted(profiles.predictors.items()):
            by_model.setdefault(model_id, {})[task_type] = [round(w, 5) for w in weights]
        document["predictors"] = {"features": list(FEATURE_NAMES), "models": by_model}
    if profiles.text is not None:
        document["text_model"] = text_model_document(profiles.text)
    if profiles.calibration:
        document["calibration"] = dict(profiles.calibration)
    if registry is not None:
        document["registry"] = dict(registry)
    return document
