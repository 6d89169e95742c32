"""Hot reload of the quality profiles file (``quality_file``, by default ``config/quality.yaml``).

The same contract as the steering rules (``steering/loader.py``): ``changed()`` is a cheap ``stat``
(mtime, size, inode) for polling; ``reload()`` parses the whole file and swaps ``current`` in one
reference assignment only when it is valid, so a request sees the old profiles or the new ones,
never a mix; an invalid file is reported (file, dotted path, value) and the last good profiles stay
in force.  ``costproxy calibrate --out config/quality.yaml`` therefore takes effect on the running
proxy within a poll interval.  Blocking file I/O: the app calls this from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import yaml

from costproxy import yamlfile
from costproxy.errors import ConfigError
from costproxy.records import frozen
from costproxy.routing.quality import QualityProfiles, parse_quality

Fingerprint = tuple[int, int, int] | None  # (mtime_ns, size, inode); None: the file is missing


def fingerprint(path: Path) -> Fingerprint:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@frozen
class QualityReload:
    ok: bool
    at: float  # unix seconds
    digest: str  # of the profiles in force after this reload
    source: str  # their ``source`` line
    error: str = ""

    def summary(self) -> str:
        what = f"quality profiles {self.digest or '-'} ({self.source or 'no source line'})"
        return f"loaded {what}" if self.ok else f"{self.error}; kept the last good {what}"


def _digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:12]


class QualityHolder:
    """The quality profiles in force for one file, reloaded all-or-nothing."""

    def __init__(self, path: Path, initial: QualityProfiles) -> None:
        self.path = path
        self._current = initial
        self._seen: Fingerprint = fingerprint(path)
        self._lock = threading.Lock()
        try:
            self.digest = _digest(path.read_bytes())
        except OSError:
            self.digest = ""
        self.loaded_at: float = time.time()
        self.last_result: QualityReload | None = None

    @property
    def current(self) -> QualityProfiles:
        return self._current

    def changed(self) -> bool:
        return fingerprint(self.path) != self._seen

    def reload(self) -> QualityReload:
        with self._lock:
            self._seen = fingerprint(self.path)
            now = time.time()
            try:
                raw = self.path.read_bytes()
                profiles = parse_quality(yamlfile.load(raw), str(self.path))
            except (OSError, yaml.YAMLError, ConfigError, UnicodeDecodeError) as exc:
                message = f"{self.path}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
                result = QualityReload(False, now, self.digest, self._current.source, message)
            else:
                self._current, self.digest, self.loaded_at = profiles, _digest(raw), now
                result = QualityReload(True, now, self.digest, profiles.source)
            self.last_result = result
            return result

    def reload_if_changed(self) -> QualityReload | None:
        return self.reload() if self.changed() else None
