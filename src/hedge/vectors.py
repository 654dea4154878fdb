"""Embedding vectors as hedge carries them: little-endian float32 bytes, one buffer per vector.

That is exactly what OpenAI's `encoding_format: base64` sends, so a base64 answer is one
encode of the buffer, and a float answer one unpack; neither needs numpy. Pure functions.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from collections.abc import Sequence

_SWAP = sys.byteorder != "little"


def pack(values: Sequence[float]) -> bytes:
    """Floats -> little-endian float32 bytes."""
    out = array("f", values)
    if _SWAP:
        out.byteswap()
    return out.tobytes()


def unpack(raw: bytes) -> list[float]:
    """Little-endian float32 bytes -> floats (each the exact value of its float32)."""
    if len(raw) % 4:
        raise ValueError(f"a float32 vector has a multiple of 4 bytes, not {len(raw)}")
    out = array("f")
    out.frombytes(raw)
    if _SWAP:
        out.byteswap()
    return out.tolist()


def to_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def from_base64(text: str) -> bytes:
    """OpenAI's base64 embedding -> float32 bytes; ValueError when it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(f"not base64: {e}") from None
    if len(raw) % 4:
        raise ValueError(f"decodes to {len(raw)} bytes, not a whole number of float32 values")
    return raw


def dimensions(raw: bytes) -> int:
    return len(raw) // 4
