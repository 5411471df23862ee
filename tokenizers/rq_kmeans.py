"""Residual k-means (RQ-KMeans): level l clusters what levels < l left unexplained.

Lloyd's algorithm written as chunked matrix products in float32 with torch, so it runs on the
CPU's BLAS or on a GPU and never holds more than `chunk_size` x `codebook_size` distances.
Fitting reads a sample; encoding streams any number of rows in chunks.
"""

from __future__ import annotations

import math
import os
import pickle
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from genret.io import ARTIFACT_VERSION, atomic_path

__all__ = [
    "RQKMeans",
    "NotFittedError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "random_init_indices",
    "resolve_device",
]

INIT_METHODS = ("random", "kmeans||")
# Columns per block in the two-stage argmin (block minima, then the winning block): a plain
# row-wise argmin over 8192 floats is slower on CPU than the matrix product that feeds it.
_ARGMIN_BLOCK = 64
# Rows per step of the cheap whole-sample passes (norms, residual updates): few, large ops.
_ROW_BLOCK = 1 << 16
# Rows x codes of one distance chunk when chunk_size is None (floats): 8 MiB per CPU worker,
# 1 GiB on a GPU (enough rows to keep it busy).
_AUTO_CHUNK_FLOATS = {"cpu": 1 << 21, "cuda": 1 << 28}


class NotFittedError(RuntimeError):
    """A method that needs a fitted tokenizer was called before `fit` (or `load`)."""


class ArtifactError(RuntimeError):
    """A saved tokenizer or SID index is corrupt, of another kind, or of another artifact version."""


class ArtifactNotFoundError(FileNotFoundError, ArtifactError):
    """The artifact file does not exist (catchable as FileNotFoundError or as ArtifactError)."""


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


def random_init_indices(n_points: int, n_codes: int, seed: int, level: int) -> np.ndarray:
    """Indices of the sample points that seed level `level` under init="random".

    Distinct points drawn uniformly (numpy Generator seeded by (seed, level)); public so that a
    benchmark can hand the very same starting points to another k-means.

    Returns:
        (n_codes,) int64 indices into the fit sample.
    """
    rng = np.random.default_rng([seed, level])
    return rng.choice(n_points, size=n_codes, replace=False).astype(np.int64)


