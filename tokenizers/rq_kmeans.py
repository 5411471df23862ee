"""Residual k-means (RQ-KMeans): level l clusters what levels < l left unexplained.

The estimator: parameters, fit, encode / decode, save / load. The k-means maths is in
`kmeans`, the chunked and threaded execution in `execution`, input checks in `inputs`, the
versioned file format in `artifacts`. Fitting reads a sample; encoding streams any number of
rows in chunks.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import sklearn.exceptions
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from genret.tokenizers.artifacts import ArtifactError, RQKMEANS_ARTIFACT_VERSION, load_artifact, save_artifact
from genret.tokenizers.execution import auto_chunk_rows, chunk_parallelism, map_chunks, progress_bar, resolve_device
from genret.tokenizers.inputs import (
    NonFiniteInput,
    as_codes,
    augment,
    augmented_rows,
    check_2d,
    raise_non_finite,
    suggest_codebook_size,
)
from genret.tokenizers.kmeans import (
    INIT_METHODS,
    ROW_BLOCK,
    augmented_codebook_t,
    initial_centroids,
    lloyd,
    nearest,
    sum_squares,
)

__all__ = ["RQKMeans", "NotFittedError", "check_fitted"]


class NotFittedError(RuntimeError, sklearn.exceptions.NotFittedError):
    """A method that needs a fitted tokenizer was called before `fit` (or `load`).

    Also a scikit-learn NotFittedError, so code written for scikit-learn estimators catches it.
    """


def check_fitted(tokenizer: "RQKMeans", what: str) -> None:
    """Raise NotFittedError, naming the method `what`, unless `tokenizer` is fitted."""
    if getattr(tokenizer, "codebooks_", None) is None:
        raise NotFittedError(f"this RQKMeans is not fitted yet: call fit(X) or RQKMeans.load(path) before {what}()")


class RQKMeans(TransformerMixin, BaseEstimator):
    """Residual k-means tokenizer: `n_levels` codebooks of `codebook_size` centroids each.

    A scikit-learn estimator: `__init__` only stores parameters, `fit` validates them and returns
    self, fitted state ends in `_`; get_params / set_params / sklearn.base.clone work, and
    `transform` (= `encode`) / `fit_transform` give the codes.

    Args:
        n_levels: number of residual levels L (>= 1); an item's SID has L codes.
        codebook_size: K, centroids per level (>= 1, at most the number of fit points).
        n_iter: Lloyd iterations per level (each = assign + update), followed by one final
            assignment that gives the residual; 0 keeps the initial centroids.
        random_state: integer >= 0 seeding the fit sample, the initial centroids and the
            k-means|| draws (scikit-learn's name; None is not accepted: fits are repeatable).
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
        random_state: int = 0,
        device: str | torch.device | None = None,
        sample_size: int | None = None,
        chunk_size: int | None = None,
        init: str = "random",
        verbose: bool = False,
    ) -> None:
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.n_iter = n_iter
        self.random_state = random_state
        self.device = device
        self.sample_size = sample_size
        self.chunk_size = chunk_size
        self.init = init
        self.verbose = verbose

    # ------------------------------------------------------------------ scikit-learn protocol
    def __sklearn_is_fitted__(self) -> bool:
        return getattr(self, "codebooks_", None) is not None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []  # codes are int64 whatever the input dtype
        return tags

    def _validate_params(self) -> None:
        def positive_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")

        positive_int("n_levels", self.n_levels)
        positive_int("codebook_size", self.codebook_size)
        positive_int("n_iter", self.n_iter, minimum=0)
        positive_int("random_state", self.random_state, minimum=0)
        positive_int("sample_size", self.sample_size, allow_none=True)
        positive_int("chunk_size", self.chunk_size, allow_none=True)
        if self.init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}; got {self.init!r}")

    def _chunk_rows(self, device: torch.device) -> int:
        return auto_chunk_rows(self.chunk_size, int(self.codebook_size), device)

    # ------------------------------------------------------------------ fit
    def fit(self, X: np.ndarray | torch.Tensor, y: None = None) -> "RQKMeans":
        """Fit the L codebooks on (a sample of) X.

        Args:
            X: (N, d) real-valued numpy array (a np.memmap works), torch tensor, or nested list.
            y: ignored (scikit-learn's signature).

        Returns:
            self.

        Raises:
            ValueError: bad parameters, X not 2-D, non-finite values in the fit rows, or
                codebook_size larger than the number of fit points.
        """
        self._validate_params()
        X, n_rows, dim = check_2d(X, "X")
        device = resolve_device(self.device)
        K = int(self.codebook_size)
        seed = int(self.random_state)

        n_fit = n_rows if self.sample_size is None else min(int(self.sample_size), n_rows)
        if K > n_fit:
            raise ValueError(
                f"codebook_size={K} is larger than the {n_fit} points to fit on"
                f"{'' if n_fit == n_rows else f' (sample_size={self.sample_size})'}: every code needs a point. "
                f"Use a smaller codebook, e.g. codebook_size={suggest_codebook_size(n_fit)}"
                f"{'' if n_fit == n_rows else ', or a larger sample_size'}."
            )
        if n_fit < n_rows:
            rows = np.sort(np.random.default_rng([seed, 1 << 20]).choice(n_rows, size=n_fit, replace=False))
        else:
            rows = None
        chunk = self._chunk_rows(device)
        # (n_fit, d + 1): residuals with a constant-1 column, so one matrix product also adds ||c||^2.
        residual = augmented_rows(X, rows, dim, device, chunk, what="the fit rows")

        codebooks = torch.empty(int(self.n_levels), K, dim, dtype=torch.float32)
        inertia: list[float] = []
        reseeded: list[int] = []
        progress = progress_bar(total=int(self.n_levels) * (int(self.n_iter) + 1), enabled=self.verbose,
                                desc="RQ-KMeans")
        with chunk_parallelism(device):
            try:
                for level in range(int(self.n_levels)):
                    progress.set_description(f"RQ-KMeans level {level + 1}/{self.n_levels}")
                    centroids = initial_centroids(residual, dim, K, self.init, seed, level, chunk)
                    centroids, labels, n_reseeded = lloyd(residual, dim, centroids, int(self.n_iter), chunk, progress)
                    for start in range(0, residual.shape[0], ROW_BLOCK):  # blocks: no (n, d) temporary
                        residual[start : start + ROW_BLOCK, :dim] -= centroids[labels[start : start + ROW_BLOCK]]
                    level_inertia = float(sum_squares(residual[:, :dim], chunk))
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
        return self

    # ------------------------------------------------------------------ encode / decode
    def encode(
        self,
        X: np.ndarray | torch.Tensor,
        return_residual_norm: bool = False,
        progress: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Assign every row its L codes, greedily level by level, streaming `chunk_size` rows at a time.

        Args:
            X: (N, d) real-valued array, tensor or nested list, d as in fit.
            return_residual_norm: also return each row's distance to its reconstruction.
            progress: show a tqdm bar over chunks.

        Returns:
            codes: (N, L) int64 numpy, each in [0, K).
            residual_norm (only if asked): (N,) float32 numpy, ||x - decode(codes)||.

        Raises:
            NotFittedError: before fit / load.
            ValueError: X not 2-D, d differing from fit, or non-finite values (with the count).
        """
        check_fitted(self, "encode")
        X, n_rows, dim = check_2d(X, "X")
        if dim != self.n_features_in_:
            raise ValueError(f"X has {dim} features per row but the tokenizer was fitted on {self.n_features_in_}")
        device = resolve_device(self.device)
        books, books_aug_t = self._codebooks_on(device)
        chunk = self._chunk_rows(device)
        codes = np.empty((n_rows, int(self.n_levels)), dtype=np.int64)
        norms = np.empty(n_rows, dtype=np.float32) if return_residual_norm else None
        k_pad = books_aug_t[0].shape[1]
        bar = progress_bar(total=n_rows, enabled=progress, desc="encode")

        def encode_chunk(start: int, stop: int, scratch: torch.Tensor) -> None:
            x = augment(X[start:stop], dim, device)
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteInput
            out = torch.empty(stop - start, int(self.n_levels), dtype=torch.long, device=device)
            for level in range(int(self.n_levels)):
                labels, _ = nearest(x, books_aug_t[level], scratch)
                out[:, level] = labels
                x[:, :dim] -= books[level][labels]
            codes[start:stop] = out.cpu().numpy()
            if norms is not None:
                norms[start:stop] = torch.linalg.vector_norm(x[:, :dim], dim=1).cpu().numpy()
            bar.update(stop - start)

        try:
            with chunk_parallelism(device):
                map_chunks(encode_chunk, n_rows, chunk, k_pad, device)
        except NonFiniteInput:
            raise_non_finite(X, dim, "X")
        finally:
            bar.close()
        return (codes, norms) if return_residual_norm else codes

    def transform(self, X: np.ndarray | torch.Tensor) -> np.ndarray:
        """scikit-learn's name for `encode(X)`: (N, L) int64 codes."""
        return self.encode(X)

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
        check_fitted(self, "decode")
        codes_t = as_codes(codes, int(self.n_levels), int(self.codebook_size), "codes")
        out = torch.zeros(codes_t.shape[0], self.n_features_in_, dtype=torch.float32)
        for level in range(int(self.n_levels)):
            out += self.codebooks_[level][codes_t[:, level]]
        return out.numpy()

    def _codebooks_on(self, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: centroids (K, d) and the transposed augmented codebook (d + 1, K_pad) on `device`.

        Built per call, not cached on the estimator: scikit-learn estimators keep transform free of
        side effects, and this costs milliseconds against an encode of any real batch.
        """
        books = [self.codebooks_[level].to(device) for level in range(int(self.n_levels))]
        return books, [augmented_codebook_t(c) for c in books]

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Parameters and codebooks as plain types and one tensor: what `save` writes, and what a
        DualGR checkpoint carries so that a served model can give new items their SIDs."""
        check_fitted(self, "save")
        params = self.get_params()
        params["device"] = None if self.device is None else str(self.device)  # plain types only in the file
        return {
            "params": params,
            "codebooks": self.codebooks_.detach().cpu().contiguous(),
            "inertia": [float(v) for v in self.inertia_],
            "n_features_in": int(self.n_features_in_),
            "n_fit_samples": int(self.n_fit_samples_),
            "n_empty_reseeded": [int(v) for v in self.n_empty_reseeded_],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "RQKMeans":
        """The tokenizer `state_dict` describes.

        Raises:
            ValueError: a missing entry, or codebooks that are not a 3-D float32 tensor matching
                the parameters.
        """
        try:
            tok = cls(**dict(state["params"]))
            codebooks = state["codebooks"]
            if not isinstance(codebooks, torch.Tensor) or codebooks.dtype != torch.float32 or codebooks.dim() != 3:
                raise ValueError("codebooks must be a 3-D float32 tensor")
            if tuple(codebooks.shape[:2]) != (tok.n_levels, tok.codebook_size):
                raise ValueError(f"codebooks shape {tuple(codebooks.shape)} does not match the parameters")
            tok.codebooks_ = codebooks
            tok.inertia_ = [float(v) for v in state["inertia"]]
            tok.n_features_in_ = int(state["n_features_in"])
            tok.n_fit_samples_ = int(state["n_fit_samples"])
            tok.n_empty_reseeded_ = [int(v) for v in state["n_empty_reseeded"]]
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an RQKMeans state: {err}") from err
        return tok

    def save(self, path: str | os.PathLike) -> None:
        """Write parameters and codebooks to `path` (torch format, atomic, versioned)."""
        save_artifact(path, "RQKMeans", self.state_dict(), version=RQKMEANS_ARTIFACT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "RQKMeans":
        """Read a tokenizer written by `save`; `device` overrides the saved one (e.g. "cpu").

        Raises:
            ArtifactNotFoundError: no file at `path`.
            ArtifactError: corrupt file, not a tokenizer, or another artifact version.
        """
        payload = load_artifact(path, "RQKMeans", version=RQKMEANS_ARTIFACT_VERSION)
        try:
            tok = cls.from_state_dict(payload)
        except ValueError as err:
            raise ArtifactError(f"{path} is not a valid RQKMeans file: {err}") from err
        if device is not None:
            tok.device = device
        return tok
