"""Hot reload of the quality file: a valid file swaps in whole, an invalid one keeps the last good."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from costproxy.routing.quality import parse_quality
from costproxy.routing.quality_file import QualityHolder

GOOD = {"version": 1, "source": "first", "tier_priors": {"economy": 0.6}, "models": {"m": {"overall": 0.7}}}


def _write(path: Path, document: object, bump: int) -> None:
    path.write_text(yaml.safe_dump(document))
    os.utime(path, ns=(bump, bump))  # a distinct mtime even within one clock tick


def test_reload_swaps_valid_files_and_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "quality.yaml"
    _write(path, GOOD, 1_000)
    holder = QualityHolder(path, parse_quality(GOOD, str(path)))
    assert not holder.changed() and holder.reload_if_changed() is None
    first_digest = holder.digest

    _write(path, {**GOOD, "source": "second", "models": {"m": {"overall": 0.9}}}, 2_000)
    result = holder.reload_if_changed()
    assert result is not None and result.ok and result.source == "second"
    assert holder.current.lookup("m", "economy", "chat", 0) == (0.9, "model")
    assert holder.digest != first_digest and "loaded quality profiles" in result.summary()

    _write(path, {**GOOD, "models": {"m": {"overall": 1.7}}}, 3_000)
    broken = holder.reload_if_changed()
    assert broken is not None and not broken.ok
    assert "models.m.overall" in broken.error and str(path) in broken.error
    assert holder.current.source == "second" and "kept the last good" in broken.summary()

    path.write_text("version: [1\n")
    os.utime(path, ns=(4_000, 4_000))
    assert not holder.reload().ok
    path.unlink()
    missing = holder.reload_if_changed()
    assert missing is not None and not missing.ok and holder.current.source == "second"
