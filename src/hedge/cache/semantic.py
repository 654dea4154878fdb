"""The semantic cache's index and the pure rules around it.

A semantic hit answers a request with the stored answer of an earlier request whose prompt
*means* the same: the nearest earlier prompt by cosine similarity of their embeddings, if it is
at least `threshold` alike. Everything else about the two requests must be equal, so the index
is split into scopes: a scope is the exact-cache key of the request with its last user message
blanked out (route, admitted deployments, policies, data class, tenant, system text, earlier
turns, tools, sampling parameters). Only the last user message is compared by meaning.

A paraphrase that flips the answer ("capital of France" / "capital of Spain") can sit above any
threshold an embedding model gives, which is why the cache is opt-in per route, and why
conversations and tool calls, where a near miss does the most harm, are left out unless a route
asks for them. Two guards catch what mean-pooled sentence embeddings are known to be blind to:
numbers ("2 + 3" / "2 + 4") and word order ("Celsius to Fahrenheit" / "Fahrenheit to
Celsius"): a match must carry the same numbers and must not be the same words reordered.

The index lives in this process (vectors are small; a restart starts it empty), while the
answers it points to live in the route's store. It keeps each prompt's text, for the guards,
in this process's memory only.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from hedge.cache import SemanticSettings
from hedge.types import ChatRequest

__all__ = ["SemanticIndex", "blanked", "compatible", "prompt_text", "unit"]

Vector = npt.NDArray[np.float32]


def prompt_text(request: ChatRequest, settings: SemanticSettings) -> str | None:
    """The text compared by meaning (the last user message), or None when the request is not
    one the semantic cache may answer: multi-turn or tool-calling without opt-in, or a last
    message that is not plain text."""
    if request.tools and not settings.tools:
        return None
    turns = [m for m in request.messages if m.role not in ("system", "developer")]
    if not turns or turns[-1].role != "user":
        return None
    if len(turns) > 1 and not settings.multi_turn:
        return None
    content = turns[-1].content
    if isinstance(content, str):
        return content if content.strip() else None
    if content and all(p.type == "text" for p in content):
        return "".join(str((p.model_extra or {})["text"]) for p in content)
    return None  # images, audio, files: their meaning is not in the text


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"\w+")


def compatible(query: str, stored: str) -> bool:
    """Whether two prompts found alike by their embeddings may share an answer: the same
    numbers, and not the same words in another order (which to an embedding that averages
    its tokens look identical, and usually mean something else)."""
    if Counter(_NUMBER.findall(query)) != Counter(_NUMBER.findall(stored)):
        return False
    words, others = _WORD.findall(query.lower()), _WORD.findall(stored.lower())
    return words == others or Counter(words) != Counter(others)


def blanked(request: ChatRequest) -> ChatRequest:
    """The request with its last message's content emptied: its exact-cache key is the scope
    inside which prompts are compared."""
    messages = list(request.messages)
    messages[-1] = messages[-1].model_copy(update={"content": ""})
    return request.model_copy(update={"messages": messages})


def unit(raw: Any) -> Vector:
    """A vector (float32 bytes or numbers) scaled to length 1, so a dot product is a cosine."""
    v = (
        np.frombuffer(raw, dtype="<f4")
        if isinstance(raw, bytes)
        else np.asarray(raw, dtype=np.float32)
    )
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else v.astype(np.float32)


class _Scope:
    """Rows in a growable matrix (capacity doubles, so adding is amortised O(dims)); a removed
    row is replaced by the last one."""

    __slots__ = ("_matrix", "added", "keys", "texts")

    def __init__(self, dims: int) -> None:
        self._matrix: Vector = np.empty((4, dims), dtype=np.float32)
        self.keys: list[str] = []
        self.texts: list[str] = []
        self.added: list[int] = []  # when each row came in (the index's counter)

    @property
    def dims(self) -> int:
        return int(self._matrix.shape[1])

    def similarities(self, vector: Vector) -> Vector:
        return self._matrix[: len(self.keys)] @ vector

    def append(self, vector: Vector, key: str, text: str, added: int) -> None:
        n = len(self.keys)
        if n == self._matrix.shape[0]:
            grown = np.empty((2 * n, self.dims), dtype=np.float32)
            grown[:n] = self._matrix
            self._matrix = grown
        self._matrix[n] = vector
        self.keys.append(key)
        self.texts.append(text)
        self.added.append(added)

    def oldest(self) -> int:
        return self.added.index(min(self.added))

    def remove(self, i: int) -> None:
        last = len(self.keys) - 1
        self._matrix[i] = self._matrix[last]
        self.keys[i], self.texts[i] = self.keys[last], self.texts[last]
        self.added[i] = self.added[last]
        self.keys.pop()
        self.texts.pop()
        self.added.pop()


class SemanticIndex:
    """Unit vectors by scope, each pointing at the exact-cache key of a stored answer.
    Bounded by `max_entries` overall: the oldest row of the least recently used scope goes
    first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        self._size = 0
        self._added = 0

    def __len__(self) -> int:
        return self._size

    def nearest(self, scope: str, vector: Vector) -> tuple[str, str, float] | None:
        """The key and text of the most similar prompt in `scope`, and its similarity."""
        found = self._scopes.get(scope)
        if found is None or found.dims != vector.shape[0]:
            return None
        self._scopes.move_to_end(scope)
        similarities = found.similarities(vector)
        best = int(np.argmax(similarities))
        return found.keys[best], found.texts[best], float(similarities[best])

    def add(self, scope: str, vector: Vector, key: str, text: str) -> None:
        found = self._scopes.get(scope)
        if found is None:
            found = self._scopes[scope] = _Scope(vector.shape[0])
        if key in found.keys or found.dims != vector.shape[0]:
            return  # already there, or another embedder's dimensions: not comparable
        self._added += 1
        found.append(vector, key, text, self._added)
        self._scopes.move_to_end(scope)
        self._size += 1
        while self._size > self.max_entries:
            stale, rows = next(iter(self._scopes.items()))
            self._remove(stale, rows, rows.oldest())

    def forget(self, scope: str, key: str) -> None:
        """Drop a row whose answer has left the store (expired or evicted)."""
        found = self._scopes.get(scope)
        if found is not None and key in found.keys:
            self._remove(scope, found, found.keys.index(key))

    def _remove(self, scope: str, rows: _Scope, i: int) -> None:
        rows.remove(i)
        self._size -= 1
        if not rows.keys:
            del self._scopes[scope]
