"""Read ``rules/*.yaml`` from a directory and hot-swap the rule set, all or nothing.

``RulesHolder.reload()`` parses every file; only when all are valid does ``current`` change,
in one reference assignment, so a request sees either the old rule set or the new one, never a
mix.  When any file is invalid the last good set stays in force and the result lists every
error (file, rule id, field).  ``changed()`` is a cheap ``stat`` of the directory (names,
mtimes, sizes, inodes) for polling every couple of seconds.

Everything here is synchronous and does blocking file I/O: the app runs ``changed()`` and
``reload()`` in a worker thread, never on the event loop.  Files are ``*.yaml`` and ``*.yml``
read in name order; names starting with ``.`` or ``#`` and editor backups ending in ``~`` are
skipped; symlinks are followed (Kubernetes ConfigMap volumes are symlinks).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection
from pathlib import Path

from costproxy.records import frozen
from costproxy.steering.rules import EMPTY_RULESET, NO_RULE, RuleError, RuleSet, build_ruleset

SUFFIXES = (".yaml", ".yml")
Fingerprint = tuple[tuple[str, int, int, int], ...] | None  # None: the directory is missing


def _is_rule_file(name: str) -> bool:
    return name.endswith(SUFFIXES) and not name.startswith((".", "#"))


def fingerprint(directory: Path) -> Fingerprint:
    """``(name, mtime_ns, size, inode)`` of each rule file, sorted; ``None`` if no directory."""
    entries: list[tuple[str, int, int, int]] = []
    try:
        with os.scandir(directory) as scan:
            for entry in scan:
                if not _is_rule_file(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=True)
                except OSError:
                    continue  # vanished between listing and stat: the next poll sees it
                if entry.is_file(follow_symlinks=True):
                    entries.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return tuple(sorted(entries))


def read_sources(directory: Path) -> tuple[list[tuple[str, str]], list[RuleError]]:
    """``(file, text)`` of every rule file in name order, and the files that could not be read."""
    if not directory.is_dir():
        return [], [RuleError(str(directory), NO_RULE, "", "rules directory not found")]
    sources: list[tuple[str, str]] = []
    errors: list[RuleError] = []
    for path in sorted(directory.iterdir()):
        if not _is_rule_file(path.name) or not path.is_file():
            continue
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(RuleError(str(path), NO_RULE, "", f"cannot read file: {exc}"))
    return sources, errors


def load_rules(directory: Path, *, known_models: Collection[str] | None = None) -> tuple[RuleSet, list[RuleError]]:
    """Parse a rules directory; the rule set is only usable when the error list is empty."""
    sources, errors = read_sources(directory)
    ruleset, parse_errors = build_ruleset(sources, known_models=known_models)
    return ruleset, errors + parse_errors


@frozen
class ReloadResult:
    ok: bool  # every file was valid
    swapped: bool  # ``current`` now is the rule set just parsed
    ruleset: RuleSet  # the rule set in force after this reload
    errors: tuple[RuleError, ...] = ()
    at: float = 0.0  # unix seconds when this reload ran

    def summary(self) -> str:
        rules = self.ruleset.rules
        loaded = (
            f"{len(rules)} rules ({len(self.ruleset.active)} enabled) from "
            f"{len(self.ruleset.files)} files, digest {self.ruleset.digest or '-'}"
        )
        if self.ok:
            return f"loaded {loaded}"
        return f"{len(self.errors)} errors; kept the last good rule set: {loaded}"


class RulesHolder:
    """The rule set in force for one rules directory, reloaded all-or-nothing."""

    def __init__(self, directory: Path | str, *, known_models: Collection[str] | None = None) -> None:
        self.directory = Path(directory)
        self.known_models = None if known_models is None else frozenset(known_models)
        self._current: RuleSet = EMPTY_RULESET
        self._seen: Fingerprint | str = "never loaded"
        self._lock = threading.Lock()
        self.last_result: ReloadResult | None = None
        self.loaded_at: float | None = None  # unix seconds of the last reload that swapped ``current``

    @property
    def current(self) -> RuleSet:
        return self._current

    def changed(self) -> bool:
        """Whether the directory differs from what the last ``reload`` read (valid or not)."""
        return fingerprint(self.directory) != self._seen

    def reload(self) -> ReloadResult:
        """Parse every file; swap ``current`` only if all are valid; report every error."""
        with self._lock:
            # Fingerprint first: an edit landing while we read is seen by the next changed().
            self._seen = fingerprint(self.directory)
            ruleset, errors = load_rules(self.directory, known_models=self.known_models)
            now = time.time()
            if errors:
                result = ReloadResult(ok=False, swapped=False, ruleset=self._current, errors=tuple(errors), at=now)
            else:
                self._current = ruleset
                self.loaded_at = now
                result = ReloadResult(ok=True, swapped=True, ruleset=ruleset, at=now)
            self.last_result = result
            return result

    def reload_if_changed(self) -> ReloadResult | None:
        """``reload()`` when ``changed()``; ``None`` when nothing changed."""
        return self.reload() if self.changed() else None
