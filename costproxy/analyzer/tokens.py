"""Prompt and completion token counts as OpenAI bills them, computed before the call.

Exact (given the model's encoding): plain text, ``/v1/completions`` prompts, ``/v1/embeddings``
inputs, and the text of chat messages by OpenAI's published formula: ``3`` tokens per message,
the tokens of every string field (``role``, ``content``, ``name``, ``tool_call_id``...), ``+1``
for a ``name``, and ``+3`` priming the assistant's reply.  Special-token text such as
``<|endoftext|>`` sent by a user is counted as plain text, as the API does.

Estimates (OpenAI's internal rendering of these is not public; they size reservations before the
call, and billing always settles on the usage the provider reports):

- images (``image_url`` parts): the model's ``media.ImageTokenRule``.  The image size is read
  from ``data:`` URLs (PNG, JPEG, GIF, WebP headers).  The count (``tokens``) uses GPT-4o's rule
  and, for remote URLs, which are never fetched, or unreadable data, a 1024x1024 image (765
  tokens for ``high`` or ``auto`` detail): an estimate for routing.  ``BillableInput.images``
  keeps each image's detail and size, so that the reservation re-counts them with each model's
  own rule and the worst shape of an image of unknown size (``worst_case.input_count``);
- audio (``input_audio`` parts) and files (``file`` / ``document`` parts): see ``media``;
- assistant ``tool_calls`` / ``function_call``: the call's string fields (function name and
  arguments) plus ``TOOL_CALL_OVERHEAD``;
- ``tools`` and the legacy ``functions``: per definition, the compact JSON (sorted keys) of the
  function object (name, description, parameters) plus ``TOOL_DEFINITION_OVERHEAD``, and
  ``TOOLS_OVERHEAD`` once per list;
- ``tool_choice`` / legacy ``function_call`` naming a function and ``response_format`` with a
  ``json_schema``: the compact JSON of that object; string choices and ``json_object``/``text``
  formats add nothing;
- content parts of an unknown type: the compact JSON of the part (it reaches the provider).

Non-string fields and non-dict messages count zero: requests come straight from users and
counting never raises on their shape.  ``TokenCounter.billable`` counts a whole request body
(every field above, ``prediction``, ``n``/``best_of``) into a ``worst_case.BillableInput``, with
the UTF-8 byte counts the byte bound needs.

Every ``count_*`` method is pure and thread-safe.  Tokenizing prose runs at about 20 MB/s, long
unbroken runs of one character far slower (1 MB: ~0.3 s), so for big inputs (over ~100 kB of
text, or data-URL images, which are base64-decoded to read their size) callers run the count on
a worker thread (``asyncio.to_thread``) rather than on the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TypeGuard

import tiktoken

from costproxy.analyzer.media import (
    DEFAULT_IMAGE_SIZE,  # noqa: F401 (re-exported: the size assumed for an image of unknown size)
    GPT4O_IMAGES,
    ImageTokenRule,
    audio_tokens,
    data_url_image_size,
    file_tokens,
)
from costproxy.analyzer.worst_case import BillableInput, choices_of
from costproxy.errors import InternalError

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
TOOL_CALL_OVERHEAD = 3
TOOL_DEFINITION_OVERHEAD = 7
TOOLS_OVERHEAD = 12
FILE_PART_TYPES = ("file", "document")




class TokenCounter:
    """Counts tokens with loaded encodings (see ``costproxy.analyzer.encodings``).

    With a ``loader``, an encoding not given at construction is loaded the first time it is asked
    for (each costs tens of MB of memory, so a process loads only those its traffic uses); the
    pipeline calls ``load`` on a worker thread first (``has`` tells whether it must), so the event
    loop never waits for one.
    """

    __slots__ = ("_encodings", "_loader")

    def __init__(self, encodings: Mapping[str, tiktoken.Encoding],
                 loader: Callable[[str], tiktoken.Encoding] | None = None) -> None:
        self._encodings: dict[str, tiktoken.Encoding] = dict(encodings)
        self._loader = loader

    @property
    def encoding_names(self) -> tuple[str, ...]:
        return tuple(self._encodings)

    def has(self, name: str) -> bool:
        """Whether ``name`` is loaded already (``encoding`` would not need to load it)."""
        return name in self._encodings

    def load(self, name: str) -> None:
        """Load ``name`` now (blocking: on a worker thread)."""
        self.encoding(name)

    def encoding(self, name: str) -> tiktoken.Encoding:
        """The loaded encoding; an unknown name is a wiring bug (the registry validates names)."""
        found = self._encodings.get(name)
        if found is not None:
            return found
        if self._loader is not None:  # an unknown name or a bad file raises its own InternalError
            found = self._encodings[name] = self._loader(name)
            return found
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
        return _Inputs(self.encoding(encoding)).add(prompt)

    def count_embedding_input(self, input: object, encoding: str) -> int:
        """``/v1/embeddings`` input: ``str | list[str] | list[int] | list[list[int]]``."""
        return _Inputs(self.encoding(encoding)).add(input)

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
        body = {"messages": messages, "tools": tools, "tool_choice": tool_choice, "response_format": response_format}
        return _ChatCount(self.encoding(encoding), image_rule).request(body)

    def billable(self, endpoint: str, body: Mapping[str, object], encoding: str, *,
                 image_rule: ImageTokenRule = GPT4O_IMAGES) -> BillableInput:
        """Every billable input of a request body for ``endpoint`` (``chat/completions``,
        ``completions`` or ``embeddings``), counted once; see ``worst_case.BillableInput``."""
        enc = self.encoding(encoding)
        if endpoint == "chat/completions":
            chat = _ChatCount(enc, image_rule)
            tokens = chat.request(body)
            messages = body.get("messages")
            prediction = _ChatCount(enc, image_rule).prediction(body.get("prediction"))
            return BillableInput(tokens=tokens, encoding=encoding, text_bytes=chat.text_bytes,
                                 structured_bytes=chat.structured_bytes,
                                 items=len(messages) if _is_list(messages) else 0, media_tokens=chat.media_tokens,
                                 prediction_tokens=prediction, choices=choices_of(body.get("n")),
                                 pieces=chat.pieces, tool_lists=chat.tool_lists,
                                 image_tokens=chat.image_tokens, images=tuple(chat.images))
        inputs = _Inputs(enc)
        if endpoint == "completions":
            tokens = inputs.add(body.get("prompt")) + inputs.add(body.get("suffix"))
            per_prompt = max(choices_of(body.get("n")), choices_of(body.get("best_of")))
            choices = per_prompt * max(1, _prompts_in(body.get("prompt")))
        else:
            tokens, choices = inputs.add(body.get("input")), 0
        return BillableInput(tokens=tokens, encoding=encoding, text_bytes=inputs.text_bytes, items=inputs.items,
                             choices=choices, token_ids=inputs.token_ids)


def utf8_size(text: str) -> int:
    """UTF-8 bytes of ``text`` (a lone surrogate, which JSON allows, counts as 3 bytes)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class _ChatCount:
    """One chat request counted with one encoding and image rule: methods return tokens, and the
    byte counts and media estimates accumulate on the instance (one instance per request)."""

    __slots__ = ("enc", "image_rule", "image_tokens", "images", "media_tokens", "pieces", "structured_bytes",
                 "text_bytes", "tool_lists")

    def __init__(self, enc: tiktoken.Encoding, image_rule: ImageTokenRule) -> None:
        self.enc = enc
        self.image_rule = image_rule
        self.text_bytes = 0
        self.structured_bytes = 0
        self.media_tokens = 0
        self.image_tokens = 0  # the part of media_tokens for images, with ``image_rule``
        self.images: list[tuple[str, tuple[int, int] | None]] = []  # (detail, size if known)
        self.pieces = 0  # tool definitions and calls
        self.tool_lists = 0

    def text(self, value: str) -> int:
        self.text_bytes += utf8_size(value)
        return _count(self.enc, value)

    def structured(self, value: object) -> int:
        """A schema or call the provider may re-render (tools, choices, formats): compact JSON."""
        text = _json(value)
        self.structured_bytes += utf8_size(text)
        return _count(self.enc, text)

    def media(self, tokens: int) -> int:
        self.media_tokens += tokens
        return tokens

    def request(self, body: Mapping[str, object]) -> int:
        total = REPLY_PRIMING_TOKENS
        messages = body.get("messages")
        if _is_list(messages):
            total += sum(self.message(message) for message in messages)
        for key in ("tools", "functions"):
            definitions = body.get(key)
            if _is_list(definitions) and definitions:
                self.tool_lists += 1
                total += TOOLS_OVERHEAD + sum(self.tool_definition(tool) for tool in definitions)
        for key in ("tool_choice", "function_call"):
            choice = body.get(key)
            if isinstance(choice, Mapping):
                total += self.structured(choice)
        response_format = body.get("response_format")
        if isinstance(response_format, Mapping) and isinstance(response_format.get("json_schema"), Mapping):
            total += self.structured(response_format["json_schema"])
        return total

    def prediction(self, prediction: object) -> int:
        """Tokens of a ``prediction`` (predicted output; billed at output rates when rejected)."""
        if not isinstance(prediction, Mapping):
            return 0
        content = prediction.get("content")
        if isinstance(content, str):
            return self.text(content)
        return sum(self.part(part) for part in content) if _is_list(content) else 0

    def message(self, message: object) -> int:
        if not isinstance(message, Mapping):
            return 0
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += self.text(value) + (TOKENS_PER_NAME if key == "name" else 0)
            elif key == "content" and _is_list(value):
                total += sum(self.part(part) for part in value)
            elif key == "tool_calls" and _is_list(value):
                total += sum(self.call(call) for call in value)
            elif key == "function_call":
                total += self.call({"function": value})
        return total

    def part(self, part: object) -> int:
        if isinstance(part, str):
            return self.text(part)
        if not isinstance(part, Mapping):
            return 0
        kind = part.get("type")
        if kind == "image_url":
            return self.media(self.image(part.get("image_url")))
        if kind == "input_audio":
            return self.media(audio_tokens(part.get("input_audio")))
        if kind in FILE_PART_TYPES:
            return self.media(file_tokens(part))
        if kind in ("text", "refusal", "input_text"):
            text = part.get("refusal") if kind == "refusal" else part.get("text")
            return self.text(text) if isinstance(text, str) else 0
        return self.structured(part)

    def image(self, image: object) -> int:
        url, detail = image, "auto"
        if isinstance(image, Mapping):
            url, detail = image.get("url"), image.get("detail") or "auto"
        size = data_url_image_size(url) if isinstance(url, str) and url.startswith("data:") else None
        detail = detail if isinstance(detail, str) else "auto"
        tokens = self.image_rule.tokens(detail, size)
        self.images.append((detail, size))
        self.image_tokens += tokens
        return tokens

    def call(self, call: object) -> int:
        if not isinstance(call, Mapping):
            return 0
        payload = call.get("function") or call.get("custom")
        if not isinstance(payload, Mapping):
            return 0
        strings = [value for value in payload.values() if isinstance(value, str)]
        self.structured_bytes += sum(utf8_size(value) for value in strings)
        self.pieces += 1
        return TOOL_CALL_OVERHEAD + sum(_count(self.enc, value) for value in strings)

    def tool_definition(self, tool: object) -> int:
        if not isinstance(tool, Mapping):
            return 0
        definition = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool
        self.pieces += 1
        return TOOL_DEFINITION_OVERHEAD + self.structured(definition)


