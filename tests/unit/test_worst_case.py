"""The worst case of a request (costproxy.analyzer.worst_case) and per-model tokenizer margins."""

from __future__ import annotations

import base64
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.analyzer.encodings import load_encodings
from costproxy.analyzer.tokens import TokenCounter
from costproxy.analyzer.worst_case import (
    HARD_TOKENS_PER_ITEM,
    HARD_TOKENS_PER_PIECE,
    HARD_TOKENS_PER_REQUEST,
    HARD_TOKENS_PER_TOOL_LIST,
    STRUCTURED_RENDER_FACTOR,
    TIGHT_BUDGET_FACTOR,
    BillableInput,
    choices_of,
    hard_input_bound,
    output_cap_within,
    worst_case,
)
from costproxy.errors import ConfigError
from costproxy.registry import ModelPrice, ModelSpec, TokenizerSpec, parse_registry

ROOT = Path(__file__).resolve().parents[2]
CHAT = "chat/completions"


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter(load_encodings())


def model(margin: str = "0", *, byte_level: bool = True, overhead: int = 0, encoding: str = "o200k_base",
          input_price: str = "1", output_price: str = "4") -> ModelSpec:
    tokenizer = TokenizerSpec() if margin == "0" and overhead == 0 else TokenizerSpec(
        "vendor", Decimal(margin), byte_level, overhead, "test")
    return ModelSpec(id="m", provider="p", upstream_model="m", kind="chat", tier="standard", context_window=1_000_000,
                     max_output_tokens=100_000, capabilities=frozenset(), encoding=encoding, tokenizer=tokenizer,
                     price=ModelPrice(input=Decimal(input_price), output=Decimal(output_price)))


def chat(content: Any = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def functions(size: int) -> list[dict[str, Any]]:
    return [{"name": f"f{i}", "description": "d" * 1000, "parameters": {"type": "object", "properties": {}}}
            for i in range(size)]


# --- what is counted --------------------------------------------------------------------------


def test_n_multiplies_the_output_not_the_input(counter: TokenCounter) -> None:
    one = counter.billable(CHAT, chat(), "o200k_base")
    many = counter.billable(CHAT, chat(n=128), "o200k_base")
    assert (one.choices, many.choices) == (1, 128)
    assert many.tokens == one.tokens
    assert worst_case(many, model(), 100).billed_output_tokens == 128 * 100
    assert worst_case(many, model(), 100).nanos == many.tokens * 1000 + 128 * 100 * 4000


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3), (3.0, 3), (2.5, 3), ("4", 4), (" 4 ", 4), (True, 1), (None, 1), ("x", 1), (-2, 1), (0, 1),
    (float("inf"), 1), (float("nan"), 1), ([2], 1), ({"n": 2}, 1), (10**30, 1_000_000),
])
def test_choices_read_like_a_lenient_upstream(value: object, expected: int) -> None:
    assert choices_of(value) == expected


def test_legacy_functions_count_like_tools(counter: TokenCounter) -> None:
    definitions = functions(350)  # ~350 KB of definitions
    plain = counter.billable(CHAT, chat(), "o200k_base").tokens
    as_tools = counter.billable(CHAT, chat(tools=[{"type": "function", "function": f} for f in definitions]),
                                "o200k_base").tokens
    as_functions = counter.billable(CHAT, chat(functions=definitions), "o200k_base").tokens
    assert as_functions == as_tools > plain + 350 * 100
    named = counter.billable(CHAT, chat(functions=definitions, function_call={"name": "f1"}), "o200k_base")
    assert named.tokens > as_functions
    assert counter.count_chat(chat()["messages"], "o200k_base") == plain


