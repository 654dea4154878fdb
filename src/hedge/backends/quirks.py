"""Provider quirks of OpenAI-compatible servers: the data in providers.yaml, merged and typed.

Kept apart from the backend so configuration can check provider and quirk names at start-up
without importing the HTTP machinery.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Quirks(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    reasoning_fields: tuple[str, ...] = Field(strict=False)
    stream_usage: Literal["stream_options", "none"]
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"]
    supports_n: bool
    supports_tools: bool
    assistant_prefill: bool = False
    reasoning: Literal[
        "reasoning_effort", "enable_thinking_kwarg", "enable_thinking", "thinking_type", "drop"
    ] = "reasoning_effort"
    prefill_fields: dict[str, Any] = Field(default_factory=dict, strict=False)


QUIRK_NAMES = frozenset(Quirks.model_fields)


@cache
def _presets() -> dict[str, dict[str, Any]]:
    text = resources.files("hedge.backends").joinpath("providers.yaml").read_text("utf-8")
    return cast(dict[str, dict[str, Any]], yaml.safe_load(text))


def provider_names() -> list[str]:
    return sorted(_presets())


def quirks_for(provider: str, overrides: dict[str, Any]) -> Quirks:
    """The generic quirks, then the provider's, then the deployment's own overrides."""
    presets = _presets()
    merged = {**presets["generic"], **presets.get(provider, {}), **overrides}
    unknown = set(merged) - QUIRK_NAMES
    if unknown:
        raise ValueError(
            f"unknown quirk(s): {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(QUIRK_NAMES))})"
        )
    try:
        return Quirks.model_validate(merged)
    except ValidationError as e:
        raise ValueError(
            "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        ) from None


def reasoning_fields(style: str, effort: str) -> dict[str, Any]:
    """The body fields that carry a reasoning effort in a provider's own terms (pure).
    `effort` is none|minimal|low|medium|high; on/off switches treat none/minimal as off."""
    on = effort not in ("none", "minimal")
    if style == "reasoning_effort":
        return {"reasoning_effort": effort}
    if style == "enable_thinking_kwarg":
        return {"chat_template_kwargs": {"enable_thinking": on}}
    if style == "enable_thinking":
        return {"enable_thinking": on}
    if style == "thinking_type":
        return {"thinking": {"type": "enabled" if on else "disabled"}}
    return {}
