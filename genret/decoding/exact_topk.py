"""Exact top-K by dot product over the whole catalogue, for embedding-based retrievers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

# Default cap on one (users x items) score block: 2^26 fp32 scores = 256 MiB.
_MAX_SCORE_ELEMENTS = 1 << 26


def _as_float_tensor(array: Any, name: str) -> torch.Tensor:
    tensor = array.detach() if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a float matrix, got dtype {tensor.dtype}")
    return tensor


def _check_exclude(exclude: Any, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray] | None:
    if exclude is None:
        return None
    try:
        offsets, items = exclude
    except (TypeError, ValueError):
        raise ValueError("exclude must be a CSR pair (offsets (m+1,), items) such as (history_offsets, history_items)")
    offsets = np.asarray(offsets.cpu() if isinstance(offsets, torch.Tensor) else offsets).astype(np.int64)
    items = np.asarray(items.cpu() if isinstance(items, torch.Tensor) else items).astype(np.int64)
    if offsets.shape != (n_users + 1,):
        raise ValueError(f"exclude offsets must have shape ({n_users + 1},) for {n_users} users, got {offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != items.size or np.any(np.diff(offsets) < 0):
        raise ValueError("exclude offsets must start at 0, be non-decreasing and end at len(items)")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"exclude items hold indices outside the catalogue [0, {n_items})")
    return offsets, items


def _resolve_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def exact_topk(
    user_vectors: Any,
    item_vectors: Any,
    k: int,
    exclude: tuple[Any, Any] | None = None,
    chunk_size: int = 1024,
    item_chunk_size: int | None = None,
    device: Any = None,
    backend: str = "torch",
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k items per user by inner product over ALL items.

    Users are processed ``chunk_size`` at a time and items ``item_chunk_size`` at a time, merging a
    running top-k, so memory is bounded by one (chunk_size x item_chunk_size) score block whatever
    the catalogue size. Scores are computed in float32. Ties between equal scores are broken
    arbitrarily (as ``torch.topk`` does).

    Args:
        user_vectors: (m, d) float user embeddings (numpy or torch).
        item_vectors: (n_items, d) float item embeddings (numpy or torch).
        k: list length, >= 1. When fewer than k items remain (k > n_items, or history excluded),
            rows are padded with item -1 and score -inf.
        exclude: optional CSR ``(offsets (m+1,) int64, items int64)`` of items to drop per user
            (their history); their scores are set to -inf before the top-k.
        chunk_size: users per block.
        item_chunk_size: items per block; default keeps a block under 2^26 scores.
        device: torch device for the torch backend; default CUDA when available, else CPU.
        backend: ``"torch"`` or ``"faiss"`` (``faiss.IndexFlatIP``, CPU; needs faiss installed).
        progress: show a tqdm bar over user blocks (None: only on a terminal).

    Returns:
        ``(scores, items)``: (m, k) float32 and (m, k) int64 CPU tensors, best first.
    """
    users = _as_float_tensor(user_vectors, "user_vectors")
    items = _as_float_tensor(item_vectors, "item_vectors")
    if users.shape[1] != items.shape[1]:
        raise ValueError(
            f"user_vectors have dim {users.shape[1]} but item_vectors have dim {items.shape[1]}; they must match"
        )
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_users, n_items = users.shape[0], items.shape[0]
    if n_items == 0:
        raise ValueError("item_vectors is empty; there is nothing to retrieve")
    if item_chunk_size is None:
        item_chunk_size = max(1, _MAX_SCORE_ELEMENTS // chunk_size)
    if item_chunk_size < 1:
        raise ValueError(f"item_chunk_size must be >= 1, got {item_chunk_size}")
    exclude = _check_exclude(exclude, n_users, n_items)
    if not (torch.isfinite(users).all() and torch.isfinite(items).all()):
        # -inf marks excluded items and padding, so real scores must be finite.
        raise ValueError("user_vectors and item_vectors must be finite (found NaN or inf)")

    if backend == "torch":
        return _topk_torch(users, items, k, exclude, chunk_size, item_chunk_size, _resolve_device(device), progress)
    if backend == "faiss":
        return _topk_faiss(users, items, k, exclude, chunk_size, progress)
    raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")


def _topk_torch(
    users: torch.Tensor,
    items: torch.Tensor,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None,
    chunk_size: int,
    item_chunk_size: int,
    device: torch.device,
    progress: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    n_users, n_items = users.shape[0], items.shape[0]
    items_on_device = items.to(device=device, dtype=torch.float32)  # moved once, reused by every user block
    out_scores = torch.full((n_users, k), float("-inf"), dtype=torch.float32)
    out_items = torch.full((n_users, k), -1, dtype=torch.int64)
    if exclude is not None:
        offsets = torch.from_numpy(exclude[0])
        excluded_items = torch.from_numpy(exclude[1])
    bar = tqdm(
        range(0, n_users, chunk_size),
        desc="exact top-k",
        unit="block",
        disable=None if progress is None else not progress,
    )
    for start in bar:
        stop = min(n_users, start + chunk_size)
        block = users[start:stop].to(device=device, dtype=torch.float32)  # (b, d)
        if exclude is not None:
            lo, hi = int(offsets[start]), int(offsets[stop])
            lengths = (offsets[start + 1 : stop + 1] - offsets[start:stop]).to(device)
            excl_rows = torch.repeat_interleave(torch.arange(stop - start, device=device), lengths)
            excl_items = excluded_items[lo:hi].to(device)
        best_scores = best_items = None
        for item_start in range(0, n_items, item_chunk_size):
            item_stop = min(n_items, item_start + item_chunk_size)
            scores = block @ items_on_device[item_start:item_stop].T  # (b, c)
            if exclude is not None:
                inside = (excl_items >= item_start) & (excl_items < item_stop)
                scores[excl_rows[inside], excl_items[inside] - item_start] = float("-inf")
            top_scores, top_local = scores.topk(min(k, item_stop - item_start), dim=1)
            top_items = top_local + item_start
            if best_scores is None:
                best_scores, best_items = top_scores, top_items
            else:
                merged_scores = torch.cat([best_scores, top_scores], dim=1)
                merged_items = torch.cat([best_items, top_items], dim=1)
                best_scores, pick = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
                best_items = merged_items.gather(1, pick)
        width = best_scores.shape[1]
        out_scores[start:stop, :width] = best_scores.cpu()
        out_items[start:stop, :width] = best_items.cpu()
    # Excluded items that still surfaced (fewer than k left) are padding, not results.
    out_items[torch.isneginf(out_scores)] = -1
    return out_scores, out_items


def _topk_faiss(
    users: torch.Tensor,
    items: torch.Tensor,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None,
    chunk_size: int,
    progress: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "exact_topk(backend='faiss') needs faiss; install it with `pip install genret[faiss]` "
            "(faiss-cpu) or use backend='torch'"
        ) from error
    n_users, n_items = users.shape[0], items.shape[0]
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(np.ascontiguousarray(items.cpu().numpy(), dtype=np.float32))
    user_array = np.ascontiguousarray(users.cpu().numpy(), dtype=np.float32)
    out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    out_items = np.full((n_users, k), -1, dtype=np.int64)
    bar = tqdm(
        range(0, n_users, chunk_size),
        desc="exact top-k (faiss)",
        unit="block",
        disable=None if progress is None else not progress,
    )
    for start in bar:
        stop = min(n_users, start + chunk_size)
        block = user_array[start:stop]
        if exclude is None:
            fetch = min(k, n_items)
            scores, labels = index.search(block, fetch)
            out_scores[start:stop, :fetch] = scores
            out_items[start:stop, :fetch] = labels
            continue
        # faiss cannot drop a different item set per query, so over-fetch by the longest history
        # in the block and filter: the k best non-excluded items are always within that prefix.
        offsets, excluded = exclude
        lengths = np.diff(offsets[start : stop + 1])
        fetch = min(n_items, k + int(lengths.max(initial=0)))
        scores, labels = index.search(block, fetch)
        rows = np.repeat(np.arange(stop - start), lengths)
        excluded_keys = rows * n_items + excluded[offsets[start] : offsets[stop]]
        result_keys = np.arange(stop - start)[:, None] * n_items + labels
        blocked = np.isin(result_keys, excluded_keys) | (labels < 0)
        chosen = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        keep = ~np.take_along_axis(blocked, chosen, axis=1)
        width = chosen.shape[1]
        out_scores[start:stop, :width] = np.where(keep, np.take_along_axis(scores, chosen, axis=1), -np.inf)
        out_items[start:stop, :width] = np.where(keep, np.take_along_axis(labels, chosen, axis=1), -1)
    # faiss pads missing results with label -1 and a huge negative score; normalise to -inf.
    out_scores[out_items < 0] = -np.inf
    return torch.from_numpy(out_scores), torch.from_numpy(out_items)
