"""The k-means maths of RQ-KMeans: initialisation, Lloyd iterations, assignment, empty clusters.

Lloyd's algorithm written as chunked matrix products in float32 with torch, so it runs on the
CPU's BLAS or on a GPU and never holds more than `chunk` x K distances. Every function works on
"augmented" rows (the vector plus a constant-1 column, genret.tokenizers.inputs.augment): one
matrix product with `augmented_codebook_t(centroids)` then gives ||c||^2 - 2 x.c for every pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genret.tokenizers.execution import map_chunks
from genret.tokenizers.inputs import augment, augmented_dim

__all__ = [
    "INIT_METHODS",
    "ROW_BLOCK",
    "assign",
    "augmented_codebook_t",
    "initial_centroids",
    "kmeans_parallel_init",
    "lloyd",
    "nearest",
    "random_init_indices",
    "reseed_empty",
    "row_sq_norms",
    "sum_squares",
]

INIT_METHODS = ("random", "kmeans||")
# Columns per block in the two-stage argmin (block minima, then the winning block): a plain
# row-wise argmin over 8192 floats is slower on CPU than the matrix product that feeds it.
ARGMIN_BLOCK = 64
# Rows per step of the cheap whole-sample passes (norms, residual updates): few, large ops.
ROW_BLOCK = 1 << 16


def random_init_indices(n_points: int, n_codes: int, seed: int, level: int) -> np.ndarray:
    """Indices of the sample points that seed level `level` under init="random".

    Distinct points drawn uniformly (numpy Generator seeded by (seed, level)); public so that a
    benchmark can hand the very same starting points to another k-means.

    Returns:
        (n_codes,) int64 indices into the fit sample.
    """
    rng = np.random.default_rng([seed, level])
    return rng.choice(n_points, size=n_codes, replace=False).astype(np.int64)


def initial_centroids(
    residual: torch.Tensor, dim: int, K: int, init: str, seed: int, level: int, chunk: int
) -> torch.Tensor:
    """(K, d) starting centroids of level `level` for init "random" or "kmeans||" (see RQKMeans)."""
    if init == "random":
        idx = torch.from_numpy(random_init_indices(residual.shape[0], K, seed, level)).to(residual.device)
        return residual[idx, :dim].clone()
    return kmeans_parallel_init(residual, dim, K, seed * 1000 + level, chunk)


def lloyd(
    residual: torch.Tensor, dim: int, centroids: torch.Tensor, n_iter: int, chunk: int, progress: Any
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`n_iter` Lloyd iterations then a final assignment (as scikit-learn's lloyd does).

    Args:
        residual: (n, d + 1) augmented rows (column `dim` is 1).
        centroids: (K, d) initial centroids.

    Returns:
        centroids (K, d), labels (n,) of the final assignment, number of empty clusters re-seeded.
    """
    K = centroids.shape[0]
    n = residual.shape[0]
    sq_norms = row_sq_norms(residual[:, :dim], chunk)  # (n,), for the error of each point
    labels = torch.empty(n, dtype=torch.long, device=residual.device)
    partial = torch.empty(n, dtype=torch.float32, device=residual.device)
    n_reseeded = 0
    for _ in range(n_iter):
        assign(residual, augmented_codebook_t(centroids), chunk, labels, partial)
        # One pass over all rows after the parallel assignment: the sums do not depend on how
        # chunks were shared out, so a fit is bit-for-bit repeatable.
        sums = torch.zeros(K, dim, dtype=torch.float32, device=residual.device).index_add_(0, labels, residual[:, :dim])
        counts = torch.bincount(labels, minlength=K)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp(min=1)[:, None].to(sums.dtype), centroids)
        if not bool(filled.all()):
            errors = (partial + sq_norms).clamp_(min=0)  # squared distance of each point to its old centroid
            n_reseeded += reseed_empty(centroids, ~filled, residual[:, :dim], errors)
        progress.update(1)
    assign(residual, augmented_codebook_t(centroids), chunk, labels, partial)
    return centroids, labels, n_reseeded


