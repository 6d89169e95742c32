from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from costproxy.money import MoneyError, format_usd, parse_decimal, tokens_cost, usd_to_nanos
from costproxy.registry import ModelPrice, ModelSpec, Usage


def spec(price_in: str, price_out: str, cached: str | None = None) -> ModelSpec:
    price = ModelPrice(Decimal(price_in), Decimal(price_out), None if cached is None else Decimal(cached),
                       source="t", as_of=date(2026, 1, 1))
    return ModelSpec(id="m", provider="p", upstream_model="m", kind="chat", tier="economy", context_window=1000,
                     max_output_tokens=100, capabilities=frozenset(), price=price)


@pytest.mark.parametrize(("price_in", "price_out", "cached"), [
    ("2.50", "10.00", "1.25"), ("0.15", "0.60", "0.075"), ("0.0375", "0.15", None), ("3", "15", "0.30"),
    ("0.0000001", "0.0000003", None),  # sub-nano per token: the Decimal path, rounded up once
])
def test_fast_path_equals_exact_decimal(price_in: str, price_out: str, cached: str | None) -> None:
    model = spec(price_in, price_out, cached)
    for prompt, completion, hit in ((0, 0, 0), (1, 1, 0), (1234, 567, 1000), (10**7, 10**6, 3)):
        usage = Usage(prompt, completion, hit)
        c = hit if cached is not None else 0
        exact = tokens_cost([(prompt - c, Decimal(price_in)), (completion, Decimal(price_out))]
                            + ([(c, Decimal(cached))] if cached is not None and c else []))
        assert model.cost(usage) == exact
        assert model.worst_case_cost(prompt, completion) == tokens_cost(
            [(prompt, Decimal(price_in)), (completion, Decimal(price_out))])


def test_rounding_is_up_once() -> None:
    # 1 token at $0.0000001 / 1M = 1e-13 USD: rounds up to 1 nano-USD, never down to 0
    assert tokens_cost([(1, Decimal("0.0000001"))]) == 1
    assert tokens_cost([(3, Decimal("0.0000001")), (3, Decimal("0.0000001"))]) == 1  # summed before rounding


def test_usd_parsing_is_exact_and_refuses_float_noise() -> None:
    assert usd_to_nanos("0.000000001") == 1
    assert usd_to_nanos(12) == 12_000_000_000
    assert usd_to_nanos(0.1) == 100_000_000  # the float as written, not 0.1000000000000000055…
    with pytest.raises(MoneyError):
        usd_to_nanos("0.0000000001")
    with pytest.raises(MoneyError):
        parse_decimal(True)
    with pytest.raises(MoneyError):
        parse_decimal("NaN")
    for other_script in ("１２", "١٢", "1\u00a02"):  # fullwidth, Arabic-Indic digits, a no-break space inside
        with pytest.raises(MoneyError, match="ASCII"):
            usd_to_nanos(other_script)
    for spelled in ("1_0", "Infinity", "-inf", "1 0", "0x10", "1e", ".", ""):  # Decimal reads "1_0" as 10
        with pytest.raises(MoneyError, match="not a decimal number"):
            usd_to_nanos(spelled)
    assert usd_to_nanos("1.5e0") == usd_to_nanos(".15e1") == usd_to_nanos("1.50") == 1_500_000_000
    assert usd_to_nanos(" 12 ") == 12_000_000_000
    assert format_usd(1) == "0.000000001" and format_usd(12_345_000_000) == "12.345000000"