def test_file_and_document_parts_are_counted(counter: TokenCounter) -> None:
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.7 " + b"x" * 60_000).decode()
    inline = counter.billable(CHAT, chat([{"type": "file", "file": {"file_data": pdf, "filename": "a.pdf"}}]),
                              "o200k_base")
    by_id = counter.billable(CHAT, chat([{"type": "file", "file": {"file_id": "file-abc"}}]), "o200k_base")
    document = counter.billable(CHAT, chat([{"type": "document", "source": {"type": "base64", "data": pdf[28:]}}]),
                                "o200k_base")
    assert inline.media_tokens >= 30_000 and inline.has_media
    assert by_id.media_tokens == 8_000
    assert document.media_tokens == inline.media_tokens


def test_unknown_part_types_are_counted_as_their_json(counter: TokenCounter) -> None:
    part = {"type": "future_part", "payload": "word " * 500}
    assert counter.billable(CHAT, chat([part]), "o200k_base").tokens > 500


def test_prediction_is_billed_as_output(counter: TokenCounter) -> None:
    body = chat(prediction={"type": "content", "content": "predicted " * 300})
    billable = counter.billable(CHAT, body, "o200k_base")
    assert billable.prediction_tokens >= 300
    assert billable.tokens == counter.billable(CHAT, chat(), "o200k_base").tokens
    case = worst_case(billable, model(), 50)
    assert case.billed_output_tokens == 50 + billable.prediction_tokens
    parts = counter.billable(CHAT, chat(prediction={"type": "content", "content": [
        {"type": "text", "text": "predicted " * 300}]}), "o200k_base")
    assert parts.prediction_tokens == billable.prediction_tokens


def test_completions_bill_best_of_per_prompt(counter: TokenCounter) -> None:
    body = {"model": "m", "prompt": ["one", "two", "three"], "n": 2, "best_of": 5, "suffix": "end"}
    billable = counter.billable("completions", body, "o200k_base")
    assert billable.choices == 15
    assert billable.tokens == 4
    ids = counter.billable("completions", {"prompt": [1, 2, 3, 4]}, "o200k_base")
    assert (ids.choices, ids.tokens, ids.token_ids) == (1, 4, 4)
    nested = counter.billable("completions", {"prompt": [[1, 2], [3]], "n": 3}, "o200k_base")
    assert (nested.choices, nested.tokens) == (6, 3)


def test_embeddings_have_no_output(counter: TokenCounter) -> None:
    billable = counter.billable("embeddings", {"input": ["a b", "c"]}, "o200k_base")
    case = worst_case(billable, model(), 0)
    assert (billable.choices, case.billed_output_tokens, billable.items) == (0, 0, 2)


