"""Calls to upstreams (OpenAI-compatible, Azure, Anthropic), each failure mapped into the
``ProviderError`` tree.

The path and body of a call come from the pipeline's exchange; this module adds the provider's
URL, query, auth and (``kind: anthropic``) ``anthropic-version`` header.  Error bodies in OpenAI's
shape and in Anthropic's (``{"type": "error", "error": {"type", "message"}}``) are both read:
429 is ``UpstreamRateLimited``, any other status (Anthropic's 529 ``overloaded_error`` included) an
``UpstreamHTTPError`` carrying the provider's status and error type, retryable from 500 up.

One ``aiohttp.ClientSession`` per app.  Unary calls use the provider's ``read`` timeout for the
whole response; streams use ``first_byte`` until headers arrive and then ``stream_idle`` between
chunks, so a long answer is never cut by a total timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from typing import Any

import aiohttp
import orjson

from costproxy.errors import (
    ProviderError,
    UpstreamBadResponse,
    UpstreamHTTPError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from costproxy.providers.transport import UpstreamResponse
from costproxy.records import frozen
from costproxy.settings import ProviderSettings

ENDPOINTS = ("chat/completions", "completions", "embeddings")


def upstream_url(provider: ProviderSettings, endpoint: str, upstream_model: str) -> str:
    if provider.kind == "azure":
        return f"{provider.base_url}/deployments/{upstream_model}/{endpoint}"
    return f"{provider.base_url}/{endpoint}"


def upstream_params(provider: ProviderSettings) -> dict[str, str]:
    params = dict(provider.query)
    if provider.api_version:
        params.setdefault("api-version", provider.api_version)
    return params


def upstream_headers(provider: ProviderSettings, request_id: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "x-request-id": request_id}
    if provider.kind == "anthropic":
        headers["anthropic-version"] = provider.anthropic_version
    headers.update(provider.headers)
    if provider.api_key and provider.auth != "none":
        if provider.auth == "bearer":
            headers["authorization"] = f"Bearer {provider.api_key}"
        else:
            headers[provider.auth] = provider.api_key
    return headers


def _error_from(status: int, body: bytes, provider: str, headers: Mapping[str, str]) -> ProviderError:
    parsed: dict[str, Any] | None = None
    try:
        candidate = orjson.loads(body) if body else None
        parsed = candidate if isinstance(candidate, dict) else None
    except orjson.JSONDecodeError:
        parsed = None
    message = f"provider {provider} answered HTTP {status}"
    if parsed and isinstance(parsed.get("error"), dict) and parsed["error"].get("message"):
        message = f"{message}: {parsed['error']['message']}"
    if status == 429:
        extra = {"retry-after": headers["retry-after"]} if "retry-after" in headers else {}
        return UpstreamRateLimited(message, headers=extra)
    return UpstreamHTTPError(message, status=status, upstream_body=parsed)


@frozen
class _Prepared:
    provider: ProviderSettings
    headers: dict[str, str]
    params: dict[str, str]
    unary: aiohttp.ClientTimeout
    stream: aiohttp.ClientTimeout


def _bad_answer(message: str, accepted: bool) -> UpstreamBadResponse:
    """An answer that cannot be read; after a 2xx the provider took the call and may bill it, so it
    is charged (its worst case, marked estimated), not released, and never retried elsewhere."""
    error = UpstreamBadResponse(message)
    if accepted:
        error.after_acceptance()
    return error


def _connect_timeout(provider: ProviderSettings) -> UpstreamTimeout:
    """A connection that was never made (the request was never sent) is not a slow answer."""
    return UpstreamTimeout(f"provider {provider.name} could not be connected to within "
                           f"{provider.timeouts.connect:g}s", details={"phase": "connect"})


class UpstreamClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._prepared: dict[str, _Prepared] = {}

    def _prepare(self, provider: ProviderSettings, request_id: str,
                 extra: Mapping[str, str] | None = None) -> tuple[
            dict[str, str], dict[str, str], aiohttp.ClientTimeout, aiohttp.ClientTimeout]:
        """Headers, query and timeouts of a provider, computed once; only the request id varies."""
        prepared = self._prepared.get(provider.name)
        if prepared is None or prepared.provider is not provider:
            t = provider.timeouts
            prepared = self._prepared[provider.name] = _Prepared(
                provider=provider, headers=upstream_headers(provider, ""), params=upstream_params(provider),
                unary=aiohttp.ClientTimeout(total=t.read, connect=t.connect, sock_connect=t.connect),
                stream=aiohttp.ClientTimeout(total=None, connect=t.connect, sock_connect=t.connect,
                                             sock_read=t.stream_idle))
        headers = dict(prepared.headers)
        headers["x-request-id"] = request_id
        if extra:
            headers.update(extra)
        return headers, prepared.params, prepared.unary, prepared.stream

    async def call(self, provider: ProviderSettings, endpoint: str, upstream_model: str,
                   payload: bytes, request_id: str, *, headers: Mapping[str, str] | None = None) -> UpstreamResponse:
        t = provider.timeouts
        headers, params, timeout, _ = self._prepare(provider, request_id, headers)
        url = upstream_url(provider, endpoint, upstream_model)
        accepted = False  # a 2xx status line came before the body: the provider took the call
        try:
            async with self.session.post(url, data=payload, params=params or None, headers=headers,
                                         timeout=timeout) as resp:
                accepted = resp.status < 300
                if accepted and (mark := ACCEPTED.get()) is not None:
                    mark.append(True)
                body = await resp.read()
                headers = {k.lower(): v for k, v in resp.headers.items()}
                status = resp.status
        except aiohttp.ConnectionTimeoutError:
            raise _connect_timeout(provider) from None
        except TimeoutError:
            if accepted:
                raise UpstreamTimeout(f"provider {provider.name} accepted the call but sent no whole answer "
                                      f"within {t.read:g}s").after_acceptance() from None
            raise UpstreamTimeout(f"provider {provider.name} did not answer within {t.read:g}s") from None
        except aiohttp.ClientError as exc:
            if accepted:
                raise UpstreamUnavailable(f"provider {provider.name} accepted the call, then its answer broke off: "
                                          f"{exc.__class__.__name__}").after_acceptance() from None
            raise UpstreamUnavailable(f"provider {provider.name} unreachable: {exc.__class__.__name__}") from None
        if status >= 400:
            raise _error_from(status, body, provider.name, headers)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _bad_answer(f"provider {provider.name} sent a body that is not JSON", accepted) from None
        if not isinstance(data, dict):
            raise _bad_answer(f"provider {provider.name} sent JSON that is not an object", accepted)
        return UpstreamResponse(status=status, headers=headers, body=body, data=data)

    async def open_stream(self, provider: ProviderSettings, endpoint: str, upstream_model: str,
                          payload: bytes, request_id: str, *,
                          headers: Mapping[str, str] | None = None) -> UpstreamStream:
        """Send the request and wait for the response headers; errors before then are raised, and so
        is an answer that is not ``text/event-stream`` (checked before any byte reaches the client;
        after a 2xx it is a failure after acceptance: charged, never retried elsewhere)."""
        t = provider.timeouts
        headers, params, _, timeout = self._prepare(provider, request_id, headers)
        url = upstream_url(provider, endpoint, upstream_model)
        try:
            resp = await asyncio.wait_for(
                self.session.post(url, data=payload, params=params or None, headers=headers, timeout=timeout),
                timeout=t.first_byte,
            )
        except aiohttp.ConnectionTimeoutError:
            raise _connect_timeout(provider) from None
        except TimeoutError:
            raise UpstreamTimeout(f"provider {provider.name} sent no response within {t.first_byte:g}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"provider {provider.name} unreachable: {exc.__class__.__name__}") from None
        if resp.status >= 400:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            finally:
                resp.release()
            raise _error_from(resp.status, body, provider.name, {k.lower(): v for k, v in resp.headers.items()})
        if resp.content_type != "text/event-stream":  # HTML, a JSON body...: never relayed as events
            kind = resp.headers.get("content-type", "no content type")
            resp.close()
            raise _bad_answer(f"provider {provider.name} answered a stream with {kind!r}, not text/event-stream",
                              resp.status < 300)
        return UpstreamStream(resp, provider)


MAX_EVENT_LINE = 8 << 20  # bytes of one SSE line at most (a runaway upstream is cut off, not buffered)


SSE_FIELDS = (b"event:", b"id:", b"retry:", b":")  # the server-sent event lines other than data


# Set by a caller that must know, should the call be cancelled, whether the provider had accepted it
# (a 2xx status line before the body): ``call`` appends True to the list once it has.
ACCEPTED: ContextVar[list[bool] | None] = ContextVar("costproxy_upstream_accepted", default=None)


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """What ``content`` had received and not handed over when its connection broke (its buffer;
    empty where aiohttp keeps it otherwise)."""
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    data = b"".join(bytes(chunk) for chunk in buffer)[getattr(content, "_buffer_offset", 0) or 0:]
    buffer.clear()
    return data


class UpstreamStream:
    """Server-sent events from an upstream, one ``(raw_frame, data)`` per event."""

    def __init__(self, resp: aiohttp.ClientResponse, provider: ProviderSettings) -> None:
        self.resp = resp
        self.provider = provider
        self.done = False  # saw ``data: [DONE]``
        self.pending = False  # more events of the same read follow at once (the relay may hold its write)

    def close(self) -> None:
        self.resp.close()

    async def events(self) -> AsyncIterator[tuple[bytes, Any]]:
        """Yield each event's raw bytes (ready to relay) and its parsed JSON data.

        ``data`` is ``None`` for ``[DONE]`` and for comment/keep-alive frames.  A malformed data
        line raises ``UpstreamBadResponse``; a dropped connection raises ``UpstreamUnavailable``.
        The body is read in whatever pieces the connection delivers and split into lines here
        (as ``StreamReader.readline`` would, on ``\\n``); while events of one piece remain,
        ``pending`` is true, so the relay can send them to the client in one write.
        """
        lines: list[bytes] = []
        rest, partial = b"", 0  # the line begun and not ended; how long it is
        broken: aiohttp.ClientError | None = None
        try:
            while True:
                if broken is not None:
                    raise broken
                try:
                    piece = await self.resp.content.readany()
                except aiohttp.ClientError as exc:
                    # aiohttp raises a broken connection's error before handing over what it had
                    # already received: those events are relayed (and counted) first
                    piece, broken = _buffered(self.resp.content), exc
                    if not piece:
                        raise
                if not piece:
                    break
                if b"\n" not in piece:
                    rest, partial = rest + piece, partial + len(piece)
                    if partial > MAX_EVENT_LINE:
                        raise UpstreamBadResponse(f"provider {self.provider.name} sent a stream line over "
                                                  f"{MAX_EVENT_LINE} bytes").after_acceptance()
                    continue
                *complete, rest = (rest + piece).split(b"\n")
                partial = len(rest)
                frames: list[list[bytes]] = []
                for raw_line in complete:
                    line = raw_line.rstrip(b"\r")
                    if line:
                        lines.append(line)
                    elif lines:
                        frames.append(lines)
                        lines = []
                for index, frame in enumerate(frames):
                    self.pending = index + 1 < len(frames)
                    yield self._event(frame)
                    if self.done:
                        return
        except TimeoutError:
            raise UpstreamTimeout(
                f"provider {self.provider.name} stream idle for {self.provider.timeouts.stream_idle:g}s"
            ).after_acceptance() from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"provider {self.provider.name} stream broke: {exc.__class__.__name__}").after_acceptance() from None
        self.pending = False
        line = rest.rstrip(b"\r\n")
        if line:
            lines.append(line)
        if lines:
            yield self._event(lines)
        if not self.done:  # the pipeline stops reading at the last event of streams without [DONE]
            raise UpstreamUnavailable(
                f"provider {self.provider.name} stream ended before its last event").after_acceptance()

    def _event(self, frame: list[bytes]) -> tuple[bytes, Any]:
        raw = b"\n".join(frame) + b"\n\n"
        data_lines = [line[5:].lstrip(b" ") for line in frame if line.startswith(b"data:")]
        if not data_lines:
            if all(not line or line.startswith(SSE_FIELDS) for line in frame):
                return raw, None  # an event name, an id, a retry or a comment (": keep-alive"): relayed
            # a JSON or HTML body under a text/event-stream header: never relayed to the client as an event
            raise UpstreamBadResponse(f"provider {self.provider.name} sent a stream frame that is no server-sent "
                                      "event").after_acceptance()
        payload = b"\n".join(data_lines)
        if payload == b"[DONE]":
            self.done = True
            return raw, None
        try:
            return raw, orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"provider {self.provider.name} sent a malformed stream event"
                                      ).after_acceptance() from None
