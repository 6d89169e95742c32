"""``costproxy`` command line.

Sub-commands: serve, demo, check-config, init, keys, usage, export-encodings, and rules, explain,
calibrate, eval (delegated to parsers of their own).  Global options work before or after the
sub-command: ``--config FILE`` (else ``$COSTPROXY_CONFIG``, ``./config/costproxy.yaml``, the packaged
defaults), ``--log-level LEVEL`` (overrides ``logging.level``) and ``--version``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from costproxy.errors import CallerError, ConfigError, ProxyError
from costproxy.records import frozen
from costproxy.settings import ConfigLocation, Settings, find_config, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from costproxy.identity.key_store import KeyStore

LOG_LEVELS = ("debug", "info", "warning", "error")
GLOBAL_VALUE_OPTIONS = ("--config", "--log-level")


@frozen
class GlobalOptions:
    config: str | None = None
    log_level: str | None = None
    version: bool = False


class UsageError(Exception):
    """A command line that cannot be understood (exit status 2, like argparse)."""


MAX_USAGE_HOURS = 24 * 366 * 10  # as /api/v1/usage/summary's ``hours``: ten years of ledger
MAX_USAGE_LIMIT = 1000  # as /api/v1/usage's ``limit``


def hours_arg(text: str) -> float:
    """``--hours``: a finite number of hours above 0 (argparse turns the error into its usage line)."""
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not (math.isfinite(hours) and 0 < hours <= MAX_USAGE_HOURS):
        raise argparse.ArgumentTypeError(f"must be a number of hours above 0 and at most {MAX_USAGE_HOURS} "
                                         f"(got {text[:40]!r})")
    return hours


def limit_arg(text: str) -> int:
    """``--limit``: how many recent requests to list, 0 to ``MAX_USAGE_LIMIT``."""
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if not 0 <= limit <= MAX_USAGE_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_USAGE_LIMIT} (got {text[:40]!r})")
    return limit


def split_global_options(argv: list[str]) -> tuple[GlobalOptions, list[str]]:
    """Take the global options out of ``argv``, wherever they are (up to a ``--``); the last one wins.

    Like argparse, a token starting with ``--`` is always an option, never the value of another one."""
    values: dict[str, str] = {}
    rest: list[str] = []
    version = False
    index = 0
    while index < len(argv):
        token = argv[index]
        name, has_value, value = token.partition("=")
        if token == "--":
            rest.extend(argv[index:])
            break
        if token == "--version":
            version = True
        elif name in GLOBAL_VALUE_OPTIONS:
            if not has_value:
                index += 1
                value = argv[index] if index < len(argv) else ""
            if not value or value.startswith("--"):
                raise UsageError(f"{name} needs a value")
            values[name] = value
        else:
            rest.append(token)
        index += 1
    level = values.get("--log-level")
    if level is not None and level not in LOG_LEVELS:
        raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)} (got {level!r})")
    return GlobalOptions(values.get("--config"), level, version), rest


# --- loading ---------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[ConfigLocation, Settings]:
    location = find_config(args.config)
    settings = load_settings(location.path)
    server = settings.server
    if getattr(args, "host", None):
        server = replace(server, host=args.host)
    if getattr(args, "port", None) is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port", "", "must be a port number from 0 to 65535", args.port)
        server = replace(server, port=args.port)
    if getattr(args, "workers", None) is not None:
        if not 1 <= args.workers <= 256:
            raise ConfigError("--workers", "", "must be from 1 to 256", args.workers)
        server = replace(server, workers=args.workers)
    logging = settings.logging if args.log_level is None else replace(settings.logging, level=args.log_level)
    return location, replace(settings, server=server, logging=logging)


def _settings(args: argparse.Namespace) -> Settings:
    return _load(args)[1]


# --- serve, check-config, init ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Validate everything, print what will serve, bind, and only then say "listening"."""
    from costproxy.http.server import run, run_workers
    from costproxy.observability import configure_logging
    from costproxy.store.backend import StoreInUse, hold_store_lock, is_redis_url, local_path
    from costproxy.store.config import redacted_url
    from costproxy.tools.config_report import describe, preflight, warnings

    location, settings = _load(args)
    if settings.server.workers > 1 and not is_redis_url(settings.store.url):
        print(f"error: {settings.server.workers} workers need a shared store (store.url: redis://...); on "
              "SQLite each worker would keep budget counters of its own and hard budgets would not hold",
              file=sys.stderr)
        return 2
    for line in describe(location, settings, preflight(settings)):
        print(line, file=sys.stderr)
    for warning in warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        sock = _listen(settings.server.host, settings.server.port)
    except OSError as exc:
        print(f"error: cannot listen on {settings.server.host}:{settings.server.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    settings = replace(settings, server=replace(settings.server, port=sock.getsockname()[1]))  # port 0: chosen
    if settings.server.workers <= 1:  # several workers: each has a file of its own (run_workers)
        try:
            hold_store_lock(local_path(settings))
        except StoreInUse as exc:
            print(f"error: {exc}", file=sys.stderr)
            sock.close()
            return 2
    writer = configure_logging(settings.logging)
    _install_uvloop()

    def announce() -> None:
        host = settings.server.host
        shown = f"[{host}]" if ":" in host else host
        store = redacted_url(settings.store.url)  # never the password
        print(f"costproxy listening on http://{shown}:{settings.server.port}  (store: {store}, "
              f"{len(settings.registry.models)} models)", file=sys.stderr, flush=True)

    try:
        if settings.server.workers > 1:
            return run_workers(settings, sock, announce)
        run(settings, sock, announce)
        return 0
    finally:
        writer.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=128)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_check_config(args: argparse.Namespace) -> int:
    from costproxy.tools.config_report import describe, preflight, warnings

    location, settings = _load(args)
    router = preflight(settings)
    for line in describe(location, settings, router):
        print(line)
    for warning in warnings(settings):
        print(f"warning: {warning}")
    print("ok: configuration, models, quality profiles, rules and encodings are valid")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from costproxy.defaults import write_defaults

    target = Path(args.directory)
    try:
        written = write_defaults(target, force=args.force)
    except FileExistsError as exc:
        print(f"error: not overwriting existing files (use --force to replace them): {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # no such parent, not writable, not a directory, read-only file system…
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(target) else ""
        print(f"error: cannot write into {target}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    go = "" if target.resolve() == Path.cwd().resolve() else f"cd {target}\n  "
    print(f"\nnext:\n  {go}export OPENAI_API_KEY=...        # or another provider's key: see config/costproxy.yaml"
          "\n  export COSTPROXY_ADMIN_TOKEN=...  # enables the admin API and `costproxy keys`"
          "\n  costproxy check-config           # finds ./config/costproxy.yaml\n  costproxy serve")
    if os.environ.get("COSTPROXY_CONFIG"):
        print("note: $COSTPROXY_CONFIG is set and wins over ./config/costproxy.yaml", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from costproxy.observability import configure_logging
    from costproxy.tools.demo import run_demo

    settings = _settings(args)
    configure_logging(settings.logging)
    return run_demo(settings, keep=args.keep)


# --- keys, usage, export-encodings ------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    """Keys go where the server reads them: the SQLite file, or Redis (``store.url: redis://…``)."""
    from costproxy.errors import StoreUnavailable
    from costproxy.store.backend import open_client_keys

    settings = _settings(args)

    async def run() -> int:
        keys, close = await open_client_keys(settings)
        try:
            return await _keys_command(args, keys)
        except StoreUnavailable as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await close()

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
    from costproxy.errors import StoreUnavailable
    from costproxy.store.backend import local_path
    from costproxy.tools.demo import demo_ledger_path
    from costproxy.tools.usage_report import print_usage

    settings = _settings(args)
    path, demo = local_path(settings), str(demo_ledger_path(settings))
    ledger_url = None if args.demo else settings.store.ledger_url  # the demo's ledger is its own SQLite file
    if args.demo:
        path = demo
    if ledger_url is None and not os.path.exists(path):
        hint = "" if args.demo or not os.path.exists(demo) else f"; the demo's ledger is {demo}: costproxy usage --demo"
        print(f"no ledger at {path} yet{hint}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(print_usage(path, hours=args.hours, group_by=args.by, limit=args.limit,
                                       ledger_url=ledger_url, ledger_timeout_s=settings.store.ledger_timeout_s,
                                       shipping_failure=_shipping_failure(settings)))
    except StoreUnavailable as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _shipping_failure(settings: Settings) -> Callable[[], str | None] | None:
    """Redis store with a PostgreSQL ledger: reads why the shipping replica cannot write, if it says so."""
    from costproxy.store.backend import is_redis_url

    if settings.store.ledger_url is None or not is_redis_url(settings.store.url):
        return None

    def read() -> str | None:
        from costproxy.lean_imports import import_redis

        import_redis()
        import redis

        client = redis.Redis.from_url(settings.store.url, socket_timeout=settings.store.timeout_s,
                                      socket_connect_timeout=settings.store.timeout_s)
        try:
            value = client.get(f"{settings.budgets.settings.key_prefix}:ledger-postgres-failing")
        except redis.RedisError as exc:
            print(f"warning: could not ask Redis whether shipping to PostgreSQL fails: {exc}", file=sys.stderr)
            return None
        finally:
            client.close()
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        return None if text is None else f"the replica that ships says: {text}"

    return read


def cmd_ledger(args: argparse.Namespace) -> int:
    """The PostgreSQL ledger's schema: status, migrate, rollback (``tools/ledger_cli.py``)."""
    from costproxy.tools.ledger_cli import run

    return asyncio.run(run(_settings(args), args))


def cmd_export_encodings(args: argparse.Namespace) -> int:
    from costproxy.analyzer.encodings import export_encodings

    for path in export_encodings(Path(args.directory)):
        print(path)
    return 0


# --- parser ---------------------------------------------------------------------------------------------


def _global_parser() -> argparse.ArgumentParser:
    """The global options, for ``--help`` only: ``split_global_options`` takes them out before parsing."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("global options (before or after the sub-command)")
    group.add_argument("--config", metavar="FILE", help="costproxy.yaml (default: $COSTPROXY_CONFIG, else "
                       "./config/costproxy.yaml, else the packaged defaults); calibrate and eval read none")
    group.add_argument("--log-level", choices=LOG_LEVELS, help="overrides logging.level")
    group.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _global_parser()
    parser = argparse.ArgumentParser(prog="costproxy", description="Cost-aware OpenAI-compatible LLM proxy",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    for name, text, func in (("serve", "run the proxy (validates everything first)", cmd_serve),
                             ("demo", "run the proxy against a local SIMULATED provider (no API keys)", cmd_demo)):
        server = command(name, text)
        server.add_argument("--host")
        server.add_argument("--port", type=int, help="0: any free port (printed when listening)")
        if name == "serve":
            server.add_argument("--workers", type=int, help="processes serving the port (server.workers; more "
                                "than one needs a redis:// store)")
        server.set_defaults(func=func)
        if name == "demo":
            server.add_argument("--keep", action="store_true", help="keep the demo ledger when the demo stops "
                                "(default: delete it; it lives beside the configured ledger file)")
    command("check-config", "validate configuration, models, quality profiles, rules and encodings; show "
            "which providers are usable").set_defaults(func=cmd_check_config)
    init = command("init", "write an editable copy of the default config/ and rules/ into DIR")
    init.add_argument("directory", nargs="?", default=".", metavar="DIR", help="default: the current directory")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(func=cmd_init)
    _keys_parser(command("keys", "issue, list and revoke client keys"))
    usage = command("usage", "print recent spend, baseline and saving")
    usage.add_argument("--hours", type=hours_arg, default=24.0, help="the spend of the last HOURS (default 24)")
    usage.add_argument("--by", default="model", choices=("model", "team", "user", "key", "project", "org"))
    usage.add_argument("--limit", type=limit_arg, default=20,
                       help=f"recent requests to list, 0 to {MAX_USAGE_LIMIT} (default 20)")
    usage.add_argument("--demo", action="store_true", help="read the ledger of `costproxy demo`")
    usage.set_defaults(func=cmd_usage)
    ledger = command("ledger", "the PostgreSQL ledger's schema: status, migrate [--to N], rollback [--to N]")
    from costproxy.tools.ledger_cli import add_parser as add_ledger_parser

    add_ledger_parser(ledger)
    ledger.set_defaults(func=cmd_ledger)
    export = command("export-encodings", "write verified tiktoken files into a directory")
    export.add_argument("directory")
    export.set_defaults(func=cmd_export_encodings)
    for name, text in (("rules", "steering rules: `costproxy rules check`"),
                       ("explain", "show which rules fire and which model would serve a request"),
                       ("calibrate", "fit quality profiles from an evaluation data set"),
                       ("eval", "replay an evaluation data set through the selection engine")):
        sub.add_parser(name, help=f"{text} (see `costproxy {name} --help`)")
    return parser


def _keys_parser(keys: argparse.ArgumentParser) -> None:
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create")
    for name in ("name", "user", "team", "org", "project"):
        create.add_argument(f"--{name}")
    keys_sub.add_parser("list")
    revoke = keys_sub.add_parser("revoke")
    revoke.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)


# Sub-commands with parsers of their own: (module, function, reads the configuration).
DELEGATED = {
    "rules": ("costproxy.steering.commands", "rules_main", True),
    "explain": ("costproxy.tools.explain", "explain_main", True),
    "calibrate": ("costproxy.tools.eval_cli", "calibrate_main", False),
    "eval": ("costproxy.tools.eval_cli", "eval_main", False),
}


def _run_delegated(options: GlobalOptions, argv: list[str]) -> int | None:
    """A delegated sub-command gets every argument after its name, plus ``--config`` when it reads one."""
    if not argv or argv[0] not in DELEGATED:
        return None
    import importlib

    module, function, takes_config = DELEGATED[argv[0]]
    main_function = getattr(importlib.import_module(module), function)
    config = ["--config", options.config] if takes_config and options.config else []
    return int(main_function(argv[1:] + config))


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `costproxy usage | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    try:
        options, rest = split_global_options(argv)
    except UsageError as exc:
        print(f"costproxy: error: {exc}", file=sys.stderr)
        return 2
    if options.version:
        print(f"costproxy {_version()}")
        return 0
    try:
        delegated = _run_delegated(options, rest)
        if delegated is not None:
            return delegated
        args = build_parser().parse_args(rest)
        args.config, args.log_level = options.config, options.log_level
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except CallerError as exc:  # a value given on the command line that the command refuses (keys create --user "")
        print(f"costproxy: error: {exc.message}", file=sys.stderr)
        return 2
    except ProxyError as exc:  # the store, a provider…: the command could not be carried out
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # main's: the reader left, not a failure
    except OSError as exc:  # a directory or file the command cannot make, read or write
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("costproxy")
    except PackageNotFoundError:
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
