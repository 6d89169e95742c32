"""The only reader of environment variables and configuration files.

``find_config`` says which ``costproxy.yaml`` to use: ``--config``, else ``$COSTPROXY_CONFIG``, else
``./config/costproxy.yaml``, else the defaults shipped in the package (``costproxy/defaults/``).
``load_settings`` reads it, the model registry and the quality profiles it points to, checks that the
rules directory exists, resolves secrets (each referenced by env var *name*) once, and returns
frozen, typed settings for every section.  Unknown keys are errors; every error names the file, the
dotted path and the bad value; names that refer to models (``default_model``, ``fallback.chains``,
budget ``restrict-models``) are checked against the registry here, at load time.  ``check-config``
and ``serve`` therefore run the same checks by construction.

A provider whose ``enabled`` is false (the default for ``auth: none`` providers such as a local
Ollama) is not part of the deployment: its models are left out of ``registry`` (listed in
``disabled_models``).  ``provider_readiness`` tells which providers can serve right now.

Environment overrides: ``COSTPROXY_CONFIG``, ``COSTPROXY_STORE_URL``, ``COSTPROXY_ADMIN_TOKEN`` (the
name ``admin.token_env`` gives), ``COSTPROXY_HOST``, ``COSTPROXY_PORT`` and each provider's
``api_key_env``.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from costproxy.alerts.config import AlertSettings, parse_alert_settings
from costproxy.budgets.config import BudgetConfig, parse_budget_config
from costproxy.config_schema import ModelCheck, Node
from costproxy.defaults import PACKAGED_CONFIG, is_packaged
from costproxy.errors import ConfigError
from costproxy.registry import TIERS, Registry, parse_registry
from costproxy.routing.config import FallbackSettings, parse_fallback_config, parse_selection_config
from costproxy.routing.policy import QUALITY_MODES
from costproxy.routing.quality import QualityProfiles, parse_quality
from costproxy.routing.selection import SelectionConfig
from costproxy.store.responses import ResponsesSettings, parse_responses_settings

LOCAL_CONFIG = Path("config/costproxy.yaml")
PROVIDER_AUTH = ("bearer", "api-key", "x-api-key", "none")
PROVIDER_KINDS = ("openai", "azure", "anthropic")
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_STORE_URL = "sqlite:///data/costproxy.sqlite3"  # relative: to the working directory
# Redis mode: this replica's own SQLite file (ledger mirror, outbox), relative to the config file's
# directory; {host} and {port} (hostname, server port) keep replicas started from one config apart.
DEFAULT_LOCAL_PATH = "../data/costproxy-replica-{host}-{port}.sqlite3"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    enabled: bool = True  # false: not part of this deployment (default for auth: none)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = DEFAULT_STORE_URL  # sqlite:///path, redis://host:port/db, rediss://…, memory://
    local_path: str = DEFAULT_LOCAL_PATH  # template, used with a redis:// store only


@dataclass(frozen=True, slots=True)
class AdminSettings:
    token_env: str = "COSTPROXY_ADMIN_TOKEN"
    token: str | None = field(default=None, repr=False)  # None: the admin API is disabled


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


@dataclass(frozen=True, slots=True)
class TracingSettings:
    exporter: str = "none"  # none | console | otlp (needs the [otlp] extra)
    endpoint: str | None = None  # OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces


@dataclass(frozen=True)
class Settings:
    config_path: Path
    server: ServerSettings
    store: StoreSettings
    providers: Mapping[str, ProviderSettings]
    registry: Registry  # models of enabled providers only
    models_path: Path
    rules_dir: Path
    quality_path: Path | None = None
    quality: QualityProfiles | None = None  # parsed quality_path
    admin: AdminSettings = AdminSettings()
    trusted_proxies: tuple[TrustedProxySettings, ...] = ()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()
    default_model: str | None = None  # used when a request names no model
    encodings_dir: Path | None = None
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    fallback: FallbackSettings = field(default_factory=FallbackSettings)
    responses: ResponsesSettings = field(default_factory=ResponsesSettings)  # stored /v1/responses
    disabled_models: Mapping[str, str] = field(default_factory=dict)  # model id -> its disabled provider

    # Shorthands kept while other branches still read the pre-``store``/``admin`` names.
    @property
    def store_url(self) -> str:
        return self.store.url

    @property
    def store_local_path(self) -> str:
        return self.store.local_path

    @property
    def admin_token(self) -> str | None:
        return self.admin.token


@dataclass(frozen=True, slots=True)
class ConfigLocation:
    path: Path
    source: str  # --config | $COSTPROXY_CONFIG | ./config/costproxy.yaml | packaged defaults


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    name: str
    usable: bool
    state: str  # ready | no-key | disabled
    detail: str  # what makes it usable, or what is missing
    models: tuple[str, ...]  # the models it serves (for a disabled provider: would serve)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ConfigError(str(path), "", "file not found") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None


def find_config(argument: str | None, environ: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> ConfigLocation:
    """``--config``, else ``$COSTPROXY_CONFIG``, else ``./config/costproxy.yaml``, else the packaged defaults.

    A path given explicitly is used even when it does not exist (loading then says so)."""
    env = os.environ if environ is None else environ
    if argument:
        return ConfigLocation(Path(argument), "--config")
    if env.get("COSTPROXY_CONFIG"):
        return ConfigLocation(Path(env["COSTPROXY_CONFIG"]), "$COSTPROXY_CONFIG")
    local = (cwd or Path.cwd()) / LOCAL_CONFIG
    if local.is_file():
        return ConfigLocation(local if cwd else LOCAL_CONFIG, f"./{LOCAL_CONFIG}")
    return ConfigLocation(PACKAGED_CONFIG, "packaged defaults")


def config_path_from(argument: str | None, environ: Mapping[str, str] | None = None) -> Path:
    return find_config(argument, environ).path


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    root = Node(read_yaml(path), str(path))
    if not isinstance(root.value, dict):
        raise root.error("must be a mapping of sections (server, store, providers, …)", root.value)
    base = path.parent
    providers = {name: _parse_provider(name, node, env) for name, node in root.child("providers").items()}
    models_path = _relative(base, root.child("models_file", "models.yaml").str())
    registry, disabled = _load_registry(models_path, providers)
    check = _model_check(registry, disabled)
    quality_path = _quality_path(root.child("quality_file", None), base)
    settings = Settings(
        config_path=path,
        server=_parse_server(root.child("server", {}), env),
        store=_parse_store(root.child("store", {}), env, path),
        providers=providers,
        registry=registry,
        models_path=models_path,
        rules_dir=_directory(root.child("rules_dir", "../rules"), base),
        quality_path=quality_path,
        quality=None if quality_path is None else parse_quality(read_yaml(quality_path), str(quality_path)),
        admin=_parse_admin(root.child("admin", {}), env),
        trusted_proxies=_parse_trusted_proxies(root.child("trusted_proxies", []), env),
        logging=_parse_logging(root.child("logging", {})),
        tracing=_parse_tracing(root.child("tracing", {})),
        default_model=_parse_default_model(root.child("default_model", None), registry, check),
        encodings_dir=_optional_directory(root.child("encodings_dir", None), base),
        budgets=parse_budget_config(root.child("budgets", None).value, str(path), check_model=check),
        alerts=parse_alert_settings(root.child("alerts", None).value, str(path)),
        selection=parse_selection_config(root.child("selection", None).value, str(path)),
        fallback=parse_fallback_config(root.child("fallback", None).value, str(path), registry, check),
        responses=parse_responses_settings(root.child("responses", None).value, str(path)),
        disabled_models=disabled,
    )
    webhooks = root.child("webhooks", None)
    if webhooks.value is not None:
        raise webhooks.error("webhook subscriptions are managed through /api/v1/webhooks; delivery settings "
                             "live under alerts:")
    root.done()
    return settings


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy with some fields replaced (CLI flags such as ``--port``)."""
    return replace(settings, **changes)


