"""Token estimates for what is not text: images, audio and files in chat content parts.

Pure functions over the request's JSON; nothing is fetched, and data is decoded only as far as a
header (image size, WAV byte rate).  These are estimates that size reservations before the call
(the ledger settles from the usage the provider reports); ``analyzer.worst_case`` treats a request
with any of them as one whose input the byte bound cannot cover.

- audio (``input_audio``): ``AUDIO_TOKENS_PER_SECOND`` per second, the duration read from a WAV
  header's byte rate, or ``ASSUMED_AUDIO_BYTES_PER_SECOND`` (64 kbit/s) for other formats;
- files (``file`` parts with ``file_data``, ``document`` parts with base64 ``source.data``): a
  PDF page costs its text plus an image of the page (OpenAI's file inputs), about 1,500 tokens
  for a few kB of PDF, so ``FILE_BYTES_PER_TOKEN`` decoded bytes per token and at least
  ``FILE_MIN_TOKENS``; a file referenced only by id is assumed to be ``FILE_REFERENCE_TOKENS``
  (its size is unknown before the call);
- images: ``ImageTokenRule``, a property of each model (``images`` in ``models.yaml``); sizes come
  from ``data:`` URL headers (PNG, GIF, WebP, JPEG).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping
from decimal import Decimal

from costproxy.records import frozen

AUDIO_TOKENS_PER_SECOND = 10
ASSUMED_AUDIO_BYTES_PER_SECOND = 8_000
FILE_BYTES_PER_TOKEN = 2
FILE_MIN_TOKENS = 1_600
FILE_REFERENCE_TOKENS = 8_000
DEFAULT_IMAGE_SIZE = (1024, 1024)  # a typical image, for estimates of an image of unknown size
IMAGE_RULES = ("tiles", "patches", "pixels", "fixed")
MAX_PATCHES = 1536  # OpenAI's patch models cover an image with at most 1,536 32-px patches
PATCH_PX = 32


@frozen
class ImageTokenRule:
    """How one model bills an image of the chat content, as input tokens.

    - ``tiles`` (OpenAI GPT-4o, GPT-4.1, gpt-4o-mini...): ``low`` detail costs ``base_tokens``;
      ``high`` (and ``auto``, counted as ``high`` to stay on the safe side) scales the image down
      to fit 2048x2048, then so its shortest side is at most 768 px, and adds ``tile_tokens`` per
      512-px tile: at most 8 tiles (2048x768).
    - ``patches`` (OpenAI gpt-4.1-mini...): one token per 32-px patch covering the image, at most
      1,536 patches (larger images are scaled down), times ``multiplier``; detail does not matter.
    - ``pixels`` (Anthropic): ``width x height / pixels_per_token`` after scaling the long edge down
      to ``max_long_edge``, at most ``max_tokens`` (larger images are scaled down to fit).
    - ``fixed`` (Gemini 3): ``max_tokens`` per image, whatever its size.

    ``tokens`` is the estimate (an image of unknown size counts as ``DEFAULT_IMAGE_SIZE``), for
    routing and estimates; ``bound`` is the most the image can be billed (an image of unknown
    size, a remote URL the proxy never fetches, counts as the worst shape), for reservations.
    Defaults are GPT-4o's (85 + 170 per tile), the rule of a model whose ``images`` are not set.
    """

    rule: str = "tiles"
    base_tokens: int = 85
    tile_tokens: int = 170
    multiplier: Decimal = Decimal(1)
    pixels_per_token: int = 750
    max_long_edge: int = 1568
    max_tokens: int = 0
    source: str = ""

    def tokens(self, detail: str, size: tuple[int, int] | None) -> int:
        return self._tokens(detail, size or DEFAULT_IMAGE_SIZE)

    def bound(self, detail: str, size: tuple[int, int] | None) -> int:
        if size is not None:
            return self._tokens(detail, size)
        if self.rule == "tiles":
            return self.base_tokens if detail == "low" else self.base_tokens + 8 * self.tile_tokens
        if self.rule == "patches":
            return math.ceil(MAX_PATCHES * self.multiplier)
        return self.max_tokens

    def _tokens(self, detail: str, size: tuple[int, int]) -> int:
        width: float
        height: float
        width, height = size
        if self.rule == "fixed":
            return self.max_tokens
        if self.rule == "patches":
            patches = min(MAX_PATCHES, math.ceil(width / PATCH_PX) * math.ceil(height / PATCH_PX))
            return math.ceil(patches * self.multiplier)
        if self.rule == "pixels":
            if max(width, height) > self.max_long_edge:
                scale = self.max_long_edge / max(width, height)
                width, height = width * scale, height * scale
            return min(self.max_tokens, math.ceil(width * height / self.pixels_per_token))
        if detail == "low":
            return self.base_tokens
        if max(width, height) > 2048:
            scale = 2048 / max(width, height)
            width, height = width * scale, height * scale
        if min(width, height) > 768:
            scale = 768 / min(width, height)
            width, height = width * scale, height * scale
        tiles = math.ceil(width / 512) * math.ceil(height / 512)
        return self.base_tokens + self.tile_tokens * tiles


GPT4O_IMAGES = ImageTokenRule()


def base64_size(payload: str) -> int:
    """Decoded length of a base64 text (after an optional ``data:...;base64,`` header), without
    decoding it."""
    if payload.startswith("data:"):
        payload = payload.partition(",")[2]
    return len(payload.rstrip("=")) * 3 // 4


def file_tokens(part: Mapping[str, object]) -> int:
    """A ``file`` part (``{"file": {"file_data" | "file_id", "filename"}}``) or a ``document`` part
    (``{"source": {"data" | "text" | "url"}}``)."""
    holder = part.get("file") if part.get("type") == "file" else part.get("source")
    if not isinstance(holder, Mapping):
        return FILE_REFERENCE_TOKENS
    data = holder.get("file_data", holder.get("data"))
    if isinstance(data, str) and data:
        return max(FILE_MIN_TOKENS, math.ceil(base64_size(data) / FILE_BYTES_PER_TOKEN))
    return FILE_REFERENCE_TOKENS


def audio_tokens(audio: object) -> int:
    if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
        return 0
    payload: str = audio["data"]
    size = len(payload.rstrip("=")) * 3 // 4  # decoded length, without decoding
    bytes_per_second = ASSUMED_AUDIO_BYTES_PER_SECOND
    if audio.get("format") == "wav":
        header = b64decode(payload[:64])
        if len(header) >= 44 and header[:4] == b"RIFF" and header[8:12] == b"WAVE":
            (byte_rate,) = struct.unpack_from("<I", header, 28)
            bytes_per_second = byte_rate or bytes_per_second
            size = max(size - 44, 0)
    return math.ceil(size / bytes_per_second * AUDIO_TOKENS_PER_SECOND)


def b64decode(payload: str) -> bytes:
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return b""


def data_url_image_size(url: str) -> tuple[int, int] | None:
    """Width and height from a base64 ``data:`` URL's PNG, GIF, WebP or JPEG header."""
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        return None
    data = b64decode(payload)
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return webp_size(data)
        if data[:2] == b"\xff\xd8":
            return jpeg_size(data)
    except struct.error:  # truncated header
        return None
    return None


def webp_size(data: bytes) -> tuple[int, int] | None:
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


def jpeg_size(data: bytes) -> tuple[int, int] | None:
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
