"""The only reader of environment variables and configuration files.

``find_config`` says which ``costproxy.yaml`` to use: ``--config``, else ``$COSTPROXY_CONFIG``, else
``./config/costproxy.yaml``, else the defaults shipped in the package (``costproxy/defaults/``).
``load_settings`` reads it, the model registry and the quality profiles it points to, checks that the
rules directory exists, resolves secrets (each referenced by env var *name*) once, and returns
frozen, typed settings for every section; the big sections are parsed in their domain's ``config``
module (``providers``, ``store``, ``budgets``, ``alerts``, ``routing``, ``ratelimits``, ``cache``), the
small ones here, and
``load_settings`` is the one caller of them all.  Unknown keys are errors; every error names the
file, the dotted path and the bad value; names that refer to models (``default_model``,
``fallback.chains``, budget targets) are checked against the registry here, at load time.
``check-config`` and ``serve`` therefore run the same checks by construction.

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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from costproxy import yamlfile
from costproxy.alerts.config import AlertSettings, parse_alert_settings
from costproxy.budgets.config import BudgetConfig, parse_budget_config
from costproxy.cache.config import parse_cache_settings
from costproxy.cache.policy import CacheSettings
from costproxy.config_schema import ModelCheck, Node
from costproxy.defaults import PACKAGED_CONFIG, is_packaged
from costproxy.errors import ConfigError
from costproxy.learning.config import LearningSettings, parse_learning_settings
from costproxy.providers.config import ProviderSettings as ProviderSettings  # re-exported for its importers
from costproxy.providers.config import parse_provider
from costproxy.ratelimits.config import RateLimitConfig, parse_rate_limits
from costproxy.records import frozen
from costproxy.registry import TIERS, Registry, parse_registry
from costproxy.routing.config import FallbackSettings, parse_fallback_config, parse_selection_config
from costproxy.routing.policy import QUALITY_MODES
from costproxy.routing.quality import QualityProfiles, parse_quality
from costproxy.routing.selection import SelectionConfig
from costproxy.store.config import StoreSettings, parse_store
from costproxy.store.responses import ResponsesSettings, parse_responses_settings

LOCAL_CONFIG = Path("config/costproxy.yaml")


@frozen
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    access_log: bool = False
    idle_timeout_s: float = 15.0  # a connection without a complete request header this long is closed
    body_timeout_s: float = 30.0  # a request body must arrive within this (408 request_timeout)
    drain_timeout_s: float = 30.0  # on SIGTERM: how long in-flight requests and streams may finish
    workers: int = 1  # processes serving one port (more than one needs a redis:// store)


@frozen
class AdminSettings:
    token_env: str = "COSTPROXY_ADMIN_TOKEN"
    token: str | None = field(default=None, repr=False)  # None: the admin API is disabled


@frozen
class TrustedProxySettings:
    """A chaining proxy allowed to assert identity headers (DESIGN §3.2)."""

    name: str
    secret_env: str
    secret: str = field(default="", repr=False)
    sources: tuple[str, ...] = ()  # allowed source addresses/networks; empty: any


@frozen
class LoggingSettings:
    level: str = "info"
    json: bool = True
    queue_lines: int = 10_000  # lines waiting for the writer thread; beyond, lines are dropped and counted


@frozen
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
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    cache: CacheSettings = field(default_factory=CacheSettings)  # the response cache
    disabled_models: Mapping[str, str] = field(default_factory=dict)  # model id -> its disabled provider
    learning: LearningSettings = field(default_factory=LearningSettings)  # feedback, online estimates, judge

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


@frozen
class ConfigLocation:
    path: Path
    source: str  # --config | $COSTPROXY_CONFIG | ./config/costproxy.yaml | packaged defaults


@frozen
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
        return yamlfile.load(text)
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
    providers = {name: parse_provider(name, node, env) for name, node in root.child("providers").items()}
    models_path = _relative(base, root.child("models_file", "models.yaml").str())
    registry, disabled = _load_registry(models_path, providers)
    check = _model_check(registry, disabled)
    quality_path = _quality_path(root.child("quality_file", None), base)
    settings = Settings(
        config_path=path,
        server=_parse_server(root.child("server", {}), env),
        store=parse_store(root.child("store", {}), env.get("COSTPROXY_STORE_URL"), _local_base(path),
                          env.get("COSTPROXY_LEDGER_URL")),
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
        rate_limits=parse_rate_limits(root.child("rate_limits", None).value, str(path)),
        cache=parse_cache_settings(root.child("cache", None).value, str(path)),
        disabled_models=disabled,
        learning=parse_learning_settings(root.child("learning", None).value, str(path), check_model=check),
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
        tool_fees=full.tool_fees,
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


def _local_base(config_path: Path) -> str | None:
    """The packaged defaults behave as if `costproxy init .` had been run: data goes to ./data."""
    return os.path.join(os.getcwd(), "config") if is_packaged(config_path) else None


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
        idle_timeout_s=node.child("idle_timeout_s", 15.0).number(minimum=1, maximum=3600),
        body_timeout_s=node.child("body_timeout_s", 30.0).number(minimum=1, maximum=3600),
        drain_timeout_s=node.child("drain_timeout_s", 30.0).number(minimum=0, maximum=86_400),
        workers=node.child("workers", 1).int(minimum=1, maximum=256),
    )
    node.done()
    return server


def _parse_admin(node: Node, env: Mapping[str, str]) -> AdminSettings:
    token_env = node.child("token_env", "COSTPROXY_ADMIN_TOKEN").env_name()
    node.done()
    return AdminSettings(token_env=token_env, token=env.get(token_env) or None)


def _parse_trusted_proxies(node: Node, env: Mapping[str, str]) -> tuple[TrustedProxySettings, ...]:
    proxies: list[TrustedProxySettings] = []
    for item in node.elements():
        secret_env = item.child("secret_env").env_name()
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
        queue_lines=node.child("queue_lines", 10_000).int(minimum=1, maximum=10_000_000),
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
