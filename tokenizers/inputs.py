"""Input checks and conversions for the tokenizer: rows of item vectors, and codes.

Rows stay where they are (numpy, a read-only memmap, a torch tensor on any device) and are
converted chunk by chunk to float32 "augmented" rows: the vector plus a constant-1 column, so that
one matrix product with an augmented codebook gives ||c||^2 - 2 x.c (see kmeans.augmented_codebook_t).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "NonFiniteInput",
    "as_codes",
    "augment",
    "augmented_dim",
    "augmented_rows",
    "check_2d",
    "raise_non_finite",
    "suggest_codebook_size",
]


def check_2d(X: Any, name: str) -> tuple[Any, int, int]:
    """Check that X is a non-empty 2-D array of real numbers.

    numpy arrays (memmaps included) and torch tensors pass through unchanged, so nothing is copied;
    other array-likes (nested lists, object arrays of numbers) are converted to a numpy array.

    Returns:
        X (converted if needed), its number of rows, its number of columns.

    Raises:
        ValueError: sparse, not 2-D, empty, or not real numbers.
        TypeError: an object array or list holding something that is not a number.
    """
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise ValueError(f"{name} is a sparse matrix; RQKMeans needs dense rows: pass {name}.toarray()")
    if not isinstance(X, (np.ndarray, torch.Tensor)):
        try:
            X = np.asarray(X)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name} must be a numpy array, torch tensor or nested list of shape (n_items, dim); "
                f"got {type(X).__name__} ({err})"
            ) from err
    if isinstance(X, np.ndarray) and X.dtype.kind == "O":
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name} must hold real numbers; its object values do not convert: {err}") from err
    if X.ndim != 2:
        hint = ". Reshape your data: one row per item, X.reshape(1, -1) for a single item" if X.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D of shape (n_items, dim); got {X.ndim}-D of shape {tuple(X.shape)}{hint}")
    n, d = int(X.shape[0]), int(X.shape[1])
    # The wording of these two and of complex data follows scikit-learn's, which its checks look for.
    if n == 0:
        raise ValueError(f"{name} is empty: 0 sample(s) (shape={tuple(X.shape)}) while a minimum of 1 is required.")
    if d == 0:
        raise ValueError(f"{name} is empty: 0 feature(s) (shape={tuple(X.shape)}) while a minimum of 1 is required.")
    is_complex = X.dtype.is_complex if isinstance(X, torch.Tensor) else X.dtype.kind == "c"
    if is_complex:
        raise ValueError(f"{name} must hold real numbers; got dtype {X.dtype}: Complex data not supported")
    dtype_ok = X.dtype != torch.bool if isinstance(X, torch.Tensor) else X.dtype.kind in "fiu"
    if not dtype_ok:
        raise ValueError(f"{name} must hold real numbers; got dtype {X.dtype}")
    return X, n, d


def augmented_dim(dim: int) -> int:
    return dim + 1  # the constant column; rounding up for alignment measured no faster (MKL sgemm)


def augment(rows: Any, dim: int, device: torch.device) -> torch.Tensor:
    """(m, dim) rows (numpy or torch) as a float32 (m, dim + 1) tensor on `device`, last column 1."""
    m = rows.shape[0]
    d_aug = augmented_dim(dim)
    if isinstance(rows, torch.Tensor):
        out = torch.zeros(m, d_aug, dtype=torch.float32, device=device)
        out[:, :dim] = rows.detach().to(device=device, dtype=torch.float32)
    else:
        host = np.zeros((m, d_aug), dtype=np.float32)
        host[:, :dim] = rows  # numpy converts the dtype; works on read-only memmaps
        out = torch.from_numpy(host).to(device)
    out[:, dim] = 1.0
    return out


def augmented_rows(
    X: Any, rows: np.ndarray | None, dim: int, device: torch.device, chunk: int, what: str
) -> torch.Tensor:
    """The fit rows of X (all, or the sorted sample `rows`) as one augmented tensor on `device`.

    Raises:
        ValueError: NaN or inf in any of those rows (with the count and the first rows).
    """
    n = X.shape[0] if rows is None else len(rows)
    out = torch.empty(n, augmented_dim(dim), dtype=torch.float32, device=device)
    step = max(chunk, 65536)
    for start in range(0, n, step):
        stop = min(start + step, n)
        if rows is None:
            block = X[start:stop]
        else:
            sel = rows[start:stop]
            block = X[torch.from_numpy(sel).to(X.device)] if isinstance(X, torch.Tensor) else X[sel]
        out[start:stop] = augment(block, dim, device)
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


class NonFiniteInput(Exception):
    """Raised inside a chunk worker; the caller counts the bad rows with `raise_non_finite`."""


def raise_non_finite(X: Any, dim: int, name: str) -> None:
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


def as_codes(codes: Any, n_levels: int, codebook_size: int, name: str) -> torch.Tensor:
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


def suggest_codebook_size(n_points: int) -> int:
    """A power of two leaving ~16 points per code, so clusters mean something."""
    return max(1, 1 << max(0, int(math.log2(max(1, n_points // 16)))))
