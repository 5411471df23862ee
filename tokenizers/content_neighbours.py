"""Place an item that has no interactions in a vector space learnt from interactions, by its content.

SIDs made from interactions (`data.sid.embeddings: sequential` or `collaborative`) describe how items
are used, which the decoder predicts far better than SIDs made from what items are; but an item that
arrives after training has no interactions, so it has no such vector. `ContentNeighbours` gives it one:
the similarity-weighted mean of the vectors of its k most content-similar catalogue items, content
similarity being the TF-IDF cosine over the item's feature values (vocabularies and IDF fitted on the
catalogue, as the content baseline's). The new item then gets its SID from the fitted tokenizer like
any other vector, near the SIDs of the items it resembles.

It has ContentVectorizer's interface (`names`, `transform`, `state_dict`), so genret.tokenizers.new_items
carries either in a checkpoint and `Retriever.add_items(features=...)` works the same with both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genret.data.item_features import ItemFeatureEncoder, RawFeatures, content_tfidf
from genret.tokenizers.content_vectors import csr_from_state, csr_state, known_tfidf_rows

__all__ = ["ContentNeighbours"]


class ContentNeighbours:
    """Content features -> a vector in the catalogue's (interaction-learnt) space, by content neighbours.

    Args:
        encoder, idf: the fitted feature vocabularies and per-feature IDF (genret.data.item_features).
        catalogue_tfidf: (N, V) L2-normalised TF-IDF rows of the catalogue items (scipy CSR).
        catalogue_vectors: (N, d) the catalogue items' vectors in the target space.
        k: how many nearest catalogue items are averaged (weighted by their cosine).
    """

    def __init__(self, encoder: ItemFeatureEncoder, idf: list[np.ndarray], catalogue_tfidf: Any,
                 catalogue_vectors: np.ndarray, k: int):
        from scipy import sparse

        self.encoder = encoder
        self.idf = [np.asarray(i, np.float64) for i in idf]
        self.catalogue_tfidf = sparse.csr_matrix(catalogue_tfidf, dtype=np.float32)
        self.catalogue_vectors = np.asarray(catalogue_vectors, np.float32)
        if k < 1:
            raise ValueError(f"data.sid.content_neighbours must be >= 1 to place items by content, got {k}")
        self.k = int(min(k, len(self.catalogue_vectors)))
        if (len(self.idf) != len(encoder.names) or self.catalogue_tfidf.shape[1] != sum(encoder.cardinalities)
                or self.catalogue_tfidf.shape[0] != len(self.catalogue_vectors)):
            raise ValueError("content neighbours: the IDF vectors / catalogue rows do not match its vocabularies "
                             "or its catalogue vectors")

    @classmethod
    def fit_log(cls, log_, vectors: np.ndarray, k: int, names: list[str] | None = None,
                fit_items: np.ndarray | None = None) -> tuple["ContentNeighbours", np.ndarray, list[str]]:
        """Fit on the catalogue items `fit_items` of a data set (indices; None = all), whose vectors
        are `vectors` (one row per fitting item, in that order).

        Returns:
            the placer, every item's (n_items, d) float32 unit vector (a fitting item keeps its own
            vector; any other item is placed by its content neighbours among the fitting items), and
            the feature names used.

        Raises:
            ValueError: as content_tfidf (no content features; items without any known value), or
                `vectors` not one row per fitting item.
        """
        x, used, encoder, idf = content_tfidf(log_, names, fit_items, return_fit=True)
        fit = np.arange(log_.n_items) if fit_items is None else np.asarray(fit_items)
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(fit):
            raise ValueError(f"content neighbours need one vector per catalogue item: got {vectors.shape} for "
                             f"{len(fit)} items")
        placer = cls(encoder, idf, x[fit], vectors, k)
        out = np.empty((log_.n_items, vectors.shape[1]), np.float32)
        others = np.setdiff1d(np.arange(log_.n_items), fit)
        out[fit] = vectors
        if len(others):
            out[others] = placer.place(x[others])
        return placer, out, used

    @property
    def names(self) -> list[str]:
        return list(self.encoder.names)

    def place(self, x: Any, chunk: int = 1024) -> np.ndarray:
        """(m, V) L2-normalised TF-IDF rows -> (m, d) float32 unit vectors."""
        out = np.empty((x.shape[0], self.catalogue_vectors.shape[1]), np.float32)
        for start in range(0, x.shape[0], chunk):
            sims = np.asarray((x[start:start + chunk] @ self.catalogue_tfidf.T).todense(), np.float32)
            top = np.argpartition(-sims, self.k - 1, axis=1)[:, :self.k]
            weights = np.take_along_axis(sims, top, 1)
            # No shared value at all (cosine 0 with every item) would give a zero vector: fall back to
            # the plain mean of the k picked, so the row is still a point of the space.
            weights[weights.sum(1) <= 0] = 1.0
            out[start:start + chunk] = np.einsum("mk,mkd->md", weights, self.catalogue_vectors[top])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def transform(self, raw: RawFeatures) -> np.ndarray:
        """Raw features (name -> one list of string values per item) -> (n, d) float32 unit rows.

        Raises:
            ValueError: a feature missing from `raw`, or an item none of whose values the fitted
                vocabularies know (it cannot be placed by content), named by its row.
        """
        return self.place(known_tfidf_rows(self.encoder, self.idf, raw))

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors (loads with torch.load(weights_only=True) and into JSON + safetensors)."""
        return {"kind": "neighbours", "k": self.k, "encoder": self.encoder.state_dict(),
                "idf": [torch.as_tensor(i, dtype=torch.float64) for i in self.idf],
                **csr_state(self.catalogue_tfidf), "vectors": torch.as_tensor(self.catalogue_vectors)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ContentNeighbours":
        return cls(ItemFeatureEncoder.from_state_dict(state["encoder"]),
                   [torch.as_tensor(i).numpy() for i in state["idf"]], csr_from_state(state),
                   torch.as_tensor(state["vectors"]).numpy(), int(state["k"]))
