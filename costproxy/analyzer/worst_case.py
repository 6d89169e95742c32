"""The worst case of a request: what the provider can bill, at most, before the call is made.

The reservation on every budget of the chain is the price of a ``WorstCase``:

- input: every billable input the request sends (``TokenCounter.billable`` counts messages and
  all content part types, ``tools`` and the legacy ``functions``, ``tool_choice`` /
  ``function_call``, ``response_format``, images, audio, files), bounded per model:
  * **margin bound**: the proxy's count plus the model's ``tokenizer.input_margin`` and
    ``overhead_tokens`` (``ModelSpec.input_bound``), for vendors whose tokenizer is not the one
    the proxy counts with.  A count made with another encoding than the model's gets at least
    ``FOREIGN_ENCODING_MARGIN_PPM``;
  * **byte bound** (``hard_input_bound``): for a tokenizer in which every token covers at least
    one UTF-8 byte of text (``tokenizer.byte_level``: byte-level BPE such as OpenAI's, Llama 3's,
    DeepSeek's and Mistral's Tekken, or SentencePiece with byte fallback such as Gemini's), the
    text cannot become more tokens than it has bytes.  The bound is the UTF-8 bytes of the text,
    ``STRUCTURED_RENDER_FACTOR`` x the bytes of schemas and calls (a provider may pretty-print
    JSON: each structural character can gain a line break and indentation, at most two more
    tokens), ``HARD_TOKENS_PER_ITEM`` per message, ``HARD_TOKENS_PER_PIECE`` per tool definition
    or call, ``HARD_TOKENS_PER_TOOL_LIST`` per tool list, ``HARD_TOKENS_PER_REQUEST`` and the
    model's ``overhead_tokens`` (and never less than the proxy's own count).  It does not exist
    for requests with images, audio or files (their tokens do not follow from bytes) nor for
    tokenizers not known to be byte-level (Claude);
- output: the per-choice cap (the larger of ``max_tokens`` and ``max_completion_tokens``, or the cap
  the proxy injects into every such field the request carries) times the number of
  choices billed (``n``; for ``/v1/completions`` ``max(n, best_of)`` per prompt), plus the tokens
  of a ``prediction`` (rejected predicted tokens are billed at output rates);
- provider-side tool calls: the calls the proxy bounds and sends upstream (``BillableInput.tools``,
  ``analyzer.server_tools``) at the fee per call of the model's provider, and each call's input-token
  allowance (``ModelSpec.tool_inputs``: what its results may add to the prompt) in the input bound.

``worst_case`` uses the margin bound while the budget has room, and the byte bound, which no
tokenizer can exceed, when the byte bound is the smaller one or when less than
``TIGHT_BUDGET_FACTOR`` x the request's byte-bound worst case is left, so that the last requests
before exhaustion cannot overshoot.  Where no byte bound exists, ``output_cap_within`` gives the
largest output cap that still fits what is left.  Pure: no I/O, integers only.
"""

from __future__ import annotations

import math

from costproxy.analyzer.server_tools import NO_TOOLS, ToolBounds
from costproxy.records import frozen
from costproxy.registry import ModelSpec

STRUCTURED_RENDER_FACTOR = 3
HARD_TOKENS_PER_ITEM = 8  # role and frame tokens of one message in any known chat template
HARD_TOKENS_PER_REQUEST = 16  # reply priming, begin/end of sequence
HARD_TOKENS_PER_PIECE = 16  # frame of one tool/function definition or one tool call
HARD_TOKENS_PER_TOOL_LIST = 32  # the header a template puts before a list of tools
TIGHT_BUDGET_FACTOR = 10
FOREIGN_ENCODING_MARGIN_PPM = 1_000_000  # counted with another encoding: +100%
MAX_CHOICES = 1_000_000  # beyond any provider's limit; keeps a hostile ``n`` from building huge ints


def choices_of(value: object) -> int:
    """How many completions ``n`` (or ``best_of``) asks for, read the way a lenient upstream
    would (``2``, ``2.0`` and ``"2"`` all mean two); anything unreadable counts one."""
    number: float
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        return 1
    if not math.isfinite(number) or number < 1:
        return 1
    return min(MAX_CHOICES, math.ceil(number))


@frozen
class BillableInput:
    """Everything one request asks the provider to read, counted once with ``encoding``."""

    tokens: int  # estimate of all billable input, media included
    encoding: str  # the tiktoken encoding the estimate was made with
    text_bytes: int = 0  # UTF-8 bytes of plain text (message contents, names, roles, prompts)
    structured_bytes: int = 0  # compact-JSON bytes of schemas, tool definitions and calls
    items: int = 0  # messages, prompts or embedding inputs
    media_tokens: int = 0  # the part of ``tokens`` for images, audio and files (estimates)
    prediction_tokens: int = 0  # ``prediction`` content, billed at output rates when rejected
    choices: int = 1  # completions billed per output cap: n, best_of x prompts (0: embeddings)
    token_ids: int = 0  # prompt tokens given as ids (one token each, in any tokenizer)
    pieces: int = 0  # tool/function definitions and tool calls (each framed by the template)
    tool_lists: int = 0  # non-empty ``tools`` / ``functions`` lists
    image_tokens: int = 0  # the part of ``media_tokens`` for images, as estimated (GPT-4o's rule)
    images: tuple[tuple[str, tuple[int, int] | None], ...] = ()  # each image's detail and size if known
    tools: ToolBounds = NO_TOOLS  # provider-side tool calls the request may make, as bounded upstream

    @property
    def has_media(self) -> bool:
        return self.media_tokens > 0


