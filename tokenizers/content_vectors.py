"""Item content -> item vectors, fitted once and kept, so an item that arrives later is placed in
the same space: the feature vocabularies, the IDF of their values and the SVD basis.

`ContentVectorizer.fit_log(log, names, dim, fit_items)` learns them on the chosen items (under LOOC
the warm ones); `transform(raw)` gives any item, fitted on or not, its unit-length vector. A DualGR checkpoint
carries the fitted state (`state_dict`), which is what lets a served model give a new item its SID
from the item's features alone (genret.tokenizers.new_items).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genret.data.item_features import ItemFeatureEncoder, RawFeatures, content_tfidf, tfidf_rows

__all__ = ["ContentVectorizer", "csr_from_state", "csr_state", "known_tfidf_rows"]


class ContentVectorizer:
    """TF-IDF rows over item feature values, reduced by a truncated SVD, rows L2-normalised.

    Build one with `fit_log`; `transform` places new items; `state_dict` / `from_state_dict` persist it.
    """

    def __init__(self, encoder: ItemFeatureEncoder, idf: list[np.ndarray], components: np.ndarray):
        self.encoder = encoder
        self.idf = [np.asarray(i, np.float64) for i in idf]
        self.components = np.asarray(components, np.float64)  # (dim, vocabulary)
        if len(self.idf) != len(encoder.names) or self.components.shape[1] != sum(encoder.cardinalities):
            raise ValueError("content vectorizer: the IDF vectors / SVD basis do not match its vocabularies")

    @classmethod
    def fit_log(cls, log_, names: list[str] | None = None, dim: int = 64, fit_items: np.ndarray | None = None,
                seed: int = 0) -> tuple["ContentVectorizer", np.ndarray, list[str]]:
        """Fit on the items `fit_items` of a data set (bool mask or indices; None = all).

        Returns:
            the vectorizer, every item's (n_items, dim') float32 unit vector (dim' = dim capped by the
            vocabulary and the fitting items), and the feature names used.

        Raises:
            ValueError: as content_tfidf (no content features; items without any known value).
        """
        from sklearn.decomposition import TruncatedSVD

        x, used, encoder, idf = content_tfidf(log_, names, fit_items, return_fit=True)
        fit = np.arange(log_.n_items) if fit_items is None else np.asarray(fit_items)
        fit = np.flatnonzero(fit) if fit.dtype == bool else fit
        dim = max(2, min(dim, x.shape[1] - 1, len(fit) - 1))
        svd = TruncatedSVD(n_components=dim, random_state=seed, algorithm="randomized").fit(x[fit])
        vectorizer = cls(encoder, idf, svd.components_)
        return vectorizer, _unit(vectorizer.project(x)), used

    @property
    def names(self) -> list[str]:
        return list(self.encoder.names)

    def project(self, x: Any) -> np.ndarray:
        """TF-IDF rows -> (n, dim) float64 SVD coordinates (what TruncatedSVD.transform computes)."""
        return np.asarray(x @ self.components.T)

    def transform(self, raw: RawFeatures) -> np.ndarray:
        """Raw features (name -> one list of string values per item) -> (n, dim) float32 unit rows.

        Raises:
            ValueError: a feature missing from `raw`, or an item none of whose values the fitted
                vocabularies know (it cannot be placed by content), named by its row.
        """
        return _unit(self.project(known_tfidf_rows(self.encoder, self.idf, raw)))

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors (loads with torch.load(weights_only=True) and into JSON + safetensors)."""
        return {"encoder": self.encoder.state_dict(),
                "idf": [torch.as_tensor(i, dtype=torch.float64) for i in self.idf],
                "components": torch.as_tensor(self.components, dtype=torch.float64)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ContentVectorizer":
        return cls(ItemFeatureEncoder.from_state_dict(state["encoder"]),
                   [torch.as_tensor(i).numpy() for i in state["idf"]],
                   torch.as_tensor(state["components"]).numpy())


def known_tfidf_rows(encoder: ItemFeatureEncoder, idf: list[np.ndarray], raw: RawFeatures,
                     every_item: bool = True) -> Any:
    """Raw features of new items -> their L2-normalised TF-IDF rows (CSR) under fitted vocabularies / IDF.
    With `every_item` False an item none of whose values the vocabularies know keeps an empty row.

    Raises:
        ValueError: a feature missing from `raw`, or (with `every_item`) an item none of whose values
            the vocabularies know (it cannot be placed by content), named by its row.
    """
    x = tfidf_rows(encoder.transform(raw), encoder.cardinalities, idf).tocsr()
    unknown = np.flatnonzero(np.diff(x.indptr) == 0)
    if len(unknown) and every_item:
        raise ValueError(f"{len(unknown)} item(s) (rows {unknown[:5].tolist()}) have no value of {list(encoder.names)} "
                         f"that the fitted vocabularies know, so they cannot be placed by content; give their SIDs "
                         f"(codes) instead")
    return x


def csr_state(x: Any, prefix: str = "tfidf") -> dict[str, Any]:
    """A CSR matrix as tensors and its column count (what checkpoints and exports store)."""
    return {f"{prefix}_indptr": torch.as_tensor(x.indptr.astype(np.int64)),
            f"{prefix}_indices": torch.as_tensor(x.indices.astype(np.int64)),
            f"{prefix}_data": torch.as_tensor(x.data.astype(np.float32)),
            f"{prefix}_columns": int(x.shape[1])}


def csr_from_state(state: dict[str, Any], prefix: str = "tfidf") -> Any:
    """The inverse of `csr_state` (float32 CSR)."""
    from scipy import sparse

    indptr = torch.as_tensor(state[f"{prefix}_indptr"]).numpy()
    return sparse.csr_matrix((torch.as_tensor(state[f"{prefix}_data"]).numpy(),
                              torch.as_tensor(state[f"{prefix}_indices"]).numpy(), indptr),
                             shape=(len(indptr) - 1, int(state[f"{prefix}_columns"])))


def _unit(v: np.ndarray) -> np.ndarray:
    """Float32 unit rows (no zero row reaches here: content_tfidf and transform refuse those items)."""
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
