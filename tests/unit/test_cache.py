"""The response cache's pure parts: what is cacheable, partitions and keys, the section, and streams
rebuilt from stored answers (replay, then capture, gives the answer back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from costproxy.cache.capture import Capture
from costproxy.cache.config import parse_cache_settings
from costproxy.cache.policy import CacheDirective, CacheSettings, cache_key, decide, partition, uncacheable
from costproxy.cache.replay import replay
from costproxy.cache.store import SqliteResponseCache
from costproxy.errors import ConfigError, InvalidRequest
from costproxy.identity.principal import Principal
from costproxy.protocols.messages import parse_messages
from costproxy.protocols.responses import parse_responses
from costproxy.request import Api, ChatRequest, Endpoint, parse_request
from costproxy.store.sqlite import SqliteStore

ALICE = Principal(key_id="k1", user="alice", team="core", org="acme", project="p1")
MESSAGES = [{"role": "user", "content": "Classify: great phone"}]


def chat(**body: Any) -> ChatRequest:
    return parse_request(Endpoint.CHAT, {"model": "big", "messages": MESSAGES, **body})


@pytest.mark.parametrize(("request_", "reason"), [
    (chat(temperature=0), None),
    (chat(temperature=0.0, n=3), None),
    (chat(seed=42, temperature=0.9), None),
    (chat(), "not deterministic"),
    (chat(temperature=0.2), "not deterministic"),
    (chat(temperature=False), "not deterministic"),
    (chat(seed=True), "not deterministic"),
    (chat(seed="42"), "not deterministic"),
    (chat(temperature=0, tools=[{"type": "function", "function": {"name": "f"}}]), None),
    (chat(temperature=0, web_search_options={}), "web_search_options"),
    (parse_request(Endpoint.EMBEDDINGS, {"model": "embed", "input": "x"}), None),
    (parse_request(Endpoint.COMPLETIONS, {"model": "legacy", "prompt": "x", "temperature": 0}), None),
    (parse_responses({"model": "big", "input": "hi", "temperature": 0}), None),
    (parse_responses({"model": "big", "input": "hi", "temperature": 0, "tools": [{"type": "web_search"}]}),
     "'web_search' tool"),
    (parse_messages({"model": "big", "max_tokens": 5, "temperature": 0, "messages": MESSAGES}), None),
    (parse_messages({"model": "big", "max_tokens": 5, "temperature": 0, "messages": MESSAGES,
                     "tools": [{"name": "get", "input_schema": {"type": "object"}},
                               {"type": "bash_20250124", "name": "bash"}]}), None),
    (parse_messages({"model": "big", "max_tokens": 5, "temperature": 0, "messages": MESSAGES,
                     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}), "runs on the provider"),
])
def test_what_is_cacheable(request_: ChatRequest, reason: str | None) -> None:
    found = uncacheable(request_)
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_partitions_never_mix_callers_unless_configured() -> None:
    bob = Principal(key_id="k2", user="bob", team="core", org="acme")
    assert partition(ALICE, None, "principal") != partition(bob, None, "principal")
    assert partition(ALICE, None, "team") == partition(bob, None, "team")
    assert partition(ALICE, "t1", "team") != partition(bob, "t2", "team")  # tenants never share
    assert partition(ALICE, None, "org") != partition(Principal(key_id="k3", org="other"), None, "org")
    assert partition(Principal(key_id="k9"), None, "team") == partition(Principal(key_id="k9"), None, "principal")
    assert partition(ALICE, "t1", "global") == partition(bob, "t2", "global")


def test_the_key_ignores_what_does_not_change_the_answer() -> None:
    where = partition(ALICE, None, "principal")
    base = cache_key(where, chat(temperature=0), "big", 100)
    assert cache_key(where, chat(temperature=0, stream=True, stream_options={"include_usage": True},
                                 user="u", metadata={"trace": "x"}), "big", 100) == base
    assert cache_key(where, chat(temperature=0, max_tokens=5), "big", 100) != base
    assert cache_key(where, chat(temperature=0), "small", 100) != base  # another model answers
    assert cache_key(where, chat(temperature=0), "big", 50) != base  # another output cap
    assert cache_key(partition(ALICE, "t", "principal"), chat(temperature=0), "big", 100) != base
    completions = parse_request(Endpoint.COMPLETIONS, {"model": "big", "prompt": "x", "temperature": 0})
    assert cache_key(where, completions, "big", 100) != cache_key(where, chat(temperature=0), "big", 100)


def test_decide() -> None:
    settings = CacheSettings()

    def ask(config: CacheSettings, rule: CacheDirective | None, header: str | None, request: ChatRequest) -> Any:
        return decide(config, rule, header, request, who=(ALICE, None), answer=("big", 100))

    assert ask(settings, None, None, chat(temperature=0)) is None  # nobody asked
    rule = ask(settings, CacheDirective(ttl_s=60, share="team"), None, chat(temperature=0))
    assert rule is not None and rule.label == "miss" and rule.ttl_s == 60 and rule.lookup and rule.store
    assert ask(settings, CacheDirective(), "OFF", chat(temperature=0)) is None  # off beats a rule
    refresh = ask(settings, None, "refresh", chat(temperature=0))
    assert refresh is not None and not refresh.lookup and refresh.store and refresh.ttl_s == 3600
    odd = ask(settings, None, "on", chat(temperature=1))
    assert odd is not None and odd.label == "uncacheable" and odd.key is None and not odd.store
    assert ask(CacheSettings(enabled=False), CacheDirective(), "on", chat(temperature=0)) is None
    with pytest.raises(InvalidRequest) as info:
        ask(settings, None, "please", chat(temperature=0))
    assert info.value.param == "x-costproxy-cache"


@pytest.mark.parametrize(("section", "message"), [
    ({"share": "everyone"}, "cache.share: must be one of"),
    ({"header": "maybe"}, "cache.header: must be one of"),
    ({"default_ttl_s": 0}, "cache.default_ttl_s: must be >= 1"),
    ({"default_ttl_s": 10**9}, "cache.default_ttl_s: must be <="),
    ({"max_entry_bytes": 4096, "max_bytes": 2048}, "cache.max_entry_bytes: must be at most max_bytes"),
    ({"ttl": 5}, "cache.ttl: unknown key"),
])
def test_section_errors(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cache_settings(section, "c.yaml")
    assert message in str(info.value)
    assert parse_cache_settings(None, "c.yaml") == CacheSettings()


# --- streams: replay a stored answer, capture it back ---------------------------------------------

CHAT_ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "big", "system_fingerprint": "fp",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Positive.", "refusal": None,
                                 "tool_calls": [{"id": "c1", "type": "function",
                                                 "function": {"name": "tag", "arguments": "{\"x\": 1}"}}]},
         "logprobs": {"content": [{"token": "Pos", "logprob": -0.1}]}, "finish_reason": "tool_calls"},
        {"index": 1, "message": {"role": "assistant", "content": "Good.", "refusal": None}, "logprobs": None,
         "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}
COMPLETION_ANSWER = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "legacy",
                     "choices": [{"text": " hi", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}
RESPONSE_ANSWER = {
    "id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "big",
    "output": [{"id": "rs_1", "type": "reasoning", "summary": []},
               {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi!", "annotations": [], "logprobs": []}]},
               {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "c1", "name": "f",
                "arguments": "{}"}],
    "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}
MESSAGE_ANSWER = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
    "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "tu_1", "name": "get", "input": {"city": "Paris"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 0}}


@pytest.mark.parametrize(("api", "endpoint", "answer"), [
    (Api.CHAT, "chat/completions", CHAT_ANSWER),
    (Api.CHAT, "completions", COMPLETION_ANSWER),
    (Api.RESPONSES, "responses", RESPONSE_ANSWER),
    (Api.MESSAGES, "messages", MESSAGE_ANSWER),
])
def test_a_replayed_stream_captures_back_to_the_answer(api: Api, endpoint: str, answer: dict[str, Any]) -> None:
    frames = replay(api, endpoint, answer, include_usage=True)
    capture = Capture(api, endpoint)
    for frame in frames:  # fed as written, and once more split at awkward places
        capture.feed(frame)
    assert capture.answer() == answer
    split = Capture(api, endpoint)
    data = b"".join(frames)
    for start in range(0, len(data), 7):
        split.feed(data[start:start + 7])
    assert split.answer() == answer


def test_chat_replay_without_usage_and_an_unfinished_stream_is_not_an_answer() -> None:
    frames = replay(Api.CHAT, "chat/completions", CHAT_ANSWER, include_usage=False)
    assert all(b'"usage"' not in frame for frame in frames) and frames[-1] == b"data: [DONE]\n\n"
    capture = Capture(Api.CHAT, "chat/completions")
    for frame in frames[:-1]:  # no [DONE]: the stream broke off
        capture.feed(frame)
    assert capture.answer() is None
    broken = Capture(Api.CHAT, "chat/completions")
    for frame in [*frames[:2], b'data: {"error": {"message": "upstream failed"}}\n\n', frames[-1]]:
        broken.feed(frame)
    assert broken.answer() is None


def test_responses_events_are_numbered_and_messages_events_named() -> None:
    frames = replay(Api.RESPONSES, "responses", RESPONSE_ANSWER, include_usage=False)
    numbers = [int(f.split(b'"sequence_number":')[1].split(b",")[0].split(b"}")[0]) for f in frames]
    assert numbers == list(range(len(frames)))
    assert frames[0].startswith(b"event: response.created\n") and b"response.completed" in frames[-1]
    named = replay(Api.MESSAGES, "messages", MESSAGE_ANSWER, include_usage=False)
    assert named[0].startswith(b"event: message_start\n") and named[-1].startswith(b"event: message_stop\n")


async def test_sqlite_entries_expire_and_the_total_stays_bounded(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    store = SqliteStore(str(tmp_path / "c.sqlite3"))
    await store.open()
    cache = SqliteResponseCache(store, max_bytes=3000, max_entry_bytes=1500, clock=lambda: clock[0])
    await cache.open()
    assert await cache.put("a", b"x" * 1000, ttl_s=60)
    assert not await cache.put("huge", b"x" * 1501, ttl_s=60)  # over the entry bound: not stored
    assert await cache.put("b", b"y" * 1000, ttl_s=30)
    assert await cache.put("c", b"z" * 1000, ttl_s=90)
    assert await cache.put("d", b"w" * 500, ttl_s=120)  # over 3000 bytes: b, the soonest to expire, goes
    assert await cache.get("b") is None and await cache.get("a") == b"x" * 1000
    stats = await cache.stats()
    assert (stats.entries, stats.bytes) == (3, 2500)
    clock[0] += 61
    assert await cache.get("a") is None and await cache.get("c") == b"z" * 1000
    await store.close()
    store = SqliteStore(str(tmp_path / "c.sqlite3"))  # reopened: what is alive is still there
    await store.open()
    cache = SqliteResponseCache(store, max_bytes=3000, max_entry_bytes=1500, clock=lambda: clock[0])
    await cache.open()
    assert await cache.get("c") == b"z" * 1000 and (await cache.stats()).entries == 2
    assert await cache.purge() == 2 and await cache.get("c") is None
    await store.close()
