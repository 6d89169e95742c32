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
- images: see ``tokens.ImageTokenRule``; sizes come from ``data:`` URL headers (PNG, GIF, WebP,
  JPEG).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping

AUDIO_TOKENS_PER_SECOND = 10
ASSUMED_AUDIO_BYTES_PER_SECOND = 8_000
FILE_BYTES_PER_TOKEN = 2
FILE_MIN_TOKENS = 1_600
FILE_REFERENCE_TOKENS = 8_000


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
