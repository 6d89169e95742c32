"""The model registry: what each model costs, what it can do, and who serves it.

Read from ``config/models.yaml`` (see its header for the format).  Prices are per 1M tokens,
decimal, each with the date and the vendor page it was read from.  Pure data: no I/O here.

Each model also says how far the proxy's own token count may fall short of the provider's
(``tokenizer``: ``TokenizerSpec``): the proxy counts with tiktoken, which is exact for OpenAI
models and an approximation for every other vendor.  ``ModelSpec.input_bound`` applies that
margin; ``costproxy.analyzer.worst_case`` builds the reservation from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from costproxy.analyzer.media import GPT4O_IMAGES, IMAGE_RULES, ImageTokenRule
from costproxy.analyzer.server_tools import NO_TOOL_FEES, ToolFees, parse_tool_fees
from costproxy.config_schema import Node
from costproxy.money import NANOS_PER_USD, TOKENS_PER_PRICE_UNIT, tokens_cost
from costproxy.records import frozen

TIERS = ("economy", "standard", "premium")
KINDS = ("chat", "embedding", "completion")
# The kind of model each OpenAI endpoint needs.
ENDPOINT_KIND = {"chat/completions": "chat", "completions": "completion", "embeddings": "embedding",
                 "responses": "chat", "messages": "chat"}
CAPABILITIES = (
    "tools",
    "vision",
    "json_schema",
    "json_mode",
    "streaming",
    "reasoning",
    "completions",
    "embeddings",
)
ENCODINGS = ("o200k_base", "cl100k_base")
MARGIN_SCALE = 1_000_000  # margins are kept as integer parts per million (exact integer maths)
MAX_INPUT_MARGIN = Decimal(10)  # a margin above 1000% is a typo, not a tokenizer


@frozen
class TokenizerSpec:
    """How the provider counts input tokens, relative to the proxy's count with ``encoding``.

    ``input_margin``: the provider counts at most ``(1 + input_margin) x`` the proxy's count for
    text (``0`` for models the proxy counts with their own tokenizer).  ``byte_level``: every token
    of the provider's tokenizer covers at least one UTF-8 byte of text (byte-level BPE, or
    SentencePiece with byte fallback), so the byte bound of ``analyzer.worst_case`` holds.
    ``overhead_tokens``: hidden tokens the provider adds to every request (chat template headers,
    system preambles) beyond what the proxy counts per message.  ``source``: where the numbers
    come from (vendor page, paper or measurement).
    """

    family: str = ""
    input_margin: Decimal = Decimal(0)
    byte_level: bool = True
    overhead_tokens: int = 0
    source: str = ""
    margin_ppm: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "margin_ppm", math.ceil(self.input_margin * MARGIN_SCALE))

    @property
    def own(self) -> bool:
        """True when the proxy counts with this model's own tokenizer (no margin needed)."""
        return self.margin_ppm == 0


OWN_TOKENIZER = TokenizerSpec()


