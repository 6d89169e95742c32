"""The contract of an upstream transport: what the pipeline calls and what it gets back.

``Upstream`` and ``UpstreamStream`` are protocols so a test can put an in-memory transport where
the HTTP client (``providers.client.UpstreamClient``) sits, the way httpx's ``MockTransport`` does.
Failures are raised as the ``ProviderError`` tree of ``costproxy.errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from costproxy.records import frozen
from costproxy.settings import ProviderSettings


@frozen
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    data: dict[str, Any]


class UpstreamStream(Protocol):
    """Server-sent events from an upstream, one ``(raw_frame, data)`` per event.

    ``data`` is ``None`` for ``[DONE]`` (then ``done`` is true) and for comment frames; a broken
    stream raises a ``ProviderError``.
    """

    done: bool

    def events(self) -> AsyncIterator[tuple[bytes, Any]]: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    """``endpoint`` is the path after the provider's base URL; ``headers`` are extra request headers
    (e.g. ``anthropic-beta`` a Messages client sent, forwarded to a native Anthropic upstream)."""

    async def call(self, provider: ProviderSettings, endpoint: str, upstream_model: str,
                   payload: bytes, request_id: str, *, headers: Mapping[str, str] | None = None
                   ) -> UpstreamResponse: ...

    async def open_stream(self, provider: ProviderSettings, endpoint: str, upstream_model: str,
                          payload: bytes, request_id: str, *, headers: Mapping[str, str] | None = None
                          ) -> UpstreamStream:
        """Send the request and wait for the response headers; errors before then are raised."""
        ...
