"""Prompt and completion token counts as OpenAI bills them, computed before the call.

Exact (given the model's encoding): plain text, ``/v1/completions`` prompts, ``/v1/embeddings``
inputs, and the text of chat messages by OpenAI's published formula: ``3`` tokens per message,
the tokens of every string field (``role``, ``content``, ``name``, ``tool_call_id``...), ``+1``
for a ``name``, and ``+3`` priming the assistant's reply.  Special-token text such as
``<|endoftext|>`` sent by a user is counted as plain text, as the API does.

Estimates (OpenAI's internal rendering of these is not public; they size reservations before the
call, and billing always settles on the usage the provider reports):

- images (``image_url`` parts): OpenAI's tile rule, see ``ImageTokenRule``.  The image size is
  read from ``data:`` URLs (PNG, JPEG, GIF, WebP headers); for remote URLs, which are never
  fetched, or unreadable data the size defaults to 1024x1024, i.e. 765 tokens for ``high`` or
  ``auto`` detail with GPT-4o's rule.  ``low`` detail costs the base tokens (85);
- audio (``input_audio`` parts): ``AUDIO_TOKENS_PER_SECOND`` tokens per second of audio, the
  duration read from a WAV header's byte rate, or assumed ``ASSUMED_AUDIO_BYTES_PER_SECOND``
  (64 kbit/s) for other formats;
- assistant ``tool_calls`` / ``function_call``: the call's string fields (function name and
  arguments) plus ``TOOL_CALL_OVERHEAD``;
- ``tools``: per definition, the compact JSON (sorted keys) of the function object (name,
  description, parameters) plus ``TOOL_DEFINITION_OVERHEAD``, and ``TOOLS_OVERHEAD`` once;
- ``tool_choice`` naming a function and ``response_format`` with a ``json_schema``: the compact
  JSON of that object; string choices and ``json_object``/``text`` formats add nothing.

Anything else (unknown part types, non-string fields, non-dict messages) counts zero: requests
come straight from users and counting never raises on their shape.

Every ``count_*`` method is pure and thread-safe.  Tokenizing prose runs at about 20 MB/s, long
unbroken runs of one character far slower (1 MB: ~0.3 s), so for big inputs (over ~100 kB of
text, or data-URL images, which are base64-decoded to read their size) callers run the count on
a worker thread (``asyncio.to_thread``) rather than on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeGuard

import tiktoken

from costproxy.errors import InternalError

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
TOOL_CALL_OVERHEAD = 3
TOOL_DEFINITION_OVERHEAD = 7
TOOLS_OVERHEAD = 12
AUDIO_TOKENS_PER_SECOND = 10
ASSUMED_AUDIO_BYTES_PER_SECOND = 8_000
DEFAULT_IMAGE_SIZE = (1024, 1024)


@dataclass(frozen=True, slots=True)
class ImageTokenRule:
    """OpenAI's tile rule for image input.

    ``low`` detail costs ``base_tokens``.  ``high`` (and ``auto``, counted as ``high`` to stay on the
    safe side) scales the image down to fit 2048x2048, then so its shortest side is at most 768
    px, and adds ``tile_tokens`` per 512-px tile.  Defaults are GPT-4o's (85 + 170 per tile);
    models that bill images at a multiple (gpt-4o-mini: 2833 + 5667) pass their own rule.
    """

    base_tokens: int = 85
    tile_tokens: int = 170

    def tokens(self, detail: str, size: tuple[int, int] | None) -> int:
        if detail == "low":
            return self.base_tokens
        width: float
        height: float
        width, height = size or DEFAULT_IMAGE_SIZE
        if max(width, height) > 2048:
            scale = 2048 / max(width, height)
            width, height = width * scale, height * scale
        if min(width, height) > 768:
            scale = 768 / min(width, height)
            width, height = width * scale, height * scale
        tiles = math.ceil(width / 512) * math.ceil(height / 512)
        return self.base_tokens + self.tile_tokens * tiles


GPT4O_IMAGES = ImageTokenRule()


class TokenCounter:
    """Counts tokens with already-loaded encodings (see ``costproxy.analyzer.encodings``)."""

    __slots__ = ("_encodings",)

    def __init__(self, encodings: Mapping[str, tiktoken.Encoding]) -> None:
        self._encodings: Mapping[str, tiktoken.Encoding] = MappingProxyType(dict(encodings))

    @property
    def encoding_names(self) -> tuple[str, ...]:
        return tuple(self._encodings)

    def encoding(self, name: str) -> tiktoken.Encoding:
        """The loaded encoding; an unknown name is a wiring bug (the registry validates names)."""
        try:
            return self._encodings[name]
        except KeyError:
            known = ", ".join(self._encodings) or "none"
            raise InternalError(f"encoding {name!r} is not loaded (loaded: {known})") from None

    def count_text(self, text: str, encoding: str) -> int:
        """Tokens of ``text``; special-token text counts as ordinary text."""
        return _count(self.encoding(encoding), text)

    def estimate_completion_from_text(self, text: str, encoding: str) -> int:
        """Completion tokens of streamed output when the provider reports no usage."""
        return _count(self.encoding(encoding), text)

    def count_completion_prompt(self, prompt: object, encoding: str) -> int:
        """``/v1/completions`` prompt: ``str | list[str] | list[int] | list[list[int]]``."""
        return _count_input(self.encoding(encoding), prompt)

    def count_embedding_input(self, input: object, encoding: str) -> int:
        """``/v1/embeddings`` input: ``str | list[str] | list[int] | list[list[int]]``."""
        return _count_input(self.encoding(encoding), input)

    def count_chat(
        self,
        messages: Sequence[object],
        encoding: str,
        tools: Sequence[object] | None = None,
        tool_choice: object = None,
        response_format: object = None,
        *,
        image_rule: ImageTokenRule = GPT4O_IMAGES,
    ) -> int:
        """Prompt tokens of a chat completion request (see the module docstring for the rules)."""
        enc = self.encoding(encoding)
        chat = _ChatCount(enc, image_rule)
        total = REPLY_PRIMING_TOKENS
        if _is_list(messages):
            total += sum(chat.message(message) for message in messages)
        if _is_list(tools) and tools:
            total += TOOLS_OVERHEAD + sum(chat.tool_definition(tool) for tool in tools)
        if isinstance(tool_choice, Mapping):
            total += _count(enc, _json(tool_choice))
        if isinstance(response_format, Mapping) and isinstance(response_format.get("json_schema"), Mapping):
            total += _count(enc, _json(response_format["json_schema"]))
        return total


@dataclass(frozen=True, slots=True)
class _ChatCount:
    """The per-request pieces of ``count_chat``: one encoding, one image rule."""

    enc: tiktoken.Encoding
    image_rule: ImageTokenRule

    def message(self, message: object) -> int:
        if not isinstance(message, Mapping):
            return 0
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += _count(self.enc, value) + (TOKENS_PER_NAME if key == "name" else 0)
            elif key == "content" and _is_list(value):
                total += sum(self.part(part) for part in value)
            elif key == "tool_calls" and _is_list(value):
                total += sum(self.call(call) for call in value)
            elif key == "function_call":
                total += self.call({"function": value})
        return total

    def part(self, part: object) -> int:
        if isinstance(part, str):
            return _count(self.enc, part)
        if not isinstance(part, Mapping):
            return 0
        kind = part.get("type")
        if kind == "image_url":
            return self.image(part.get("image_url"))
        if kind == "input_audio":
            return _audio_tokens(part.get("input_audio"))
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        return _count(self.enc, text) if isinstance(text, str) else 0

    def image(self, image: object) -> int:
        url, detail = image, "auto"
        if isinstance(image, Mapping):
            url, detail = image.get("url"), image.get("detail") or "auto"
        size = _data_url_image_size(url) if isinstance(url, str) and url.startswith("data:") else None
        return self.image_rule.tokens(detail if isinstance(detail, str) else "auto", size)

    def call(self, call: object) -> int:
        if not isinstance(call, Mapping):
            return 0
        payload = call.get("function") or call.get("custom")
        if not isinstance(payload, Mapping):
            return 0
        strings = [value for value in payload.values() if isinstance(value, str)]
        return TOOL_CALL_OVERHEAD + sum(_count(self.enc, value) for value in strings)

    def tool_definition(self, tool: object) -> int:
        if not isinstance(tool, Mapping):
            return 0
        definition = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool
        return TOOL_DEFINITION_OVERHEAD + _count(self.enc, _json(definition))


# Texts longer than this are counted in pieces.  tiktoken releases the GIL while it encodes but
# holds it while it builds the Python list of token ids; for a 1M-token prompt that list alone
# stalls every other thread (the event loop included) for ~50 ms.  Pieces keep each stall short.
PIECE_CHARS = 32_768


def _count(enc: tiktoken.Encoding, text: str) -> int:
    if len(text) <= PIECE_CHARS:
        return len(enc.encode_ordinary(text))
    return sum(len(enc.encode_ordinary(piece)) for piece in _pieces(text))


def _pieces(text: str) -> list[str]:
    r"""Split before a single space that sits between two letters.

    Both encodings pre-split text with a regex in which a word takes its one leading space
    (`` ?\p{L}+``-style alternatives), so such a position is always a boundary between
    pre-tokens, and counting the pieces separately gives exactly the count of the whole text.
    Where no such space exists in a window, the window is not split.
    """
    pieces: list[str] = []
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = start + PIECE_CHARS
        while cut > start and not (text[cut] == " " and not text[cut - 1].isspace()
                                   and cut + 1 < len(text) and not text[cut + 1].isspace()
                                   and text[cut + 1].isalpha() and text[cut - 1].isalpha()):
            cut -= 1
        if cut == start:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _is_list(value: object) -> TypeGuard[list[object] | tuple[object, ...]]:
    return isinstance(value, list | tuple)


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count_input(enc: tiktoken.Encoding, value: object) -> int:
    """A string, or a list of strings, token ids, or lists of token ids; other items count zero."""
    if isinstance(value, str):
        return _count(enc, value)
    if not _is_list(value):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += _count(enc, item)
        elif _is_token_id(item):
            total += 1
        elif isinstance(item, list | tuple):
            total += sum(1 for token in item if _is_token_id(token))
    return total


def _json(value: object) -> str:
    """Compact, key-sorted JSON; the stable serialisation used for estimates."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # keys of mixed types, circular references
        return str(value)


def _audio_tokens(audio: object) -> int:
    if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
        return 0
    payload: str = audio["data"]
    size = len(payload.rstrip("=")) * 3 // 4  # decoded length, without decoding
    bytes_per_second = ASSUMED_AUDIO_BYTES_PER_SECOND
    if audio.get("format") == "wav":
        header = _b64decode(payload[:64])
        if len(header) >= 44 and header[:4] == b"RIFF" and header[8:12] == b"WAVE":
            (byte_rate,) = struct.unpack_from("<I", header, 28)
            bytes_per_second = byte_rate or bytes_per_second
            size = max(size - 44, 0)
    return math.ceil(size / bytes_per_second * AUDIO_TOKENS_PER_SECOND)


def _b64decode(payload: str) -> bytes:
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return b""


def _data_url_image_size(url: str) -> tuple[int, int] | None:
    """Width and height from a base64 ``data:`` URL's PNG, GIF, WebP or JPEG header."""
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        return None
    data = _b64decode(payload)
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:  # truncated header
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments to the first start-of-frame marker, which holds the size."""
    offset = 2
    while offset + 9 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        offset += 2 + length
    return None