@frozen
class ModelPrice:
    """USD per 1M tokens.

    ``cache_write`` is the price of prompt tokens written to the provider's prompt cache (Anthropic's
    5-minute cache writes), ``cache_write_1h`` of those written with a 1-hour lifetime.  Unset, a
    cache write costs the input price (``cache_write_1h`` falls back to ``cache_write`` first).
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    source: str = ""
    as_of: date | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    # (input, output, cached input, cache write, 1 h cache write) in nano-USD per token when all are
    # whole numbers, which holds for prices with at most 3 decimals per 1M tokens; then costs need
    # no Decimal at all.
    nanos_per_token: tuple[int, int, int, int, int] | None = field(default=None, init=False, compare=False,
                                                                  repr=False)

    @property
    def classes(self) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        """The price of each token class, unset ones resolved to what they fall back to."""
        write = self.input if self.cache_write is None else self.cache_write
        return (self.input, self.output, self.input if self.cached_input is None else self.cached_input,
                write, write if self.cache_write_1h is None else self.cache_write_1h)

    def __post_init__(self) -> None:
        scale = Decimal(NANOS_PER_USD) / TOKENS_PER_PRICE_UNIT
        values = [p * scale for p in self.classes]
        if all(v == v.to_integral_value() for v in values):
            a, b, c, d, e = (int(v) for v in values)
            object.__setattr__(self, "nanos_per_token", (a, b, c, d, e))


@frozen
class Usage:
    """Token usage of one call. ``cached_tokens`` is the part of ``prompt_tokens`` served from cache,
    ``cache_write_tokens`` the part written to the cache, ``cache_write_1h_tokens`` the part of those
    written with a 1-hour lifetime (Anthropic's ``cache_creation_input_tokens`` and its breakdown).
    ``tool_calls``: calls of provider-side tools, (kind, count) sorted by kind (``analyzer.server_tools``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reported: bool = True
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    tool_calls: tuple[tuple[str, int], ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@frozen
class ModelSpec:
    id: str
    provider: str
    upstream_model: str
    kind: str
    tier: str
    context_window: int
    max_output_tokens: int
    capabilities: frozenset[str]
    price: ModelPrice
    encoding: str = "o200k_base"
    family: str = ""
    aliases: tuple[str, ...] = ()
    tokenizer: TokenizerSpec = OWN_TOKENIZER
    images: ImageTokenRule = GPT4O_IMAGES  # how it bills image input (``analyzer.media``)
    # Nano-USD per call of each provider-side tool kind its provider bills (models.yaml ``tool_fees``).
    tool_fees: tuple[tuple[str, int], ...] = ()
    tool_inputs: tuple[tuple[str, int], ...] = ()  # input tokens reserved per call, by tool kind

    @property
    def fees(self) -> dict[str, int]:
        """``tool_fees`` as a mapping: tool kind -> nano-USD per call."""
        return dict(self.tool_fees)

    def tool_cost(self, calls: Iterable[tuple[str, int]]) -> int:
        """Nano-USD of these tool calls; a kind without a fee costs nothing here (it is unpriced)."""
        fees = self.fees
        return sum(count * fees.get(kind, 0) for kind, count in calls)

    def supports(self, capabilities: Iterable[str]) -> bool:
        return set(capabilities) <= self.capabilities

    def cost(self, usage: Usage) -> int:
        """Exact cost in nano-USD: each part of the prompt (plain, read from cache, written to the
        cache for 5 minutes or 1 hour) and the completion at its own price, plus the fees of its
        provider-side tool calls."""
        fees = self.tool_cost(usage.tool_calls) if usage.tool_calls else 0
        return fees + self._tokens_cost(usage)

    def _tokens_cost(self, usage: Usage) -> int:
        prompt = usage.prompt_tokens
        cached = min(usage.cached_tokens, prompt)
        writes = min(usage.cache_write_tokens, prompt - cached)
        long_writes = min(usage.cache_write_1h_tokens, writes)
        counts = (prompt - cached - writes, usage.completion_tokens, cached, writes - long_writes, long_writes)
        fast = self.price.nanos_per_token
        if fast is not None:  # every price a whole number of nano-USD per token: exact integer maths
            return sum(n * p for n, p in zip(counts, fast, strict=True))
        return tokens_cost([(n, p) for n, p in zip(counts, self.price.classes, strict=True) if n])

    def input_bound(self, counted_tokens: int, margin_ppm: int | None = None) -> int:
        """Most input tokens the provider may bill for ``counted_tokens`` counted by the proxy: the
        count plus the tokenizer's margin (rounded up) plus its hidden per-request tokens
        (``margin_ppm`` overrides the margin)."""
        ppm = self.tokenizer.margin_ppm if margin_ppm is None else margin_ppm
        return counted_tokens + -(-counted_tokens * ppm // MARGIN_SCALE) + self.tokenizer.overhead_tokens

    def price_of(self, input_tokens: int, output_tokens: int) -> int:
        """The most these exact tokens can cost: every input token at the dearest input-side price
        (no cache discount; a cache write where that costs more), no margin."""
        fast = self.price.nanos_per_token
        if fast is not None:
            return input_tokens * max(fast[0], fast[3], fast[4]) + output_tokens * fast[1]
        inputs = self.price.classes
        return tokens_cost([(input_tokens, max(inputs[0], inputs[3], inputs[4])), (output_tokens, self.price.output)])

    def worst_case_cost(self, prompt_tokens: int, max_output_tokens: int) -> int:
        """Upper bound before the call: the counted prompt plus the tokenizer's margin, every input
        token at the dearest input-side price, every allowed output token used (see
        ``analyzer.worst_case`` for ``n``, files and predicted output)."""
        return self.price_of(self.input_bound(prompt_tokens), max_output_tokens)


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, ModelSpec]
    aliases: Mapping[str, str] = field(default_factory=dict)
    baseline_model: str | None = None
    tool_fees: ToolFees = NO_TOOL_FEES  # models.yaml ``tool_fees`` (each model holds its provider's)

    def resolve(self, name: str) -> ModelSpec | None:
        """A model by id or alias, or ``None``."""
        model = self.models.get(name)
        if model is not None:
            return model
        target = self.aliases.get(name)
        return self.models.get(target) if target else None

    def of_kind(self, kind: str) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.kind == kind]

    def baseline(self) -> ModelSpec | None:
        return self.models.get(self.baseline_model) if self.baseline_model else None


def parse_registry(document: Any, file: str, providers: Iterable[str] | None = None) -> Registry:
    """Build a ``Registry`` from the parsed ``models.yaml``; errors name file and dotted path."""
    root = Node(document, file)
    known_providers = set(providers) if providers is not None else None
    models: dict[str, ModelSpec] = {}
    aliases: dict[str, str] = {}
    fees = parse_tool_fees(root.child("tool_fees", None), known_providers)
    for model_id, node in root.child("models").items():
        spec = _parse_model(model_id, node, known_providers, fees)
        models[model_id] = spec
        for alias in spec.aliases:
            if alias in aliases or alias in models:
                raise node.child("aliases").error("alias is used twice", alias)
            aliases[alias] = model_id
    baseline_node = root.child("baseline_model", None)
    baseline = baseline_node.opt_str()
    if baseline is not None and baseline not in models:
        raise baseline_node.error("names no model in this file", baseline)
    root.done()
    for alias, node_target in aliases.items():
        if alias in models:
            raise root.error(f"alias {alias!r} of {node_target!r} is also a model id")
    return Registry(models=models, aliases=aliases, baseline_model=baseline, tool_fees=fees)


def _parse_model(model_id: str, node: Node, providers: set[str] | None, fees: ToolFees) -> ModelSpec:
    provider_node = node.child("provider")
    provider = provider_node.str()
    if providers is not None and provider not in providers:
        raise provider_node.error("names no configured provider", provider)
    kind = node.child("kind", "chat").str(choices=KINDS)
    capabilities = node.child("capabilities", []).str_list()
    for cap in capabilities:
        if cap not in CAPABILITIES:
            raise node.child("capabilities").error(
                f"unknown capability (known: {', '.join(CAPABILITIES)})", cap
            )
    spec = ModelSpec(
        id=model_id,
        provider=provider,
        upstream_model=node.child("upstream_model", model_id).str(),
        kind=kind,
        tier=node.child("tier").str(choices=TIERS),
        context_window=node.child("context_window").int(minimum=1),
        max_output_tokens=node.child("max_output_tokens", 0 if kind == "embedding" else None).int(minimum=0),
        capabilities=frozenset(capabilities),
        price=_parse_price(node.child("price")),
        encoding=node.child("encoding", "o200k_base").str(choices=ENCODINGS),
        family=node.child("family", "").str(allow_empty=True),
        aliases=tuple(node.child("aliases", []).str_list()),
        tokenizer=_parse_tokenizer(node.child("tokenizer", None)),
        images=_parse_images(node.child("images", None)),
        tool_fees=fees.of(provider),
        tool_inputs=fees.inputs_of(provider),
    )
    node.done()
    return spec


def _parse_images(node: Node) -> ImageTokenRule:
    """``images: {rule, ..., source}`` (see ``analyzer.media.ImageTokenRule``); absent means
    GPT-4o's tile rule (85 + 170 per tile)."""
    if node.value is None:
        return GPT4O_IMAGES
    rule = node.child("rule").str(choices=IMAGE_RULES)
    limit = 1_000_000
    if rule == "tiles":
        spec = ImageTokenRule(rule=rule, base_tokens=node.child("base_tokens").int(minimum=0, maximum=limit),
                              tile_tokens=node.child("tile_tokens").int(minimum=0, maximum=limit),
                              source=node.child("source").str())
    elif rule == "patches":
        multiplier_node = node.child("multiplier")
        multiplier = multiplier_node.decimal(minimum=Decimal(0))
        if multiplier > 1000:
            raise multiplier_node.error("must be at most 1000", multiplier_node.value)
        spec = ImageTokenRule(rule=rule, multiplier=multiplier, source=node.child("source").str())
    elif rule == "pixels":
        spec = ImageTokenRule(rule=rule, pixels_per_token=node.child("pixels_per_token").int(minimum=1, maximum=limit),
                              max_long_edge=node.child("max_long_edge").int(minimum=1, maximum=limit),
                              max_tokens=node.child("max_tokens").int(minimum=1, maximum=limit),
                              source=node.child("source").str())
    else:
        spec = ImageTokenRule(rule=rule, max_tokens=node.child("max_tokens").int(minimum=0, maximum=limit),
                              source=node.child("source").str())
    node.done()
    return spec


def _parse_tokenizer(node: Node) -> TokenizerSpec:
    """``tokenizer: {family, input_margin, byte_level, overhead_tokens, source}``; absent means the
    proxy counts with the model's own tokenizer (OpenAI models)."""
    if node.value is None:
        return OWN_TOKENIZER
    margin_node = node.child("input_margin")
    margin = margin_node.decimal(minimum=Decimal(0))
    if margin > MAX_INPUT_MARGIN:
        raise margin_node.error(f"must be at most {MAX_INPUT_MARGIN} (a fraction: 0.35 means 35%)", margin_node.value)
    spec = TokenizerSpec(
        family=node.child("family").str(),
        input_margin=margin,
        byte_level=node.child("byte_level", False).bool(),
        overhead_tokens=node.child("overhead_tokens", 0).int(minimum=0, maximum=1_000_000),
        source=node.child("source").str(),
    )
    node.done()
    return spec


# The most a token may cost, USD per million: with the most tokens one call is charged
# (pipeline.settle.MAX_INPUT_TOKENS) every call stays under money.MAX_AMOUNT_NANOS.
MAX_PRICE_PER_MTOK = Decimal(1000)


def _parse_price(node: Node) -> ModelPrice:
    cached = node.child("cached_input", None)
    as_of = node.child("as_of").date()
    write, write_1h = node.child("cache_write", None), node.child("cache_write_1h", None)
    bounds = {"minimum": Decimal(0), "maximum": MAX_PRICE_PER_MTOK}
    price = ModelPrice(
        input=node.child("input").decimal(**bounds),
        output=node.child("output", 0).decimal(**bounds),
        cached_input=None if cached.value is None else cached.decimal(**bounds),
        source=node.child("source").str(),
        as_of=as_of,
        cache_write=None if write.value is None else write.decimal(**bounds),
        cache_write_1h=None if write_1h.value is None else write_1h.decimal(**bounds),
    )
    node.done()
    return price
