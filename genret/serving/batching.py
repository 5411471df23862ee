"""Dynamic batching: concurrent requests are decoded together, up to a batch size or a wait time.

A request joins the open batch until the batch holds `max_batch_size` histories or `max_wait_ms`
have passed since its first request; the batch is then split into groups of requests that can
share one decode (same `key`, e.g. the same k) and each group runs in one worker thread, one
group at a time, so the model never runs twice at once. While a batch decodes, new requests
queue up and form the next batch: under load, batches grow by themselves.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence


@dataclass
class _Job:
    key: Hashable
    payload: Any
    size: int
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    """Batches `submit` calls and runs them through `run_batch` in one worker thread.

    Args:
        run_batch: payloads of one group (equal keys) -> one result per payload, in order; a result
            that is an Exception is raised to that request's caller only.
        max_batch_size: most histories in a batch (a single larger request still runs, alone).
        max_wait_ms: longest a batch waits for more requests after its first one.
        on_batch: called with (requests, histories) of every group run (metrics).
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], list[Any]], max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, on_batch: Callable[[int, int], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: deque[_Job] = deque()  # a request that did not fit opens the next batch
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genret-decode")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, key: Hashable, payload: Any, size: int) -> Any:
        """Queue one request of `size` histories; returns its result (or raises its error)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        job = _Job(key, payload, size, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        first = self._carry.popleft() if self._carry else await self._queue.get()
        batch, size = [first], first.size
        deadline = loop.time() + self.max_wait
        while size < self.max_batch_size:
            if self._carry:
                job = self._carry.popleft()
            else:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
            if size + job.size > self.max_batch_size:
                self._carry.appendleft(job)
                break
            batch.append(job)
            size += job.size
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            groups: dict[Hashable, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.key, []).append(job)
            for jobs in groups.values():
                jobs = [job for job in jobs if not job.future.done()]  # a caller may have gone away
                if not jobs:
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(jobs), sum(job.size for job in jobs))
                try:
                    results = await loop.run_in_executor(self._executor, self.run_batch, [j.payload for j in jobs])
                except Exception as err:  # noqa: BLE001 - handed to every caller of the group
                    results = [err] * len(jobs)
                for job, result in zip(jobs, results):
                    if job.future.done():
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
