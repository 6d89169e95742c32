"""docs/configuration.md against the settings parser: every key it reads is listed with its default,
and every listed key is one it reads (see tests/docs_support.py for how keys are recorded)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.analyzer.tasks import FEATURE_NAMES
from costproxy.routing.quality import parse_quality
from costproxy.settings import load_settings
from tests.docs_support import DOCS, REQUIRED, ROOT, VARIES, KeyRecorder, code_spans, markdown_tables, recording

DOC = DOCS / "configuration.md"
ENV = {"OPENAI_API_KEY": "sk-test", "COSTPROXY_ADMIN_TOKEN": "t", "RELAYCORE_SHARED_SECRET": "s"}


def complete_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    after = text.split("<!-- complete-example -->", 1)[1]
    match = re.search(r"```yaml\n(.*?)^```", after, re.MULTILINE | re.DOTALL)
    assert match, "the complete example block follows <!-- complete-example -->"
    return match.group(1)


def documented() -> dict[str, dict[str, str]]:
    """file -> {normalised key -> default cell}, from the tables under each file's heading."""
    text = DOC.read_text(encoding="utf-8")
    result: dict[str, dict[str, str]] = {}
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    for section in sections:
        title = section.split("\n", 1)[0].strip()
        if title not in ("costproxy.yaml", "models.yaml", "quality.yaml"):
            continue
        keys = result.setdefault(title, {})
        for table in markdown_tables(section):
            for row in table:
                key = re.sub(r"<[^>]+>", "*", code_spans(row["key"])[0])
                assert key not in keys, f"{title}: {key} is listed twice"
                keys[key] = row["default"]
    return result


def recorded(tmp_path: Path) -> KeyRecorder:
    config = tmp_path / "config"
    config.mkdir()
    for name in ("models.yaml", "quality.yaml"):
        shutil.copy(ROOT / "config" / name, config / name)
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (config / "costproxy.yaml").write_text(complete_example(), encoding="utf-8")
    predictors = {"predictors": {"features": list(FEATURE_NAMES),
                                 "models": {"gpt-4o": {"math": [0.0] * (len(FEATURE_NAMES) + 1)}}}}
    with recording() as recorder:
        load_settings(config / "costproxy.yaml", ENV)
        load_settings(ROOT / "config" / "costproxy.yaml", ENV)
        parse_quality(predictors, str(config / "quality.yaml"))
    return recorder


def containers(keys: dict[str, Any]) -> set[str]:
    return {key for key in keys if any(other.startswith((key + ".", key + "[")) for other in keys)}


@pytest.mark.parametrize("file", ["costproxy.yaml", "models.yaml", "quality.yaml"])
def test_the_doc_lists_exactly_the_keys_the_parser_reads(tmp_path: Path, file: str) -> None:
    parsed = recorded(tmp_path).keys(file)
    listed = documented()[file]
    missing = sorted(set(parsed) - set(listed) - containers(parsed))
    assert not missing, f"{file}: read by the parser, missing from docs/configuration.md: {missing}"
    unknown = sorted(set(listed) - set(parsed))
    assert not unknown, f"{file}: listed in docs/configuration.md, never read by the parser: {unknown}"


def _same(documented_cell: str, default: Any) -> bool:
    if default is None:
        return documented_cell.startswith("unset")
    spans = code_spans(documented_cell)
    return bool(spans) and yaml.safe_load(spans[0]) == default


@pytest.mark.parametrize("file", ["costproxy.yaml", "models.yaml", "quality.yaml"])
def test_documented_defaults_are_the_parsers(tmp_path: Path, file: str) -> None:
    parsed = recorded(tmp_path).keys(file)
    wrong = []
    for key, cell in documented()[file].items():
        default = parsed[key].default
        if default == REQUIRED:
            ok = cell == "required"
        elif default == VARIES:
            ok = bool(cell)  # the default lives in the model or depends on the element: described in words
        else:
            ok = _same(cell, default)
        if not ok:
            wrong.append(f"{key}: doc says {cell!r}, parser default {default!r}")
    assert not wrong, "\n".join(wrong)


def test_the_complete_example_is_a_valid_configuration(tmp_path: Path) -> None:
    settings = load_settings(_write_example(tmp_path), ENV)
    assert settings.budgets.static[0].id == "acme-monthly"
    assert settings.rate_limits.static[0].burst_tokens == 20000
    assert settings.providers["azure"].api_version == "2024-10-21"


def _write_example(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "config" / "costproxy.yaml").write_text(complete_example(), encoding="utf-8")
    return tmp_path / "config" / "costproxy.yaml"


def test_every_environment_variable_the_settings_read_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "costproxy").rglob("*.py"))
    read = set(re.findall(r"[\"'$](COSTPROXY_[A-Z_]+)", source))
    documented_names = set(re.findall(r"`(COSTPROXY_[A-Z_]+)`", text))
    assert read - documented_names == set(), f"undocumented: {sorted(read - documented_names)}"
    assert documented_names - read == set(), f"documented but never read: {sorted(documented_names - read)}"


def _type_problem(cell: str, kinds: set[str]) -> str | None:
    """Why the documented type does not match how the parser reads the value (None: it does)."""
    text = cell.replace("\\|", "|")
    choices = [k[4:].split("|") for k in kinds if k.startswith("str:")]
    if choices:
        documented = set(re.split(r"[|`\s]+", " ".join(code_spans(text)) or text)) - {""}
        return None if set(choices[0]) <= documented else f"choices {choices[0]}"
    expected = {"bool": ("bool",), "int": ("integer",), "number": ("number", "seconds", "fraction", "days"),
                "env_name": ("env var name",), "decimal": ("decimal",), "str_map": ("mapping",),
                "elements": ("list", "mapping")}
    for kind, words in expected.items():
        if kind in kinds:
            return None if any(word in text for word in words) else f"read as {kind}"
    return None


@pytest.mark.parametrize("file", ["costproxy.yaml", "models.yaml", "quality.yaml"])
def test_documented_types_match_how_the_parser_reads_them(tmp_path: Path, file: str) -> None:
    recorder = recorded(tmp_path)
    text = DOC.read_text(encoding="utf-8")
    section = re.split(r"^## ", text, flags=re.MULTILINE)
    tables = [t for s in section if s.split("\n", 1)[0].strip() == file for t in markdown_tables(s)]
    wrong = []
    for row in (row for table in tables for row in table):
        key = re.sub(r"<[^>]+>", "*", code_spans(row["key"])[0])
        problem = _type_problem(row["type"], recorder.kinds_of(file, key))
        if problem:
            wrong.append(f"{key}: type {row['type']!r}: {problem}")
    assert not wrong, "\n".join(wrong)
