"""The YAML reading of costproxy's own files (``costproxy.yaml``, ``models.yaml``, ``quality.yaml``,
``rules/``): safe, a duplicate key refused, and numbers read as a person reads them.

PyYAML follows YAML 1.1, where ``010`` is octal (8), ``1:30`` is base 60 (90) and ``1_000`` is
1000: a price or a limit written ``010`` would quietly be $8.  ``Loader`` keeps YAML 1.2's core
schema for numbers instead — decimal integers, and decimals with an optional exponent (``010`` is
10, ``1:30`` is a string the money parser then refuses) — and every other implicit type (booleans,
null, dates) as PyYAML has them.  A key written twice in one mapping is an error, not "the last one
wins".
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class Loader(_Base):  # type: ignore[misc]
    """Safe YAML with duplicate keys refused and YAML 1.2 numbers (module docstring)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return dict(super().construct_mapping(node, deep=deep))


Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in _Base.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+.0123456789"))


def load(text: str | bytes) -> Any:
    """One YAML document of a costproxy file; ``yaml.YAMLError`` on bad syntax or a duplicate key."""
    return yaml.load(text, Loader=Loader)
