"""The evaluation data-set format and its reader.

One CSV file (``.csv``, or gzip-compressed ``.csv.gz``), a header row, one row per prompt:

``prompt`` (required)
    The prompt as sent to the models.  Either plain text (one user message) or a Python/JSON list
    of strings, one per user turn (RouterBench's format, e.g. ``['Write a function…']``).
``split`` (required)
    ``train`` or ``test``; rows with any other value are ignored.  Calibrate on train, report on test.
``perf::<model>`` (required, at least one model)
    The score of that model's answer in [0, 1] (1.0 correct, 0.0 wrong, or a graded score).
``cost_usd::<model>`` (required for every model with a ``perf`` column)
    What that call cost in USD (input plus output).
``resp_chars::<model>`` (optional)
    Length of the model's answer in characters (about 4 per token); used to split the fitted
    price into input and output prices.
``eval_name`` (optional)
    The benchmark a row comes from; reported per benchmark.
``dup_sample_id`` (optional)
    ``True`` marks a row to drop (colliding sample ids).

Other columns are ignored.  An empty score or cost cell is an error: every model must have
answered every row.  ``/work/shared/data`` (RouterBench subset: ARC, MBPP, WinoGrande) is in this
format.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SPLITS = ("train", "test")
_PERF, _COST, _CHARS = "perf::", "cost_usd::", "resp_chars::"

FloatArray = npt.NDArray[np.float64]


class DatasetError(ValueError):
    """The data set does not follow the format; names the file, and the row or column."""


@dataclass(frozen=True)
class EvalSet:
    """Rows of one data set; ``perf``/``cost``/``out_chars`` are (rows × models) arrays."""

    source: str
    models: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]  # user turns of each row
    splits: tuple[str, ...]
    eval_names: tuple[str, ...]
    perf: FloatArray
    cost: FloatArray
    out_chars: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: Sequence[int] | npt.NDArray[np.intp]) -> EvalSet:
        idx = np.asarray(indices, dtype=np.intp)
        return EvalSet(
            source=self.source,
            models=self.models,
            prompts=tuple(self.prompts[i] for i in idx),
            splits=tuple(self.splits[i] for i in idx),
            eval_names=tuple(self.eval_names[i] for i in idx),
            perf=self.perf[idx],
            cost=self.cost[idx],
            out_chars=None if self.out_chars is None else self.out_chars[idx],
        )

    def split(self, name: str) -> EvalSet:
        return self.subset([i for i, s in enumerate(self.splits) if s == name])

    def messages(self, row: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": turn} for turn in self.prompts[row]]


def decode_prompt(raw: str) -> tuple[str, ...]:
    """User turns of a prompt cell: a list literal of strings, or the text itself."""
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        for parse in (ast.literal_eval, json.loads):
            try:
                value = parse(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return tuple(value)
    return (raw,)


def _models(header: Sequence[str], file: str) -> tuple[str, ...]:
    columns = set(header)
    for required in ("prompt", "split"):
        if required not in columns:
            raise DatasetError(f"{file}: missing column {required!r}")
    models = tuple(c[len(_PERF):] for c in header if c.startswith(_PERF))
    if not models:
        raise DatasetError(f"{file}: no perf::<model> columns")
    for model in models:
        if _COST + model not in columns:
            raise DatasetError(f"{file}: column perf::{model} has no cost_usd::{model}")
    return models


def _number(row: dict[str, str], column: str, file: str, line: int) -> float:
    cell = row.get(column)
    try:
        value = float(cell) if cell is not None else float("nan")
    except ValueError:
        raise DatasetError(f"{file}: line {line}, column {column}: not a number: {cell!r}") from None
    if not np.isfinite(value) or value < 0:
        raise DatasetError(f"{file}: line {line}, column {column}: must be a finite number >= 0, got {cell!r}")
    return value


def read_dataset(lines: Iterable[str], file: str) -> EvalSet:
    """Parse the CSV text of a data set (see the module docstring)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(lines)
    models = _models(reader.fieldnames or [], file)
    has_chars = all(_CHARS + m in (reader.fieldnames or []) for m in models)
    prompts, splits, names = [], [], []
    perf: list[list[float]] = []
    cost: list[list[float]] = []
    chars: list[list[float]] = []
    for row in reader:
        line = reader.line_num
        split = (row.get("split") or "").strip()
        if split not in SPLITS or (row.get("dup_sample_id") or "").strip().lower() == "true":
            continue
        prompts.append(decode_prompt(row.get("prompt") or ""))
        splits.append(split)
        names.append((row.get("eval_name") or "").strip() or "all")
        perf.append([_number(row, _PERF + m, file, line) for m in models])
        cost.append([_number(row, _COST + m, file, line) for m in models])
        if has_chars:
            chars.append([_number(row, _CHARS + m, file, line) for m in models])
    if not prompts:
        raise DatasetError(f"{file}: no rows with split train or test")
    return EvalSet(
        source=file, models=models, prompts=tuple(prompts), splits=tuple(splits), eval_names=tuple(names),
        perf=np.asarray(perf, dtype=np.float64), cost=np.asarray(cost, dtype=np.float64),
        out_chars=np.asarray(chars, dtype=np.float64) if has_chars else None,
    )


def load_dataset(path: Path) -> EvalSet:
    """Read a ``.csv`` or ``.csv.gz`` data set from disk."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise DatasetError(f"{path}: not a gzip file: {exc}") from None
    with io.StringIO(raw.decode("utf-8-sig"), newline="") as text:
        return read_dataset(text, str(path))
