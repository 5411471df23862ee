"""`Retriever`: the user-facing decode API, built from a genret training checkpoint."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from genret.data.side_features import SideFeatureBuckets
from genret.decoding import requests
from genret.decoding.beam_search import BRANCH_MERGES, Histories, check_short_weight, retrieve_indices, score_indices
from genret.decoding.decode_weights import decode_weights
from genret.decoding.export import artifact_version, read_artifact
from genret.models.dualgr import DualGR, DualGRConfig

if TYPE_CHECKING:
    from genret.models.content_term import ContentTerm, PrefixTerm
    from genret.tokenizers.new_items import NewItemEncoder


@dataclass
class RetrievalResult:
    """items[u]: k distinct raw item ids, best first; scores[u]: their log-probabilities (with the
    content term: content score + weight x probability)."""

    items: list[list[Any]]
    scores: list[list[float]]


class Retriever:
    """Constrained beam-search retrieval with a trained DualGR.

    Example:
        >>> r = Retriever.from_checkpoint("runs/quickstart/model.ckpt")
        >>> r.retrieve([[r.item_ids[0], r.item_ids[5]]], k=10).items[0]

    Args:
        model: a DualGR whose item codes are set.
        index: the SIDIndex every decoded SID is constrained to.
        item_ids: raw id of each dense item index.
        kernel: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else PyTorch), "torch", "triton".
        beam_width: beams per level (default: the list length each call decodes). A width below
            that length is widened to it, so k items always come back.
        branch_merge: how an item both branches decode is scored: "sum" of its two weighted
            probabilities (default; the branches' mixture) or "max" (its better branch's score).
        short_weight: the short branch's weight in the merge, P(short) (the long one gets 1 - it).
            Default: the model's own `short_weight`, how often the DBR gate routed a training target
            to the short window where the two windows differ.
        side_features: the bucket boundaries of the per-action side features the model was trained
            with (a checkpoint carries them); None when it uses none.
        user_feature_names: the names of the static user fields the model embeds, in order (the keys
            of `retrieve(user_features=...)`); default "user_feature_0", ...
        dtype: the serving dtype of the model's floating-point weights, e.g. torch.bfloat16: every
            decode op then runs in it (weights read at half the bytes, no per-call casts as under
            autocast); the beam scores stay fp32. A model of another dtype is copied, never cast
            in place. Default: the model's own.
        content_term, content_weight: rank by the content baseline's score + content_weight x the
            beams' probability (genret.models.content_term; an addition beyond the paper). The
            weight defaults to the model config's `content_weight`; > 0 needs the term's item rows,
            which a checkpoint trained with it carries. The config's `content_prefix_weight` /
            `content_prefix_depth` (`set_content_term` overrides them) add the beams' probability
            of each item's SID prefix too (genret.models.content_term.PrefixTerm).

    Attributes:
        item_ids: (n_items,) raw id of each dense item index.
        model_version: what was loaded: a content hash from `from_checkpoint`
            (`genret.decoding.export.artifact_version`), "in-memory" for a Retriever built directly.
    """

    def __init__(self, model: DualGR, index, item_ids: Sequence[Any], kernel: str = "auto",
                 beam_width: int | None = None,
                 side_features: SideFeatureBuckets | None = None, branch_merge: str = "sum",
                 short_weight: float | None = None, user_feature_names: Sequence[str] | None = None,
                 dtype: torch.dtype | None = None, new_items: NewItemEncoder | None = None,
                 content_term: ContentTerm | None = None, content_weight: float | None = None):
        if beam_width is not None and (not requests.is_int(beam_width) or beam_width < 1):
            raise ValueError(f"beam_width must be a positive integer (or None for the list length), got {beam_width!r}")
        if branch_merge not in BRANCH_MERGES:
            raise ValueError(f"branch_merge must be one of {BRANCH_MERGES}, got {branch_merge!r}")
        check_short_weight(short_weight)
        if side_features is not None and len(side_features) != model.cfg.n_side_features:
            raise ValueError(f"the model embeds {model.cfg.n_side_features} side features but "
                             f"{len(side_features)} were given ({side_features.names})")
        if side_features is None and model.cfg.n_side_features:
            raise ValueError(f"the model embeds {model.cfg.n_side_features} side features: pass their "
                             f"SideFeatureBuckets (Retriever.from_checkpoint does this)")
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype (e.g. torch.bfloat16), got {dtype}")
        # The short DBR branch's weight this retriever merges with: the model's unless overridden
        # (read before any cast, from the fp32 routing counts).
        self.short_weight = model.short_weight if short_weight is None else short_weight
        if dtype is not None and dtype != model.bos.dtype:
            model = copy.deepcopy(model).to(dtype)
        self.model = model.eval()
        decode_weights(self.model)  # the fused decode-time projections: built here, not at the first request
        self.side = side_features
        self.index = index
        self.item_ids = np.asarray(item_ids)
        self._item_index = requests.item_lookup(self.item_ids)
        self.user_feature_names = requests.user_feature_names(user_feature_names,
                                                              len(model.cfg.user_feature_cardinalities))
        self.model_version = "in-memory"
        self.new_items = new_items  # gives items added after training their SIDs (from_checkpoint sets it)
        self.dataset: str | None = None  # the catalogue's data set name, as the checkpoint records it
        self.kernel = kernel
        self.beam_width = beam_width
        self.branch_merge = branch_merge
        self.content_term: ContentTerm | None = None
        self.content_weight = 0.0
        self.content_prefix_weight = model.cfg.content_prefix_weight
        self.content_prefix_depth = model.cfg.content_prefix_depth
        self._prefix_term: PrefixTerm | None = None  # built by set_content_term, rebuilt when items are added
        self.set_content_term(model.cfg.content_weight if content_weight is None else content_weight, content_term)

    def set_content_term(self, weight: float, term: ContentTerm | None = None, prefix_weight: float | None = None,
                         prefix_depth: int | None = None) -> None:
        """Rank with the content term at `weight` (0: the beams' own order); `term` (item rows for the
        whole catalogue, e.g. `SequenceDataModule.content_term()`) replaces the rows held, if given.
        `prefix_weight` / `prefix_depth` (default: as they are; the weight 0 when `weight` is 0, which
        turns the whole term off) weigh the beams' probability of each item's SID prefix in that
        ranking (genret.models.content_term.PrefixTerm; 0 = off).

        Raises:
            ValueError: a negative weight, or a positive one without rows for every catalogue item; a
                positive prefix weight without the content term, or a depth that is not a proper prefix.
        """
        weight = float(weight)
        if not weight >= 0.0:
            raise ValueError(f"content_weight must be >= 0 (0 = the beams' own order), got {weight}")
        if prefix_weight is None:
            prefix_weight = self.content_prefix_weight if weight > 0 else 0.0
        prefix_weight = float(prefix_weight)
        prefix_depth = self.content_prefix_depth if prefix_depth is None else int(prefix_depth)
        if not prefix_weight >= 0.0:
            raise ValueError(f"content_prefix_weight must be >= 0 (0 = off), got {prefix_weight}")
        if prefix_weight > 0 and weight == 0:
            raise ValueError("content_prefix_weight > 0 acts inside the content term's ranking: give content_weight "
                             "> 0 as well")
        prefix_term = None
        if prefix_weight > 0:
            from genret.models.content_term import PrefixTerm

            prefix_term = PrefixTerm.from_index(self.index, prefix_depth, prefix_weight)  # checks the depth
        term = self.content_term if term is None else term
        if weight > 0:
            if term is None:
                raise ValueError("content_weight > 0 ranks by item content, and this model carries no content rows: "
                                 "train it with model.config.content_weight > 0, or pass content_term= "
                                 "(SequenceDataModule.content_term())")
            if term.n_items != len(self.item_ids):
                raise ValueError(f"the content term has rows for {term.n_items} items, the catalogue holds "
                                 f"{len(self.item_ids)}")
        self.content_term, self.content_weight = term, weight
        self.content_prefix_weight, self.content_prefix_depth = prefix_weight, prefix_depth
        self._prefix_term = prefix_term

    @property
    def uses_content(self) -> bool:
        """Whether retrieval adds the content term (content_weight > 0)."""
        return self.content_weight > 0

    @property
    def device(self) -> torch.device:
        return self.model.bos.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, **kwargs) -> "Retriever":
        """Load a checkpoint written by `genret train` / `genret quickstart` (tokenizer, SID index
        and raw item ids travel inside it), or a directory written by `genret export`.

        A `.ckpt` is read with `torch.load(weights_only=True)` and an export directory with
        safetensors + JSON, so neither runs code from the file.
        """
        from genret.tokenizers import SIDIndex

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        state, extra = read_artifact(path, device, family="dualgr")
        model = DualGR(DualGRConfig(**extra["config"]))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise RuntimeError(f"the weights in {path} do not fit its model config: {err}") from None
        catalogue = extra["catalogue"]
        model.set_item_codes(catalogue["codes"])
        model.to(device)
        index = SIDIndex.from_state_dict(catalogue["sid_index"]).to(device)
        side = catalogue.get("side_features")
        side = SideFeatureBuckets.from_state_dict(side) if side and side["names"] else None
        kwargs.setdefault("user_feature_names", catalogue.get("user_feature_names") or None)
        if catalogue.get("content_term") is not None:
            from genret.models.content_term import ContentTerm

            try:
                kwargs.setdefault("content_term", ContentTerm.from_state_dict(catalogue["content_term"]))
            except (KeyError, TypeError, ValueError) as err:
                raise RuntimeError(f"{path}: its content term is corrupt ({err})") from None
        if catalogue.get("new_items") is not None:  # checkpoints from before it lack it: add_items(codes=) only
            from genret.tokenizers.new_items import NewItemEncoder

            try:
                kwargs.setdefault("new_items", NewItemEncoder.from_state_dict(catalogue["new_items"]))
            except (KeyError, TypeError, ValueError) as err:
                raise RuntimeError(f"{path}: its new-item encoder is corrupt ({err})") from None
        retriever = cls(model, index, catalogue["item_ids"], side_features=side, **kwargs)
        retriever.model_version = artifact_version(path)
        retriever.dataset = catalogue.get("dataset")
        return retriever

    def export(self, out_dir: str | Path) -> Path:
        """Write this retriever, items added since it was loaded included, as an export directory
        (genret.decoding.export: safetensors + JSON, written beside `out_dir` and renamed into place
        when complete; an earlier export there is replaced). `genret serve` loads it, and a running
        server swaps to it with POST /reload; `genret add-items` is this after `add_items`.

        Raises:
            ValueError: a retriever that decodes in another dtype than float32 (export the float32
                one: the dtype is a serving choice). FileExistsError: `out_dir` holds something
                else than a genret export.
        """
        import dataclasses

        from genret.decoding.export import write_export
        from genret.training.checkpoint import CHECKPOINT_VERSION

        if self.model.bos.dtype != torch.float32:
            raise ValueError(f"this retriever decodes in {self.model.bos.dtype}; export a float32 one (load it "
                             f"without dtype=) and choose the dtype when serving")
        catalogue = {
            "item_ids": self.item_ids.tolist(),
            "codes": self.model.item_codes.cpu(),
            "sid_index": self.index.state_dict(),
            "dataset": self.dataset,
            "side_features": self.side.state_dict() if self.side is not None else None,
            "user_feature_names": self.user_feature_names,
            "new_items": self.new_items.state_dict() if self.new_items is not None else None,
            "content_term": self.content_term.state_dict() if self.content_term is not None else None,
        }
        config = dataclasses.asdict(self.model.cfg) | {"content_weight": self.content_weight,
                                                       "content_prefix_weight": self.content_prefix_weight,
                                                       "content_prefix_depth": self.content_prefix_depth}
        extra = {"version": CHECKPOINT_VERSION, "family": "dualgr", "config": config, "catalogue": catalogue}
        return write_export(self.model.state_dict(), extra, out_dir)

    @property
    def side_features(self) -> list[str]:
        """Names of the per-action side features `retrieve(side=...)` takes (empty if none)."""
        return list(self.side.names) if self.side is not None else []

    def encode_histories(self, histories: Sequence[Sequence[Any]], unknown: str = "error",
                         user_feats: Any = None,
                         side: dict[str, Sequence[Sequence[Any]]] | None = None) -> Histories:
        """Raw item-id sequences (oldest first) -> dense CSR Histories on the model's device.

        user_feats: static user features, as `retrieve(user_features=...)` takes them.
        side: per feature name, one list of raw values per history, aligned with its items (None
        or NaN = missing); bucketised with the checkpoint's boundaries. See `retrieve`.

        Raises:
            RequestError (a ValueError): a malformed argument. UnknownItemError: an unknown id with
            unknown="error".
        """
        return self._encode(requests.check_histories(histories), unknown, user_feats, side)[0]

    def _encode(self, histories: list[list[Any]], unknown: str, user_feats: Any, side
                ) -> tuple[Histories, list[np.ndarray]]:
        """Checked histories -> (Histories, per history its dense item indices). Vectorised: the ids
        are looked up all at once (requests.encode_flat), no Python loop per history item."""
        side_rows = self._side_rows(histories, side)
        items, offsets, kept, dropped = requests.encode_flat(histories, self._item_index, unknown)
        if dropped:
            warnings.warn(f"dropped {len(dropped)} unknown item id(s), e.g. {dropped[:3]}", stacklevel=3)
        feats = requests.user_feature_matrix(user_feats, self.user_feature_names,
                                             self.model.cfg.user_feature_cardinalities, len(histories))
        side_tensor = None
        if side_rows is not None:
            # Keep the side values of the items that survived `unknown="drop"`.
            all_side = np.concatenate(side_rows) if side_rows else np.zeros((0, len(self.side)), np.int64)
            side_tensor = torch.as_tensor(all_side.reshape(-1, len(self.side))[kept].astype(np.int64),
                                          device=self.device)
        hist = Histories(torch.as_tensor(offsets, device=self.device), torch.as_tensor(items, device=self.device),
                         torch.as_tensor(feats, device=self.device), side_tensor)
        return hist, np.split(items, offsets[1:-1]) if len(histories) else []

    def _side_rows(self, histories, side) -> list[np.ndarray] | None:
        """Per history, (len, S) bucket ids; None when the model has no side features or none were given."""
        return requests.side_rows(histories, self.side, side)

    def retrieve_indices(self, hist: Histories, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense-index version of `retrieve` (used by evaluation): no exclusion, except that with the
        content term history items are never listed (their content score is their similarity with
        themselves). Returns (U, k) items, scores. The beam is `beam_width`, widened to k when
        narrower; with the content term the beams' k items are blended with the whole catalogue."""
        items, scores = retrieve_indices(self.model, self.index, hist, k, beam_width=max(self.beam_width or k, k),
                                         kernel=self.kernel,
                                         branch_merge=self.branch_merge, short_weight=self.short_weight)
        if not self.uses_content:
            return items, scores
        return self.content_term.rank(hist.offsets.cpu().numpy(), hist.items.cpu().numpy(), items, scores,
                                      self.content_weight, k, prefix=self._prefix_term)

    def score_indices(self, hist: Histories, candidates: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Dense-index version of `score_items`: (U, C) dense candidates (-1 = padding) -> (U, C)
        log-probabilities (-inf at padding), on the model's device."""
        if self.uses_content:
            raise ValueError("score_items gives DualGR's own log-probability; the content term ranks the whole "
                             "catalogue instead. Load the retriever with content_weight=0 to score candidates")
        candidates = torch.as_tensor(candidates, device=self.device)
        if candidates.numel() and int(candidates.max()) >= len(self.item_ids):
            raise ValueError(f"candidate index {int(candidates.max())} is outside the catalogue of "
                             f"{len(self.item_ids):,} items")
        return score_indices(self.model, hist, candidates, kernel=self.kernel, branch_merge=self.branch_merge,
                             short_weight=self.short_weight)

    def score_items(self, histories: Sequence[Sequence[Any]], items: Sequence[Sequence[Any]],
                    batch_size: int = 64, side: dict[str, Sequence[Sequence[Any]]] | None = None, *,
                    user_features: Any = None) -> list[list[float]]:
        """DualGR's log-probability of given items per history, whether or not the beams would find
        them: each item's SID teacher-forced through the decoder, both DBR branches merged as
        `retrieve` merges them (genret.decoding.beam_search.score_indices). This is how DualGR
        scores another generator's candidates (GRank's `model.scorer`).

        Args:
            histories: as `retrieve` (raw ids, oldest first); unknown history ids raise.
            items: one list of raw item ids per history (any length, may be empty); unknown ids raise.
            batch_size, side, user_features: as `retrieve`.

        Returns:
            scores[u][j]: the log-probability of items[u][j] as user u's next item.
        """
        histories = requests.check_histories(histories)
        batch_size = requests.check_batch_size(batch_size)
        if not isinstance(items, (list, tuple)) or len(items) != len(histories):
            raise requests.RequestError(f"items must hold one list of item ids per history ({len(histories)}), got "
                                        f"{type(items).__name__} of {len(items) if hasattr(items, '__len__') else '?'}")
        wanted = requests.check_histories([list(row) for row in items])
        try:
            dense, offsets, _, _ = requests.encode_flat(wanted, self._item_index, "error")
        except requests.UnknownItemError as err:
            message = str(err).split(";")[0].replace(" in history ", " in items list ")
            raise requests.UnknownItemError(f"{message}; score only catalogue items") from None
        feats = self._request_inputs(histories, side, user_features)
        width = max((len(row) for row in wanted), default=0)
        table = np.full((len(wanted), width), -1, np.int64)
        for u, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
            table[u, :b - a] = dense[a:b]
        scores: list[list[float]] = []
        for start in range(0, len(histories), batch_size):
            stop = start + batch_size
            chunk = None if side is None else {name: values[start:stop] for name, values in side.items()}
            hist, _ = self._encode(histories[start:stop], "error", feats[start:stop], chunk)
            got = self.score_indices(hist, table[start:stop]).cpu().numpy()
            scores.extend(got[u, :len(wanted[start + u])].astype(float).tolist() for u in range(len(got)))
        return scores

    def retrieve(self, histories: Sequence[Sequence[Any]], k: int = 500, unknown: str = "error",
                 batch_size: int = 64, side: dict[str, Sequence[Sequence[Any]]] | None = None, *,
                 exclude_seen: bool = True, user_features: Any = None) -> RetrievalResult:
        """Top-k distinct raw item ids per history (best first), with their scores.

        The interface every family's retriever offers (and `genret serve` relies on).

        Args:
            histories: a list with one list of raw item ids per user, oldest first (may be empty).
            k: items per user, an integer in [1, catalogue size].
            unknown: "error" (UnknownItemError naming the id) or "drop" (skip with a warning).
            batch_size: users decoded together, a positive integer.
            side: the per-action side features the model was trained with (`self.side_features`),
                raw values, e.g. {"rating": [[5, 3], [4]]} for two histories of 2 and 1 items;
                None / NaN entries are "missing". For "time_gap" pass the time since the
                previous action (`genret.data.side_features.time_gaps(timestamps)` computes it).
                Omitted: every action is "missing" (with a warning).
            exclude_seen: leave out items already in the user's history, as evaluation does. The
                list is then decoded k + 20 long (evaluation's margin), so it equals the evaluated
                list; a user whose history fills more than the margin is decoded again, k + its
                history long, so k items still come back unless fewer than k unseen items exist.
            user_features: static user fields (`self.user_feature_names`) as categorical ids
                (0 = unknown): {name: one id per history}, or an (U, F) int array. Omitted: unknown.

        Returns:
            RetrievalResult: items[u] (<= k raw ids; fewer only when the catalogue holds fewer
            reachable unseen items) and scores[u] (their log-probabilities, descending).

        Raises:
            RequestError (a ValueError): an argument is malformed, naming it.
            UnknownItemError (a RequestError): an unknown id with unknown="error".
        """
        histories = requests.check_histories(histories)
        n_items = len(self.item_ids)
        k = requests.check_k(k, n_items)
        unknown = requests.check_unknown(unknown)
        batch_size = requests.check_batch_size(batch_size)
        exclude_seen = requests.check_flag(exclude_seen, "exclude_seen")
        if not exclude_seen and self.uses_content:
            raise requests.RequestError("exclude_seen=False: with the content term a history item would rank by its "
                                        "similarity with itself; load the retriever with content_weight=0 to list "
                                        "seen items")
        feats = self._request_inputs(histories, side, user_features)
        items_out: list[list[Any]] = []
        scores_out: list[list[float]] = []
        for start in range(0, len(histories), batch_size):
            stop = start + batch_size
            chunk = None if side is None else {name: values[start:stop] for name, values in side.items()}
            hist, dense = self._encode(histories[start:stop], unknown, feats[start:stop], chunk)
            items, scores = self._decode(hist, dense, k, exclude_seen)
            for row_items, row_scores in zip(items, scores):
                keep = row_items >= 0
                items_out.append(self.item_ids[row_items[keep]].tolist())
                scores_out.append(row_scores[keep].astype(float).tolist())
        return RetrievalResult(items_out, scores_out)

    def _request_inputs(self, histories: list[list[Any]], side, user_features) -> np.ndarray:
        """Check a request's `side` (one list of values per history for each feature) and return
        its user features as an (U, F) id matrix, for `retrieve` / `score_items` to slice by batch."""
        if side is not None and not (isinstance(side, dict) and all(
                isinstance(v, (list, tuple)) and len(v) == len(histories) for v in side.values())):
            raise requests.RequestError(f"side must map each feature name to a list with one list of values per "
                                        f"history ({len(histories)}), got {side!r:.200}")
        return requests.user_feature_matrix(user_features, self.user_feature_names,
                                            self.model.cfg.user_feature_cardinalities, len(histories))

    def _decode(self, hist: Histories, dense: Sequence[Sequence[int]], k: int, exclude_seen: bool
                ) -> tuple[np.ndarray, np.ndarray]:
        """(U, k) dense items (-1 padded) and scores, seen items removed when asked."""
        n_items = len(self.item_ids)
        items, scores = (t.cpu().numpy() for t in self.retrieve_indices(
            hist, requests.request_size(k, n_items, exclude_seen)))
        if not exclude_seen:
            return items, scores
        if self.uses_content:  # the whole catalogue was ranked, history left out: evaluation's list
            return items[:, :k], scores[:, :k]
        keep, short = requests.drop_seen(items, dense, k)
        out_items = np.where(keep >= 0, np.take_along_axis(items, keep.clip(min=0), 1), -1)
        out_scores = np.where(keep >= 0, np.take_along_axis(scores, keep.clip(min=0), 1), -np.inf)
        # Histories that filled more than the margin: decode again, long enough to hold k unseen items.
        decoded = requests.request_size(k, n_items, True)
        retry = [u for u in np.flatnonzero(short) if k + len(set(dense[u])) > decoded]
        if retry and decoded < n_items:
            size = min(k + max(len(set(dense[u])) for u in retry), n_items)
            sub = self._subset(hist, retry)
            more_items, more_scores = (t.cpu().numpy() for t in self.retrieve_indices(sub, size))
            keep2, _ = requests.drop_seen(more_items, [dense[u] for u in retry], k)
            out_items[retry] = np.where(keep2 >= 0, np.take_along_axis(more_items, keep2.clip(min=0), 1), -1)
            out_scores[retry] = np.where(keep2 >= 0, np.take_along_axis(more_scores, keep2.clip(min=0), 1), -np.inf)
        return out_items, out_scores

    def add_items(self, raw_ids: Sequence[Any], codes: np.ndarray | torch.Tensor | None = None, *,
                  vectors: np.ndarray | None = None, features: Sequence[dict] | dict | None = None) -> np.ndarray:
        """Add items to the catalogue without retraining: DualGR's own cold-start path.

        A new item needs only a SID. Give one of:
            codes: (m, L) int64 SIDs made elsewhere;
            vectors: (m, d) item vectors made the way the catalogue's were (e.g. title embeddings);
                the checkpoint's tokenizer encodes them by the rule it was trained with
                (`data.cold_sids`: shared, spread or paths; genret.tokenizers.new_items);
            features: per item a mapping feature name -> value(s), for models whose SIDs came from
                item content (`data.sid.embeddings: content`): the checkpoint's fitted vocabularies,
                IDF and SVD basis place the item, then the tokenizer encodes it. A "title" key stands
                for title words (and a trailing "(1995)" year). `self.new_items.feature_names` lists
                the features. One mapping of columns (name -> one entry per item), as
                RetrievalFormer's `add_items` takes, works too.
        With the content term (`content_weight` > 0) every new item also needs its content rows:
        give `features` (alone, or beside `codes` / `vectors`, which then set the SIDs).
        vectors / features need a checkpoint that carries the new-item encoder (written by genret
        after 2026-12-06). The SID index grows with `SIDIndex.add_items` (existing items keep their
        SIDs and order; an added item on a taken SID comes after the items already there) and the
        model's SID table gains the rows, so new items can be decoded and can appear in histories.

        Returns:
            the (m, L) SIDs the items were given.

        Raises:
            ValueError: none of codes / vectors / features, both codes and vectors, features beside
                them without a content term or none with one, duplicate or known ids, bad
                codes or vectors, unknown feature names, an item no fitted value describes, or a
                model with item-id embeddings (a new item has no trained id row; train with
                `model.use_item_id: false` for cold start).
        """
        if codes is None and vectors is None and features is None:
            raise ValueError("give the new items' codes, vectors or features")
        if codes is not None and vectors is not None:
            raise ValueError("give the new items' codes or their vectors, not both")
        sids_from_features = features is not None and codes is None and vectors is None
        if features is not None and not sids_from_features and self.content_term is None:
            raise ValueError("features beside codes / vectors describe the items for the content term, which this "
                             "retriever does not have: give features alone to place the items by content, or "
                             "codes / vectors alone")
        if features is None and self.uses_content:
            raise ValueError("this retriever ranks with the content term (content_weight > 0): describe the new "
                             "items by features= as well, so they get content rows")
        if (vectors is not None or sids_from_features) and self.new_items is None:
            raise ValueError("this model carries no new-item encoder (a checkpoint from before 2026-12-06, or a "
                             "Retriever built without new_items=): pass the items' SIDs as codes")
        if self.model.item_embedding is not None:
            raise ValueError("this DualGR embeds item ids, and a new item has no trained id row; train it with "
                             "model.use_item_id: false to add items by their SIDs alone")
        raw_ids = list(raw_ids)
        dup = [r for r in raw_ids if r in self._item_index]
        if dup:
            raise ValueError(f"items {dup[:5]} are already in the catalogue")
        if len(set(raw_ids)) != len(raw_ids):
            raise ValueError("the new items' ids repeat; give each item once")
        new_ids = self._new_ids(raw_ids)  # checked before anything changes: a refused call changes nothing
        content_rows = None
        if features is not None and self.content_term is not None:
            from genret.tokenizers.new_items import described_items

            content_rows = self.content_term.rows_for(described_items(features, self.content_term.names))
            if content_rows.shape[0] != len(raw_ids):
                raise ValueError(f"{len(raw_ids)} ids but {content_rows.shape[0]} items described by features; "
                                 f"give one per item")
        if sids_from_features:
            vectors = self.new_items.vectors(features)
        if vectors is not None:
            if len(vectors) != len(raw_ids):
                what = "items described by features" if sids_from_features else "vectors"
                raise ValueError(f"{len(raw_ids)} ids but {len(vectors)} {what}; give one per item")
            codes = self.new_items.codes(vectors, self.model.item_codes.cpu().numpy())
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.shape != (len(raw_ids), self.model.cfg.n_levels):
            raise ValueError(f"codes must have shape ({len(raw_ids)}, {self.model.cfg.n_levels}), got {tuple(codes.shape)}")
        self.index = self.index.add_items(codes)
        if self._prefix_term is not None:  # its leaf / prefix ids cover the old catalogue
            self._prefix_term = self._prefix_term.from_index(self.index, self.content_prefix_depth,
                                                             self.content_prefix_weight)
        self.model.set_item_codes(torch.cat([self.model.item_codes.cpu(), codes]))
        self.item_ids = np.concatenate([self.item_ids, new_ids])  # a longer string id widens the dtype
        self._item_index = requests.item_lookup(self.item_ids)  # rebuilt: its sorted-id cache must see them
        if self.content_term is not None:
            if content_rows is None:  # only with content_weight 0: the rows no longer cover the catalogue
                warnings.warn("items added without features: the content term's rows are dropped (this retriever "
                              "ranks without it; describe new items by features= to keep it)", stacklevel=2)
                self.content_term = None
            else:
                self.content_term = self.content_term.extended(content_rows)
        return codes.numpy()

    def _new_ids(self, raw_ids: list) -> np.ndarray:
        """New raw ids as an array that joins the catalogue's: integers for an integer catalogue,
        strings for a string one (never cast: 3.7 must not become item 3, nor "B00X" lose letters)."""
        kind = self.item_ids.dtype.kind
        if kind in "iu" and not all(requests.is_int(r) for r in raw_ids):
            bad = [r for r in raw_ids if not requests.is_int(r)]
            raise ValueError(f"the catalogue's item ids are integers; new ids {bad[:5]} are not")
        if kind in "US" and not all(isinstance(r, str) for r in raw_ids):
            bad = [r for r in raw_ids if not isinstance(r, str)]
            raise ValueError(f"the catalogue's item ids are strings; new ids {bad[:5]} are not")
        return np.asarray(raw_ids, dtype=self.item_ids.dtype if kind in "iu" else None)


    @staticmethod
    def _subset(hist: Histories, users: list[int]) -> Histories:
        """The rows `users` of a CSR batch."""
        offsets = hist.offsets.cpu().tolist()
        take = [i for u in users for i in range(offsets[u], offsets[u + 1])]
        lengths = [offsets[u + 1] - offsets[u] for u in users]
        device = hist.items.device
        take_t = torch.tensor(take, dtype=torch.long, device=device)
        return Histories(torch.tensor([0] + np.cumsum(lengths).tolist(), dtype=torch.long, device=device),
                         hist.items[take_t], hist.user_feats[torch.tensor(users, device=device)],
                         None if hist.side is None else hist.side[take_t])
