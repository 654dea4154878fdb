"""Counting a request's prompt tokens: a documented approximation of OpenAI's BPE encodings
that needs no vocabulary, and the exact count from a local BPE file when one is at hand
(hedge never downloads one). Used to report what prompt compaction saves."""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from hedge.types import ChatRequest


def compact_json(value: Any) -> bytes:
    """JSON without whitespace, as upstreams receive it (integers beyond 64 bits too)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------

Tokenizer = Callable[[str], int]
"""Text -> number of tokens."""

# The approximation pre-tokenises like OpenAI's BPE encodings do (a word with its leading
# space or punctuation mark, digits in threes, runs of punctuation, whitespace), then charges a
# word one token per started 8 characters (long or rare words split) and a punctuation run one
# per started 4 (BPE vocabularies hold common runs such as '":"' or '"},{'). Calibrated on
# English prose, Python code and JSON tool definitions, it lands within about 6% of o200k_base
# and cl100k_base (bench/cache_and_compaction.py measures it again); it is an estimate for
# budgets and reports, not a bill. CJK and Hangul characters are charged 0.7 token each.
_PIECES = re.compile(
    r"[^\r\n\w]?[^\W\d_]+(?:'[a-z]{1,2})?|\d{1,3}| ?[^\s\w]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


_WIDE = 0x2E80  # CJK radicals onwards: CJK, kana, Hangul


def approx_tokens(text: str) -> int:
    """An estimate of the number of BPE tokens in `text`, without a vocabulary."""
    total = 0
    for piece in _PIECES.findall(text):
        core = piece.strip()
        if not core:
            total += 1
        elif core[-1].isalpha() or core[-1] == "'" or core[0].isalpha():
            # CJK and Hangul run at well under two characters a token.
            wide = sum(1 for ch in core if ord(ch) >= _WIDE)
            total += math.ceil(wide * 0.7) + math.ceil((len(core) - wide) / 8)
        elif core.isdigit():
            total += 1
        else:
            total += math.ceil(len(core) / 4)
    return total


# Per OpenAI's published counting recipe: each message costs 3 tokens of framing (4 with a
# name... counted as 1 extra), and the reply is primed with 3.
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3


def count_tokens(request: ChatRequest, tokenizer: Tokenizer | None = None) -> int:
    """The request's prompt tokens: messages (text parts; images and audio are not counted),
    tool definitions and a response_format schema, with OpenAI's framing per message. Tools
    are counted as their compact JSON, which is not the exact rendering any provider uses but
    moves the same way, so it compares requests (and compactions) fairly."""
    count = tokenizer or approx_tokens
    total = _REPLY_PRIMING
    for m in request.messages:
        total += _PER_MESSAGE + count(m.text())
        if m.name:
            total += _PER_NAME + count(m.name)
        for call in m.tool_calls or ():
            total += count(call.function.name) + count(call.function.arguments)
    if request.tools:
        for tool in request.tools:
            total += count(compact_json(tool.function.model_dump(exclude_none=True)).decode())
    fmt = request.response_format
    if fmt is not None and fmt.json_schema is not None and fmt.json_schema.schema_ is not None:
        total += count(compact_json(fmt.json_schema.schema_).decode())
    return total


# The published encodings: their split pattern, special tokens and the SHA-256 of the BPE
# file (the same checks tiktoken makes after a download).
_O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
_CL100K_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"
    r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s"
)
_ENCODINGS: dict[str, tuple[str, dict[str, int], str]] = {
    "o200k_base": (
        _O200K_PATTERN,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        _CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}


def read_bpe_ranks(path: str | Path, expected_sha256: str | None = None) -> dict[bytes, int]:
    """A tiktoken BPE file (`<base64 token> <rank>` per line; gzipped if it ends in .gz)."""
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise ValueError(f"{path} is not the expected BPE file (SHA-256 mismatch)")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def tiktoken_tokenizer(path: str | Path, encoding: str = "o200k_base") -> Tokenizer:
    """An exact tokenizer for one of OpenAI's encodings (`o200k_base`: GPT-4o and later;
    `cl100k_base`: GPT-4, GPT-3.5) built with tiktoken from a BPE file already on disk. Never
    touches the network. Raises ImportError without tiktoken, ValueError for a wrong file."""
    import tiktoken

    if encoding not in _ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r} (known: {', '.join(_ENCODINGS)})")
    pattern, special, sha256 = _ENCODINGS[encoding]
    enc = tiktoken.Encoding(
        encoding,
        pat_str=pattern,
        mergeable_ranks=read_bpe_ranks(path, sha256),
        special_tokens=special,
    )

    def count(text: str) -> int:
        # disallowed_special=(): a prompt that contains "<|endoftext|>" is text to count.
        return len(enc.encode(text, disallowed_special=()))

    return count


def bundled_bpe_file(encoding: str = "o200k_base") -> Path | None:
    """The BPE file the `bpe-openai` package ships, if it is installed (found without
    importing it), for `tiktoken_tokenizer`."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "data" / f"{encoding}.tiktoken.gz"
        if candidate.is_file():
            return candidate
    return None
