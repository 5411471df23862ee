"""Codebook health: how evenly each level's codes are used, what they explain, how SIDs collide."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from genret.tokenizers.inputs import as_codes, augment, check_2d
from genret.tokenizers.rq_kmeans import RQKMeans, check_fitted

__all__ = ["codebook_report", "format_report"]


def codebook_report(
    tok: RQKMeans, X: np.ndarray | torch.Tensor, codes: np.ndarray | torch.Tensor | None = None
) -> dict[str, Any]:
    """Per-level and overall statistics of a fitted tokenizer on X.

    Args:
        tok: a fitted RQKMeans.
        X: (N, d) the items (the reconstruction errors are measured on them).
        codes: (N, L) their codes; computed with tok.encode(X) when None.

    Returns:
        dict with
          "n_items", "n_levels", "codebook_size", "dim",
          "mean_sq_norm": mean ||x||^2, "total_variance": mean ||x - mean(x)||^2,
          "levels": list of L dicts: level (1-based), codes_used, utilisation (codes_used / K),
            entropy_bits (of the code histogram), entropy_normalised (entropy / log2 K; 1 for K=1),
            largest_cluster (items), recon_error (mean over items of ||x - sum of centroids of
            levels <= l||^2), recon_error_relative (recon_error / total_variance),
          "overall": n_sids (distinct full SIDs), unique_path_fraction (items whose SID no other
            item has), largest_collision (most items on one SID), mean_items_per_sid.
    """
    check_fitted(tok, "codebook_report")
    X, n_rows, dim = check_2d(X, "X")
    if dim != tok.n_features_in_:
        raise ValueError(f"X has {dim} features per row but the tokenizer was fitted on {tok.n_features_in_}")
    L, K = int(tok.n_levels), int(tok.codebook_size)
    codes_np = tok.encode(X) if codes is None else as_codes(codes, L, K, "codes").numpy()
    if codes_np.shape[0] != n_rows:
        raise ValueError(f"codes has {codes_np.shape[0]} rows but X has {n_rows}")

    sq_err, sum_sq, total = _reconstruction_sums(tok, X, codes_np, dim)
    mean = total / n_rows
    mean_sq_norm = sum_sq / n_rows
    total_variance = max(mean_sq_norm - float(mean @ mean), 0.0)

    levels = []
    for level in range(L):
        counts = np.bincount(codes_np[:, level], minlength=K)
        p = counts[counts > 0] / n_rows
        entropy = float(-(p * np.log2(p)).sum())
        recon = float(sq_err[level] / n_rows)
        levels.append(
            {
                "level": level + 1,
                "codes_used": int((counts > 0).sum()),
                "utilisation": float((counts > 0).mean()),
                "entropy_bits": entropy,
                "entropy_normalised": entropy / math.log2(K) if K > 1 else 1.0,
                "largest_cluster": int(counts.max()),
                "recon_error": recon,
                "recon_error_relative": recon / total_variance if total_variance > 0 else float("nan"),
            }
        )

    _, sid_sizes = np.unique(codes_np, axis=0, return_counts=True)
    overall = {
        "n_sids": int(sid_sizes.size),
        "unique_path_fraction": float((sid_sizes == 1).sum() / n_rows),
        "largest_collision": int(sid_sizes.max()),
        "mean_items_per_sid": float(n_rows / sid_sizes.size),
    }
    return {
        "n_items": n_rows,
        "n_levels": L,
        "codebook_size": K,
        "dim": dim,
        "mean_sq_norm": float(mean_sq_norm),
        "total_variance": float(total_variance),
        "levels": levels,
        "overall": overall,
    }


def _reconstruction_sums(tok: RQKMeans, X: Any, codes: np.ndarray, dim: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Streamed over X: per-level sums of squared residuals, sum of ||x||^2, and sum of x (float64)."""
    L = int(tok.n_levels)
    sq_err = np.zeros(L)
    sum_sq = 0.0
    total = np.zeros(dim)
    step = 65536
    for start in range(0, X.shape[0], step):
        stop = min(start + step, X.shape[0])
        x = augment(X[start:stop], dim, torch.device("cpu"))[:, :dim].double()
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"X has NaN or inf in rows {start}..{stop - 1}; drop or impute them")
        sum_sq += float((x * x).sum())
        total += x.sum(0).numpy()
        chunk_codes = torch.from_numpy(codes[start:stop])
        for level in range(L):
            x -= tok.codebooks_[level][chunk_codes[:, level]].double()
            sq_err[level] += float((x * x).sum())
    return sq_err, sum_sq, total


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of `codebook_report`'s output, for the CLI."""
    K = report["codebook_size"]
    lines = [
        f"RQ-KMeans codebooks: {report['n_items']:,} items, dim {report['dim']}, "
        f"{report['n_levels']} levels x {K:,} codes",
        "",
        f"{'level':>5}  {'used':>13}  {'util':>6}  {'entropy':>8}  {'H/log2K':>7}  {'largest':>8}  "
        f"{'recon MSE':>10}  {'rel':>6}",
    ]
    for lv in report["levels"]:
        used = f"{lv['codes_used']:,}/{K:,}"
        lines.append(
            f"{lv['level']:>5}  {used:>13}  {lv['utilisation']:>6.1%}  {lv['entropy_bits']:>8.3f}  "
            f"{lv['entropy_normalised']:>7.3f}  {lv['largest_cluster']:>8,}  {lv['recon_error']:>10.4g}  "
            f"{lv['recon_error_relative']:>6.3f}"
        )
    ov = report["overall"]
    lines += [
        "",
        f"distinct SIDs        {ov['n_sids']:,}",
        f"unique-path fraction {ov['unique_path_fraction']:.4f}  (items whose SID no other item shares)",
        f"largest collision    {ov['largest_collision']:,} items on one SID",
        f"mean items per SID   {ov['mean_items_per_sid']:.3f}",
        f"(recon MSE = mean ||x - x_hat||^2 after the level; rel = / total variance {report['total_variance']:.4g})",
    ]
    return "\n".join(lines)
