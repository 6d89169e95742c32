"""``costproxy`` command line: serve, demo, check-config, keys, usage, rules, explain, calibrate, eval."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from costproxy.errors import ConfigError
from costproxy.settings import Settings, config_path_from, load_settings

if TYPE_CHECKING:
    from costproxy.identity.key_store import KeyStore


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(config_path_from(args.config))
    server = settings.server
    if getattr(args, "host", None):
        server = replace(server, host=args.host)
    if getattr(args, "port", None) is not None:
        server = replace(server, port=args.port)
    return replace(settings, server=server)


def cmd_serve(args: argparse.Namespace) -> int:
    from costproxy.http.app import run
    from costproxy.observability import configure_logging

    settings = _settings(args)
    configure_logging(settings.logging)
    _install_uvloop()
    print(f"costproxy listening on http://{settings.server.host}:{settings.server.port}  "
          f"(store: {settings.store_url}, {len(settings.registry.models)} models)", file=sys.stderr, flush=True)
    run(settings)
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_demo(args: argparse.Namespace) -> int:
    from costproxy.tools.demo import run_demo

    return run_demo(_settings(args))


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"ok: {settings.config_path}: {len(settings.providers)} providers, "
          f"{len(settings.registry.models)} models ({settings.models_path}), store {settings.store_url}")
    missing = [p.name for p in settings.providers.values() if p.api_key_env and not p.api_key]
    if missing:
        print("note: no API key in the environment for: " + ", ".join(
            f"{name} (${settings.providers[name].api_key_env})" for name in missing))
    try:
        from costproxy.steering.commands import rules_check_main
    except ImportError:
        return 0
    return rules_check_main(["--dir", str(settings.rules_dir)])


def cmd_keys(args: argparse.Namespace) -> int:
    """Keys go where the server reads them: the SQLite file, or Redis (``store.url: redis://…``)."""
    from costproxy.errors import StoreUnavailable
    from costproxy.http.app import ledger_path
    from costproxy.identity.key_store import is_redis_url, open_key_store
    from costproxy.store.sqlite import SqliteStore

    settings = _settings(args)

    async def run() -> int:
        store = None if is_redis_url(settings.store_url) else SqliteStore(ledger_path(settings))
        if store is not None:
            await store.open()
        keys = open_key_store(settings, store)
        try:
            return await _keys_command(args, keys)
        except StoreUnavailable as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await keys.close()
            if store is not None:
                await store.close()

    return asyncio.run(run())


async def _keys_command(args: argparse.Namespace, keys: KeyStore) -> int:
    from costproxy.http.keys_api import issue_key

    if args.keys_command == "create":
        fields = {k: getattr(args, k) for k in ("name", "user", "team", "org", "project")}
        secret, record = await issue_key(keys, fields, time.time())
        print(f"created {record.id} for {record.principal()}")
        print(f"key (shown once, store it now): {secret}")
    elif args.keys_command == "list":
        for record in sorted(await keys.load_all(), key=lambda r: r.created_at):
            state = "active" if record.active else "revoked"
            print(f"{record.id}  {record.prefix}…  {state:8} user={record.user} team={record.team} "
                  f"org={record.org} project={record.project} name={record.name}")
    elif not await keys.revoke(args.key_id, time.time()):
        print(f"no active key {args.key_id}", file=sys.stderr)
        return 1
    else:
        print(f"revoked {args.key_id}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from costproxy.http.app import ledger_path
    from costproxy.tools.usage_report import print_usage

    settings = _settings(args)
    return asyncio.run(print_usage(ledger_path(settings), hours=args.hours, group_by=args.by, limit=args.limit))


def cmd_export_encodings(args: argparse.Namespace) -> int:
    from costproxy.analyzer.encodings import export_encodings

    for path in export_encodings(Path(args.directory)):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costproxy", description="Cost-aware OpenAI-compatible LLM proxy")
    parser.add_argument("--config", help="path of costproxy.yaml (default: $COSTPROXY_CONFIG or "
                                         "config/costproxy.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    demo = sub.add_parser("demo", help="run the proxy against a local SIMULATED provider (no API keys)")
    demo.add_argument("--host")
    demo.add_argument("--port", type=int)
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("check-config", help="validate configuration, models and rules").set_defaults(
        func=cmd_check_config)
    keys = sub.add_parser("keys", help="issue, list and revoke client keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create")
    for name in ("name", "user", "team", "org", "project"):
        create.add_argument(f"--{name}")
    keys_sub.add_parser("list")
    revoke = keys_sub.add_parser("revoke")
    revoke.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)
    usage = sub.add_parser("usage", help="print recent spend, baseline and saving")
    usage.add_argument("--hours", type=float, default=24.0)
    usage.add_argument("--by", default="model", choices=("model", "team", "user", "key", "project", "org"))
    usage.add_argument("--limit", type=int, default=20, help="recent requests to list")
    usage.set_defaults(func=cmd_usage)
    export = sub.add_parser("export-encodings", help="write verified tiktoken files into a directory")
    export.add_argument("directory")
    export.set_defaults(func=cmd_export_encodings)
    for name, text in (("rules", "steering rules: `costproxy rules check`"),
                       ("explain", "show which rules fire and which model would serve a request"),
                       ("calibrate", "fit quality profiles from an evaluation data set"),
                       ("eval", "replay an evaluation data set through the selection engine")):
        sub.add_parser(name, help=f"{text} (see `costproxy {name} --help`)")
    return parser


DELEGATED = {
    "rules": ("costproxy.steering.commands", "rules_main", True),
    "explain": ("costproxy.tools.explain", "explain_main", True),
    "calibrate": ("costproxy.tools.eval_cli", "calibrate_main", False),
    "eval": ("costproxy.tools.eval_cli", "eval_main", False),
}


def _run_delegated(argv: list[str]) -> int | None:
    """Sub-commands with parsers of their own get every argument after their name untouched."""
    config: list[str] = []
    rest = list(argv)
    if rest[:1] == ["--config"] and len(rest) >= 2:
        config, rest = rest[:2], rest[2:]
    elif rest and rest[0].startswith("--config="):
        config, rest = ["--config", rest[0].split("=", 1)[1]], rest[1:]
    if not rest or rest[0] not in DELEGATED:
        return None
    import importlib

    module, function, takes_config = DELEGATED[rest[0]]
    main_function = getattr(importlib.import_module(module), function)
    return int(main_function(rest[1:] + (config if takes_config else [])))


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `costproxy usage | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    try:
        delegated = _run_delegated(argv)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if delegated is not None:
        return delegated
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
