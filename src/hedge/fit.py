"""Will a catalog model fit on given GPUs? Pure arithmetic for `hedge models fit`.

Owns the memory estimate: weights (parameters x bits per weight), the KV cache for a context
length, and a runtime overhead, against the memory of the GPUs. Every number comes out with the
line of arithmetic that produced it, so a person can check it. The result is an estimate, and
says so; a model whose parameter count is not reported gets "unknown", never a guess.

Units: GB are decimal (10^9 bytes), as GPU memory is usually quoted; "B params" is 10^9.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hedge.catalog import Model

Quantization = Literal["q4", "q8", "fp8", "fp16"]
FitStatus = Literal["fits", "does not fit", "unknown"]

# Assumptions, in one place. Bits stored per weight, including the per-block scales that
# llama.cpp-style quantizations carry (q4 ~ Q4_K_M / Q4_1, q8 ~ Q8_0); fp8 and fp16 are plain.
BITS_PER_WEIGHT: dict[Quantization, float] = {
    "q4": 4.5,
    "q8": 8.5,
    "fp8": 8.0,
    "fp16": 16.0,
}
# The KV cache is kept in fp16 unless told otherwise.
KV_BYTES_PER_ELEMENT = 2
# Rule of thumb when a model's layer / KV-head counts are not reported: 0.25 MB of KV cache per
# token of context (fp16). For scale: a Llama-3-8B-shaped GQA model (32 layers x 8 KV heads x
# 128 dims x 2 for K and V x 2 bytes) needs 0.13 MB per token, a Llama-3-70B-shaped one 0.33 MB.
# Models with latent attention or few KV heads need much less, so this is a rough, labelled
# estimate, not a property of the model.
KV_RULE_OF_THUMB_MB_PER_TOKEN = 0.25
# Runtime overhead: a fixed amount per GPU (CUDA context, runtime buffers) plus a share of
# weights + KV for activations and allocator fragmentation.
OVERHEAD_GB_PER_GPU = 1.0
OVERHEAD_FRACTION = 0.10

UNKNOWN_PARAMS = "unknown: parameters not reported"


@dataclass(frozen=True, slots=True)
class FitEstimate:
    """The estimate for one model on one GPU setup. GB figures are None when unknown."""

    model_id: str
    quantization: Quantization
    gpu_count: int
    gpu_memory_gb: float
    context_tokens: int
    sequences: int
    status: FitStatus
    fits: bool | None
    weights_gb: float | None
    kv_cache_gb: float | None
    kv_cache_is_rule_of_thumb: bool
    overhead_gb: float | None
    total_gb: float | None
    available_gb: float
    lines: tuple[str, ...]


def _num(x: float) -> str:
    """A figure as a person writes it: no trailing zeros, at most 3 decimals."""
    return f"{x:,.3f}".rstrip("0").rstrip(".").replace(",", "")


def estimate_fit(
    model: Model,
    *,
    quantization: Quantization = "q4",
    gpu_memory_gb: float,
    gpu_count: int = 1,
    context_tokens: int = 8192,
    sequences: int = 1,
) -> FitEstimate:
    """Estimate the memory `model` needs at `quantization` with `sequences` concurrent
    sequences of `context_tokens` each, against `gpu_count` GPUs of `gpu_memory_gb` each.

    Weights use the TOTAL parameter count: a mixture-of-experts model keeps every expert in
    memory even though only the active ones run per token.
    """
    if quantization not in BITS_PER_WEIGHT:
        raise ValueError(
            f"unknown quantization '{quantization}' (known: {', '.join(BITS_PER_WEIGHT)})"
        )
    if gpu_count < 1 or gpu_memory_gb <= 0:
        raise ValueError("gpu_count must be at least 1 and gpu_memory_gb above 0")
    if context_tokens < 1 or sequences < 1:
        raise ValueError("context_tokens and sequences must be at least 1")

    available = gpu_memory_gb * gpu_count
    gpus = f"{gpu_count} GPU{'s' if gpu_count != 1 else ''}"
    lines = [f"available: {gpus} x {_num(gpu_memory_gb)} GB = {_num(available)} GB"]
    total_b = model.params_total_b.value

    def result(
        status: FitStatus,
        *,
        weights: float | None = None,
        kv: float | None = None,
        kv_rule: bool = False,
        overhead: float | None = None,
        total: float | None = None,
    ) -> FitEstimate:
        return FitEstimate(
            model_id=model.id,
            quantization=quantization,
            gpu_count=gpu_count,
            gpu_memory_gb=gpu_memory_gb,
            context_tokens=context_tokens,
            sequences=sequences,
            status=status,
            fits=None if status == "unknown" else status == "fits",
            weights_gb=weights,
            kv_cache_gb=kv,
            kv_cache_is_rule_of_thumb=kv_rule,
            overhead_gb=overhead,
            total_gb=total,
            available_gb=available,
            lines=tuple(lines),
        )

    if total_b is None:
        lines.append(f"weights: {UNKNOWN_PARAMS} for {model.id}")
        lines.append(f"result: {UNKNOWN_PARAMS}")
        return result("unknown")

    bits = BITS_PER_WEIGHT[quantization]
    weights = total_b * bits / 8
    lines.append(
        f"weights ({quantization}): {_num(total_b)} B params x {_num(bits)} bits / 8 "
        f"= {_num(weights)} GB"
    )
    active = model.params_active_b.value
    if active is not None and active < total_b:
        lines.append(
            f"  (all {_num(total_b)} B params must be resident; only {_num(active)} B are "
            "active per token, which sets speed, not memory)"
        )

    tokens = context_tokens * sequences
    seq_text = f"{context_tokens} tokens" + (f" x {sequences} sequences" if sequences > 1 else "")
    layers, kv_heads, head_dim = (
        model.n_layers.value,
        model.n_kv_heads.value,
        model.head_dim.value,
    )
    if layers is not None and kv_heads is not None and head_dim is not None:
        per_token = 2 * layers * kv_heads * head_dim * KV_BYTES_PER_ELEMENT
        kv = tokens * per_token / 1e9
        kv_rule = False
        lines.append(
            f"KV cache: 2 (K,V) x {layers} layers x {kv_heads} KV heads x {head_dim} dims x "
            f"{KV_BYTES_PER_ELEMENT} bytes = {per_token} bytes/token; "
            f"{seq_text} -> {_num(kv)} GB"
        )
    else:
        kv = tokens * KV_RULE_OF_THUMB_MB_PER_TOKEN / 1000
        kv_rule = True
        lines.append(
            f"KV cache (ESTIMATE, rule of thumb: layer/head counts not reported): {seq_text} "
            f"x {_num(KV_RULE_OF_THUMB_MB_PER_TOKEN)} MB/token = {_num(kv)} GB"
        )
    reported_ctx = model.context_window.value
    if reported_ctx is not None and context_tokens > reported_ctx:
        lines.append(
            f"  warning: {context_tokens} tokens is beyond the reported context window "
            f"({reported_ctx})"
        )

    fixed = OVERHEAD_GB_PER_GPU * gpu_count
    overhead = fixed + OVERHEAD_FRACTION * (weights + kv)
    lines.append(
        f"overhead (assumed): {gpus} x {_num(OVERHEAD_GB_PER_GPU)} GB + "
        f"{_num(OVERHEAD_FRACTION * 100)}% x ({_num(weights)} + {_num(kv)}) GB "
        f"= {_num(overhead)} GB"
    )
    total = weights + kv + overhead
    lines.append(
        f"total: {_num(weights)} + {_num(kv)} + {_num(overhead)} = {_num(total)} GB "
        f"of {_num(available)} GB available"
    )
    status: FitStatus = "fits" if total <= available else "does not fit"
    verdict = (
        f"fits, {_num(available - total)} GB to spare"
        if status == "fits"
        else f"does not fit, {_num(total - available)} GB short"
    )
    lines.append(f"result: {verdict} (an estimate)")
    return result(status, weights=weights, kv=kv, kv_rule=kv_rule, overhead=overhead, total=total)
