"""Images in the reservation: each model's own image rule (``models.yaml`` ``images``), and the
worst shape for an image whose size the proxy cannot know (a remote URL it never fetches)."""

from __future__ import annotations

import base64
import copy
import struct
import zlib
from decimal import Decimal
from typing import Any

import pytest
import yaml

from costproxy.analyzer.media import ImageTokenRule
from costproxy.errors import ConfigError
from costproxy.pipeline.run import run_unary
from costproxy.registry import parse_registry
from costproxy.request import Endpoint, RequestContext, parse_request
from tests.conftest import ROOT, TEST_MODELS, ConfigFactory, load_test_settings
from tests.unit.fakes import ALICE, BookedAccounts, ScriptedUpstream, completion, pipeline_services

MINI = {"rule": "tiles", "base_tokens": 2833, "tile_tokens": 5667, "source": "test"}
SMALL_IN, SMALL_OUT = 150, 600  # nano-USD per token of "small"


def png(width: int, height: int) -> str:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_chat(url: str, detail: str = "high") -> Any:
    content = [{"type": "text", "text": "What is it?"},
               {"type": "image_url", "image_url": {"url": url, "detail": detail}}]
    return parse_request(Endpoint.CHAT, {"model": "small", "messages": [{"role": "user", "content": content}],
                                         "max_tokens": 10})


async def reserved(write_config: ConfigFactory, request: Any, images: dict[str, Any] | None) -> int:
    models = copy.deepcopy(TEST_MODELS)
    models["models"]["small"]["capabilities"].append("vision")
    if images is not None:
        models["models"]["small"]["images"] = images
    settings = load_test_settings(write_config("http://upstream.invalid/v1", models=models))
    upstream, accounts = ScriptedUpstream([completion("small")]), BookedAccounts()
    await run_unary(pipeline_services(settings, upstream, accounts, []),
                    RequestContext("req-1", ALICE, "chat/completions"), request)
    [reservation] = accounts.reserved
    return reservation.amount_nanos


async def test_an_image_is_reserved_with_the_models_own_rule(write_config: ConfigFactory) -> None:
    """gpt-4o-mini bills a 1024x1024 high-detail image 2833 + 4 x 5667 = 25,501 tokens, not 765."""
    request = image_chat(png(1024, 1024))
    default = await reserved(write_config, request, None)
    mini = await reserved(write_config, request, MINI)
    assert mini - default == (25_501 - 765) * SMALL_IN
    assert mini >= 25_501 * SMALL_IN + 10 * SMALL_OUT


@pytest.mark.parametrize(("detail", "tokens"), [("high", 85 + 8 * 170), ("auto", 85 + 8 * 170), ("low", 85)])
async def test_an_image_of_unknown_size_is_reserved_at_its_worst_shape(write_config: ConfigFactory, detail: str,
                                                                       tokens: int) -> None:
    """A remote URL is never fetched: a 2048x768 image has 8 tiles, the most any image can have."""
    known = await reserved(write_config, image_chat(png(2048, 768), detail), None)
    remote = await reserved(write_config, image_chat("https://example.com/cat.png", detail), None)
    assert remote == known
    small = await reserved(write_config, image_chat(png(512, 512), detail), None)
    assert remote - small == (tokens - (85 if detail == "low" else 85 + 170)) * SMALL_IN


def test_rules_bound_every_shape() -> None:
    patches = ImageTokenRule(rule="patches", multiplier=Decimal("1.62"))
    assert patches.tokens("low", (1024, 1024)) == 1659 and patches.bound("high", None) == 2489
    assert patches.tokens("high", (10_000, 10_000)) == 2489
    claude = ImageTokenRule(rule="pixels", pixels_per_token=750, max_long_edge=1568, max_tokens=1600)
    assert claude.tokens("auto", (1000, 750)) == 1000 and claude.bound("auto", None) == 1600
    assert claude.tokens("auto", (8000, 8000)) == 1600
    fixed = ImageTokenRule(rule="fixed", max_tokens=1120)
    assert fixed.tokens("low", (10, 10)) == fixed.bound("high", None) == 1120
    for width in range(64, 4096, 97):
        for height in (64, 700, 768, 1500, 3000):
            assert ImageTokenRule().tokens("high", (width, height)) <= ImageTokenRule().bound("high", None)


def test_the_shipped_registry_knows_the_published_image_rules() -> None:
    registry = parse_registry(yaml.safe_load((ROOT / "config" / "models.yaml").read_text()), "models.yaml")
    assert registry.models["gpt-4o-mini"].images.bound("high", (1024, 1024)) == 25_501
    assert registry.models["gpt-4o"].images.bound("high", (1024, 1024)) == 765
    assert registry.models["gpt-4.1-mini"].images.bound("high", (1024, 1024)) == 1659


def test_a_bad_image_rule_is_a_load_error() -> None:
    models = copy.deepcopy(TEST_MODELS)
    models["models"]["small"]["images"] = {"rule": "tiles", "base_tokens": 85, "source": "x"}
    with pytest.raises(ConfigError, match="tile_tokens"):
        parse_registry(models, "models.yaml")
    models["models"]["small"]["images"] = {"rule": "hexagons", "source": "x"}
    with pytest.raises(ConfigError, match="rule"):
        parse_registry(models, "models.yaml")
