"""The configuration shipped inside the package: what ``costproxy`` runs with when nothing else is found.

Layout (package data, installed with the wheel)::

    costproxy/defaults/config/costproxy.yaml   the main configuration
    costproxy/defaults/config/models.yaml      the model registry, with list prices
    costproxy/defaults/config/quality.yaml     quality profiles used by ``model: auto``
    costproxy/defaults/rules/*                 the default steering rules and their README

These files are the source of truth.  The repository's top-level ``config/`` and ``rules/`` are
the editable copies a checkout runs with; ``tests/unit/test_defaults.py`` keeps them identical.
``costproxy init [DIR]`` writes the same files into ``DIR/config`` and ``DIR/rules``.
"""

from __future__ import annotations

from pathlib import Path

DEFAULTS_DIR = Path(__file__).parent
PACKAGED_CONFIG = DEFAULTS_DIR / "config" / "costproxy.yaml"
_SUBDIRECTORIES = ("config", "rules")


def is_packaged(path: Path) -> bool:
    """Whether ``path`` lies inside the shipped defaults (so it must never be written to)."""
    return path.resolve().is_relative_to(DEFAULTS_DIR.resolve())


def default_files() -> list[Path]:
    """Every shipped file, relative to ``DEFAULTS_DIR`` (``config/…`` and ``rules/…``), sorted."""
    files = [path.relative_to(DEFAULTS_DIR) for sub in _SUBDIRECTORIES for path in (DEFAULTS_DIR / sub).iterdir()
             if path.is_file() and not path.name.startswith(".")]
    return sorted(files)


def write_defaults(target: Path, *, force: bool = False) -> list[Path]:
    """Copy the shipped ``config/`` and ``rules/`` into ``target``; returns the written paths.

    Nothing is written when any destination file exists and ``force`` is false: then
    ``FileExistsError`` lists every file that would have been overwritten.
    """
    pairs = [(DEFAULTS_DIR / relative, target / relative) for relative in default_files()]
    existing = [destination for _source, destination in pairs if destination.exists()]
    if existing and not force:
        raise FileExistsError(", ".join(str(path) for path in existing))
    for source, destination in pairs:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(source.read_bytes())
    return [destination for _source, destination in pairs]
