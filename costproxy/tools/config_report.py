"""What ``check-config`` and ``serve`` check and print before anything listens.

``preflight`` runs every check that is not already part of ``load_settings``: the steering rules
(validated against the registry) and the tokenizer encodings.  ``describe`` is the summary both
commands print (where the configuration came from, models, rules, store, and a table of
providers: usable, or what is missing); ``warnings`` lists what makes the proxy useless or
half-usable (no usable provider, no admin token, a trusted proxy without its secret, a default
model nobody can serve), each with how to fix it.
"""

from __future__ import annotations

import importlib.util
import os

from costproxy.analyzer.encodings import check_encodings
from costproxy.errors import ConfigError, InternalError
from costproxy.money import format_usd
from costproxy.routing.router import SelectionRouter, build_router
from costproxy.settings import ConfigLocation, Settings, provider_readiness, usable_providers
from costproxy.store.backend import local_path
from costproxy.store.config import redacted_url


def preflight(settings: Settings) -> SelectionRouter:
    """The router (rules and quality profiles loaded) once the encodings load too; else ``ConfigError``."""
    router = build_router(settings)
    if settings.store.ledger_url is not None and not _postgres_driver():
        raise ConfigError(str(settings.config_path), "store.ledger_url", "the PostgreSQL ledger needs its driver: "
                          "pip install 'costproxy[postgres]'", redacted_url(settings.store.ledger_url))
    try:
        check_encodings(directory=settings.encodings_dir)
    except (InternalError, OSError) as exc:
        where = "encodings_dir" if settings.encodings_dir is not None else ""
        raise ConfigError(str(settings.config_path), where, f"tokenizer encodings do not load: {exc}",
                          None if settings.encodings_dir is None else str(settings.encodings_dir)) from None
    return router


def _postgres_driver() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("psycopg", "psycopg_pool"))


def describe(location: ConfigLocation, settings: Settings, router: SelectionRouter) -> list[str]:
    withheld = len(settings.disabled_models)
    lines = [
        f"config:   {settings.config_path} (from {location.source})",
        f"models:   {len(settings.registry.models)} from {settings.models_path}"
        + (f" (+{withheld} of disabled providers, left out)" if withheld else ""),
        f"rules:    {_rules_summary(router)} from {settings.rules_dir}",
        f"quality:  {settings.quality_path or 'none (tier priors only)'}",
        f"learning: {_learning_summary(settings)}",
        f"store:    {redacted_url(settings.store.url)}" + _store_file(settings),
        *([f"ledger:   {redacted_url(settings.store.ledger_url)} (PostgreSQL: every replica writes it, reports "
             "read it; migrations run on start)"] if settings.store.ledger_url else []),
        "providers:",
    ]
    for status in provider_readiness(settings):
        state = _STATES[status.state]
        lines.append(f"  {status.name:<14} {state:<10} {_count(len(status.models), 'model'):<10}   {status.detail}")
    return lines


def _learning_summary(settings: Settings) -> str:
    config = settings.learning
    judge = config.judge
    return (("feedback moves selection" if config.enabled else "feedback stored, selection ignores it")
            + f" (prior strength {config.prior_strength:g}, lower bound at {config.confidence:g}); judge "
            + (f"on, {judge.sample_rate:g} of auto requests, ${format_usd(judge.daily_budget_nanos)}/day"
               if judge.enabled else "off"))


_STATES = {"ready": "usable", "no-key": "NO KEY", "disabled": "disabled"}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _rules_summary(router: SelectionRouter) -> str:
    if router.rules is None:
        return "none"
    ruleset = router.rules.current
    return f"{_count(len(ruleset.rules), 'rule')} in {_count(len(ruleset.files), 'file')} (digest {ruleset.digest})"


def _store_file(settings: Settings) -> str:
    if settings.store.url == "memory://":
        return " (in memory: nothing survives a restart)"
    role = "SQLite file" if settings.store.url.startswith("sqlite:///") else "this replica's local SQLite file"
    return f" ({role}: {os.path.abspath(local_path(settings))})"


def warnings(settings: Settings) -> list[str]:
    statuses = provider_readiness(settings)
    usable = usable_providers(settings)
    found: list[str] = []
    if not usable:
        missing = next((s for s in statuses if s.state == "no-key"), None)
        example = f": e.g. export {missing.detail.removeprefix('set $')}=<your key>" if missing else ""
        found.append("no provider is usable, so every model request will fail: set one provider's key" + example)
    if settings.admin.token is None:
        env = settings.admin.token_env
        found.append(f"${env} is not set: the admin API (/api/v1: client keys, budgets, webhooks) is disabled; "
                     f"set it to a long random secret, e.g. export {env}=$(python3 -c "
                     "'import secrets; print(secrets.token_urlsafe(32))')")
    for proxy in settings.trusted_proxies:
        if not proxy.secret:
            found.append(f"trusted proxy {proxy.name}: ${proxy.secret_env} is not set, so its identity headers "
                         "are ignored")
    default = settings.registry.resolve(settings.default_model or "")
    if default is not None and default.provider not in usable:
        found.append(f"default_model {settings.default_model} is served by provider {default.provider}, "
                     "which is not usable (see the table)")
    return found