# --- readiness ------------------------------------------------------------------------------------


def provider_readiness(settings: Settings) -> list[ProviderStatus]:
    """Per configured provider: can it serve now, and if not, what is missing.  Pure.

    Usable: its key's env var is set, or it needs none (``auth: none``) and is explicitly enabled."""
    serves: dict[str, list[str]] = {name: [] for name in settings.providers}
    for model in settings.registry.models.values():
        serves.setdefault(model.provider, []).append(model.id)
    for model_id, provider_name in settings.disabled_models.items():
        serves.setdefault(provider_name, []).append(model_id)
    return [_status(p, tuple(sorted(serves[p.name]))) for p in settings.providers.values()]


def _status(provider: ProviderSettings, models: tuple[str, ...]) -> ProviderStatus:
    name = provider.name
    if not provider.enabled:
        detail = (f"auth: none; set providers.{name}.enabled: true once its server runs"
                  if provider.auth == "none" else f"providers.{name}.enabled is false")
        return ProviderStatus(name, False, "disabled", detail, models)
    if provider.auth == "none":
        return ProviderStatus(name, True, "ready", "no credentials needed (auth: none)", models)
    if provider.api_key:
        return ProviderStatus(name, True, "ready", f"key from ${provider.api_key_env}", models)
    return ProviderStatus(name, False, "no-key", f"set ${provider.api_key_env}", models)


