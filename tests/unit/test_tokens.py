"""Token counting as OpenAI bills it (costproxy.analyzer.tokens)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from costproxy.analyzer.encodings import ENCODING_NAMES, load_encodings
from costproxy.analyzer.tokens import (
    TOOL_CALL_OVERHEAD,
    TOOL_DEFINITION_OVERHEAD,
    TOOLS_OVERHEAD,
    ImageTokenRule,
    TokenCounter,
)
from costproxy.errors import InternalError


@pytest.fixture
def counter() -> TokenCounter:
    return TokenCounter(load_encodings())  # cached after the first load


@pytest.fixture
def text_tokens(counter: TokenCounter) -> Callable[[str], int]:
    return lambda text: counter.count_text(text, "o200k_base")


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof0 = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, height, width) + b"\x00" * 10
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def _image_message(url: str, detail: str | None = None) -> list[dict[str, object]]:
    image: dict[str, object] = {"url": url} if detail is None else {"url": url, "detail": detail}
    return [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]


@pytest.mark.parametrize("encoding", ENCODING_NAMES)
def test_hello_world_is_two_tokens(counter: TokenCounter, encoding: str) -> None:
    assert counter.count_text("hello world", encoding) == 2
    assert counter.estimate_completion_from_text("hello world", encoding) == 2


def test_special_token_text_counts_as_plain_text(counter: TokenCounter) -> None:
    assert counter.count_text("<|endoftext|>", "o200k_base") == 7
    assert counter.count_text("<|endoftext|>", "cl100k_base") == 7


def test_lone_surrogates_do_not_raise(counter: TokenCounter) -> None:
    assert counter.count_text("bad \ud800 text", "o200k_base") > 0


def test_unknown_encoding_is_an_internal_error(counter: TokenCounter) -> None:
    with pytest.raises(InternalError, match="'r50k_base' is not loaded"):
        counter.count_text("x", "r50k_base")


def test_two_message_chat_matches_openai_for_gpt_4o(counter: TokenCounter) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ]
    # (3 + "system" 1 + 6) + (3 + "user" 1 + "Hello!" 2) + 3 reply priming
    assert counter.count_chat(messages, "o200k_base") == 19
    assert counter.count_chat(messages, "cl100k_base") == 19


def test_name_costs_its_tokens_plus_one(counter: TokenCounter, text_tokens: Callable[[str], int]) -> None:
    plain = [{"role": "system", "content": "New synergies will help drive top-line growth."}]
    named = [{**plain[0], "name": "example_user"}]
    difference = counter.count_chat(named, "o200k_base") - counter.count_chat(plain, "o200k_base")
    assert difference == text_tokens("example_user") + 1


def test_text_parts_count_like_string_content(counter: TokenCounter) -> None:
    as_string = [{"role": "user", "content": "Describe the weather in Paris."}]
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "Describe the weather in Paris."}]}]
    assert counter.count_chat(as_parts, "o200k_base") == counter.count_chat(as_string, "o200k_base")


def test_tool_calls_and_tool_results(counter: TokenCounter, text_tokens: Callable[[str], int]) -> None:
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
    ]
    assistant = 3 + text_tokens("assistant") + TOOL_CALL_OVERHEAD + text_tokens("get_weather")
    assistant += text_tokens(arguments)
    tool = 3 + text_tokens("tool") + text_tokens("call_1") + text_tokens("18C, cloudy")
    assert counter.count_chat(messages, "o200k_base") == assistant + tool + 3


def test_tool_definitions_use_sorted_compact_json(
    counter: TokenCounter, text_tokens: Callable[[str], int]
) -> None:
    function = {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    base = counter.count_chat(messages, "o200k_base")
    tools = [{"type": "function", "function": function}]
    definition = json.dumps(function, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = base + TOOLS_OVERHEAD + TOOL_DEFINITION_OVERHEAD + text_tokens(definition)
    assert counter.count_chat(messages, "o200k_base", tools=tools) == expected
    reordered = [{"type": "function", "function": dict(reversed(list(function.items())))}]
    assert counter.count_chat(messages, "o200k_base", tools=reordered) == expected
    named_choice = {"type": "function", "function": {"name": "get_weather"}}
    with_choice = counter.count_chat(messages, "o200k_base", tools=tools, tool_choice=named_choice)
    assert with_choice > expected
    assert counter.count_chat(messages, "o200k_base", tools=tools, tool_choice="required") == expected


def test_response_format_json_schema_is_counted(counter: TokenCounter) -> None:
    messages = [{"role": "user", "content": "List three colours."}]
    base = counter.count_chat(messages, "o200k_base")
    schema = {"name": "colours", "schema": {"type": "object", "properties": {"c": {"type": "array"}}}}
    fmt = {"type": "json_schema", "json_schema": schema}
    assert counter.count_chat(messages, "o200k_base", response_format=fmt) > base
    assert counter.count_chat(messages, "o200k_base", response_format={"type": "json_object"}) == base


@pytest.mark.parametrize(
    ("url", "detail", "image_tokens"),
    [
        ("https://example.com/cat.png", "low", 85),
        ("https://example.com/cat.png", "high", 765),  # size unknown: 1024x1024 default
        ("https://example.com/cat.png", None, 765),  # auto counts as high
        (_data_url("image/png", _png(2048, 4096)), "high", 1105),  # OpenAI's documented example
        (_data_url("image/png", _png(100, 100)), "auto", 255),
        (_data_url("image/jpeg", _jpeg(1024, 1024)), "high", 765),
        (_data_url("image/jpeg", _jpeg(4000, 600)), "high", 85 + 170 * 4),  # 2048x307 -> 4x1 tiles
        (
            _data_url("image/gif", b"GIF89a" + struct.pack("<HH", 600, 500) + b"\x00" * 8),
            "high",
            85 + 170 * 2,
        ),
        (_data_url("image/png", b"not an image"), "high", 765),
        ("data:image/png;base64,%%%", "high", 765),
    ],
)
def test_image_tokens(counter: TokenCounter, url: str, detail: str | None, image_tokens: int) -> None:
    text_only = counter.count_chat([{"role": "user", "content": []}], "o200k_base")
    assert counter.count_chat(_image_message(url, detail), "o200k_base") == text_only + image_tokens


def test_image_rule_can_be_model_specific(counter: TokenCounter) -> None:
    mini = ImageTokenRule(base_tokens=2833, tile_tokens=5667)
    text_only = counter.count_chat([{"role": "user", "content": []}], "o200k_base")
    low = counter.count_chat(_image_message("https://x/y.png", "low"), "o200k_base", image_rule=mini)
    assert low == text_only + 2833


def test_webp_size_is_read(counter: TokenCounter) -> None:
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (99).to_bytes(3, "little") * 2  # 100x100
    text_only = counter.count_chat([{"role": "user", "content": []}], "o200k_base")
    webp = _image_message(_data_url("image/webp", vp8x), "high")
    assert counter.count_chat(webp, "o200k_base") == text_only + 255


def test_wav_audio_uses_the_header_byte_rate(counter: TokenCounter) -> None:
    header = (
        b"RIFF"
        + struct.pack("<I", 64036)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    )
    wav = header + b"data" + struct.pack("<I", 64000) + b"\x00" * 64000  # 2 s at 32000 B/s
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
    mp3 = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"\x00" * 16000).decode(), "format": "mp3"},
    }
    text_only = counter.count_chat([{"role": "user", "content": []}], "o200k_base")
    assert counter.count_chat([{"role": "user", "content": [audio]}], "o200k_base") == text_only + 20
    assert counter.count_chat([{"role": "user", "content": [mp3]}], "o200k_base") == text_only + 20


def test_malformed_shapes_never_raise(counter: TokenCounter) -> None:
    messages: list[object] = [
        None,
        1,
        "just a string",
        {"role": 5, "content": {"nested": "dict"}},
        {
            "role": "user",
            "content": [
                None,
                3,
                "bare string part",
                {"type": "image_url"},
                {"type": "image_url", "image_url": {"url": 42, "detail": 7}},
                {"type": "image_url", "image_url": "https://example.com/a.png"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + "/9j/" * 5}},
                {"type": "input_audio", "input_audio": {"data": 5}},
                {"type": "input_audio", "input_audio": {"data": "!!!notbase64", "format": "wav"}},
                {"type": "text", "text": None},
                {"type": "file", "file": {"file_id": "file-1"}},
            ],
        },
        {
            "role": "assistant",
            "tool_calls": [None, {"function": "x"}, {"function": {"name": 7}}],
            "function_call": 3,
        },
        {1: "non-string key", "name": None},
    ]
    tools: list[object] = [
        None,
        "x",
        {"function": None},
        {"type": "function", "function": {1: "a", "b": object()}},
    ]
    fmt = {"type": "json_schema", "json_schema": {1: "x", "a": {2}}}
    total = counter.count_chat(
        messages, "o200k_base", tools=tools, tool_choice={"x": object()}, response_format=fmt
    )
    assert isinstance(total, int) and total > 0
    assert counter.count_chat("not a list", "o200k_base") == 3
    assert counter.count_chat(None, "o200k_base") == 3  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("hello world", 2),
        (["hello world", "Hello!"], 4),
        ([1, 2, 3], 3),
        ([[1, 2], [3], []], 3),
        (["hello world", 5, [6, 7], None, True, 1.5], 5),
        ([], 0),
        (None, 0),
        ({"prompt": "x"}, 0),
    ],
)
def test_completion_prompt_and_embedding_input(counter: TokenCounter, prompt: object, expected: int) -> None:
    assert counter.count_completion_prompt(prompt, "o200k_base") == expected
    assert counter.count_embedding_input(prompt, "cl100k_base") == expected


def test_counting_is_thread_safe(counter: TokenCounter) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 2000
    expected = counter.count_text(text, "o200k_base")
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: counter.count_text(text, "o200k_base"), range(32)))
    assert results == [expected] * 32


def test_long_texts_are_counted_in_pieces_exactly() -> None:
    import random

    from costproxy.analyzer import tokens as token_module
    from costproxy.analyzer.encodings import load_encodings

    rng = random.Random(11)
    words = ("alpha", "γάμμα", "日本語", "the", "naïve", "don't", "42", "x+y=3;", "\n", "  ", "émigré", "{}")
    text = " ".join(rng.choice(words) + rng.choice(("", "s", "!", "123")) for _ in range(40_000))
    assert len(token_module._pieces(text)) > 3
    for encoding in load_encodings().values():
        assert token_module._count(encoding, text) == len(encoding.encode_ordinary(text))


def test_short_texts_are_remembered_per_encoding_and_the_memo_is_bounded() -> None:
    from costproxy.analyzer import tokens as token_module

    encodings = load_encodings()
    text = "You are a concise assistant. Answer in two sentences at most."
    for encoding in encodings.values():
        first = token_module._count(encoding, text)
        assert first == len(encoding.encode_ordinary(text))
        assert token_module._MEMOS[encoding.name][text] == first
        assert token_module._count(encoding, text) == first  # from the memo: the same count
    long_text = "word " * (token_module.MEMO_CHARS // 5 + 1)
    token_module._count(encodings["o200k_base"], long_text)
    assert long_text not in token_module._MEMOS["o200k_base"]
    for i in range(token_module.MEMO_ENTRIES + 10):
        assert token_module._count(encodings["o200k_base"], f"message number {i}") == \
            len(encodings["o200k_base"].encode_ordinary(f"message number {i}"))
    assert len(token_module._MEMOS["o200k_base"]) <= token_module.MEMO_ENTRIES


def test_the_memo_is_bounded_by_characters_too() -> None:
    from costproxy.analyzer import tokens as token_module

    encoding = load_encodings()["o200k_base"]
    size = token_module.MEMO_CHARS
    texts = [f"{i:06d}" + "\U0001f600" * (size - 6) for i in range(token_module.MEMO_TOTAL_CHARS // size + 5)]
    for text in texts:  # 4 bytes per character: the entry bound alone would keep 32 MB of these
        assert token_module._count(encoding, text) == len(encoding.encode_ordinary(text))
    memo = token_module._MEMOS["o200k_base"]
    assert sum(len(text) for text in memo) <= token_module.MEMO_TOTAL_CHARS
    assert texts[-1] in memo


def test_an_encoding_not_given_is_loaded_on_first_use_once() -> None:
    from costproxy.analyzer.encodings import load_encoding

    loaded: list[str] = []

    def loader(name: str) -> object:
        loaded.append(name)
        return load_encoding(name)

    lazy = TokenCounter({"o200k_base": load_encoding("o200k_base")}, loader)  # type: ignore[arg-type]
    assert lazy.has("o200k_base") and not lazy.has("cl100k_base")
    assert lazy.count_text("hello world", "cl100k_base") == len(load_encoding("cl100k_base").encode_ordinary(
        "hello world"))
    lazy.count_text("again", "cl100k_base")
    assert loaded == ["cl100k_base"] and lazy.has("cl100k_base")
    with pytest.raises(InternalError, match="unknown encoding"):
        lazy.count_text("x", "p50k_base")
    with pytest.raises(InternalError, match="not loaded"):
        TokenCounter({}).count_text("x", "o200k_base")
