"""Ids unique across replicas, restarts and forked workers, without a system call per id.

An ``Ids`` is a random prefix drawn once per process and a counter.  ``serve --workers`` forks its
workers from a supervisor that imported the app (and so made every ``Ids``): each one draws a new
prefix and restarts its counter in the child, or the workers would hand out the same ids.
"""

from __future__ import annotations

import itertools
import os
import weakref

_ALL: weakref.WeakSet[Ids] = weakref.WeakSet()


class Ids:
    __slots__ = ("__weakref__", "_counter", "digits", "prefix", "text_prefix")

    def __init__(self, text_prefix: str = "", digits: int = 8) -> None:
        self.text_prefix, self.digits = text_prefix, digits
        self._restart()
        _ALL.add(self)

    def _restart(self) -> None:
        self.prefix = self.text_prefix + os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        """``text_prefix``, 16 random hex digits, then the counter in (at least) ``digits`` hex digits."""
        return f"{self.prefix}{next(self._counter):0{self.digits}x}"


def _after_fork() -> None:
    for ids in list(_ALL):
        ids._restart()


os.register_at_fork(after_in_child=_after_fork)
