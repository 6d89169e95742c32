"""The request headers with a meaning of their own: identity and control headers only a trusted
chaining proxy may set, the trusted proxy's secret, and the view steering rules read."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

SECRET_HEADER = "x-costproxy-proxy-secret"
IDENTITY_HEADERS = {
    "x-costproxy-user": "user",
    "x-costproxy-team": "team",
    "x-costproxy-org": "org",
    "x-costproxy-project": "project",
}
# Headers that only a trusted chaining proxy may set; from anyone else they are ignored.
TRUSTED_ONLY = (*IDENTITY_HEADERS, "x-costproxy-task-type", "x-costproxy-quality",
                "x-costproxy-max-cost-usd", "x-tenant-id")
# Never visible to steering rules: a client's credentials (rules are data that decisions record).
HIDDEN_FROM_RULES = frozenset(("authorization", "proxy-authorization", "api-key", "x-api-key", "cookie",
                               SECRET_HEADER))
_NOT_FROM_CLIENTS = HIDDEN_FROM_RULES | frozenset(TRUSTED_ONLY)


class RuleHeaders(Mapping[str, str]):
    """A request's headers as steering rules read them (``request.headers.<name>``): any header
    a client sent, names case-insensitive, except its credentials and the identity and control
    headers, which rules see only from a trusted proxy (``RequestContext.headers``).  A view over
    aiohttp's headers: nothing is copied for requests whose rules read no header."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> str:
        name = name.lower()
        if name in _NOT_FROM_CLIENTS:
            raise KeyError(name)
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(n.lower() for n in self._headers if n.lower() not in _NOT_FROM_CLIENTS))

    def __len__(self) -> int:
        return sum(1 for _ in self)
