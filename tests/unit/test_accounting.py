"""cost_usd against sums done by hand: prices are USD per one million tokens."""

from __future__ import annotations

import pytest

from hedge.accounting import cost_usd
from hedge.config import Prices
from hedge.types import Usage


def test_input_and_output_at_their_prices() -> None:
    # 1,000 prompt tokens at $3/M = $0.003; 500 completion tokens at $15/M = $0.0075.
    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    assert cost_usd(usage, Prices(input=3.0, output=15.0)) == pytest.approx(0.0105)


def test_cached_tokens_are_priced_at_the_discount_instead_of_full_price() -> None:
    # 10,000 prompt tokens of which 8,000 cached; input $2.50/M, cached $1.25/M, output $10/M.
    # uncached 2,000 * 2.50 = 5,000; cached 8,000 * 1.25 = 10,000; output 1,000 * 10 = 10,000
    # -> 25,000 / 1,000,000 = $0.025 (no discount: 10,000 * 2.50 + 10,000 = $0.035).
    usage = Usage(prompt_tokens=10_000, completion_tokens=1_000, cached_tokens=8_000)
    prices = Prices(input=2.5, output=10.0, cached_input=1.25)
    assert cost_usd(usage, prices) == pytest.approx(0.025)


def test_cached_tokens_cost_full_input_price_when_no_discount_is_quoted() -> None:
    usage = Usage(prompt_tokens=10_000, completion_tokens=1_000, cached_tokens=8_000)
    assert cost_usd(usage, Prices(input=2.5, output=10.0)) == pytest.approx(0.035)


def test_reasoning_tokens_are_part_of_completion_tokens_not_extra() -> None:
    # 2,000 completion tokens, 1,500 of them reasoning: billed as 2,000 output tokens.
    usage = Usage(prompt_tokens=100, completion_tokens=2_000, reasoning_tokens=1_500)
    # 100 * 1 + 2,000 * 4 = 8,100 -> $0.0081
    assert cost_usd(usage, Prices(input=1.0, output=4.0)) == pytest.approx(0.0081)


def test_free_deployment_and_empty_usage_cost_nothing() -> None:
    assert cost_usd(Usage(prompt_tokens=123, completion_tokens=45), Prices()) == 0.0
    assert cost_usd(Usage(), Prices(input=5, output=5, cached_input=1)) == 0.0


def test_a_free_cache_makes_cached_tokens_free() -> None:
    usage = Usage(prompt_tokens=1_000, cached_tokens=1_000, completion_tokens=0)
    assert cost_usd(usage, Prices(input=3.0, output=15.0, cached_input=0.0)) == 0.0


def test_more_cached_than_prompt_tokens_is_capped_at_the_prompt() -> None:
    # A provider bug must not produce a negative uncached count (and a negative cost).
    usage = Usage(prompt_tokens=100, cached_tokens=400)
    # all 100 prompt tokens at the cached price: 100 * 0.5 = 50 -> $0.00005
    assert cost_usd(usage, Prices(input=3.0, cached_input=0.5)) == pytest.approx(0.00005)