def reseed_empty(centroids: torch.Tensor, empty: torch.Tensor, points: torch.Tensor, errors: torch.Tensor) -> int:
    """Move empty centroids (in place) onto distinct points with the largest current error.

    Points with zero error already sit on a centroid and are skipped, as are repeats of a point
    chosen already, so duplicated data cannot park two centroids on one spot. When the data has
    fewer distinct points than codes, the leftover clusters stay empty (unavoidable).

    Returns:
        how many centroids were moved.
    """
    empty_ids = torch.nonzero(empty).flatten()
    need = int(empty_ids.numel())
    n = points.shape[0]
    window = min(n, max(4 * need, 64))
    while True:
        top_err, top_idx = torch.topk(errors, window)
        top_idx = top_idx[top_err > 0]
        # Keep the first (largest-error) occurrence of every distinct point.
        _, inverse = torch.unique(points[top_idx], dim=0, return_inverse=True)
        n_distinct = int(inverse.max()) + 1 if inverse.numel() else 0
        first = torch.full((n_distinct,), window, dtype=torch.long, device=points.device)
        first.scatter_reduce_(0, inverse, torch.arange(inverse.numel(), device=points.device), reduce="amin")
        chosen = top_idx[torch.sort(first).values]
        if chosen.numel() >= need or window == n:
            break
        window = min(n, window * 4)
    chosen = chosen[:need]
    centroids[empty_ids[: chosen.numel()]] = points[chosen]
    return int(chosen.numel())


def kmeans_parallel_init(residual: torch.Tensor, dim: int, K: int, seed: int, chunk: int) -> torch.Tensor:
    """k-means|| (Bahmani et al. 2012): rounds of D^2 oversampling, then D^2 seeding on the candidates.

    Three rounds draw ~K points each (the paper suggests l = 2K, r = 5). The candidates are then
    weighted by how many points they are nearest to and reduced to K by weighted D^2 sampling in
    32 batches (greedy k-means++ would be K sequential steps over all candidates: minutes at
    K = 8192 on a CPU); each batch's distance update is one chunked matrix product.

    Returns:
        (K, d) initial centroids.
    """
    n = residual.shape[0]
    device = residual.device
    gen = torch.Generator(device=device).manual_seed(seed)
    points = residual[:, :dim]
    first = torch.randint(n, (1,), generator=gen, device=device)
    candidates = [points[first]]
    sq_norms = row_sq_norms(points, chunk)
    errors = ((points - points[first]) ** 2).sum(1)
    labels = torch.empty(n, dtype=torch.long, device=device)
    partial = torch.empty(n, dtype=torch.float32, device=device)
    for _ in range(3):
        total = errors.sum()
        if float(total) <= 0:
            break
        prob = (K * errors / total).clamp_(max=1.0)
        picked = torch.nonzero(torch.rand(n, generator=gen, device=device) < prob).flatten()
        if picked.numel() == 0:
            continue
        candidates.append(points[picked])
        assign(residual, augmented_codebook_t(points[picked]), chunk, labels, partial)
        errors = torch.minimum(errors, (partial + sq_norms).clamp_(min=0))
    cand = torch.cat(candidates)
    m = cand.shape[0]
    if m <= K:
        # Too few candidates (tiny or degenerate data): all of them, topped up with random points.
        extra = torch.randperm(n, generator=gen, device=device)[: K - m]
        return torch.cat([cand, points[extra]])

    assign(residual, augmented_codebook_t(cand), chunk, labels, partial)
    weights = torch.bincount(labels, minlength=m).to(torch.float64)
    cand_aug = augment(cand, dim, device)
    cand_sq = row_sq_norms(cand, chunk)
    cand_labels = torch.empty(m, dtype=torch.long, device=device)
    cand_partial = torch.empty(m, dtype=torch.float32, device=device)
    dist = torch.ones(m, dtype=torch.float64, device=device)  # first batch: by weight alone
    taken = torch.zeros(m, dtype=torch.bool, device=device)
    n_batches = min(K, 32)
    for b in range(n_batches):
        size = K * (b + 1) // n_batches - K * b // n_batches
        score = torch.where(taken, 0.0, weights * dist)
        if int((score > 0).sum()) < size:  # mass used up (duplicates): any untaken candidates
            score = (~taken).to(torch.float64)
        pick = torch.multinomial(score, size, replacement=False, generator=gen)
        taken[pick] = True
        assign(cand_aug, augmented_codebook_t(cand[pick]), chunk, cand_labels, cand_partial)
        new_dist = (cand_partial + cand_sq).clamp_(min=0).double()
        dist = new_dist if b == 0 else torch.minimum(dist, new_dist)
    return cand[taken].clone()


