"""Retrieval with a trained RetrievalFormer: exact top-K over the item tower's vectors, or through a
faiss ANN index (HNSW / IVF-PQ / flat) built from them; new items join the catalogue from their
features alone (no retraining)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from genret.data.item_features import ItemFeatureEncoder, RawFeatures
from genret.decoding import requests
from genret.decoding.retriever import RetrievalResult
from genret.models.retrievalformer import RetrievalFormer


class RetrievalFormerRetriever:
    """Top-k retrieval with a RetrievalFormer.

    With the content term (model.config.content_weight > 0), search="ann" takes CONTENT_POOL x the
    items asked for from the index by the item tower and as many best content matches (exact, sparse),
    and ranks their union by the whole score.

    Example:
        >>> r = RetrievalFormerRetriever.from_checkpoint("runs/bench_retrievalformer/model.ckpt")
        >>> r.retrieve([[r.item_ids[0], r.item_ids[5]]], k=20).items[0]
        >>> r.build_index("hnsw"); r.retrieve(histories, k=20, search="ann")
        >>> r.add_items([99999], {"genres": [["Comedy"]], "year": [["2001"]], "title_words": [["new", "film"]],
        ...                        "item_id": [[]]})

    Args:
        model: the network (its feature buffers are the catalogue).
        item_ids: raw id of each dense item.
        encoder: the fitted ItemFeatureEncoder (raw features -> ids) of the checkpoint.
        checkpoint: the checkpoint path (an ANN index is saved beside it).
        user_feature_names: the user tower's profile fields, in its order (what `retrieve(user_features=
            {name: ids})` takes); default "user_feature_0", ...
    """

    CONTENT_POOL = 4  # candidates per item asked for, from each part of the score (search="ann", content term)

    def __init__(self, model: RetrievalFormer, item_ids: Sequence[Any], encoder: ItemFeatureEncoder,
                 checkpoint: str | Path | None = None, user_feature_names: Sequence[str] | None = None):
        self.model = model.eval()
        self.user_feature_names = requests.user_feature_names(user_feature_names,
                                                              len(model.config.user_feature_cardinalities))
        self.item_ids = np.asarray(item_ids)
        self.encoder = encoder
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self._item_index = {raw: i for i, raw in enumerate(self.item_ids.tolist())}
        self.model_version = "in-memory"  # a content hash when loaded from a file
        self._vectors: torch.Tensor | None = None
        self._content = None  # content_rows() when content_weight > 0, cached
        self.ann = None
        self.search = "exact"  # what retrieve(search=None) does: "ann" once loaded with an index

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None,
                        index: str | None = None) -> "RetrievalFormerRetriever":
        """Load a checkpoint; `index` ("hnsw", "ivfpq", "flat") also loads the ANN index saved beside it
        and makes it the default search (`retrieve(search=None)`; how `genret serve --index` serves)."""
        from genret.training.retrievalformer_module import load_retrievalformer

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, entry = load_retrievalformer(path, device)
        cat = entry["catalogue"]
        r = cls(model, cat["item_ids"], ItemFeatureEncoder.from_state_dict(cat["encoder"]), checkpoint=path,
                user_feature_names=cat.get("user_feature_names"))
        from genret.decoding.export import artifact_version

        r.model_version = artifact_version(path)
        if index is not None:
            r.load_index(index)
            r.search = "ann"
        return r

    @property
    def side_features(self) -> list[str]:
        return []

    @property
    def device(self) -> torch.device:
        return self.model.position_embedding.weight.device

    def item_vectors(self) -> torch.Tensor:
        """(n_items, d) item tower outputs, computed once and cached."""
        if self._vectors is None:
            with torch.no_grad():
                self._vectors = self.model.item_vectors().float()
        return self._vectors

    def content_rows(self):
        """The model's content rows (its content term's item side), computed once and cached."""
        if self._content is None:
            self._content = self.model.content_rows()
        return self._content

    # ------------------------------------------------------------------------------ catalogue updates
    def add_items(self, raw_ids: Sequence[Any], features: RawFeatures) -> None:
        """Add items described by raw features (name -> one list of values per new item).

        Their vectors come from the item tower; values outside the fitted vocabularies count as
        unknown. A loaded ANN index gets them appended (no rebuild).

        Raises:
            ValueError for ids already in the catalogue, missing / unknown feature names, or an
            item with no known feature value at all (it would have no vector).
        """
        raw_ids = list(raw_ids)
        dup = [r for r in raw_ids if r in self._item_index]
        if dup:
            raise ValueError(f"items {dup[:5]} are already in the catalogue")
        names = self.encoder.names
        unknown = sorted(set(features) - set(names))
        missing = [n for n in names if n not in features and n != "item_id"]
        if unknown or missing:
            raise ValueError(f"features must be exactly the model's {names} (item_id optional); unknown {unknown}, "
                             f"missing {missing}")
        features = dict(features)
        features.setdefault("item_id", [[] for _ in raw_ids])
        for name in names:
            if len(features[name]) != len(raw_ids):
                raise ValueError(f"feature {name!r} has {len(features[name])} rows for {len(raw_ids)} new items")
        tables = self.encoder.transform({n: [list(map(str, v)) for v in features[n]] for n in names})
        no_feature = np.flatnonzero(~np.any([(t > 0).any(1) for t in tables], axis=0))
        if len(no_feature):
            raise ValueError(f"items {[raw_ids[i] for i in no_feature[:5]]} have no known feature value; the "
                             f"item tower cannot place them (give features from the model's vocabularies)")
        current = self.model.feature_tables_of()
        merged = []
        for old, new in zip(current, tables):
            new = torch.as_tensor(new, device=old.device)[:, :old.shape[1]]
            merged.append(torch.cat([old, torch.nn.functional.pad(new, (0, old.shape[1] - new.shape[1]))]))
        self.model.set_item_features(merged)
        start = len(self.item_ids)
        self.item_ids = np.concatenate([self.item_ids, np.asarray(raw_ids, dtype=self.item_ids.dtype)])
        self._item_index.update({raw: start + i for i, raw in enumerate(raw_ids)})
        with torch.no_grad():
            new_vectors = self.model.item_vectors(torch.arange(start, len(self.item_ids), device=self.device)).float()
        if self._vectors is not None:
            self._vectors = torch.cat([self._vectors, new_vectors])
        self._content = None  # new rows; IDF stays as fitted
        if self.ann is not None:
            self.ann.add(new_vectors.cpu().numpy())

    # ------------------------------------------------------------------------------ ANN index
    def build_index(self, kind: str = "hnsw", save: bool = True, tune_histories: Sequence[Sequence[Any]] | None = None,
                    target_recall: float = 0.95, tune_k: int = 100, **params) -> Path | None:
        """Build a faiss index of `kind` over the item vectors, use it for search="ann", and (with
        `save` and a checkpoint) write it beside the checkpoint. Returns the written path.

        With `tune_histories` (raw-id histories, e.g. a sample of validation users) the index's
        search breadth is set to the smallest that finds `target_recall` of the exact top
        `tune_k` for those users' vectors (ANNIndex.tune; the measured recall is kept in the
        index's parameters, `self.ann.params["tuned"]`)."""
        from genret.decoding.ann import ANNIndex, index_path

        vectors = self.item_vectors().cpu().numpy()
        self.ann = ANNIndex.build(vectors, kind, **params)
        if tune_histories is not None:
            offsets, dense, _ = self._csr_histories(requests.check_histories(tune_histories), "drop")
            users = self.user_vectors(offsets, dense).cpu().numpy()
            self.ann.tune(vectors, users, k=tune_k, target_recall=target_recall)
        if save and self.checkpoint is not None:
            return self.ann.save(index_path(self.checkpoint, kind), source=str(self.checkpoint))
        return None

    def load_index(self, kind: str = "hnsw") -> None:
        from genret.decoding.ann import ANNIndex, index_path

        if self.checkpoint is None:
            raise ValueError("this retriever has no checkpoint path to find an index beside; use build_index")
        ann = ANNIndex.load(index_path(self.checkpoint, kind))
        if ann.n_items != len(self.item_ids):
            raise RuntimeError(f"the {kind} index holds {ann.n_items} items but the catalogue has "
                               f"{len(self.item_ids)}; rebuild it with build_index({kind!r})")
        self.ann = ann

    # ------------------------------------------------------------------------------ retrieval
    def _csr_histories(self, histories, unknown: str) -> tuple[np.ndarray, np.ndarray, list]:
        """Checked raw-id histories -> (offsets (U + 1,), dense item ids, the raw ids dropped)."""
        rows, _, dropped = requests.encode_histories(histories, self._item_index, unknown)
        offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
        return offsets, np.asarray([i for row in rows for i in row], np.int64), dropped

    def user_vectors(self, offsets: np.ndarray, dense: np.ndarray, user_features: np.ndarray | None = None,
                     batch_size: int = 256) -> torch.Tensor:
        """(U, d) user vectors of CSR dense histories (the last max_len items of each)."""
        max_len = self.model.config.max_len
        out = []
        with torch.no_grad():
            for start in range(0, len(offsets) - 1, batch_size):
                stop = min(start + batch_size, len(offsets) - 1)
                ends = offsets[start + 1:stop + 1]
                lengths = np.minimum(ends - offsets[start:stop], max_len)
                T = max(int(lengths.max(initial=0)), 1)
                window = np.full((stop - start, T), -1, np.int64)
                for u, (end, n) in enumerate(zip(ends, lengths)):
                    window[u, T - n:] = dense[end - n:end]
                feats = None if user_features is None else torch.as_tensor(user_features[start:stop], device=self.device)
                out.append(self.model.user_vectors(torch.from_numpy(window).to(self.device), feats)[:, 0].float())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.d_model)

    def _ann_with_content(self, users: torch.Tensor, offsets: np.ndarray, dense: np.ndarray,
                          fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Top `fetch` by the whole score (item tower + content term) among candidates from each part:
        the index's CONTENT_POOL x fetch nearest by the item tower, and as many best content matches
        (a sparse product: only items sharing a feature value with the history score above 0). Each
        candidate is then scored exactly. Returns (scores, items), -1 / -inf padded, as faiss does."""
        beta = self.model.config.content_weight
        pool = min(self.CONTENT_POOL * fetch, len(self.item_ids))
        _, by_tower = self.ann.search(users.cpu().numpy(), pool)
        rows = self.content_rows()
        matches = (self.model.history_content(offsets, dense, rows) @ rows.T).tocsr()
        matches.sort_indices()
        vectors = self.item_vectors()
        out_items = np.full((len(users), fetch), -1, np.int64)
        out_scores = np.full((len(users), fetch), -np.inf, np.float32)
        for u in range(len(users)):
            cols = matches.indices[matches.indptr[u]:matches.indptr[u + 1]]
            vals = matches.data[matches.indptr[u]:matches.indptr[u + 1]]
            best = cols[np.argsort(-vals, kind="stable")[:pool]]
            candidates = np.union1d(by_tower[u][by_tower[u] >= 0], best)
            content = np.zeros(len(candidates))  # the candidates' content scores (0 = no shared value)
            if len(cols):
                where = np.minimum(np.searchsorted(cols, candidates), len(cols) - 1)
                hit = cols[where] == candidates
                content[hit] = vals[where[hit]]
            with torch.no_grad():
                tower = (vectors[torch.as_tensor(candidates, device=vectors.device)] @ users[u]).cpu().numpy()
            total = tower + beta * content
            order = np.argsort(-total, kind="stable")[:fetch]
            out_items[u, :len(order)], out_scores[u, :len(order)] = candidates[order], total[order]
        return out_scores, out_items

    def retrieve(self, histories: Sequence[Sequence[Any]], k: int = 100, unknown: str = "error",
                 batch_size: int = 256, side: dict | None = None, search: str | None = None,
                 user_features: Any = None, exclude_seen: bool = True) -> RetrievalResult:
        """Top-k raw item ids per history (best first) with their scores x_u . y_i (plus the content term
        when the model's content_weight > 0).

        Args:
            histories: raw item ids per user, oldest first (at least one known item each).
            k: items per user. unknown: "error" or "drop" for ids not in the catalogue.
            batch_size: users encoded together. side: not used (no per-action side features).
            search: "exact" (every item scored) or "ann" (the index of build_index / load_index);
                None: the retriever's `search` ("ann" when from_checkpoint loaded an index, else "exact").
            user_features: the users' profile fields (`self.user_feature_names`) as categorical ids, 0 =
                unknown: {name: one id per history} (a field left out is unknown), an (U, F) int64
                array in that order, or None (all unknown).
            exclude_seen: drop each history's own items from its list (the default, as evaluation does).
        """
        search = self.search if search is None else search
        if search not in ("exact", "ann"):
            raise requests.RequestError(f"search must be 'exact' or 'ann', got {search!r}")
        if search == "ann" and self.ann is None:
            raise requests.RequestError("no ANN index: call build_index(kind) or load_index(kind) first, or search='exact'")
        beta = self.model.config.content_weight
        if side:
            raise requests.RequestError(f"RetrievalFormer takes no per-action side features; got {sorted(side)}")
        histories = requests.check_histories(histories)
        user_features = None if user_features is None else requests.user_feature_matrix(
            user_features, self.user_feature_names, self.model.config.user_feature_cardinalities, len(histories))
        k = requests.check_k(k, len(self.item_ids))
        batch_size = requests.check_batch_size(batch_size)
        exclude_seen = requests.check_flag(exclude_seen, "exclude_seen")
        offsets, dense, dropped = self._csr_histories(histories, requests.check_unknown(unknown))
        if dropped:
            import warnings

            warnings.warn(f"dropped {len(dropped)} unknown item id(s), e.g. {dropped[:3]}", stacklevel=2)
        # Without a newest item the user vector would come from a position training never reads.
        requests.check_not_empty(np.diff(offsets), unknown, "RetrievalFormer's user vector is read at the newest item")
        users = self.user_vectors(offsets, dense, user_features, batch_size)
        seen = [set(dense[offsets[u]:offsets[u + 1]].tolist()) for u in range(len(offsets) - 1)] if exclude_seen else None
        fetch = k + (max((len(s) for s in seen), default=0) if seen else 0)
        fetch = min(fetch, len(self.item_ids))
        if search == "ann":
            from genret.decoding.ann import exclude_and_pad

            if beta > 0:
                scores, items = self._ann_with_content(users, offsets, dense, fetch)
            else:
                scores, items = self.ann.search(users.cpu().numpy(), fetch)
            items, scores = exclude_and_pad(items, scores, k, seen)
        else:
            from genret.decoding.ann import exclude_and_pad

            scores = users @ self.item_vectors().T
            if beta > 0:  # the content term over each whole history (CPU, sparse)
                scores = scores + beta * self.model.content_scores(offsets, dense, self.content_rows()).to(scores.device)
            s, i = scores.topk(fetch, dim=1)
            items, scores = exclude_and_pad(i.cpu().numpy(), s.cpu().numpy(), k, seen)
        out_items, out_scores = [], []
        for row_items, row_scores in zip(items, scores):
            keep = row_items >= 0
            out_items.append(self.item_ids[row_items[keep]].tolist())
            out_scores.append(row_scores[keep].astype(float).tolist())
        return RetrievalResult(out_items, out_scores)