def usable_providers(settings: Settings) -> frozenset[str]:
    return frozenset(status.name for status in provider_readiness(settings) if status.usable)


# --- sections -------------------------------------------------------------------------------------


def _relative(base: Path, value: str) -> Path:
    candidate = Path(value)
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


def _directory(node: Node, base: Path) -> Path:
    path = _relative(base, node.str())
    if not path.is_dir():
        raise node.error(f"no such directory: {path}", node.value)
    return path


def _optional_directory(node: Node, base: Path) -> Path | None:
    return None if node.value is None else _directory(node, base)


def _quality_path(node: Node, base: Path) -> Path | None:
    """``quality_file``, else ``quality.yaml`` beside the config when it exists, else none."""
    if node.value is not None:
        return _relative(base, node.str())
    beside = base / "quality.yaml"
    return beside.resolve() if beside.is_file() else None


def _env_name(node: Node) -> str:
    name = node.str()
    if not _ENV_NAME.fullmatch(name):
        raise node.error("must be the NAME of an environment variable (letters, digits, _), not a secret",
                         name if len(name) < 8 else name[:4] + "…")
    return name


def _load_registry(models_path: Path, providers: Mapping[str, ProviderSettings]) -> tuple[Registry, dict[str, str]]:
    """The registry of the enabled providers' models, and the models left out (id -> provider)."""
    full = parse_registry(read_yaml(models_path), str(models_path), providers)
    disabled = {m.id: m.provider for m in full.models.values() if not providers[m.provider].enabled}
    if not disabled:
        return full, {}
    if full.baseline_model in disabled:
        raise ConfigError(str(models_path), "baseline_model", f"is served by provider "
                          f"{disabled[full.baseline_model]}, which is not enabled", full.baseline_model)
    registry = Registry(
        models={k: m for k, m in full.models.items() if k not in disabled},
        aliases={alias: target for alias, target in full.aliases.items() if target not in disabled},
        baseline_model=full.baseline_model,
    )
    return registry, disabled


def _model_check(registry: Registry, disabled: Mapping[str, str]) -> ModelCheck:
    def check(name: str) -> str | None:
        if name in registry.models:
            return None
        if name in registry.aliases:
            return f"is an alias: name the model id {registry.aliases[name]!r}"
        if name in disabled:
            return (f"is served by provider {disabled[name]}, which is not enabled "
                    f"(providers.{disabled[name]}.enabled)")
        return "names no model in the registry"

    return check


def _parse_default_model(node: Node, registry: Registry, check: ModelCheck) -> str | None:
    name = node.opt_str()
    if name is None or name == "auto" or name in TIERS or name in registry.aliases:
        return name
    if name.startswith("auto:"):
        if name[5:] not in QUALITY_MODES:
            raise node.error(f"routing mode must be one of {', '.join(QUALITY_MODES)}", name)
        return name
    problem = check(name)
    if problem is not None:
        raise node.error(problem, name)
    return name


def _parse_store(node: Node, env: Mapping[str, str], config_path: Path) -> StoreSettings:
    url_node = node.child("url", DEFAULT_STORE_URL)
    url = url_node.str()
    if not _valid_store_url(url):
        raise url_node.error(_STORE_URL_FORMS, url)
    override = env.get("COSTPROXY_STORE_URL")
    if override:
        if not _valid_store_url(override):
            raise ConfigError("$COSTPROXY_STORE_URL", "", _STORE_URL_FORMS, override)
        url = override
    local_path = _parse_local_path(node.child("local_path", DEFAULT_LOCAL_PATH))
    node.done()
    if is_packaged(config_path) and not os.path.isabs(local_path):
        # The packaged defaults behave as if `costproxy init .` had been run: data goes to ./data.
        local_path = os.path.normpath(os.path.join(os.getcwd(), "config", local_path))
    return StoreSettings(url=url, local_path=local_path)


_STORE_URL_FORMS = "must be sqlite:///path, redis://host:port/db, rediss://host:port/db or memory://"