def augmented_codebook_t(centroids: torch.Tensor) -> torch.Tensor:
    """(K, d) centroids -> (d + 1, K_pad): rows -2c, then a row ||c||^2.

    x_aug @ this = ||c||^2 - 2 x.c (the squared distance minus ||x||^2, which the argmin ignores),
    from one matrix product. K is padded to a multiple of the argmin block with +inf distances.
    """
    K, dim = centroids.shape
    d_aug = augmented_dim(dim)
    k_pad = K if K < 4 * ARGMIN_BLOCK else -(-K // ARGMIN_BLOCK) * ARGMIN_BLOCK
    out = torch.zeros(d_aug, k_pad, dtype=torch.float32, device=centroids.device)
    out[:dim, :K] = -2.0 * centroids.t()
    out[dim, :K] = (centroids * centroids).sum(1)
    out[dim, K:] = float("inf")
    return out


def nearest(
    x_aug: torch.Tensor, books_aug_t: torch.Tensor, scratch: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row.

    Args:
        x_aug: (m, d_aug) augmented rows.
        books_aug_t: (d_aug, K_pad) from `augmented_codebook_t`.
        scratch: optional (>= m, K_pad) float32 buffer for the distances.

    Returns:
        labels (m,) int64 (first index among ties), partial (m,) float32 = ||c||^2 - 2 x.c.
    """
    m = x_aug.shape[0]
    k_pad = books_aug_t.shape[1]
    dist = torch.mm(x_aug, books_aug_t, out=scratch[:m]) if scratch is not None else torch.mm(x_aug, books_aug_t)
    if k_pad % ARGMIN_BLOCK or k_pad < 4 * ARGMIN_BLOCK:
        partial, labels = dist.min(1)
        return labels, partial
    # Two-stage argmin: minima of 64-wide blocks (vectorised), then argmin inside the winning block.
    blocks = dist.view(m, k_pad // ARGMIN_BLOCK, ARGMIN_BLOCK)
    partial, block = blocks.amin(2).min(1)
    inside = blocks[torch.arange(m, device=dist.device), block].argmin(1)
    return block * ARGMIN_BLOCK + inside, partial


def assign(
    residual: torch.Tensor, books_aug_t: torch.Tensor, chunk: int, labels: torch.Tensor, partial: torch.Tensor
) -> None:
    """Nearest centroid of every row, chunk by chunk, into `labels` (n,) and `partial` (n,)."""

    def assign_chunk(start: int, stop: int, scratch: torch.Tensor) -> None:
        lab, part = nearest(residual[start:stop], books_aug_t, scratch)
        labels[start:stop] = lab
        partial[start:stop] = part

    map_chunks(assign_chunk, residual.shape[0], chunk, books_aug_t.shape[1], residual.device)


def row_sq_norms(points: torch.Tensor, chunk: int) -> torch.Tensor:
    """(n,) float32 squared norms of the rows of `points` (n, d), in large row blocks."""
    out = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    step = max(chunk, ROW_BLOCK)
    for start in range(0, points.shape[0], step):
        block = points[start : start + step]
        out[start : start + step] = (block * block).sum(1)
    return out


def sum_squares(points: torch.Tensor, chunk: int) -> float:
    # float64 accumulation: the sum over millions of rows would lose digits in float32.
    return float(row_sq_norms(points, chunk).double().sum())
