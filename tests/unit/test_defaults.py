"""The packaged defaults are the source of truth; the repository's config/ and rules/ are exact copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from costproxy.defaults import DEFAULTS_DIR, PACKAGED_CONFIG, default_files, is_packaged, write_defaults

ROOT = Path(__file__).resolve().parents[2]


def repository_files() -> list[Path]:
    return sorted(p.relative_to(ROOT) for sub in ("config", "rules") for p in (ROOT / sub).iterdir()
                  if p.is_file() and not p.name.startswith("."))


def test_repository_config_and_rules_are_identical_to_the_packaged_defaults() -> None:
    assert default_files() == repository_files(), "config/ and rules/ must hold the same files as costproxy/defaults/"
    drifted = [str(f) for f in default_files() if (ROOT / f).read_bytes() != (DEFAULTS_DIR / f).read_bytes()]
    assert not drifted, ("costproxy/defaults/ is the source of truth; after editing it, copy the files back "
                         f"(cp costproxy/defaults/<file> <file>) or vice versa. Differing: {drifted}")


def test_write_defaults_copies_everything_and_refuses_to_overwrite(tmp_path: Path) -> None:
    written = write_defaults(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in written) == default_files()
    (tmp_path / "rules" / "default.yaml").write_text("rules: []\n")
    with pytest.raises(FileExistsError) as err:
        write_defaults(tmp_path)
    assert str(tmp_path / "config" / "costproxy.yaml") in str(err.value)
    assert (tmp_path / "rules" / "default.yaml").read_text() == "rules: []\n"  # nothing was written
    write_defaults(tmp_path, force=True)
    assert (tmp_path / "rules" / "default.yaml").read_bytes() == (DEFAULTS_DIR / "rules" / "default.yaml").read_bytes()


def test_one_conflicting_file_stops_every_write(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "mine.yaml").write_text("rules: []\n")  # an unrelated file is no conflict
    write_defaults(tmp_path)
    (tmp_path / "config" / "models.yaml").unlink()
    (tmp_path / "config" / "costproxy.yaml").write_text("# mine\n")
    with pytest.raises(FileExistsError):
        write_defaults(tmp_path)
    assert not (tmp_path / "config" / "models.yaml").exists()


def test_is_packaged() -> None:
    assert is_packaged(PACKAGED_CONFIG) and is_packaged(DEFAULTS_DIR / "rules" / "x.yaml")
    assert not is_packaged(ROOT / "config" / "costproxy.yaml")