class _Inputs:
    """``/v1/completions`` prompts and ``/v1/embeddings`` inputs: ``str | list[str] | list[int] |
    list[list[int]]``; other items count zero.  Token ids count one token each."""

    __slots__ = ("enc", "items", "text_bytes", "token_ids")

    def __init__(self, enc: tiktoken.Encoding) -> None:
        self.enc = enc
        self.items = 0
        self.text_bytes = 0
        self.token_ids = 0

    def add(self, value: object) -> int:
        if isinstance(value, str):
            return self._text(value)
        if not _is_list(value):
            return 0
        total = ids = 0
        if any(_is_token_id(item) for item in value):  # one prompt given as token ids
            self.items += 1
        for item in value:
            if isinstance(item, str):
                total += self._text(item)
            elif _is_token_id(item):
                ids += 1
            elif isinstance(item, list | tuple):
                self.items += 1
                ids += sum(1 for token in item if _is_token_id(token))
        self.token_ids += ids
        return total + ids

    def _text(self, text: str) -> int:
        self.items += 1
        self.text_bytes += utf8_size(text)
        return _count(self.enc, text)


def _prompts_in(prompt: object) -> int:
    """How many prompts a ``/v1/completions`` body holds (each gets ``n`` completions)."""
    if isinstance(prompt, str):
        return 1
    if not _is_list(prompt) or not prompt:
        return 0
    if all(_is_token_id(item) for item in prompt):
        return 1
    return sum(1 for item in prompt if isinstance(item, str | list | tuple))


