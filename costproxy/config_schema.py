"""Strict, typed reading of parsed YAML/JSON documents.

A ``Node`` is a value plus where it came from (file and dotted path).  Every accessor checks the
type and raises ``ConfigError`` naming file, dotted path and the bad value; ``Node.done()`` turns
any key nobody asked for into an error, so typos in config files never pass silently.
"""

from __future__ import annotations

import builtins
import datetime
import math
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

from costproxy.errors import ConfigError
from costproxy.money import MoneyError, parse_decimal

T = TypeVar("T")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING: Any = object()


class Node:
    def __init__(self, value: Any, file: str, path: str = "") -> None:
        self.value = value
        self.file = file
        self.path = path
        self._seen: set[str] = set()

    def error(self, message: str, value: object = None) -> ConfigError:
        return ConfigError(self.file, self.path, message, value)

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    # --- mappings -------------------------------------------------------------------------
    def mapping(self) -> dict[str, Any]:
        if self.value is None:
            return {}
        if not isinstance(self.value, dict):
            raise self.error("must be a mapping", self.value)
        for key in self.value:
            if not isinstance(key, str):
                raise self.error("keys must be strings", key)
        return self.value

    def has(self, key: str) -> bool:
        return key in self.mapping()

    def child(self, key: str, default: Any = _MISSING) -> Node:
        data = self.mapping()
        self._seen.add(key)
        if key not in data:
            if default is _MISSING:
                raise ConfigError(self.file, self._child_path(key), "is required")
            return Node(default, self.file, self._child_path(key))
        return Node(data[key], self.file, self._child_path(key))

    def items(self) -> Iterator[tuple[str, Node]]:
        for key in self.mapping():
            self._seen.add(key)
            yield key, Node(self.mapping()[key], self.file, self._child_path(key))

    def done(self) -> None:
        """Raise for the first key that was never read: unknown keys are errors."""
        for key in self.mapping():
            if key not in self._seen:
                raise ConfigError(self.file, self._child_path(key), "unknown key", self.mapping()[key])

    # --- sequences ------------------------------------------------------------------------
    def elements(self) -> list[Node]:
        if self.value is None:
            return []
        if not isinstance(self.value, list):
            raise self.error("must be a list", self.value)
        return [Node(v, self.file, self._child_path(i)) for i, v in enumerate(self.value)]

    # --- scalars --------------------------------------------------------------------------
    def str(self, *, choices: tuple[str, ...] | None = None, allow_empty: bool = False) -> str:
        if not isinstance(self.value, str):
            raise self.error("must be a string", self.value)
        if not allow_empty and not self.value.strip():
            raise self.error("must not be empty", self.value)
        if choices is not None and self.value not in choices:
            raise self.error(f"must be one of {', '.join(choices)}", self.value)
        return self.value

    def env_name(self) -> builtins.str:
        """The NAME of an environment variable (never echoing in full what may be a pasted secret)."""
        name = self.str()
        if not _ENV_NAME.fullmatch(name):
            raise self.error("must be the NAME of an environment variable (letters, digits, _), not a secret",
                             name if len(name) < 8 else name[:4] + "…")
        return name

    def opt_str(self) -> builtins.str | None:
        return None if self.value is None else self.str()

    def int(self, *, minimum: int | None = None, maximum: int | None = None) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.error("must be an integer", self.value)
        if minimum is not None and self.value < minimum:
            raise self.error(f"must be >= {minimum}", self.value)
        if maximum is not None and self.value > maximum:
            raise self.error(f"must be <= {maximum}", self.value)
        return self.value

    def number(self, *, minimum: float | None = None, maximum: float | None = None) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise self.error("must be a number", self.value)
        try:
            number = float(self.value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise self.error("must be a finite number", self.value)
        if minimum is not None and number < minimum:
            raise self.error(f"must be >= {minimum}", self.value)
        if maximum is not None and number > maximum:
            raise self.error(f"must be <= {maximum}", self.value)
        return number

    def bool(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error("must be true or false", self.value)
        return self.value

    def decimal(self, *, minimum: Decimal | None = None, maximum: Decimal | None = None) -> Decimal:
        try:
            result = parse_decimal(self.value, what="value")
        except MoneyError as exc:
            raise self.error(str(exc), self.value) from None
        if minimum is not None and result < minimum:
            raise self.error(f"must be >= {minimum}", self.value)
        if maximum is not None and result > maximum:
            raise self.error(f"must be <= {maximum}", self.value)
        return result

    def date(self) -> datetime.date:
        """A ``YYYY-MM-DD`` date: YAML's own date, or a string in that form."""
        value = self.value
        if isinstance(value, builtins.str):
            try:
                value = datetime.date.fromisoformat(value)
            except ValueError:
                raise self.error("must be a date YYYY-MM-DD", self.value) from None
        if not isinstance(value, datetime.date):
            raise self.error("must be a date YYYY-MM-DD", self.value)
        return value

    def str_list(self) -> list[builtins.str]:
        return [node.str() for node in self.elements()]

    def str_map(self) -> dict[builtins.str, builtins.str]:
        result: dict[builtins.str, builtins.str] = {}
        for key, node in self.items():
            if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                result[key] = str(node.value)
            else:
                result[key] = node.str(allow_empty=True)
        return result


# Why a configured name is not a model id of the registry (``None``: it is one).  ``load_settings``
# builds it, so every section that names models reports unknown and withheld models the same way.
ModelCheck = Callable[[str], "builtins.str | None"]
