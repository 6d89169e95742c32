"""The ``providers:`` section of ``costproxy.yaml``: each OpenAI-compatible upstream and how to call it.

    providers:
      openai:
        base_url: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY     # the NAME of the env var holding the key, never the key
        auth: bearer                    # bearer | api-key | x-api-key | none (default: none without api_key_env)
        headers: {OpenAI-Organization: org-123}
        query: {}
        kind: openai                    # openai | azure (deployment URLs; needs api_version) | anthropic
        responses_api: false            # kind openai: also serves OpenAI's /responses natively
        # anthropic_version: "2023-06-01" / count_tokens: false   (kind anthropic only)
        timeouts: {connect: 10, first_byte: 60, read: 120, stream_idle: 120}
        enabled: true                   # default: true with a key, false for auth: none

A provider without keys (a local Ollama or vLLM) serves only when it says ``enabled: true``;
``enabled: false`` leaves a provider and its models out of the deployment.  Pure: the caller
(``load_settings``) passes the environment the keys are read from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any

from costproxy.config_schema import Node
from costproxy.records import frozen
from costproxy.wire import http_url_problem

PROVIDER_AUTH = ("bearer", "api-key", "x-api-key", "none")
PROVIDER_KINDS = ("openai", "azure", "anthropic")
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"


@frozen
class Timeouts:
    connect: float = 10.0
    read: float = 120.0  # whole unary response
    stream_idle: float = 120.0  # max silence between stream chunks
    first_byte: float = 60.0  # until response headers arrive


@frozen
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


def parse_timeouts(node: Node) -> Timeouts:
    defaults = Timeouts()
    timeouts = Timeouts(
        connect=node.child("connect", defaults.connect).number(minimum=0.001),
        read=node.child("read", defaults.read).number(minimum=0.001),
        stream_idle=node.child("stream_idle", defaults.stream_idle).number(minimum=0.001),
        first_byte=node.child("first_byte", defaults.first_byte).number(minimum=0.001),
    )
    node.done()
    return timeouts


def parse_provider(name: str, node: Node, env: Mapping[str, str]) -> ProviderSettings:
    """One provider; its key is read from ``env`` by the name ``api_key_env`` gives."""
    kind = node.child("kind", "openai").str(choices=PROVIDER_KINDS)
    key_node = node.child("api_key_env", None)
    key_env = None if key_node.value is None else key_node.env_name()
    base_url = node.child("base_url").str().rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise node.child("base_url").error("must start with http:// or https://", base_url)
    problem = http_url_problem(base_url)
    if problem is not None:
        raise node.child("base_url").error(problem, base_url)
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
        timeouts=parse_timeouts(node.child("timeouts", {})),
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