# Texts longer than this are counted in pieces.  tiktoken releases the GIL while it encodes but
# holds it while it builds the Python list of token ids; for a 1M-token prompt that list alone
# stalls every other thread (the event loop included) for ~50 ms.  Pieces keep each stall short.
PIECE_CHARS = 32_768


# Counts of texts up to MEMO_CHARS are remembered per encoding: the same system prompt, tool schema
# or earlier turn of a conversation (clients resend the whole history every turn) comes back in
# request after request, and a dict lookup costs a fraction of tiktoken's encode.  The memo holds at
# most MEMO_ENTRIES texts and MEMO_TOTAL_CHARS characters per encoding and starts over when either
# is reached: at most ~8 MB per encoding whatever the script (a str takes 1, 2 or 4 bytes per
# character; a bound on entries alone allowed 32 MB of 4-byte texts).  Dict reads and writes are
# atomic, so worker threads counting big inputs share it safely; the character total is a bound,
# not an exact figure (two threads adding at once may lose one addition until the next clear).
MEMO_CHARS = 4_096
MEMO_ENTRIES = 2_048
MEMO_TOTAL_CHARS = 2_097_152
_MEMOS: dict[str, dict[str, int]] = {}
_MEMO_HELD: dict[str, int] = {}  # characters held per encoding's memo


def _count(enc: tiktoken.Encoding, text: str) -> int:
    if len(text) <= MEMO_CHARS:
        memo = _MEMOS.get(enc.name)
        if memo is None:
            memo = _MEMOS.setdefault(enc.name, {})
        tokens = memo.get(text)
        if tokens is None:
            tokens = len(enc.encode_ordinary(text))
            held = _MEMO_HELD.get(enc.name, 0) + len(text)
            if len(memo) >= MEMO_ENTRIES or held > MEMO_TOTAL_CHARS:
                memo.clear()
                held = len(text)
            memo[text] = tokens
            _MEMO_HELD[enc.name] = held
        return tokens
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


def _json(value: object) -> str:
    """Compact, key-sorted JSON; the stable serialisation used for estimates."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):  # mixed key types, cycles, absurd nesting
        return _flat_text(value)


def _flat_text(value: object, limit: int = 1_000_000) -> str:
    """The keys, strings and numbers of a structure, walked without recursion (at most ``limit``
    items): a stand-in for JSON that no nesting depth or cycle can break."""
    out: list[str] = []
    stack = [value]
    while stack and len(out) < limit:
        item = stack.pop()
        if isinstance(item, Mapping):
            out.extend(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            out.append(str(item))
    return " ".join(out)