@pytest.mark.parametrize("body", [
    {"messages": "nope"}, {"messages": [None, 3, {"content": {"x": 1}}]}, {"messages": [{"content": [None, 5]}]},
    {"messages": [], "tools": "x", "functions": {"a": 1}, "n": "many", "prediction": [1]},
    {"messages": [{"role": "user", "content": "\ud800 lone surrogate"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,@@"}]}]},
])
def test_hostile_shapes_never_raise(counter: TokenCounter, body: dict[str, Any]) -> None:
    billable = counter.billable(CHAT, body, "o200k_base")
    case = worst_case(billable, model(), 10)
    assert case.input_tokens >= billable.tokens > 0  # every shape still counts (at least the framing)
    output = 10 * billable.choices + billable.prediction_tokens  # every allowed output token is priced
    assert case.nanos == model().price_of(case.input_tokens, output)


def test_absurd_nesting_is_counted_without_recursion_errors(counter: TokenCounter) -> None:
    deep: Any = "leaf"
    for _ in range(50_000):
        deep = {"k": deep}
    billable = counter.billable(CHAT, chat([{"type": "custom", "data": deep}]), "o200k_base")
    assert billable.tokens > 0


# --- margins and the byte bound ------------------------------------------------------------


def test_margin_and_overhead_apply_to_the_input(counter: TokenCounter) -> None:
    billable = counter.billable(CHAT, chat("word " * 1000), "o200k_base")
    vendor = model("0.75", byte_level=False, overhead=400)
    case = worst_case(billable, vendor, 10)
    assert case.input_tokens == billable.tokens + -(-billable.tokens * 3 // 4) + 400
    assert case.basis == "margin"
    assert vendor.worst_case_cost(billable.tokens, 10) == case.nanos
    assert worst_case(billable, model(), 10).basis == "estimate"


def test_a_count_with_another_encoding_gets_a_wide_margin(counter: TokenCounter) -> None:
    billable = counter.billable(CHAT, chat("word " * 100), "cl100k_base")
    assert worst_case(billable, model(byte_level=False), 0).input_tokens >= 2 * billable.tokens


def test_hard_bound_is_bytes_plus_overheads(counter: TokenCounter) -> None:
    body = chat("héllo wörld", tools=[{"type": "function", "function": {"name": "f"}}])
    billable = counter.billable(CHAT, body, "o200k_base")
    schema = len(json.dumps({"name": "f"}, separators=(",", ":")))
    text = len(b"user") + len("héllo wörld".encode())
    expected = (text + STRUCTURED_RENDER_FACTOR * schema + HARD_TOKENS_PER_ITEM + HARD_TOKENS_PER_PIECE
                + HARD_TOKENS_PER_TOOL_LIST + HARD_TOKENS_PER_REQUEST + 7)
    assert hard_input_bound(billable, model(overhead=7, margin="0.1")) == expected


def test_no_hard_bound_for_media_or_unpublished_tokenizers(counter: TokenCounter) -> None:
    image = chat([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])
    assert hard_input_bound(counter.billable(CHAT, image, "o200k_base"), model()) is None
    assert hard_input_bound(counter.billable(CHAT, chat(), "o200k_base"), model("0.3", byte_level=False)) is None


def _random_text(rng: random.Random) -> str:
    pools = ["abc xyz", "日本語のテキスト", "🙂🚀🧪", "\u0930\u093e\u091c", "{}[]\":,\n\t  ", "\x00\x01\x7f"]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 400)))


def test_no_byte_level_tokenizer_exceeds_the_hard_bound(counter: TokenCounter) -> None:
    rng = random.Random(7)
    for _ in range(300):
        messages = [{"role": rng.choice(["user", "system", "assistant"]), "content": _random_text(rng),
                     "name": _random_text(rng)[:10] or "n"} for _ in range(rng.randint(1, 4))]
        body = {"messages": messages}
        for encoding in ("o200k_base", "cl100k_base"):
            billable = counter.billable(CHAT, body, encoding)
            bound = hard_input_bound(billable, model())
            assert bound is not None and counter.count_chat(messages, encoding) <= bound


def test_byte_bound_is_used_near_exhaustion_or_when_smaller(counter: TokenCounter) -> None:
    vendor = model("0.5", overhead=0)
    prose = counter.billable(CHAT, chat("the cat sat on the mat " * 200), "o200k_base")
    roomy = worst_case(prose, vendor, 100, remaining_nanos=10**15)
    assert roomy.basis == "margin"
    hard = worst_case(prose, vendor, 100, remaining_nanos=0)
    assert hard.basis == "bytes" and hard.input_tokens == hard_input_bound(prose, vendor)
    edge = TIGHT_BUDGET_FACTOR * hard.nanos
    assert worst_case(prose, vendor, 100, remaining_nanos=edge).basis == "margin"
    assert worst_case(prose, vendor, 100, remaining_nanos=edge - 1).basis == "bytes"
    emoji = counter.billable(CHAT, chat("🧪" * 3000), "o200k_base")  # several tokens per emoji
    wide = model("3")  # a 300% margin: the byte bound is the smaller one, whatever is left
    dense = worst_case(emoji, wide, 0)
    assert dense.basis == "bytes" and dense.input_tokens == hard_input_bound(emoji, wide)
    assert dense.input_tokens < wide.input_bound(emoji.tokens)


def test_output_cap_within_fits_exactly() -> None:
    billable = BillableInput(tokens=1000, encoding="o200k_base", choices=3, prediction_tokens=10)
    vendor = model(output_price="0.003")
    for budget in (0, 999_999, 1_000_000 + 40_000, 5_000_000, 123_456_789):
        cap = output_cap_within(billable, vendor, budget, 1000)
        if cap:
            assert vendor.price_of(1000, cap * 3 + 10) <= budget < vendor.price_of(1000, (cap + 1) * 3 + 10)
        else:
            assert vendor.price_of(1000, 3 + 10) > budget
    free = model(output_price="0")
    assert output_cap_within(billable, free, 10**9, 1000) >= 1 << 39


# --- models.yaml ---------------------------------------------------------------------------


def test_every_foreign_model_declares_its_tokenizer() -> None:
    registry = parse_registry(yaml.safe_load((ROOT / "config" / "models.yaml").read_text()), "models.yaml")
    for spec in registry.models.values():
        if spec.provider in ("openai", "azure"):
            assert spec.tokenizer.own, spec.id
        else:
            assert spec.tokenizer.margin_ppm > 0 and spec.tokenizer.source, spec.id
    assert registry.models["claude-sonnet-5"].tokenizer.byte_level is False
    assert registry.models["gemini-2.5-flash"].tokenizer.byte_level is True


def _one_model(tokenizer: Any) -> dict[str, Any]:
    return {"models": {"x": {"provider": "p", "tier": "economy", "context_window": 10, "max_output_tokens": 5,
                             "price": {"input": "1", "output": "1", "source": "s", "as_of": "2026-01-01"},
                             "tokenizer": tokenizer}}}


@pytest.mark.parametrize(("tokenizer", "path"), [
    ({"family": "f", "input_margin": "-0.1", "source": "s"}, "models.x.tokenizer.input_margin"),
    ({"family": "f", "input_margin": "11", "source": "s"}, "models.x.tokenizer.input_margin"),
    ({"family": "f", "input_margin": "x", "source": "s"}, "models.x.tokenizer.input_margin"),
    ({"family": "f", "input_margin": "0.1"}, "models.x.tokenizer.source"),
    ({"family": "f", "input_margin": "0.1", "source": "s", "typo": 1}, "models.x.tokenizer"),
    ({"family": "f", "input_margin": "0.1", "source": "s", "byte_level": "yes"}, "models.x.tokenizer.byte_level"),
    ({"family": "f", "input_margin": "0.1", "source": "s", "overhead_tokens": -1},
     "models.x.tokenizer.overhead_tokens"),
])
def test_tokenizer_errors_name_the_path(tokenizer: Any, path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_registry(_one_model(tokenizer), "models.yaml")
    assert path in str(caught.value)


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "none"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return _random_text(rng)[:50]
    if kind == "int":
        return rng.choice([0, -1, 1, 2**70, rng.randint(-10, 10)])
    if kind == "float":
        return rng.choice([0.5, -2.0, 1e308, float("inf")])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["type", "text", "content", "image_url", "url", "input_audio", "data", "file", "file_data", "role",
            "name", "tool_calls", "function", "arguments", "json_schema", "source", "detail"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_random_bodies_never_break_the_count(counter: TokenCounter) -> None:
    rng = random.Random(11)
    fields = ["messages", "tools", "functions", "tool_choice", "function_call", "response_format", "prediction",
              "n", "best_of", "prompt", "suffix", "input"]
    for _ in range(1500):
        body = {name: _random_json(rng) for name in rng.sample(fields, rng.randint(1, len(fields)))}
        if rng.random() < 0.5:
            body["messages"] = [_random_json(rng) for _ in range(rng.randint(0, 3))]
        for endpoint in (CHAT, "completions", "embeddings"):
            billable = counter.billable(endpoint, body, "o200k_base")
            case = worst_case(billable, model("0.2"), 16, remaining_nanos=rng.choice([None, 0, 10**12]))
            assert case.input_tokens >= billable.tokens
            assert case.nanos >= model("0.2").price_of(billable.tokens, 0)  # never less than the counted input
