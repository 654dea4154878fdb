"""What a call cost, from its token counts and the deployment's price list. Pure arithmetic.

Token conventions follow `hedge.types.Usage`, which every backend normalises to OpenAI's:
`prompt_tokens` includes the cached tokens (Anthropic's cache reads are added in by its
backend), and `completion_tokens` includes the reasoning tokens. So cached tokens are priced
*instead of*, not in addition to, the same number of uncached input tokens, and reasoning tokens
are never priced a second time.
"""

from __future__ import annotations

from hedge.config import Prices
from hedge.types import Usage

PER_TOKENS = 1_000_000  # prices are quoted in USD per one million tokens


def cost_usd(usage: Usage, prices: Prices) -> float:
    """USD for one call: uncached input at `input`, cached input at `cached_input` (or at
    `input` when the deployment quotes no discount), completion (reasoning included) at
    `output`."""
    # A provider that reports more cached than prompt tokens is wrong; never price a
    # negative number of uncached tokens because of it.
    cached = min(max(usage.cached_tokens, 0), max(usage.prompt_tokens, 0))
    uncached = max(usage.prompt_tokens, 0) - cached
    cached_price = prices.input if prices.cached_input is None else prices.cached_input
    total = (
        uncached * prices.input
        + cached * cached_price
        + max(usage.completion_tokens, 0) * prices.output
    )
    return total / PER_TOKENS
