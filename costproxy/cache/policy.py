"""The response cache's rules: what is cacheable, who shares an entry, and the key (pure).

Caching is opt-in, per request: a steering rule's ``cache`` action (``rules/*.yaml``), or the
``x-costproxy-cache: on | off | refresh`` header from a caller allowed to send it
(``cache.header``: ``trusted`` chaining proxies by default, ``all`` callers, or ``none``).  ``off``
wins over a rule; ``refresh`` calls the provider and replaces the entry.

**Cacheable** means the same request gives the same answer and asking has no effect elsewhere:

- deterministic: ``temperature`` is 0, or a ``seed`` is set (chat, completions); embeddings always;
- no tool that runs on the provider's side — web search, file search, code execution, MCP servers,
  computer use, image generation (their results change, or they act): function tools are fine,
  since the client runs them;
- nothing whose meaning lives on the provider: a Responses ``background`` run, a stored ``prompt``
  template or ``conversation``; chat's ``web_search_options``.

**The key** is a SHA-256 of: the partition (who may share the entry), the client's API and
endpoint, the model that would answer (the route's primary model: the same request routed to
another model is another entry), the output cap sent upstream, and the body without the fields
that do not change the answer (``stream``, ``stream_options``, ``user``, ``metadata``, ``store``,
``safety_identifier``, ``prompt_cache_key``, ``prompt_cache_retention``, ``service_tier``), so a
streamed and an unary request share one entry.

**Partitions** (``cache.share``, or a rule's ``share``): ``principal`` (the default: tenant, org,
team, project, user and key all equal — an entry is never served to another caller), ``user``,
``project``, ``team``, ``org`` (tenant and that scope equal; a principal without that scope keeps
its own partition), ``global`` (every caller of the deployment).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from costproxy.errors import InvalidRequest
from costproxy.identity.principal import Principal
from costproxy.records import frozen
from costproxy.request import Api, ChatRequest, Endpoint

KEY_VERSION = 1
SHARES = ("principal", "user", "project", "team", "org", "global")
HEADER_SOURCES = ("trusted", "all", "none")
HEADER = "x-costproxy-cache"
HEADER_VALUES = ("on", "off", "refresh")
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store", "safety_identifier",
                            "prompt_cache_key", "prompt_cache_retention", "service_tier"})
CLIENT_TOOL_TYPES = frozenset({"function", "custom"})
# Anthropic's tools that run on Anthropic's side (client tools such as bash or the text editor run
# on the client, like function tools).
ANTHROPIC_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution", "mcp")
MAX_TTL_S = 30 * 86_400
# Fields whose answer depends on what the provider holds or does (a stored prompt template, a
# conversation, a background run, a search), per client API.
PROVIDER_STATE = {Api.CHAT: ("web_search_options",), Api.RESPONSES: ("background", "prompt", "conversation"),
                  Api.MESSAGES: ("mcp_servers", "container")}


@frozen
class CacheSettings:
    enabled: bool = True
    default_ttl_s: int = 3600  # for the header's "on", and a rule that gives no ttl
    max_entry_bytes: int = 1 << 20  # larger answers are not stored
    max_bytes: int = 256 << 20  # all entries together: the soonest to expire are evicted first
    share: str = "principal"
    header: str = "trusted"  # who may send x-costproxy-cache: trusted | all | none


@frozen
class CacheDirective:
    """What a steering rule's ``cache`` action asks for."""

    ttl_s: int | None = None  # None: cache.default_ttl_s
    share: str | None = None  # None: cache.share


@frozen
class CachePlan:
    """The cache's part in one request."""

    label: str  # what x-costproxy-cache answers: miss | refresh | uncacheable (| hit, once found)
    key: str | None = None  # None: not cacheable
    ttl_s: int = 0
    reason: str | None = None  # why not cacheable

    @property
    def lookup(self) -> bool:
        return self.key is not None and self.label == "miss"

    @property
    def store(self) -> bool:
        return self.key is not None


def decide(settings: CacheSettings, directive: CacheDirective | None, header: str | None, request: ChatRequest, *,
           who: tuple[Principal, str | None], answer: tuple[str, int]) -> CachePlan | None:
    """The cache plan of a request, or None when caching was not asked for.

    ``header``: the ``x-costproxy-cache`` value from a caller allowed to send it; ``who``: the
    principal and tenant; ``answer``: the model that would answer and its output cap."""
    mode = _mode(header)
    if not settings.enabled or mode == "off" or (mode is None and directive is None):
        return None
    reason = uncacheable(request)
    if reason is not None:
        return CachePlan("uncacheable", reason=reason)
    share = (directive.share if directive is not None else None) or settings.share
    ttl = (directive.ttl_s if directive is not None else None) or settings.default_ttl_s
    key = cache_key(partition(who[0], who[1], share), request, answer[0], answer[1])
    return CachePlan("refresh" if mode == "refresh" else "miss", key, ttl)


def _mode(header: str | None) -> str | None:
    if header is None:
        return None
    value = header.strip().lower()
    if value not in HEADER_VALUES:
        raise InvalidRequest(f"{HEADER} must be one of {', '.join(HEADER_VALUES)}, got {header[:40]!r}", param=HEADER)
    return value


def client_body(request: ChatRequest) -> Mapping[str, Any]:
    """The body as the client sent it (the chat form is derived from it for other APIs)."""
    return request.native if request.native is not None else request.body


def uncacheable(request: ChatRequest) -> str | None:
    """Why the request's answer must not be reused, or None (see the module docstring)."""
    if request.endpoint is Endpoint.EMBEDDINGS:
        return None
    body = client_body(request)
    temperature, seed = body.get("temperature"), body.get("seed")
    zero = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0
    seeded = isinstance(seed, int) and not isinstance(seed, bool)
    if not (zero or seeded):
        return "not deterministic: send temperature 0 (or a seed)"
    for name in PROVIDER_STATE[request.api]:
        if body.get(name) not in (None, False):
            return f"{name!r} makes the answer depend on the provider's state"
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if _server_tool(request.api, kind):
            return f"the {kind!r} tool runs on the provider's side"
    return None


def _server_tool(api: Api, kind: Any) -> bool:
    if kind is None:
        return False  # an Anthropic client tool, or a chat function given without its type
    if api is Api.MESSAGES:
        return isinstance(kind, str) and kind.startswith(ANTHROPIC_SERVER_TOOLS)
    return kind not in CLIENT_TOOL_TYPES


def partition(principal: Principal, tenant: str | None, share: str) -> str:
    """Who may be served one entry (see the module docstring)."""
    if share == "global":
        return "global"
    scope = {"user": principal.user, "project": principal.project, "team": principal.team,
             "org": principal.org}.get(share)
    if share != "principal" and scope:
        return "\x1f".join((share, tenant or "", principal.org or "", scope))
    fields = (tenant, principal.org, principal.team, principal.project, principal.user, principal.key_id)
    return "\x1f".join(("principal", *(value or "" for value in fields)))


def cache_key(where: str, request: ChatRequest, model: str, output_cap: int) -> str:
    body = {k: v for k, v in client_body(request).items() if k not in IGNORED_FIELDS}
    material = [KEY_VERSION, where, request.api.value, request.endpoint.value, model, output_cap, body]
    try:
        data = orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (planning refuses such bodies first)
        data = repr(material).encode()
    return hashlib.sha256(data).hexdigest()
