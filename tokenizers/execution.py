"""How the tokenizer's row-chunked work runs: the device, chunk sizes, worker threads, progress bars."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

__all__ = ["auto_chunk_rows", "chunk_parallelism", "map_chunks", "progress_bar", "resolve_device"]

# Rows x codes of one distance chunk when chunk_size is None (floats): 8 MiB per CPU worker,
# 1 GiB on a GPU (enough rows to keep it busy).
AUTO_CHUNK_FLOATS = {"cpu": 1 << 21, "cuda": 1 << 28}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` / "auto" -> cuda when available, else cpu; otherwise the named device (checked)."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:i]'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} was requested but CUDA is not available here; use device='cpu' or 'auto'"
        )
    return dev


def auto_chunk_rows(chunk_size: int | None, codebook_size: int, device: torch.device) -> int:
    """Rows per distance chunk: `chunk_size` when given, else sized from AUTO_CHUNK_FLOATS."""
    if chunk_size is not None:
        return int(chunk_size)
    if device.type == "cuda":
        return max(64, AUTO_CHUNK_FLOATS["cuda"] // int(codebook_size))
    # At most 1024 rows: smaller codebooks gain nothing from longer chunks, and enough
    # chunks must exist to share among the worker threads.
    return max(64, min(1024, AUTO_CHUNK_FLOATS["cpu"] // int(codebook_size)))


_POOL: dict[str, Any] = {"pool": None, "size": 0, "pid": 0}
_WORKERS = threading.local()  # .count: chunk workers chosen by the enclosing chunk_parallelism


@contextmanager
def chunk_parallelism(device: torch.device) -> Iterator[None]:
    """On CPU: spread chunks over torch.get_num_threads() worker threads, and run the calling
    thread's own (small, memory-bound) torch ops single-threaded meanwhile; restored on exit."""
    if device.type != "cpu" or getattr(_WORKERS, "count", None) is not None:
        yield
        return
    threads = torch.get_num_threads()
    _WORKERS.count = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _WORKERS.count = None


def _cpu_workers(size: int) -> ThreadPoolExecutor:
    """A persistent pool of `size` threads, each running torch single-threaded.

    Why not torch's own intra-op threads: each chunk is a handful of small ops, and every op is an
    OpenMP parallel region with a barrier; on a shared (or busy) 2-core machine a descheduled
    thread stalls every barrier. Independent chunks per thread, as scikit-learn does, avoid that.
    torch.set_num_threads is per thread here (OpenMP/MKL thread-local), so the caller keeps its own.
    """
    if _POOL["pool"] is None or _POOL["size"] != size or _POOL["pid"] != os.getpid():
        # A forked child inherits the pool object but not its threads: build a new one.
        pool = ThreadPoolExecutor(size, thread_name_prefix="rqkmeans", initializer=torch.set_num_threads, initargs=(1,))
        _POOL.update(pool=pool, size=size, pid=os.getpid())
    return _POOL["pool"]


def map_chunks(
    work: Callable[[int, int, torch.Tensor], None], n: int, chunk: int, k_pad: int, device: torch.device
) -> None:
    """Run work(start, stop, scratch) over row chunks; on CPU spread over torch.get_num_threads() threads.

    `scratch` is a (chunk, k_pad) float32 distance buffer owned by the running thread for this call.
    Exceptions raised by `work` propagate.
    """
    starts = range(0, n, chunk)
    rows = min(chunk, n)
    threads = (getattr(_WORKERS, "count", None) or torch.get_num_threads()) if device.type == "cpu" else 1
    if threads <= 1 or len(starts) == 1:
        scratch = torch.empty(rows, k_pad, dtype=torch.float32, device=device)
        for start in starts:
            work(start, min(start + chunk, n), scratch)
        return
    # `threads` long-running tasks pull chunk numbers from a shared counter: dynamic load balance,
    # no future per chunk (billions of rows), and an early stop once one chunk fails.
    next_chunk = iter(range(len(starts)))
    lock = threading.Lock()
    failed = threading.Event()

    def run() -> None:
        scratch = torch.empty(rows, k_pad, dtype=torch.float32, device=device)
        while not failed.is_set():
            with lock:
                i = next(next_chunk, None)
            if i is None:
                return
            try:
                work(starts[i], min(starts[i] + chunk, n), scratch)
            except BaseException:
                failed.set()
                raise

    pool = _cpu_workers(threads)
    for future in [pool.submit(run) for _ in range(threads)]:
        future.result()


class _NoProgress:
    def update(self, n: int = 1) -> None: ...
    def set_description(self, text: str) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar, or an object with the same four methods that does nothing."""
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True)
