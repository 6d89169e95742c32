"""What the tests of docs/ share: which configuration keys the settings parser really reads (with
their defaults), and the bits of Markdown the docs are checked by (tables, fenced blocks).

The configuration reference is *tested against* the parser rather than generated from it: the
parser (``config_schema.Node``) is instrumented while it loads a complete configuration, so every
key any section asks for is recorded with the default it passes.  A key the parser reads that the
doc does not list, a documented key the parser never reads, and a documented default that differs
from the parser's all fail ``tests/unit/test_docs_reference.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costproxy import config_schema
from costproxy.config_schema import Node

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REQUIRED = "required"
VARIES = "varies"  # the default depends on the element (e.g. a model's id, a provider's kind)
_MISSING = config_schema._MISSING
TYPED_ACCESSORS = ("str", "int", "number", "bool", "decimal", "env_name", "str_map", "elements")


@dataclass
class KeyRecord:
    file: str  # costproxy.yaml | models.yaml | quality.yaml
    path: str  # dotted, list elements as [], names chosen by the operator as *
    defaults: list[Any] = field(default_factory=list)  # one per read; _MISSING when required

    @property
    def default(self) -> Any:
        """The one default every read passed, REQUIRED, or VARIES."""
        distinct = {repr(d) for d in self.defaults}
        if len(distinct) > 1:
            return VARIES
        only = self.defaults[0]
        return REQUIRED if only is _MISSING else only


class KeyRecorder:
    """Collects (file, normalised path) -> defaults, and the accessors that read each value, while
    ``Node`` parses."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], KeyRecord] = {}
        self.kinds: dict[tuple[str, str], set[str]] = {}  # accessor names: int, number, str:a|b, …
        self._dynamic: dict[str, str] = {}  # raw path of an operator-named key -> its normalised form

    def normalise(self, raw: str) -> str:
        # The longest raw prefix that names an operator-chosen key (a provider, a model) becomes "*".
        best = ""
        for prefix in self._dynamic:
            if len(prefix) > len(best) and (raw == prefix or raw.startswith((prefix + ".", prefix + "["))):
                best = prefix
        head, rest = (self._dynamic[best], raw[len(best):]) if best else ("", raw)
        return head + re.sub(r"\[\d+\]", "[]", rest)

    def file_kind(self, file: str) -> str:
        return Path(file).name

    def read(self, node: Node, key: str, default: Any) -> None:
        path = self.normalise(node._child_path(key))
        record = self.records.setdefault((self.file_kind(node.file), path),
                                         KeyRecord(self.file_kind(node.file), path))
        record.defaults.append(default)

    def named(self, node: Node, key: str) -> None:
        raw = node._child_path(key)
        self._dynamic[raw] = self.normalise(node.path) + ".*" if node.path else "*"

    def accessed(self, node: Node, kind: str) -> None:
        path = re.sub(r"\[\]$", "", self.normalise(node.path))  # a list element types its list
        self.kinds.setdefault((self.file_kind(node.file), path), set()).add(kind)

    def kinds_of(self, file: str, path: str) -> set[str]:
        return self.kinds.get((file, path), set())

    def keys(self, file: str) -> dict[str, KeyRecord]:
        return {path: r for (kind, path), r in self.records.items() if kind == file}


@contextmanager
def recording() -> Iterator[KeyRecorder]:
    """Instrument ``Node.child``, ``Node.has`` and ``Node.items`` while the block runs."""
    recorder = KeyRecorder()
    child, has, items = Node.child, Node.has, Node.items

    def recorded_child(self: Node, key: str, default: Any = _MISSING) -> Node:
        recorder.read(self, key, default)
        return child(self, key, default)

    def recorded_has(self: Node, key: str) -> bool:
        recorder.read(self, key, None)  # asked about first: optional, its default lives in the model
        return has(self, key)

    def recorded_items(self: Node) -> Iterator[tuple[str, Node]]:
        for key, value in items(self):
            recorder.named(self, key)
            yield key, value

    typed = {name: getattr(Node, name) for name in TYPED_ACCESSORS}

    def typed_accessor(name: str) -> Any:
        original = typed[name]

        def accessor(self: Node, *args: Any, **kwargs: Any) -> Any:
            choices = kwargs.get("choices")
            recorder.accessed(self, f"str:{'|'.join(choices)}" if name == "str" and choices else name)
            return original(self, *args, **kwargs)

        return accessor

    Node.child, Node.has, Node.items = recorded_child, recorded_has, recorded_items  # type: ignore[method-assign]
    for name in TYPED_ACCESSORS:
        setattr(Node, name, typed_accessor(name))
    try:
        yield recorder
    finally:
        Node.child, Node.has, Node.items = child, has, items  # type: ignore[method-assign]
        for name, original in typed.items():
            setattr(Node, name, original)


# --- Markdown ------------------------------------------------------------------------------------


def markdown_tables(text: str) -> Iterator[list[dict[str, str]]]:
    """Every pipe table in ``text`` as a list of rows (header cell -> cell text)."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("|") and index + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[index + 1]):
            header = _cells(lines[index])
            rows = []
            index += 2
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[index]), strict=False)))
                index += 1
            yield rows
        else:
            index += 1


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [part.strip().replace("\\|", "|") for part in parts]


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language fenced blocks of ``text``, in order."""
    pattern = re.compile(r"^```" + re.escape(language) + r"[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
    return [match.group(1) for match in pattern.finditer(text)]


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)