class RQKMeans:
    """Residual k-means tokenizer: `n_levels` codebooks of `codebook_size` centroids each.

    scikit-learn conventions: `__init__` only stores parameters, `fit` validates them and returns
    self, fitted state ends in `_`.

    Args:
        n_levels: number of residual levels L (>= 1); an item's SID has L codes.
        codebook_size: K, centroids per level (>= 1, at most the number of fit points).
        n_iter: Lloyd iterations per level (each = assign + update), followed by one final
            assignment that gives the residual; 0 keeps the initial centroids.
        seed: seeds the fit sample, the initial centroids and the k-means|| draws.
        device: "auto"/None (cuda when available, else cpu), "cpu", "cuda", "cuda:1", ...
        sample_size: fit on this many rows drawn without replacement (all rows when None or
            larger than N); encode always covers every row.
        chunk_size: rows per distance chunk; memory for distances is chunk_size x K floats.
            None picks up to 8 MiB of distances per CPU thread (at most 1024 rows), 1 GiB on CUDA.
        init: "random" (distinct sample points, like scikit-learn's init="random") or "kmeans||"
            (scalable k-means++: 3 rounds of D^2 oversampling drawing ~K points each, then
            weighted D^2 sampling of K of those candidates).
        verbose: show a tqdm progress bar (one step per Lloyd iteration) while fitting.

    Attributes (after fit):
        codebooks_: (L, K, d) float32 torch.Tensor on the CPU.
        inertia_: list of L floats: sum over the fit sample of the squared residual after each
            level's final assignment (the first level's is scikit-learn's KMeans.inertia_).
        n_features_in_: d.
        n_fit_samples_: number of rows the codebooks were fitted on.
        n_empty_reseeded_: list of L ints: empty clusters re-seeded, summed over iterations.
    """

    def __init__(
        self,
        n_levels: int = 3,
        codebook_size: int = 8192,
        n_iter: int = 20,
        seed: int = 0,
        device: str | torch.device | None = None,
        sample_size: int | None = None,
        chunk_size: int | None = None,
        init: str = "random",
        verbose: bool = False,
    ) -> None:
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.n_iter = n_iter
        self.seed = seed
        self.device = device
        self.sample_size = sample_size
        self.chunk_size = chunk_size
        self.init = init
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        return {
            "n_levels": self.n_levels,
            "codebook_size": self.codebook_size,
            "n_iter": self.n_iter,
            "seed": self.seed,
            "device": None if self.device is None else str(self.device),
            "sample_size": self.sample_size,
            "chunk_size": self.chunk_size,
            "init": self.init,
            "verbose": self.verbose,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"RQKMeans({args})"

    def _validate_params(self) -> None:
        def positive_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")

        positive_int("n_levels", self.n_levels)
        positive_int("codebook_size", self.codebook_size)
        positive_int("n_iter", self.n_iter, minimum=0)
        positive_int("seed", self.seed, minimum=0)
        positive_int("sample_size", self.sample_size, allow_none=True)
        positive_int("chunk_size", self.chunk_size, allow_none=True)
        if self.init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}; got {self.init!r}")

    def _chunk_rows(self, device: torch.device) -> int:
        if self.chunk_size is not None:
            return int(self.chunk_size)
        if device.type == "cuda":
            return max(64, _AUTO_CHUNK_FLOATS["cuda"] // int(self.codebook_size))
        # At most 1024 rows: smaller codebooks gain nothing from longer chunks, and enough
        # chunks must exist to share among the worker threads.
        return max(64, min(1024, _AUTO_CHUNK_FLOATS["cpu"] // int(self.codebook_size)))

    # ------------------------------------------------------------------ fit
    def fit(self, X: np.ndarray | torch.Tensor) -> "RQKMeans":
        """Fit the L codebooks on (a sample of) X.

        Args:
            X: (N, d) real-valued numpy array (a np.memmap works), or torch tensor.

        Returns:
            self.

        Raises:
            ValueError: bad parameters, X not 2-D, non-finite values in the fit rows, or
                codebook_size larger than the number of fit points.
        """
        self._validate_params()
        n_rows, dim = _check_2d(X, "X")
        device = resolve_device(self.device)
        K = int(self.codebook_size)

        n_fit = n_rows if self.sample_size is None else min(int(self.sample_size), n_rows)
        if K > n_fit:
            raise ValueError(
                f"codebook_size={K} is larger than the {n_fit} points to fit on"
                f"{'' if n_fit == n_rows else f' (sample_size={self.sample_size})'}: every code needs a point. "
                f"Use a smaller codebook, e.g. codebook_size={_suggest_codebook_size(n_fit)}"
                f"{'' if n_fit == n_rows else ', or a larger sample_size'}."
            )
        if n_fit < n_rows:
            rows = np.sort(np.random.default_rng([self.seed, 1 << 20]).choice(n_rows, size=n_fit, replace=False))
        else:
            rows = None
        chunk = self._chunk_rows(device)
        # (n_fit, d + 1): residuals with a constant-1 column, so one matrix product also adds ||c||^2.
        residual = _augmented_rows(X, rows, dim, device, chunk, what="the fit rows")

        codebooks = torch.empty(int(self.n_levels), K, dim, dtype=torch.float32)
        inertia: list[float] = []
        reseeded: list[int] = []
        progress = _progress(total=int(self.n_levels) * (int(self.n_iter) + 1), enabled=self.verbose, desc="RQ-KMeans")
        with _chunk_parallelism(device):
            try:
                for level in range(int(self.n_levels)):
                    progress.set_description(f"RQ-KMeans level {level + 1}/{self.n_levels}")
                    centroids = self._initial_centroids(residual, dim, level, chunk)
                    centroids, labels, n_reseeded = _lloyd(residual, dim, centroids, int(self.n_iter), chunk, progress)
                    for start in range(0, residual.shape[0], _ROW_BLOCK):  # blocks: no (n, d) temporary
                        residual[start : start + _ROW_BLOCK, :dim] -= centroids[labels[start : start + _ROW_BLOCK]]
                    level_inertia = float(_sum_squares(residual[:, :dim], chunk))
                    progress.set_postfix(inertia=f"{level_inertia:.4g}")
                    progress.update(1)
                    codebooks[level] = centroids.cpu()
                    inertia.append(level_inertia)
                    reseeded.append(n_reseeded)
            finally:
                progress.close()

        self.codebooks_ = codebooks
        self.inertia_ = inertia
        self.n_features_in_ = dim
        self.n_fit_samples_ = n_fit
        self.n_empty_reseeded_ = reseeded
        self._device_codebooks = None
        return self

    def _initial_centroids(self, residual: torch.Tensor, dim: int, level: int, chunk: int) -> torch.Tensor:
        n = residual.shape[0]
        K = int(self.codebook_size)
        if self.init == "random":
            idx = torch.from_numpy(random_init_indices(n, K, int(self.seed), level)).to(residual.device)
            return residual[idx, :dim].clone()
        return _kmeans_parallel_init(residual, dim, K, int(self.seed) * 1000 + level, chunk)

    # ------------------------------------------------------------------ encode / decode
    def encode(
        self,
        X: np.ndarray | torch.Tensor,
        return_residual_norm: bool = False,
        progress: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Assign every row its L codes, greedily level by level, streaming `chunk_size` rows at a time.

        Args:
            X: (N, d) real-valued array or tensor, d as in fit.
            return_residual_norm: also return each row's distance to its reconstruction.
            progress: show a tqdm bar over chunks.

        Returns:
            codes: (N, L) int64 numpy, each in [0, K).
            residual_norm (only if asked): (N,) float32 numpy, ||x - decode(codes)||.

        Raises:
            NotFittedError: before fit / load.
            ValueError: X not 2-D, d differing from fit, or non-finite values (with the count).
        """
        self._check_fitted("encode")
        n_rows, dim = _check_2d(X, "X")
        if dim != self.n_features_in_:
            raise ValueError(f"X has {dim} features per row but the tokenizer was fitted on {self.n_features_in_}")
        device = resolve_device(self.device)
        books, books_aug_t = self._codebooks_on(device)
        chunk = self._chunk_rows(device)
        codes = np.empty((n_rows, int(self.n_levels)), dtype=np.int64)
        norms = np.empty(n_rows, dtype=np.float32) if return_residual_norm else None
        k_pad = books_aug_t[0].shape[1]
        bar = _progress(total=n_rows, enabled=progress, desc="encode")

        def encode_chunk(start: int, stop: int, scratch: torch.Tensor) -> None:
            x = _augmented_chunk(X, start, stop, dim, device)
            if not bool(torch.isfinite(x).all()):
                raise _NonFiniteInput
            out = torch.empty(stop - start, int(self.n_levels), dtype=torch.long, device=device)
            for level in range(int(self.n_levels)):
                labels, _ = _nearest(x, books_aug_t[level], scratch)
                out[:, level] = labels
                x[:, :dim] -= books[level][labels]
            codes[start:stop] = out.cpu().numpy()
            if norms is not None:
                norms[start:stop] = torch.linalg.vector_norm(x[:, :dim], dim=1).cpu().numpy()
            bar.update(stop - start)

        try:
            with _chunk_parallelism(device):
                _map_chunks(encode_chunk, n_rows, chunk, k_pad, device)
        except _NonFiniteInput:
            _raise_non_finite(X, dim, "X")
        finally:
            bar.close()
        return (codes, norms) if return_residual_norm else codes

    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Reconstruct rows as the sum of their chosen centroids.

        Args:
            codes: (M, L) integer codes in [0, K).

        Returns:
            (M, d) float32 numpy.

        Raises:
            NotFittedError: before fit / load.
            ValueError: wrong shape, non-integer dtype, or codes out of range (with the count).
        """
        self._check_fitted("decode")
        codes_t = _as_codes(codes, int(self.n_levels), int(self.codebook_size), "codes")
        out = torch.zeros(codes_t.shape[0], self.n_features_in_, dtype=torch.float32)
        for level in range(int(self.n_levels)):
            out += self.codebooks_[level][codes_t[:, level]]
        return out.numpy()

    def _check_fitted(self, what: str) -> None:
        if getattr(self, "codebooks_", None) is None:
            raise NotFittedError(
                f"this RQKMeans is not fitted yet: call fit(X) or RQKMeans.load(path) before {what}()"
            )

    def _codebooks_on(self, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: centroids (K, d) and the transposed augmented codebook (d + 1, K_pad) on `device`.

        Cached until the device or the codebooks_ object changes.
        """
        cached = getattr(self, "_device_codebooks", None)
        if cached is not None and cached[0] == device and cached[1] is self.codebooks_:
            return cached[2], cached[3]
        books = [self.codebooks_[level].to(device) for level in range(int(self.n_levels))]
        books_aug_t = [_augmented_codebook_t(c) for c in books]
        self._device_codebooks = (device, self.codebooks_, books, books_aug_t)
        return books, books_aug_t

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write parameters and codebooks to `path` (torch format, atomic, versioned)."""
        self._check_fitted("save")
        payload = {
            "params": self.get_params(),
            "codebooks": self.codebooks_.contiguous(),
            "inertia": [float(v) for v in self.inertia_],
            "n_features_in": int(self.n_features_in_),
            "n_fit_samples": int(self.n_fit_samples_),
            "n_empty_reseeded": [int(v) for v in self.n_empty_reseeded_],
        }
        save_artifact(path, "RQKMeans", payload)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "RQKMeans":
        """Read a tokenizer written by `save`; `device` overrides the saved one (e.g. "cpu").

        Raises:
            ArtifactNotFoundError: no file at `path`.
            ArtifactError: corrupt file, not a tokenizer, or another artifact version.
        """
        payload = load_artifact(path, "RQKMeans")
        try:
            params = dict(payload["params"])
            tok = cls(**params)
            codebooks = payload["codebooks"]
            if not isinstance(codebooks, torch.Tensor) or codebooks.dtype != torch.float32 or codebooks.dim() != 3:
                raise ValueError("codebooks must be a 3-D float32 tensor")
            if tuple(codebooks.shape[:2]) != (tok.n_levels, tok.codebook_size):
                raise ValueError(f"codebooks shape {tuple(codebooks.shape)} does not match the parameters")
            tok.codebooks_ = codebooks
            tok.inertia_ = [float(v) for v in payload["inertia"]]
            tok.n_features_in_ = int(payload["n_features_in"])
            tok.n_fit_samples_ = int(payload["n_fit_samples"])
            tok.n_empty_reseeded_ = [int(v) for v in payload["n_empty_reseeded"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path} is not a valid RQKMeans file: {err}") from err
        tok._device_codebooks = None
        if device is not None:
            tok.device = device
        return tok


# ---------------------------------------------------------------------- Lloyd's algorithm
def _lloyd(
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
    sq_norms = _row_sq_norms(residual[:, :dim], chunk)  # (n,), for the error of each point
    labels = torch.empty(n, dtype=torch.long, device=residual.device)
    partial = torch.empty(n, dtype=torch.float32, device=residual.device)
    n_reseeded = 0
    for _ in range(n_iter):
        _assign(residual, _augmented_codebook_t(centroids), chunk, labels, partial)
        # One pass over all rows after the parallel assignment: the sums do not depend on how
        # chunks were shared out, so a fit is bit-for-bit repeatable.
        sums = torch.zeros(K, dim, dtype=torch.float32, device=residual.device).index_add_(0, labels, residual[:, :dim])
        counts = torch.bincount(labels, minlength=K)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp(min=1)[:, None].to(sums.dtype), centroids)
        if not bool(filled.all()):
            errors = (partial + sq_norms).clamp_(min=0)  # squared distance of each point to its old centroid
            n_reseeded += _reseed_empty(centroids, ~filled, residual[:, :dim], errors)
        progress.update(1)
    _assign(residual, _augmented_codebook_t(centroids), chunk, labels, partial)
    return centroids, labels, n_reseeded


def _reseed_empty(centroids: torch.Tensor, empty: torch.Tensor, points: torch.Tensor, errors: torch.Tensor) -> int:
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


def _kmeans_parallel_init(residual: torch.Tensor, dim: int, K: int, seed: int, chunk: int) -> torch.Tensor:
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
    sq_norms = _row_sq_norms(points, chunk)
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
        _assign(residual, _augmented_codebook_t(points[picked]), chunk, labels, partial)
        errors = torch.minimum(errors, (partial + sq_norms).clamp_(min=0))
    cand = torch.cat(candidates)
    m = cand.shape[0]
    if m <= K:
        # Too few candidates (tiny or degenerate data): all of them, topped up with random points.
        extra = torch.randperm(n, generator=gen, device=device)[: K - m]
        return torch.cat([cand, points[extra]])

    _assign(residual, _augmented_codebook_t(cand), chunk, labels, partial)
    weights = torch.bincount(labels, minlength=m).to(torch.float64)
    cand_aug = _augment(cand, dim, device)
    cand_sq = _row_sq_norms(cand, chunk)
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
        _assign(cand_aug, _augmented_codebook_t(cand[pick]), chunk, cand_labels, cand_partial)
        new_dist = (cand_partial + cand_sq).clamp_(min=0).double()
        dist = new_dist if b == 0 else torch.minimum(dist, new_dist)
    return cand[taken].clone()


# ---------------------------------------------------------------------- distance kernels
def _augmented_codebook_t(centroids: torch.Tensor) -> torch.Tensor:
    """(K, d) centroids -> (d + 1, K_pad): rows -2c, then a row ||c||^2.

    x_aug @ this = ||c||^2 - 2 x.c (the squared distance minus ||x||^2, which the argmin ignores),
    from one matrix product. K is padded to a multiple of the argmin block with +inf distances.
    """
    K, dim = centroids.shape
    d_aug = _augmented_dim(dim)
    k_pad = K if K < 4 * _ARGMIN_BLOCK else -(-K // _ARGMIN_BLOCK) * _ARGMIN_BLOCK
    out = torch.zeros(d_aug, k_pad, dtype=torch.float32, device=centroids.device)
    out[:dim, :K] = -2.0 * centroids.t()
    out[dim, :K] = (centroids * centroids).sum(1)
    out[dim, K:] = float("inf")
    return out


def _augmented_dim(dim: int) -> int:
    return dim + 1  # the constant column; rounding up for alignment measured no faster (MKL sgemm)


def _nearest(
    x_aug: torch.Tensor, books_aug_t: torch.Tensor, scratch: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row.

    Args:
        x_aug: (m, d_aug) augmented rows.
        books_aug_t: (d_aug, K_pad) from `_augmented_codebook_t`.
        scratch: optional (>= m, K_pad) float32 buffer for the distances.

    Returns:
        labels (m,) int64 (first index among ties), partial (m,) float32 = ||c||^2 - 2 x.c.
    """
    m = x_aug.shape[0]
    k_pad = books_aug_t.shape[1]
    dist = torch.mm(x_aug, books_aug_t, out=scratch[:m]) if scratch is not None else torch.mm(x_aug, books_aug_t)
    if k_pad % _ARGMIN_BLOCK or k_pad < 4 * _ARGMIN_BLOCK:
        partial, labels = dist.min(1)
        return labels, partial
    # Two-stage argmin: minima of 64-wide blocks (vectorised), then argmin inside the winning block.
    blocks = dist.view(m, k_pad // _ARGMIN_BLOCK, _ARGMIN_BLOCK)
    partial, block = blocks.amin(2).min(1)
    inside = blocks[torch.arange(m, device=dist.device), block].argmin(1)
    return block * _ARGMIN_BLOCK + inside, partial


def _assign(
    residual: torch.Tensor, books_aug_t: torch.Tensor, chunk: int, labels: torch.Tensor, partial: torch.Tensor
) -> None:
    """Nearest centroid of every row, chunk by chunk, into `labels` (n,) and `partial` (n,)."""

    def assign_chunk(start: int, stop: int, scratch: torch.Tensor) -> None:
        lab, part = _nearest(residual[start:stop], books_aug_t, scratch)
        labels[start:stop] = lab
        partial[start:stop] = part

    _map_chunks(assign_chunk, residual.shape[0], chunk, books_aug_t.shape[1], residual.device)


class _NonFiniteInput(Exception):
    """Raised inside a chunk worker; the caller counts the bad rows and raises a ValueError."""


_POOL: dict[str, Any] = {"pool": None, "size": 0, "pid": 0}
_WORKERS = threading.local()  # .count: chunk workers chosen by the enclosing _chunk_parallelism


@contextmanager
def _chunk_parallelism(device: torch.device) -> Iterator[None]:
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


def _map_chunks(
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


def _row_sq_norms(points: torch.Tensor, chunk: int) -> torch.Tensor:
    out = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    step = max(chunk, _ROW_BLOCK)
    for start in range(0, points.shape[0], step):
        block = points[start : start + step]
        out[start : start + step] = (block * block).sum(1)
    return out


def _sum_squares(points: torch.Tensor, chunk: int) -> float:
    # float64 accumulation: the sum over millions of rows would lose digits in float32.
    return float(_row_sq_norms(points, chunk).double().sum())


# ---------------------------------------------------------------------- input handling
def _check_2d(X: Any, name: str) -> tuple[int, int]:
    if not isinstance(X, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"{name} must be a numpy array or torch tensor of shape (n_items, dim); got {type(X).__name__}"
        )
    if X.ndim != 2:
        hint = " (one row per item: use X.reshape(1, -1) for a single item)" if X.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D of shape (n_items, dim); got {X.ndim}-D of shape {tuple(X.shape)}{hint}")
    n, d = int(X.shape[0]), int(X.shape[1])
    if n == 0 or d == 0:
        raise ValueError(f"{name} is empty: shape {tuple(X.shape)}")
    dtype_ok = (
        X.dtype.is_floating_point or not (X.dtype.is_complex or X.dtype == torch.bool)
        if isinstance(X, torch.Tensor)
        else X.dtype.kind in "fiu"
    )
    if not dtype_ok:
        raise ValueError(f"{name} must hold real numbers; got dtype {X.dtype}")
    return n, d


def _augmented_chunk(X: Any, start: int, stop: int, dim: int, device: torch.device) -> torch.Tensor:
    """Rows start:stop of X as float32 (stop-start, d_aug) on `device`, with the constant-1 column."""
    return _augment(X[start:stop], dim, device)


def _augment(rows: Any, dim: int, device: torch.device) -> torch.Tensor:
    m = rows.shape[0]
    d_aug = _augmented_dim(dim)
    if isinstance(rows, torch.Tensor):
        out = torch.zeros(m, d_aug, dtype=torch.float32, device=device)
        out[:, :dim] = rows.detach().to(device=device, dtype=torch.float32)
    else:
        host = np.zeros((m, d_aug), dtype=np.float32)
        host[:, :dim] = rows  # numpy converts the dtype; works on read-only memmaps
        out = torch.from_numpy(host).to(device)
    out[:, dim] = 1.0
    return out


def _augmented_rows(
    X: Any, rows: np.ndarray | None, dim: int, device: torch.device, chunk: int, what: str
) -> torch.Tensor:
    """The fit rows of X (all, or the sorted sample `rows`) as one augmented tensor on `device`."""
    n = X.shape[0] if rows is None else len(rows)
    out = torch.empty(n, _augmented_dim(dim), dtype=torch.float32, device=device)
    step = max(chunk, 65536)
    for start in range(0, n, step):
        stop = min(start + step, n)
        if rows is None:
            block = X[start:stop]
        else:
            sel = rows[start:stop]
            block = X[torch.from_numpy(sel).to(X.device)] if isinstance(X, torch.Tensor) else X[sel]
        out[start:stop] = _augment(block, dim, device)
    bad = ~torch.isfinite(out[:, :dim]).all(1)
    n_bad = int(bad.sum())
    if n_bad:
        first = torch.nonzero(bad).flatten()[:5].cpu().numpy()
        if rows is not None:
            first = rows[first]
        raise ValueError(
            f"X has NaN or inf in {n_bad} of {n} rows of {what} (first rows: {first.tolist()}); "
            "drop or impute them before fitting"
        )
    return out


def _raise_non_finite(X: Any, dim: int, name: str) -> None:
    """Count the rows of X holding NaN/inf (a second pass, only on the error path) and raise."""
    n = X.shape[0]
    n_bad = 0
    first: list[int] = []
    for start in range(0, n, 65536):
        block = X[start : start + 65536]
        if isinstance(block, torch.Tensor):
            bad = ~torch.isfinite(block).all(1).cpu().numpy()
        else:
            bad = ~np.isfinite(block).all(1)
        n_bad += int(bad.sum())
        if len(first) < 5:
            first += (np.nonzero(bad)[0][: 5 - len(first)] + start).tolist()
    raise ValueError(f"{name} has NaN or inf in {n_bad} of {n} rows (first rows: {first}); drop or impute them")


def _as_codes(codes: Any, n_levels: int, codebook_size: int, name: str) -> torch.Tensor:
    """Validate (M, L) integer codes in [0, K) and return them as a CPU LongTensor."""
    if isinstance(codes, np.ndarray):
        if codes.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integers; got dtype {codes.dtype}")
        codes_t = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))
    elif isinstance(codes, torch.Tensor):
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"{name} must be integers; got dtype {codes.dtype}")
        codes_t = codes.detach().to("cpu", torch.long)
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor; got {type(codes).__name__}")
    if codes_t.dim() != 2 or codes_t.shape[1] != n_levels:
        raise ValueError(f"{name} must have shape (n, {n_levels}); got {tuple(codes_t.shape)}")
    bad = (codes_t < 0) | (codes_t >= codebook_size)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(1)).flatten()
        raise ValueError(
            f"{name} has {int(bad.sum())} values outside [0, {codebook_size}) in {rows.numel()} rows "
            f"(first row {int(rows[0])}: {codes_t[rows[0]].tolist()})"
        )
    return codes_t


def _suggest_codebook_size(n_points: int) -> int:
    # A power of two leaving ~16 points per code, so clusters mean something.
    return max(1, 1 << max(0, int(math.log2(max(1, n_points // 16)))))


class _NoProgress:
    def update(self, n: int = 1) -> None: ...
    def set_description(self, text: str) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True)


# ---------------------------------------------------------------------- artifacts
def save_artifact(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> None:
    """torch.save `payload` tagged with its kind and ARTIFACT_VERSION, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"kind": kind, "artifact_version": ARTIFACT_VERSION, **payload}, tmp)


def load_artifact(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read a file written by `save_artifact` and check its kind and version.

    Raises:
        ArtifactNotFoundError: no file at `path`.
        ArtifactError: unreadable, another kind, or another version.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactNotFoundError(f"{kind} file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable {kind} file (corrupt or truncated?): {err}") from err
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ArtifactError(f"{path} holds a {found!r}, not a {kind}")
    version = payload.get("artifact_version")
    if version != ARTIFACT_VERSION:
        raise ArtifactError(
            f"{path} was written with artifact version {version}, but this genret reads version "
            f"{ARTIFACT_VERSION}; rebuild it with this version (e.g. `genret tokenize`)"
        )
    return payload
