"""The only reader of environment variables and configuration files.

``load_settings`` reads ``config/costproxy.yaml`` (path from ``--config`` or ``COSTPROXY_CONFIG``),
the model registry it points to, and resolves secrets (each referenced by env var *name*) once.
Everything it returns is frozen; unknown keys are errors naming file, dotted path and value.

Environment overrides: ``COSTPROXY_CONFIG``, ``COSTPROXY_STORE_URL``, ``COSTPROXY_ADMIN_TOKEN``,
``COSTPROXY_HOST``, ``COSTPROXY_PORT`` and each provider's ``api_key_env``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from costproxy.config_schema import Node
from costproxy.errors import ConfigError
from costproxy.registry import Registry, parse_registry

DEFAULT_CONFIG = Path("config/costproxy.yaml")
PROVIDER_AUTH = ("bearer", "api-key", "x-api-key", "none")
PROVIDER_KINDS = ("openai", "azure", "anthropic")
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Redis mode: this replica's own SQLite file (ledger mirror, outbox), relative to the config file's
# directory; {host} and {port} (hostname, server port) keep replicas started from one config apart.
DEFAULT_LOCAL_PATH = "../data/costproxy-replica-{host}-{port}.sqlite3"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    read: float = 120.0  # whole unary response
    stream_idle: float = 120.0  # max silence between stream chunks
    first_byte: float = 60.0  # until response headers arrive


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    name: str
    base_url: str
    kind: str = "openai"  # openai | azure (deployment URLs + api-version) | anthropic (Messages API)
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    auth: str = "bearer"
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    api_version: str | None = None
    timeouts: Timeouts = Timeouts()
    simulated: bool = False
    responses_api: bool = False  # kind openai: serves OpenAI's /responses natively
    anthropic_version: str = DEFAULT_ANTHROPIC_VERSION  # kind anthropic: the anthropic-version header
    count_tokens: bool = False  # kind anthropic: count prompts with its /messages/count_tokens


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class TrustedProxySettings:
    """A chaining proxy allowed to assert identity headers (DESIGN §3.2)."""

    name: str
    secret_env: str
    secret: str = field(default="", repr=False)
    sources: tuple[str, ...] = ()  # allowed source addresses/networks; empty: any


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"
    json: bool = True
    log_prompts: bool = False


@dataclass(frozen=True, slots=True)
class TracingSettings:
    exporter: str = "none"  # none | console | otlp (needs the [otlp] extra)
    endpoint: str | None = None  # OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces


@dataclass(frozen=True, slots=True)
class Settings:
    config_path: Path
    server: ServerSettings
    store_url: str
    providers: Mapping[str, ProviderSettings]
    registry: Registry
    models_path: Path
    rules_dir: Path
    quality_path: Path | None
    admin_token: str | None = field(default=None, repr=False)
    trusted_proxies: tuple[TrustedProxySettings, ...] = ()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()
    default_model: str | None = None  # used when a request names no model
    encodings_dir: Path | None = None
    store_local_path: str = DEFAULT_LOCAL_PATH  # template, used with a redis:// store only
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # sections parsed by others


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None


def config_path_from(argument: str | None, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(argument or env.get("COSTPROXY_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    file = str(path)
    root = Node(read_yaml(path), file)
    base = path.parent
    server = _parse_server(root.child("server", {}), env)
    providers = {name: _parse_provider(name, node, env) for name, node in root.child("providers").items()}
    models_node = root.child("models_file", "models.yaml")
    models_path = _relative(base, models_node.str())
    registry = parse_registry(read_yaml(models_path), str(models_path), providers)
    rules_dir = _relative(base, root.child("rules_dir", "../rules").str())
    quality = root.child("quality_file", None).opt_str()
    if quality is None and (base / "quality.yaml").exists():
        quality = "quality.yaml"
    store_node = root.child("store", {})
    store_url = store_node.child("url", "sqlite:///data/costproxy.sqlite3").str()
    store_url = env.get("COSTPROXY_STORE_URL") or store_url
    local_path = _parse_local_path(store_node.child("local_path", DEFAULT_LOCAL_PATH))
    store_node.done()
    _check_store_url(store_url, root)
    admin = root.child("admin", {})
    admin_env = admin.child("token_env", "COSTPROXY_ADMIN_TOKEN").str()
    admin.done()
    default_model_node = root.child("default_model", None)
    default_model = default_model_node.opt_str()
    if default_model and default_model not in registry.models and not default_model.startswith("auto"):
        raise default_model_node.error("names no model in the registry", default_model)
    encodings = root.child("encodings_dir", None).opt_str()
    settings = Settings(
        config_path=path,
        server=server,
        store_url=store_url,
        providers=providers,
        registry=registry,
        models_path=models_path,
        rules_dir=rules_dir,
        quality_path=_relative(base, quality) if quality else None,
        admin_token=env.get(admin_env) or None,
        trusted_proxies=tuple(_parse_trusted(n, env) for n in root.child("trusted_proxies", []).elements()),
        logging=_parse_logging(root.child("logging", {})),
        tracing=_parse_tracing(root.child("tracing", {})),
        default_model=default_model,
        encodings_dir=_relative(base, encodings) if encodings else None,
        store_local_path=local_path,
        raw={key: root.child(key, None).value for key in _SECTIONS_PARSED_ELSEWHERE},
    )
    root.done()
    return settings


# Sections owned by other modules (budgets, alerts, selection, the stored Responses); they parse
# them with ``Node``.
_SECTIONS_PARSED_ELSEWHERE = ("budgets", "alerts", "selection", "fallback", "webhooks", "responses")


def _relative(base: Path, value: str) -> Path:
    candidate = Path(value)
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


def _check_store_url(url: str, root: Node) -> None:
    if not (url.startswith("sqlite:///") or url.startswith("redis://") or url.startswith("rediss://")
            or url == "memory://"):
        raise ConfigError(root.file, "store.url", "must be sqlite:///path, redis://host:port/db or memory://", url)


def _parse_local_path(node: Node) -> str:
    template = node.str()
    try:
        template.format(host="host", port=0)
    except (KeyError, IndexError, ValueError):
        raise node.error("may use only the placeholders {host} and {port}", template) from None
    return template


def _parse_server(node: Node, env: Mapping[str, str]) -> ServerSettings:
    # Read every key first (so none is reported unknown), then let the environment override.
    host = node.child("host", "127.0.0.1").str()
    port = node.child("port", 8080).int(minimum=0, maximum=65535)
    if env.get("COSTPROXY_PORT"):
        try:
            port = int(env["COSTPROXY_PORT"])
        except ValueError:
            raise ConfigError("$COSTPROXY_PORT", "", "must be an integer", env["COSTPROXY_PORT"]) from None
    server = ServerSettings(
        host=env.get("COSTPROXY_HOST") or host,
        port=port,
        max_body_bytes=node.child("max_body_bytes", 4 * 1024 * 1024).int(minimum=1024),
        access_log=node.child("access_log", False).bool(),
    )
    node.done()
    return server


def _parse_timeouts(node: Node) -> Timeouts:
    defaults = Timeouts()
    timeouts = Timeouts(
        connect=node.child("connect", defaults.connect).number(minimum=0.001),
        read=node.child("read", defaults.read).number(minimum=0.001),
        stream_idle=node.child("stream_idle", defaults.stream_idle).number(minimum=0.001),
        first_byte=node.child("first_byte", defaults.first_byte).number(minimum=0.001),
    )
    node.done()
    return timeouts


def _parse_provider(name: str, node: Node, env: Mapping[str, str]) -> ProviderSettings:
    kind = node.child("kind", "openai").str(choices=PROVIDER_KINDS)
    key_env = node.child("api_key_env", None).opt_str()
    base_url = node.child("base_url").str().rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise node.child("base_url").error("must start with http:// or https://", base_url)
    default_auth = {"azure": "api-key", "anthropic": "x-api-key"}.get(kind, "bearer")
    provider = ProviderSettings(
        name=name,
        base_url=base_url,
        kind=kind,
        api_key_env=key_env,
        api_key=env.get(key_env) if key_env else None,
        auth=node.child("auth", default_auth if key_env else "none").str(choices=PROVIDER_AUTH),
        headers=node.child("headers", {}).str_map(),
        query=node.child("query", {}).str_map(),
        api_version=node.child("api_version", None).opt_str(),
        timeouts=_parse_timeouts(node.child("timeouts", {})),
        simulated=node.child("simulated", False).bool(),
        responses_api=_kind_option(node, "responses_api", False, kind, "openai").bool(),
        anthropic_version=_kind_option(node, "anthropic_version", DEFAULT_ANTHROPIC_VERSION, kind, "anthropic").str(),
        count_tokens=_kind_option(node, "count_tokens", False, kind, "anthropic").bool(),
    )
    if kind == "azure" and not provider.api_version:
        raise node.child("api_version").error("is required for kind: azure")
    node.done()
    return provider


def _kind_option(node: Node, key: str, default: Any, kind: str, only: str) -> Node:
    """A provider option that only one kind understands; set on another kind it is an error."""
    child = node.child(key, default)
    if kind != only and child.value != default:
        raise child.error(f"applies to kind: {only} only", child.value)
    return child


def _parse_trusted(node: Node, env: Mapping[str, str]) -> TrustedProxySettings:
    secret_env = node.child("secret_env").str()
    trusted = TrustedProxySettings(
        name=node.child("name").str(),
        secret_env=secret_env,
        secret=env.get(secret_env, ""),
        sources=tuple(node.child("sources", []).str_list()),
    )
    node.done()
    return trusted


def _parse_logging(node: Node) -> LoggingSettings:
    result = LoggingSettings(
        level=node.child("level", "info").str(choices=("debug", "info", "warning", "error")),
        json=node.child("json", True).bool(),
        log_prompts=node.child("log_prompts", False).bool(),
    )
    node.done()
    return result


def _parse_tracing(node: Node) -> TracingSettings:
    result = TracingSettings(
        exporter=node.child("exporter", "none").str(choices=("none", "console", "otlp")),
        endpoint=node.child("endpoint", None).opt_str(),
    )
    node.done()
    return result


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy with some fields replaced (CLI flags such as ``--port``)."""
    return replace(settings, **changes)