@frozen
class WorstCase:
    """The most one request can be billed on one model; ``nanos`` is what to reserve."""

    input_tokens: int  # bound on billed input tokens
    output_tokens: int  # cap per choice (what the upstream is told)
    multiplier: int  # choices billed
    prediction_tokens: int
    basis: str  # "estimate" (own tokenizer) | "margin" | "bytes"
    nanos: int
    tool_nanos: int = 0  # the part of ``nanos`` for provider-side tool calls

    @property
    def billed_output_tokens(self) -> int:
        return self.output_tokens * self.multiplier + self.prediction_tokens


def input_count(billable: BillableInput, model: ModelSpec) -> int:
    """The proxy's count of the input as ``model`` bills it: images re-counted with the model's own
    rule (``ModelSpec.images``), each at the most it can be billed (an image of unknown size at its
    worst shape), in place of the estimate made with GPT-4o's rule."""
    if not billable.images:
        return billable.tokens
    rule = model.images
    return billable.tokens - billable.image_tokens + sum(rule.bound(detail, size) for detail, size in billable.images)


def margin_input_bound(billable: BillableInput, model: ModelSpec) -> int:
    """The count plus the model's margin (more if counted with another encoding)."""
    ppm = model.tokenizer.margin_ppm
    if billable.encoding != model.encoding:
        ppm = max(ppm, FOREIGN_ENCODING_MARGIN_PPM)
    return model.input_bound(input_count(billable, model), ppm)


def hard_input_bound(billable: BillableInput, model: ModelSpec) -> int | None:
    """Input tokens no tokenizer of ``model``'s kind can exceed, or ``None`` when there is no such
    bound (tokenizer not byte-level, or the request carries images, audio or files)."""
    if not model.tokenizer.byte_level or billable.has_media:
        return None
    bound = (billable.text_bytes + STRUCTURED_RENDER_FACTOR * billable.structured_bytes + billable.token_ids
             + HARD_TOKENS_PER_ITEM * billable.items + HARD_TOKENS_PER_PIECE * billable.pieces
             + HARD_TOKENS_PER_TOOL_LIST * billable.tool_lists + HARD_TOKENS_PER_REQUEST
             + model.tokenizer.overhead_tokens)
    return max(bound, billable.tokens)  # never below the proxy's own count (still a bound: it is larger)


def _case(billable: BillableInput, model: ModelSpec, input_tokens: int, output_cap: int, basis: str) -> WorstCase:
    multiplier = billable.choices if output_cap > 0 else 0
    output = output_cap * multiplier + billable.prediction_tokens
    tools = 0
    if billable.tools.calls:
        tools = billable.tools.fee_bound(model.fees)
        if model.tool_inputs:  # what the calls' results may add to the prompt
            input_tokens += billable.tools.fee_bound(dict(model.tool_inputs))
    return WorstCase(input_tokens, output_cap, multiplier, billable.prediction_tokens, basis,
                     model.price_of(input_tokens, output) + tools, tools)


def worst_case(billable: BillableInput, model: ModelSpec, output_cap: int, *,
               remaining_nanos: int | None = None) -> WorstCase:
    """The worst case of this request on ``model`` with ``output_cap`` tokens per choice.

    ``remaining_nanos``: the least any hard budget of the chain has left (``BudgetView``), or
    ``None`` without hard budgets.  The byte bound is used when it is the smaller one, or when
    less than ``TIGHT_BUDGET_FACTOR`` times its worst case is left.
    """
    own = model.tokenizer.own and billable.encoding == model.encoding
    margin = _case(billable, model, margin_input_bound(billable, model), output_cap, "estimate" if own else "margin")
    hard_tokens = hard_input_bound(billable, model)
    if hard_tokens is None:
        return margin
    if hard_tokens <= margin.input_tokens:
        return _case(billable, model, hard_tokens, output_cap, "bytes")
    if remaining_nanos is None:  # no hard budget: the margin case, and no need to price the byte bound
        return margin
    hard = _case(billable, model, hard_tokens, output_cap, "bytes")
    if remaining_nanos < TIGHT_BUDGET_FACTOR * hard.nanos:
        return hard
    return margin


def output_cap_within(billable: BillableInput, model: ModelSpec, budget_nanos: int, input_tokens: int) -> int:
    """The largest output cap per choice whose worst case (with ``input_tokens`` as the input
    bound) costs at most ``budget_nanos``; 0 when not even the input fits.  For lowering the cap
    so that a request still fits what is left instead of refusing it (the tool calls' fees first)."""
    if billable.tools.calls:
        budget_nanos -= billable.tools.fee_bound(model.fees)
    if billable.choices <= 0 or model.price_of(input_tokens, billable.prediction_tokens) > budget_nanos:
        return 0
    low, high = 0, 1
    while model.price_of(input_tokens, high * billable.choices + billable.prediction_tokens) <= budget_nanos:
        low, high = high, high * 2
        if high > 1 << 40:  # free output: any cap fits
            return low
    while high - low > 1:
        middle = (low + high) // 2
        if model.price_of(input_tokens, middle * billable.choices + billable.prediction_tokens) <= budget_nanos:
            low = middle
        else:
            high = middle
    return low
