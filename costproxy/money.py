"""Exact money: integer nano-USD everywhere, decimals only at the edges.

Prices are written per 1M tokens as decimals, the way vendors publish them.  A cost is computed
as the exact decimal sum ``sum(tokens_i * price_i) / 1_000_000`` over all token classes of one
request and converted to integer nano-USD (1e-9 USD) **once**, rounding up (toward +infinity).

Rounding up is the one rule: a request never costs less than what the provider will bill, so a
hard budget that fits the rounded cost also fits the real one.  With current vendor prices
(multiples of $0.001 per 1M tokens) every per-token cost is already a whole number of
nano-dollars and the rounding never triggers; it exists for prices with finer digits.

No float ever touches money: parsing a float is refused, decimal strings and ints are accepted.

The largest amount of any money input (a budget amount, a usage record, an override, a maximum
cost, an estimated cost) is ``MAX_AMOUNT_NANOS``: $1,000,000 (10^15 nano-USD).  Why that number:
every counter is a signed 64-bit integer of nano-USD (SQLite, Redis ``HINCRBY``), which holds
about $9.2 billion, so 9,000 maximal amounts still add up without overflow; and Redis mode
compares amounts in Lua doubles, exact below 2^53 nano-USD (about $9 million), so a limit plus
one more maximal amount stays exact.  Larger amounts are refused with a clear error (HTTP 400 at
the API), never accepted and then lost.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000
MAX_AMOUNT_NANOS = 10**15  # $1,000,000: see the module docstring
MAX_AMOUNT_USD = "1000000"
INT64_MAX = 2**63 - 1
_NANO = Decimal(1) / Decimal(NANOS_PER_USD)


class MoneyError(ValueError):
    """A value that cannot be an exact amount of money."""


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_decimal(value: object, *, what: str = "amount") -> Decimal:
    """Read a decimal from a string or int (YAML/JSON edge); floats are converted via repr.

    YAML and JSON hand us floats for unquoted numbers such as ``0.15``; ``repr`` of such a
    float is the shortest string that round-trips, which is what the author wrote.
    """
    if isinstance(value, bool):
        raise MoneyError(f"{what} must be a number, got {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        if not value.strip().isascii():  # Decimal reads any script's digits: "１２" would be 12
            raise MoneyError(f"{what} is not a decimal number in ASCII digits: {value!r}")
        if not _DECIMAL.fullmatch(value.strip()):  # Decimal also reads "1_0" as 10, and "Infinity"
            raise MoneyError(f"{what} is not a decimal number: {value!r}")
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise MoneyError(f"{what} is not a decimal number: {value!r}") from None
    else:
        raise MoneyError(f"{what} must be a decimal string or number, got {value!r}")
    if not result.is_finite():
        raise MoneyError(f"{what} must be finite, got {value!r}")
    return result


def usd_to_nanos(value: object, *, what: str = "amount", maximum: int = MAX_AMOUNT_NANOS) -> int:
    """Exact USD (decimal string or number) -> nano-USD; refuses sub-nano precision and amounts
    whose size exceeds ``maximum`` nano-USD (``MAX_AMOUNT_NANOS``, $1,000,000, by default)."""
    amount = parse_decimal(value, what=what)
    # Checked before any arithmetic: "1e999999999" is a valid Decimal that no context can scale.
    if amount and (amount.adjusted() > 30 or abs(amount) * NANOS_PER_USD > maximum):
        raise MoneyError(f"{what} exceeds the largest amount accepted, "
                         f"${format(Decimal(maximum) / NANOS_PER_USD, 'f')}: {value!r}")
    nanos = amount * NANOS_PER_USD
    if (amount and amount.adjusted() < -9) or nanos != nanos.to_integral_value():
        raise MoneyError(f"{what} has more precision than 1e-9 USD: {value!r}")
    return int(nanos)


def nanos_to_decimal(nanos: int) -> Decimal:
    return (Decimal(nanos) * _NANO).quantize(_NANO)


def format_usd(nanos: int) -> str:
    """Render nano-USD as a fixed 9-decimal string, e.g. ``0.000123450``."""
    return format(nanos_to_decimal(nanos), "f")


def tokens_cost(parts: list[tuple[int, Decimal]]) -> int:
    """Cost in nano-USD of ``(tokens, price per 1M tokens)`` parts, rounded up once."""
    total = Decimal(0)
    for tokens, price in parts:
        if tokens < 0:
            raise MoneyError(f"token count must not be negative, got {tokens}")
        total += Decimal(tokens) * price
    nanos = total * NANOS_PER_USD / TOKENS_PER_PRICE_UNIT
    return int(nanos.to_integral_value(rounding=ROUND_CEILING))
