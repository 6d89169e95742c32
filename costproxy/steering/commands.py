"""``costproxy rules check``: validate a rules directory the way the proxy would load it.

Prints each error as ``file: rule id: field: message`` on stderr and exits 1; on success prints
one line per file and a summary on stdout and exits 0.

- ``--dir DIR``: the rules directory (default: the config's ``rules_dir`` with ``--config``,
  else ``rules``);
- ``--config FILE``: read ``costproxy.yaml``; rules then must name only models of its registry;
- ``--models FILE``: check model names against this ``models.yaml`` instead.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import TextIO

from costproxy.errors import ConfigError
from costproxy.steering.loader import load_rules
from costproxy.steering.rules import RuleSet

_USAGE = "usage: costproxy rules check [--dir DIR] [--config FILE | --models FILE]"


def rules_main(argv: list[str]) -> int:
    """``costproxy rules <subcommand>``; the only subcommand is ``check``."""
    if argv[:1] == ["check"]:
        return rules_check_main(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print(_USAGE)
        return 0
    print(_USAGE, file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costproxy rules check", description="Validate a steering rules directory.")
    parser.add_argument("--dir", default=None, help="rules directory (default: rules)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", default=None, help="costproxy.yaml: its rules_dir and model registry")
    source.add_argument("--models", default=None, help="models.yaml to check model names against")
    return parser


def _resolve(args: argparse.Namespace) -> tuple[Path, Collection[str] | None]:
    """The rules directory and the known model names the arguments ask for."""
    from costproxy.registry import parse_registry
    from costproxy.settings import load_settings, read_yaml

    if args.config:
        settings = load_settings(Path(args.config))
        registry = settings.registry
        directory = Path(args.dir) if args.dir else settings.rules_dir
    else:
        directory = Path(args.dir or "rules")
        if not args.models:
            return directory, None
        registry = parse_registry(read_yaml(Path(args.models)), args.models)
    return directory, frozenset(registry.models) | frozenset(registry.aliases)


def rules_check_main(argv: list[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point for ``costproxy rules check [--dir DIR] [--config FILE | --models FILE]``."""
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    args = _parser().parse_args(argv)
    try:
        directory, known = _resolve(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=stderr)
        return 1
    ruleset, errors = load_rules(directory, known_models=known)
    for error in errors:
        print(error, file=stderr)
    if errors:
        print(f"{len(errors)} error(s) in {directory}; the proxy would keep its last good rule set", file=stderr)
        return 1
    _print_summary(ruleset, stdout)
    return 0


def _print_summary(ruleset: RuleSet, out: TextIO) -> None:
    per_file = Counter(rule.file for rule in ruleset.rules)
    for file in ruleset.files:
        print(f"{file}: {per_file[file]} rules ok", file=out)
    shadow = sum(1 for rule in ruleset.active if rule.mode == "shadow")
    partial = sum(1 for rule in ruleset.active if rule.rollout < 100)
    print(
        f"ok: {len(ruleset.rules)} rules in {len(ruleset.files)} files; {len(ruleset.active)} enabled "
        f"({shadow} shadow, {partial} partial rollout); digest {ruleset.digest}",
        file=out,
    )
