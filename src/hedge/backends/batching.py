"""Dynamic batching: concurrent requests merged into one call of a batch function.

A request submits its items; they wait in a FIFO until a batch closes, which it does when
`max_batch` items are waiting or the oldest has waited `max_wait_s`. The batch function then
runs once, off the event loop on the given executor (a deployment's own thread), over at most
`max_batch` items, while the next batch gathers. A request larger than `max_batch` is split into
groups, each of which may share a batch with other requests' items; it is answered when all of
its groups are. A request that is cancelled before its group was taken costs nothing.

The batch function sees the groups and answers each one separately, with its results or an
exception of its own, so one bad request never fails the requests it was batched with.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from hedge.errors import Overloaded, UpstreamError

T = TypeVar("T")
R = TypeVar("R")

# One result per group: that group's results in order, or what went wrong with it.
BatchFunction = Callable[[list[list[T]]], list[list[R] | BaseException]]


@dataclass(slots=True)
class _Group(Generic[T, R]):
    items: list[T]
    future: asyncio.Future[list[R]]
    at: float  # loop time it was queued


@dataclass(frozen=True, slots=True)
class BatchStats:
    calls: int = 0  # batch function calls made
    items: int = 0  # items they processed
    largest: int = 0  # items in the largest one
    queued: int = 0  # items waiting now


class Batcher(Generic[T, R]):
    def __init__(
        self,
        process: BatchFunction[T, R],
        executor: Executor,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._process = process
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.name = name
        self._pending: deque[_Group[T, R]] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._calls = self._items = self._largest = 0

    def stats(self) -> BatchStats:
        return BatchStats(self._calls, self._items, self._largest, self._queued)

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The batch function's results for `items`, in order."""
        if self._closed:
            raise UpstreamError(f"deployment '{self.name}' is shutting down", retryable=True)
        if not items:
            return []
        if self._queued + len(items) > self.max_queue:
            raise Overloaded(
                f"deployment '{self.name}' has {self._queued} items queued; {len(items)} more "
                f"would pass max_queue {self.max_queue}"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        step = self.max_batch
        groups = [
            _Group[T, R](list(items[i : i + step]), loop.create_future(), now)
            for i in range(0, len(items), step)
        ]
        self._pending.extend(groups)
        self._queued += len(items)
        self._wake.set()
        if self._worker is None or self._worker.done():
            # A fresh context: the worker serves every request, not the one that woke it.
            self._worker = loop.create_task(self._run(), context=contextvars.Context())
        try:
            parts = await asyncio.gather(*(g.future for g in groups))
        except BaseException:
            for g in groups:
                g.future.cancel()  # groups not yet taken are dropped from the queue
            raise
        return [r for part in parts for r in part]

    async def aclose(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._pending:
            group = self._pending.popleft()
            if not group.future.done():
                group.future.set_exception(
                    UpstreamError(f"deployment '{self.name}' shut down", retryable=True)
                )
        self._queued = 0

    # ---- the worker ---------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._queued -= len(self._pending.popleft().items)

    def _take(self) -> list[_Group[T, R]]:
        """The next batch: whole groups in arrival order, at most max_batch items."""
        batch: list[_Group[T, R]] = []
        size = 0
        while self._pending:
            group = self._pending[0]
            if group.future.done():
                self._queued -= len(self._pending.popleft().items)
                continue
            if batch and size + len(group.items) > self.max_batch:
                break
            self._pending.popleft()
            self._queued -= len(group.items)
            batch.append(group)
            size += len(group.items)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._pending:
                return
            wait = self._pending[0].at + self.max_wait_s - loop.time()
            if self._queued < self.max_batch and wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            batch = self._take()
            if not batch:
                continue
            size = sum(len(g.items) for g in batch)
            self._calls += 1
            self._items += size
            self._largest = max(self._largest, size)
            try:
                results = await loop.run_in_executor(
                    self._executor, self._process, [g.items for g in batch]
                )
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"the batch function answered {len(results)} groups of {len(batch)}"
                    )
            except asyncio.CancelledError:
                for g in batch:
                    if not g.future.done():
                        g.future.set_exception(
                            UpstreamError(f"deployment '{self.name}' shut down", retryable=True)
                        )
                raise
            except Exception as e:
                failure = UpstreamError(
                    f"deployment '{self.name}' failed: {type(e).__name__}: {e}", retryable=False
                )
                results = [failure] * len(batch)
            for group, result in zip(batch, results, strict=True):
                if group.future.done():
                    continue  # its request is gone
                if isinstance(result, BaseException):
                    group.future.set_exception(result)
                else:
                    group.future.set_result(result)
