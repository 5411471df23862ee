"""DualGR's content term: the beams' probabilities plus what the items are (an addition beyond the paper).

A generative retriever reaches an item only along SID paths its training made likely, and three
codes keep little of an item's exact title words and attribute ids; on Amazon data the next item
often shares exactly those with the history. The content term ranks the whole catalogue by

    score(i) = cos_content(history, i) + weight x P(i | history)

where cos_content is the content-only baseline's score (the mean over the history of the TF-IDF
cosine between a history item's feature values and i's; vocabularies and IDF fitted on the trained
catalogue) and P the probability DualGR's beam search gives i (0 outside its list). Items the beams
never reach, a new item among them, still rank by their content, and a beam item's probability
re-orders the content matches. History items are never listed: their content score is their
similarity with themselves.

`ContentTerm` holds the fitted vocabularies / IDF and one TF-IDF row per catalogue item; a DualGR
checkpoint trained with `model.config.content_weight > 0` carries it, and `Retriever.add_items`
adds the rows of items described by their features.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from genret.data.item_features import ItemFeatureEncoder, RawFeatures, content_tfidf
from genret.tokenizers.content_vectors import csr_from_state, csr_state, known_tfidf_rows

__all__ = ["NO_CONTENT", "ContentTerm", "PrefixTerm", "history_content", "history_content_scores"]

# What a content recipe does on a data set without item content (e.g. an Amazon category with
# sequential.txt alone): it runs, ranks by the beams alone, and says so.
NO_CONTENT = ("the data set has no item content feature (titles, attributes, genres, data.item_feature_table): "
              "ranked by the beams alone (content weight 0)")


def history_content(rows: Any, offsets: np.ndarray, items: np.ndarray) -> Any:
    """(m, V) scipy CSR: the mean content row of each of m CSR histories (`offsets` (m + 1,) into the
    dense `items`; they may start past 0). Its dot product with an item's row is the content-only
    baseline's score, which RetrievalFormer's content term adds (DualGR's: `ContentTerm.scores`)."""
    from scipy import sparse

    offsets = np.asarray(offsets, np.int64)
    lengths = np.diff(offsets)
    user = np.repeat(np.arange(len(lengths)), lengths)
    pool = sparse.csr_matrix((np.ones(len(user)), (user, np.asarray(items)[offsets[0]:offsets[-1]])),
                             shape=(len(lengths), rows.shape[0]))
    return (sparse.diags(1.0 / np.maximum(lengths, 1)) @ pool @ rows).tocsr()


def history_content_scores(rows: Any, offsets: np.ndarray, items: np.ndarray, rows_t: Any = None) -> np.ndarray:
    """(m, n_items) float32: each history's mean content row . every item's row (`rows_t`: rows.T,
    when a caller keeps it between batches)."""
    users = history_content(rows, offsets, items)
    return np.asarray((users @ (rows.T if rows_t is None else rows_t)).todense(), dtype=np.float32)


def _warn_empty(rows: Any, what: str) -> None:
    empty = np.flatnonzero(np.diff(rows.indptr) == 0)
    if len(empty):
        warnings.warn(f"content term: {len(empty)} of {what} (rows {empty[:5].tolist()}) have no feature value "
                      f"the vocabularies keep; they get no content score (the beams alone can list them)",
                      stacklevel=3)


class ContentTerm:
    """Item TF-IDF rows over content features, and the blended ranking.

    Args:
        encoder, idf: the fitted feature vocabularies and per-feature IDF (genret.data.item_features).
        rows: (n_items, V) L2-normalised TF-IDF rows (scipy CSR), one per catalogue item in dense order.
    """

    def __init__(self, encoder: ItemFeatureEncoder, idf: list[np.ndarray], rows: Any):
        from scipy import sparse

        self.encoder = encoder
        self.idf = [np.asarray(i, np.float64) for i in idf]
        self.rows = sparse.csr_matrix(rows, dtype=np.float32)
        if len(self.idf) != len(encoder.names) or self.rows.shape[1] != sum(encoder.cardinalities):
            raise ValueError("content term: the IDF vectors / item rows do not match its vocabularies")
        self._rows_t = None  # the transposed rows (CSC) every scoring multiplies by, built once

    @classmethod
    def fit_log(cls, log_, names: list[str] | None = None, n_items: int | None = None) -> "ContentTerm":
        """Rows for the first `n_items` items of a data set (default: all), vocabularies and IDF
        fitted on them (under LOOC the warm catalogue; cold items join later by their features).

        An item with no feature value the vocabularies keep gets an empty row (no content score;
        the beams alone can list it), with a warning: a category may describe some items only.

        Raises:
            ValueError: as content_tfidf (no content feature; unknown feature names).
        """
        n = log_.n_items if n_items is None else int(n_items)
        x, _, encoder, idf = content_tfidf(log_, names, np.arange(n), return_fit=True, every_item=False)
        _warn_empty(x[:n], f"{log_.name}'s items")
        return cls(encoder, idf, x[:n])

    @property
    def names(self) -> list[str]:
        return list(self.encoder.names)

    @property
    def n_items(self) -> int:
        return self.rows.shape[0]

    def rows_for(self, raw: RawFeatures) -> Any:
        """New items' raw features -> their (m, V) TF-IDF rows.

        An item none of whose values the fitted vocabularies know gets an empty row, with a warning.

        Raises:
            ValueError: a feature missing from `raw`.
        """
        rows = known_tfidf_rows(self.encoder, self.idf, raw, every_item=False)
        _warn_empty(rows, "the new items")
        return rows

    def extended(self, rows: Any) -> "ContentTerm":
        """A new term with the rows of items added to the catalogue appended (dense ids n_items,
        n_items + 1, ...); this one is left as it is (another retriever may hold it)."""
        from scipy import sparse

        if rows.shape[1] != self.rows.shape[1]:
            raise ValueError(f"content rows must have {self.rows.shape[1]} columns, got {rows.shape[1]}")
        return ContentTerm(self.encoder, self.idf, sparse.vstack([self.rows, sparse.csr_matrix(rows, dtype=np.float32)]))

    def scores(self, offsets: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(U, n_items) float32: each user's mean cosine between their history items and every item.

        offsets (U + 1,) and items: the histories as dense item indices (CSR, oldest first). The
        baseline's score (`history_content_scores`) pooled in float32, the rows' dtype here: pooling
        in float64 as the baseline does reorders near-ties (29 of Beauty's 22,363 validation users'
        top 120), which would move the numbers this term was measured with."""
        from scipy import sparse

        offsets = np.asarray(offsets, np.int64)
        items = np.asarray(items, np.int64)
        lengths = np.diff(offsets)
        users = np.repeat(np.arange(len(lengths)), lengths)
        mean = sparse.csr_matrix((1.0 / np.maximum(lengths, 1)[users], (users, items)),
                                 shape=(len(lengths), self.n_items), dtype=np.float32)
        if self._rows_t is None:
            self._rows_t = self.rows.T.tocsc()
        return np.asarray(((mean @ self.rows) @ self._rows_t).todense(), dtype=np.float32)

    def rank(self, offsets: np.ndarray, history: np.ndarray, items: torch.Tensor, log_probs: torch.Tensor,
             weight: float, k: int, prefix: "PrefixTerm | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The blended top k per user, history items left out.

        items, log_probs (U, M): the generative model's list (-1 / -inf padded). `prefix`: also add
        its weight x the beams' probability of each item's SID prefix (`PrefixTerm`). Returns (U, k)
        items (-1 where fewer unseen items exist) and their blended scores, on the list's device.
        """
        scores = torch.from_numpy(self.scores(offsets, history))
        listed = items.cpu() >= 0
        users = torch.arange(items.shape[0]).unsqueeze(1).expand_as(items)[listed]
        listed_items = items.cpu()[listed]
        probs = log_probs.cpu()[listed].float().exp()
        scores[users, listed_items] += weight * probs
        if prefix is not None and prefix.weight > 0:
            scores += prefix.weight * prefix.mass(users, listed_items, probs, items.shape[0])
        lengths = np.diff(np.asarray(offsets, np.int64))
        owner = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths))
        scores[owner, torch.as_tensor(np.asarray(history, np.int64))] = float("-inf")
        top = scores.topk(min(k, self.n_items), dim=1)
        out = torch.where(torch.isfinite(top.values), top.indices, torch.full_like(top.indices, -1))
        return out.to(items.device), top.values.to(items.device)

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors (loads with torch.load(weights_only=True) and into JSON + safetensors)."""
        return {"encoder": self.encoder.state_dict(),
                "idf": [torch.as_tensor(i, dtype=torch.float64) for i in self.idf], **csr_state(self.rows)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ContentTerm":
        return cls(ItemFeatureEncoder.from_state_dict(state["encoder"]),
                   [torch.as_tensor(i).numpy() for i in state["idf"]], csr_from_state(state))


class PrefixTerm:
    """The beams' probability of each item's SID prefix, for the content term's ranking (beyond the paper).

    The content term lifts an item by the probability of its own SID, which the beams give almost
    only to items training made likely; an item added after training (a cold item) on a SID of its
    own, or behind a warm item on a shared one, gets little of it. Its first codes, though, place it
    in a region of the catalogue, and the beams say which regions they expect. This term adds, to
    every item, `weight` x the probability the beams' list puts on its depth-`depth` prefix (the sum
    over the distinct listed SIDs that start with it), so the content score decides inside the
    regions the generator expects. The list holds the beams' top items only: the mass is the part
    of the prefix's probability those items carry.

    Args:
        item_leaf: (n_items,) each item's leaf (full SID) id in the SID index (`SIDIndex.item_leaf`).
        item_prefix: (n_items,) each item's depth-`depth` node id (`SIDIndex.node_of(codes[:, :depth])`).
        weight: >= 0; 0 adds nothing.
    """

    def __init__(self, item_leaf: torch.Tensor, item_prefix: torch.Tensor, weight: float):
        self.item_leaf = torch.as_tensor(item_leaf, dtype=torch.long).cpu()
        self.item_prefix = torch.as_tensor(item_prefix, dtype=torch.long).cpu()
        if self.item_leaf.shape != self.item_prefix.shape or self.item_leaf.dim() != 1:
            raise ValueError(f"item_leaf {tuple(self.item_leaf.shape)} and item_prefix "
                             f"{tuple(self.item_prefix.shape)} must be two (n_items,) vectors")
        if bool((self.item_prefix < 0).any()):
            raise ValueError("every item needs a prefix node id (>= 0)")
        self.weight = float(weight)
        self.n_leaves = int(self.item_leaf.max()) + 1 if len(self.item_leaf) else 0
        self.n_prefixes = int(self.item_prefix.max()) + 1 if len(self.item_prefix) else 0

    @classmethod
    def from_index(cls, index, depth: int, weight: float) -> "PrefixTerm":
        """The term over a SIDIndex's items at prefix depth `depth` (1 .. n_levels - 1)."""
        if not 1 <= depth < index.n_levels:
            raise ValueError(f"content_prefix_depth must lie in [1, {index.n_levels - 1}] (a proper SID prefix), "
                             f"got {depth}")
        return cls(index.item_leaf, index.node_of(index.codes[:, :depth]), weight)

    def mass(self, users: torch.Tensor, items: torch.Tensor, probs: torch.Tensor, n_users: int) -> torch.Tensor:
        """(n_users, n_items) float32: per user, the listed probability of each item's prefix.

        users, items, probs (M,): the listed (user, item, probability) triples. Items on one SID
        carry that SID's probability each; it is counted once."""
        leaf = self.item_leaf[items]
        key = users * max(self.n_leaves, 1) + leaf
        unique, inverse = torch.unique(key, return_inverse=True)
        prob = torch.zeros(len(unique)).scatter_reduce(0, inverse, probs.float(), "amax", include_self=False)
        node = torch.zeros(len(unique), dtype=torch.long).scatter(0, inverse, self.item_prefix[items])
        mass = torch.zeros(n_users, max(self.n_prefixes, 1))
        mass.index_put_((unique // max(self.n_leaves, 1), node), prob, accumulate=True)
        return mass[:, self.item_prefix]
