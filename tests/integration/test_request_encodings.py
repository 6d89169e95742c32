"""Request bodies with a ``Content-Encoding``: decoded by ``http.bodies.read_body``; a body that is
not what its header says, or a coding the proxy does not decode, is a 400 in the endpoint's error
shape (it was a 500 ``internal_error``, or a plain-text 400 asking to install Brotli)."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from costproxy.errors import BodyTooLarge, InvalidRequest
from costproxy.http.bodies import content_codings, decode
from tests.conftest import ADMIN_TOKEN, ProxyFactory

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "small", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
PATHS = ["/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
         "/v1/embeddings", "/api/v1/budgets"]


def error_of(path: str, body: dict[str, object]) -> dict[str, object]:
    if path.startswith("/v1/messages"):  # Anthropic's shape
        assert body["type"] == "error", body
    error = body["error"]
    assert isinstance(error, dict)
    return error


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_a_400(make_proxy: ProxyFactory,
                                                                         coding: str) -> None:
    proxy = await make_proxy()
    for path in PATHS:
        auth = ADMIN if path.startswith("/api/") else proxy.auth()
        resp = await proxy.client.post(path, data=b"notgzip", headers={
            **auth, "Content-Type": "application/json", "Content-Encoding": coding})
        error = error_of(path, await resp.json())
        assert resp.status == 400 and error["code"] == "invalid_request", (path, error)
        assert f"not valid {coding} data" in str(error["message"]), error
    assert not proxy.sim.calls


@pytest.mark.parametrize("coding", ["br", "zstd", "compress"])
async def test_a_coding_the_proxy_cannot_decode_is_a_400_listing_those_it_can(make_proxy: ProxyFactory,
                                                                             coding: str) -> None:
    proxy = await make_proxy()
    for path in PATHS:
        auth = ADMIN if path.startswith("/api/") else proxy.auth()
        resp = await proxy.client.post(path, data=b"{}", headers={
            **auth, "Content-Type": "application/json", "Content-Encoding": coding})
        error = error_of(path, await resp.json())
        assert resp.status == 400 and error["code"] == "invalid_request", (path, error)
        message = str(error["message"])
        assert f"'{coding}' is not supported" in message and "gzip" in message and "deflate" in message, message
        assert "install" not in message.lower()


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "identity", "GZIP"])
async def test_a_compressed_body_is_decoded_on_proxy_and_admin_paths(make_proxy: ProxyFactory, coding: str) -> None:
    proxy = await make_proxy()
    raw = json.dumps(CHAT).encode()
    data = raw if coding == "identity" else zlib.compress(raw) if coding == "deflate" else gzip.compress(raw)
    resp = await proxy.client.post("/v1/chat/completions", data=data, headers={
        **proxy.auth(), "Content-Type": "application/json", "Content-Encoding": coding})
    assert resp.status == 200, await resp.text()
    budget = json.dumps({"id": "enc", "name": "n", "scopeType": "team", "scopeId": "core", "amount": "5",
                         "period": "daily"}).encode()
    resp = await proxy.client.post("/api/v1/budgets", data=gzip.compress(budget), headers={
        **ADMIN, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert resp.status == 201, await resp.text()


async def test_a_small_compressed_body_that_decodes_past_the_limit_is_a_413(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()  # server.max_body_bytes is 65536 in the tests' config
    bomb = gzip.compress(b" " * 10_000_000)
    assert len(bomb) < 65536
    resp = await proxy.client.post("/v1/chat/completions", data=bomb, headers={
        **proxy.auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"})
    body = await resp.json()
    assert resp.status == 413 and body["error"]["code"] == "body_too_large", body


def test_decoding_accepts_what_clients_send_and_refuses_what_is_broken() -> None:
    raw = b'{"a": 1}'
    assert decode(gzip.compress(raw) + gzip.compress(raw), "gzip", 100) == raw + raw  # several members
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode(raw_deflate.compress(raw) + raw_deflate.flush(), "deflate", 100) == raw  # no zlib header
    assert decode(zlib.compress(raw), "deflate", 100) == raw
    for broken, coding in [(gzip.compress(raw)[:-5], "gzip"), (zlib.compress(raw) + b"x", "deflate"),
                           (b"plain", "gzip")]:
        with pytest.raises(InvalidRequest):
            decode(broken, coding, 100)
    with pytest.raises(BodyTooLarge):
        decode(gzip.compress(b"x" * 101), "gzip", 100)
    assert content_codings("identity") == [] and content_codings("gzip, deflate") == ["gzip", "deflate"]
    with pytest.raises(InvalidRequest, match="'br' is not supported"):
        content_codings("gzip, br")


def test_a_stack_of_codings_is_refused_before_any_is_decoded() -> None:
    """Each layer is decoded on the event loop within the size limit: 1,600 stacked gzip layers of a
    body under the limit stalled a worker for seconds, without signing in (/ui/login reads its body)."""
    assert content_codings("gzip, gzip") == ["gzip", "gzip"]
    assert content_codings("identity, gzip, identity, deflate") == ["gzip", "deflate"]
    with pytest.raises(InvalidRequest, match="at most 2"):
        content_codings(", ".join(["gzip"] * 3))
    with pytest.raises(InvalidRequest, match="at most 2"):
        content_codings(", ".join(["gzip"] * 1600))
