"""``@frozen`` (costproxy/records.py) keeps every behaviour of ``dataclass(frozen=True, slots=True)``
with its own ``__init__``: same signature, defaults, factories, keyword-only fields, ``__post_init__``,
inheritance, immutability, equality, hashing, ``replace`` and pickling."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import InitVar, field

import pytest

from costproxy.records import frozen


@frozen
class Base:
    a: int
    b: str = "b"


@frozen
class Child(Base):
    c: list[int] = field(default_factory=list)
    d: int = field(default=4, kw_only=True)
    e: int = field(default=5, init=False)
    f: tuple[int, ...] = field(default_factory=tuple, init=False)


@frozen
class Checked:
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low above high")
        object.__setattr__(self, "high", self.high)  # the usual way to normalise a frozen field


@frozen
class WithInitVar:
    x: int
    scale: InitVar[int] = 1

    def __post_init__(self, scale: int) -> None:
        object.__setattr__(self, "x", self.x * scale)


def child_body() -> type:
    """``Child``'s body with a base of its own, to be built by either decorator."""
    class Parent:
        a: int
        b: str = "b"

    class Kid(dataclasses.dataclass(frozen=True, slots=True)(Parent)):  # type: ignore[misc]
        c: list[int] = field(default_factory=list)
        d: int = field(default=4, kw_only=True)
        e: int = field(default=5, init=False)
        f: tuple[int, ...] = field(default_factory=tuple, init=False)
    return Kid


def test_the_fast_init_is_installed_and_keeps_the_dataclass_signature() -> None:
    assert "_s_a" in Base.__init__.__code__.co_names
    standard = dataclasses.dataclass(frozen=True, slots=True)(child_body())
    ours = frozen(child_body())
    assert "_s_c" in ours.__init__.__code__.co_names
    assert [(p.name, p.kind, p.annotation) for p in inspect.signature(ours).parameters.values()] == \
        [(p.name, p.kind, p.annotation) for p in inspect.signature(standard).parameters.values()]
    assert [p.default for p in inspect.signature(ours).parameters.values()][1::2] == ["b", 4]
    assert ours(1, d=2) == ours(1, d=2) and ours.__init__.__annotations__["a"] == "int"


def test_defaults_factories_keyword_only_and_init_false_fields() -> None:
    one, two = Child(1), Child(1)
    assert (one.a, one.b, one.c, one.d, one.e, one.f) == (1, "b", [], 4, 5, ())
    assert one.c is not two.c  # a new list each time, as default_factory promises
    assert Child(2, "x", [7], d=9).c == [7] and Child(2, d=9).d == 9
    with pytest.raises(TypeError):
        Child(1, "b", [], 4)  # type: ignore[misc]  # d is keyword-only
    with pytest.raises(TypeError):
        Child()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Child(1, e=3)  # type: ignore[call-arg]  # init=False


def test_immutability_equality_hashing_replace_and_pickling() -> None:
    base = Base(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.a = 2  # type: ignore[misc]
    assert base == Base(1, "b") and base != Base(2)
    assert hash(base) == hash(Base(1)) and {base: 1}[Base(1)] == 1
    assert dataclasses.replace(base, b="z") == Base(1, "z")
    assert pickle.loads(pickle.dumps(Child(3, c=[1]))) == Child(3, c=[1])
    assert not hasattr(base, "__dict__")


def test_post_init_runs_and_initvar_classes_keep_the_standard_init() -> None:
    assert Checked(1, 2).high == 2
    with pytest.raises(ValueError, match="low above high"):
        Checked(3, 2)
    assert WithInitVar(2, 3).x == 6 and WithInitVar(2).x == 2
    assert "_s_x" not in WithInitVar.__init__.__code__.co_names  # InitVar: the dataclass's own __init__