def _valid_store_url(url: str) -> bool:
    if url.startswith("sqlite:///"):
        return len(url) > len("sqlite:///")
    return url.startswith(("redis://", "rediss://")) or url == "memory://"


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
        text = env["COSTPROXY_PORT"]
        if not text.isdigit() or int(text) > 65535:
            raise ConfigError("$COSTPROXY_PORT", "", "must be a port number from 0 to 65535", text)
        port = int(text)
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
    key_node = node.child("api_key_env", None)
    key_env = None if key_node.value is None else _env_name(key_node)
    base_url = node.child("base_url").str().rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise node.child("base_url").error("must start with http:// or https://", base_url)
    default_auth = {"azure": "api-key", "anthropic": "x-api-key"}.get(kind, "bearer")
    auth_node = node.child("auth", default_auth if key_env else "none")
    auth = auth_node.str(choices=PROVIDER_AUTH)
    if auth == "none" and key_env:
        raise auth_node.error(f"sends no key, yet api_key_env names one: remove api_key_env or pick one of "
                              f"{', '.join(PROVIDER_AUTH[:-1])}", auth)
    if auth != "none" and not key_env:
        raise key_node.error(f"is required for auth: {auth} (the NAME of the env var holding the key), or set "
                             "auth: none for a server without keys")
    provider = ProviderSettings(
        name=name, base_url=base_url, kind=kind, api_key_env=key_env,
        api_key=(env.get(key_env) or None) if key_env else None, auth=auth,
        headers=node.child("headers", {}).str_map(), query=node.child("query", {}).str_map(),
        api_version=node.child("api_version", None).opt_str(),
        timeouts=_parse_timeouts(node.child("timeouts", {})),
        simulated=node.child("simulated", False).bool(),
        responses_api=_kind_option(node, "responses_api", False, kind, "openai").bool(),
        anthropic_version=_kind_option(node, "anthropic_version", DEFAULT_ANTHROPIC_VERSION, kind, "anthropic").str(),
        count_tokens=_kind_option(node, "count_tokens", False, kind, "anthropic").bool(),
        enabled=node.child("enabled", auth != "none").bool(),
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


def _parse_admin(node: Node, env: Mapping[str, str]) -> AdminSettings:
    token_env = _env_name(node.child("token_env", "COSTPROXY_ADMIN_TOKEN"))
    node.done()
    return AdminSettings(token_env=token_env, token=env.get(token_env) or None)


def _parse_trusted_proxies(node: Node, env: Mapping[str, str]) -> tuple[TrustedProxySettings, ...]:
    proxies: list[TrustedProxySettings] = []
    for item in node.elements():
        secret_env = _env_name(item.child("secret_env"))
        name_node = item.child("name")
        if any(proxy.name == name_node.str() for proxy in proxies):
            raise name_node.error("is used by two trusted proxies", name_node.value)
        proxies.append(TrustedProxySettings(name=name_node.str(), secret_env=secret_env,
                                            secret=env.get(secret_env, ""),
                                            sources=_parse_sources(item.child("sources", []))))
        item.done()
    return tuple(proxies)


def _parse_sources(node: Node) -> tuple[str, ...]:
    for element in node.elements():
        try:
            ipaddress.ip_network(element.str(), strict=False)
        except ValueError:
            raise element.error("must be an IP address or network such as 10.0.0.0/8", element.value) from None
    return tuple(node.str_list())


def _parse_logging(node: Node) -> LoggingSettings:
    if node.has("log_prompts"):
        raise node.child("log_prompts").error("was removed: costproxy never logs prompt text (delete the line)",
                                              node.child("log_prompts").value)
    result = LoggingSettings(
        level=node.child("level", "info").str(choices=("debug", "info", "warning", "error")),
        json=node.child("json", True).bool(),
    )
    node.done()
    return result


def _parse_tracing(node: Node) -> TracingSettings:
    exporter = node.child("exporter", "none").str(choices=("none", "console", "otlp"))
    endpoint_node = node.child("endpoint", None)
    endpoint = endpoint_node.opt_str()
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise endpoint_node.error("must start with http:// or https://", endpoint)
    if exporter == "otlp" and not _otlp_installed():
        raise node.child("exporter").error("otlp needs the exporter package: pip install 'costproxy[otlp]'",
                                           exporter)
    node.done()
    return TracingSettings(exporter=exporter, endpoint=endpoint)


def _otlp_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        return False
