"""Retrieval with a trained GRank: the generator's exact MIPS top-k1 over every item (history
excluded), then the ranker re-orders those k1 candidates and the top k are returned.

Any other generator can feed the same ranker: pass `generator=` (a loaded retriever of any family
over the same catalogue: DualGR's constrained beams with both DBR branches merged, SASRec /
KuaiFormer exact top-K) and its top k1 (history excluded) are what the ranker re-orders;
"SID generation, then ranking". `rerank` scores candidate lists computed elsewhere.

A DualGR can also score GRank's own candidates without generating them (`scorer=`): its
teacher-forced log-probability of each candidate's SID is then the score the blend weighs, so its
knowledge reaches candidates its beams would not have found.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from genret.decoding import requests
from genret.decoding.retriever import RetrievalResult
from genret.models.grank import GRank, blended_scores


def windows(offsets: np.ndarray, items: np.ndarray, length: int) -> torch.Tensor:
    """Right-aligned windows (U, T) of the last `length` items of each CSR history, -1 padded."""
    lengths = np.minimum(np.diff(offsets), length)
    T = max(int(lengths.max(initial=0)), 1)
    out = np.full((len(lengths), T), -1, np.int64)
    for u, (end, n) in enumerate(zip(offsets[1:], lengths)):
        out[u, T - n:] = items[end - n:end]
    return torch.from_numpy(out)


def seen_mask(offsets: np.ndarray, items: np.ndarray, n_items: int) -> torch.Tensor:
    """(U, n_items) bool, True at every item of each CSR history."""
    seen = np.zeros((len(offsets) - 1, n_items), bool)
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    seen[owner, items] = True
    return torch.from_numpy(seen)


class GRankRetriever:
    """Generate (MIPS top-k1), then rank (cross-attention over the long history), with a GRank.

    Example:
        >>> r = GRankRetriever.from_checkpoint("runs/grank_ml1m/model.ckpt")
        >>> r.retrieve([[r.item_ids[0], r.item_ids[5]]], k=10).items[0]

    Args:
        model: a GRank. item_ids: raw id of each dense item index.
        k1: candidates the generator hands to the ranker (the paper: 2,000; k must not exceed it).
        blend: final score = s_ca + blend * generator score (0: the ranker alone).
        generator: another family's retriever (same catalogue) whose candidates the ranker re-orders
            instead of GRank's own MIPS; it is never trained here (frozen by construction).
        ranker: False for a model trained without one (an ablation): the generator's order is final.
        scorer: a DualGR retriever (same catalogue) whose log-probability of each of GRank's own
            candidates (`Retriever.score_items`) is what the blend weighs: final = s_ca + blend x
            log P_DualGR(c), or without a ranker the generator's score + blend x log P_DualGR(c).
            Only with GRank's own generator.
    """

    def __init__(self, model: GRank, item_ids: Sequence[Any], k1: int = 1000, blend: float = 0.0,
                 generator: Any = None, ranker: bool = True, scorer: Any = None):
        self.model = model.eval()
        self.item_ids = np.asarray(item_ids)
        if len(self.item_ids) != model.config.n_items:
            raise ValueError(f"{len(self.item_ids)} item ids for a model of {model.config.n_items} items")
        if k1 < 1:
            raise ValueError(f"k1 must be >= 1, got {k1}")
        self.k1 = min(k1, model.config.n_items)
        self.blend = blend
        self._item_index = requests.item_lookup(self.item_ids)
        self.model_version = "in-memory"  # a content hash when loaded from a file
        if generator is not None and not np.array_equal(np.asarray(generator.item_ids), self.item_ids):
            raise ValueError(f"the generator serves another catalogue ({len(generator.item_ids):,} items) than "
                             f"the ranker ({len(self.item_ids):,}); train both on the same data")
        self.generator = generator
        self.ranker = ranker
        if scorer is not None:
            if generator is not None:
                raise ValueError("a scorer rescores GRank's own candidates; with an external generator its own "
                                 "score is already the one the blend weighs: give one or the other")
            if not hasattr(scorer, "score_items"):
                raise ValueError(f"the scorer must be a DualGR retriever (it scores items by their SIDs), got "
                                 f"{type(scorer).__name__}")
            if not np.array_equal(np.asarray(scorer.item_ids), self.item_ids):
                raise ValueError(f"the scorer serves another catalogue ({len(scorer.item_ids):,} items) than the "
                                 f"ranker ({len(self.item_ids):,}); train both on the same data")
        self.scorer = scorer

    @property
    def device(self) -> torch.device:
        return self.model.item_embedding.weight.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, k1: int | None = None,
                        blend: float | None = None, generator: str | None = None,
                        beam_width: int | None = None, scorer: str | None = None) -> "GRankRetriever":
        """Load a GRank checkpoint (`genret train --config configs/grank_*.yaml` or `genret benchmark`).

        k1 / blend / generator default to the ones it was trained with; `generator` is "grank" (its
        own MIPS) or the checkpoint of another family's model whose candidates the ranker re-orders
        (`beam_width` goes to a DualGR generator); `scorer`: a DualGR checkpoint that scores GRank's
        own candidates (default: the one it was evaluated with, if any; "none" for none).
        """
        from genret.decoding.export import artifact_version
        from genret.training.grank_module import load_grank

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, entry = load_grank(path, device)
        serving = entry.get("serving", {})
        retriever = cls(model, entry["catalogue"]["item_ids"], k1=k1 or serving.get("k1", 1000),
                        blend=serving.get("blend", 0.0) if blend is None else blend, ranker=serving.get("ranker", True),
                        generator=load_generator(generator or serving.get("generator", "grank"), device,
                                                 beam_width or serving.get("beam_width")),
                        scorer=load_scorer(scorer or serving.get("scorer"), device))
        retriever.model_version = artifact_version(path)
        return retriever

    # ------------------------------------------------------------------------------ indices
    def generate_and_rank(self, offsets: np.ndarray, items: np.ndarray, k1: int | None = None,
                          side: dict[str, list] | None = None, user_features: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batch of CSR dense histories -> (candidates in generator order (U, k1), generator
        scores, final scores), history excluded, -1 / -inf where fewer than k1 items remain.
        `side` / `user_features`: what an external generator embeds besides the items, as its
        `retrieve` takes them (name -> one list of values per history; (U, F) ids)."""
        candidates, gen, rank = self.candidate_scores(offsets, items, k1, side, user_features)
        return candidates, gen, self.final_scores(gen, rank)

    def final_scores(self, gen: np.ndarray, rank: np.ndarray, blend: float | None = None) -> np.ndarray:
        """What the served list is sorted by: the generator's score without a ranker (or scorer), else
        s_ca + blend (default: the retriever's) x the generator's score. With a scorer (see
        `candidate_scores`) `gen` is its score and `rank` the ranker's, or the generator's without one."""
        if not self.blends:
            return gen
        return blended_scores(gen, rank, self.blend if blend is None else blend)

    @property
    def blends(self) -> bool:
        """Whether the served order blends two scores (a ranker's or a scorer's) rather than being the
        generator's own."""
        return self.ranker or self.scorer is not None

    @torch.no_grad()
    def candidate_scores(self, offsets: np.ndarray, items: np.ndarray, k1: int | None = None,
                         side: dict[str, list] | None = None, user_features: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batch of CSR dense histories -> (candidates in generator order (U, k1), generator
        scores, ranker scores), history excluded, -1 / -inf where fewer than k1 items remain.
        With a scorer: (candidates, the scorer's scores, the ranker's scores or, without a ranker,
        the generator's). `side` / `user_features` as in `generate_and_rank` (read by an external
        generator or a scorer only)."""
        k1 = min(k1 or self.k1, self.model.config.n_items)
        c = self.model.config
        dev = self.device
        if self.generator is not None:
            candidates, gen = self.external_candidates(offsets, items, k1, side, user_features)
            cand = torch.from_numpy(candidates).to(dev)
            long_items = windows(offsets, items, c.long_len).to(dev)
            users = self.model.user_vectors(windows(offsets, items, c.max_len).to(dev))
            return candidates, gen, self.model.rank_candidates(cand, long_items, users).cpu().numpy()
        cand, gen, rank = self.model.generate_and_rank(
            windows(offsets, items, c.max_len).to(dev), windows(offsets, items, c.long_len).to(dev), k1,
            seen_mask(offsets, items, c.n_items).to(dev))
        cand, gen, rank = cand.cpu().numpy(), gen.cpu().numpy(), rank.cpu().numpy()
        if self.scorer is not None:  # the scorer's score is blended into the ranker's, or the generator's
            base = rank if self.ranker else gen
            return cand, scorer_scores(self.scorer, self.item_ids, offsets, items, cand, side, user_features), base
        return cand, gen, rank

    def external_candidates(self, offsets: np.ndarray, items: np.ndarray, k1: int,
                            side: dict[str, list] | None = None, user_features: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """The external generator's top k1 unseen items per CSR history, in its order: (U, k1) dense
        indices (-1 where fewer remain) and its scores (-inf there)."""
        return generator_candidates(self.generator, self.item_ids, offsets, items, k1, self._item_index, side,
                                    user_features)

    @property
    def side_features(self) -> list[str]:
        """The per-action side features `retrieve` reads: the external generator's or scorer's (GRank
        embeds none)."""
        return list(getattr(self.generator or self.scorer, "side_features", None) or [])

    @property
    def user_feature_names(self) -> list[str]:
        """The static user features `retrieve` reads: the external generator's or scorer's (GRank
        embeds none)."""
        return list(getattr(self.generator or self.scorer, "user_feature_names", None) or [])

    @torch.no_grad()
    def rerank(self, offsets: np.ndarray, items: np.ndarray, candidates: np.ndarray, chunk: int = 256
               ) -> tuple[np.ndarray, np.ndarray]:
        """Re-order another generator's candidates with the ranker.

        Args:
            offsets, items: CSR dense histories (U + 1,), (N,).
            candidates: (U, K) dense item indices, -1 = padding; a history item is dropped (never returned).

        Returns:
            (U, K) candidates best first (-1 last) and their ranker scores (-inf at -1).
        """
        c = self.model.config
        candidates = np.asarray(candidates, np.int64)
        if candidates.ndim != 2 or len(candidates) != len(offsets) - 1:
            raise ValueError(f"candidates must be (users, K) for {len(offsets) - 1} users, got {candidates.shape}")
        seen = seen_mask(offsets, items, c.n_items).numpy()
        rows = np.arange(len(candidates))[:, None]
        candidates = np.where((candidates >= 0) & seen[rows, candidates.clip(min=0)], -1, candidates)
        long_items = windows(offsets, items, c.long_len).to(self.device)
        users = self.model.user_vectors(windows(offsets, items, c.max_len).to(self.device))
        cand = torch.from_numpy(candidates).to(self.device)
        scores = self.model.rank_candidates(cand, long_items, users, chunk)
        order = scores.argsort(dim=1, descending=True, stable=True)
        return cand.gather(1, order).cpu().numpy(), scores.gather(1, order).cpu().numpy()

    # ------------------------------------------------------------------------------ raw ids
    def retrieve(self, histories: Sequence[Sequence[Any]], k: int = 100, unknown: str = "error",
                 batch_size: int = 256, side: dict[str, Sequence[Sequence[Any]]] | None = None,
                 exclude_seen: bool = True, user_features: Any = None) -> RetrievalResult:
        """Top-k distinct raw item ids per history after generation (top k1) and ranking, best first;
        scores are the final (ranker) scores. History items are never returned (`exclude_seen`
        must stay true: the ranker is trained on unseen candidates).

        Args as `genret.Retriever.retrieve` (the request checks are shared: genret.decoding.requests);
        k must not exceed k1 (the candidates the ranker sees).
        """
        histories = requests.check_histories(histories)
        k = requests.check_k(k, len(self.item_ids))
        batch_size = requests.check_batch_size(batch_size)
        if not requests.check_flag(exclude_seen, "exclude_seen"):
            raise requests.RequestError("GRank never returns history items; leave exclude_seen true")
        if user_features is not None and not self.user_feature_names:
            raise requests.RequestError("neither GRank nor its generator embeds user features; leave user_features "
                                        "unset")
        if k > self.k1:
            raise requests.RequestError(f"k={k} exceeds the {self.k1} candidates the generator hands to the ranker "
                                        f"(k1); ask for at most {self.k1} items or load the retriever with a larger k1")
        if side is not None and not isinstance(side, dict):
            raise requests.RequestError(f"side must map feature names to one list of values per history, got "
                                        f"{type(side).__name__}")
        if side and not self.side_features:
            raise requests.RequestError("neither GRank nor its generator embeds side features; call retrieve "
                                        "without side=")
        rows, _, dropped = requests.encode_histories(histories, self._item_index, requests.check_unknown(unknown))
        if dropped:
            if side:
                raise requests.RequestError("side features cannot follow histories whose unknown items were dropped; "
                                            "remove the unknown items (and their side values) first, or call with "
                                            "unknown='error'")
            warnings.warn(f"dropped {len(dropped)} unknown item id(s), e.g. {dropped[:3]}", stacklevel=2)
        offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
        dense = np.asarray([i for row in rows for i in row], np.int64)
        lengths = np.diff(offsets)
        requests.check_not_empty(lengths, unknown, "GRank needs at least one known item")
        items_out, scores_out = [], []
        for start in range(0, len(lengths), batch_size):
            stop = min(start + batch_size, len(lengths))
            sub = offsets[start:stop + 1] - offsets[start]
            # the generator checks side / user_features itself, as it does for its own requests
            batch_side = None if not side else {name: list(values)[start:stop] for name, values in side.items()}
            batch_users = None if user_features is None else (
                {name: list(ids)[start:stop] for name, ids in user_features.items()}
                if isinstance(user_features, dict) else np.asarray(user_features)[start:stop])
            cand, _, final = self.generate_and_rank(sub, dense[offsets[start]:offsets[stop]], side=batch_side,
                                                    user_features=batch_users)
            order = np.argsort(-final, axis=1, kind="stable")[:, :k]
            for u, row in enumerate(order):
                picked = cand[u, row]
                if (picked < 0).any():
                    raise requests.RequestError(f"history {start + u} leaves only {int((cand[u] >= 0).sum())} "
                                                f"unseen items, fewer than k={k}")
                items_out.append(self.item_ids[picked].tolist())
                scores_out.append(final[u, row].astype(float).tolist())
        return RetrievalResult(items_out, scores_out)


def per_history(values: dict[str, np.ndarray] | None, offsets: np.ndarray) -> dict[str, list[list[float]]] | None:
    """Flat per-action side values aligned with CSR histories -> retrieve's `side` form (name -> one
    list of values per history; NaN = missing)."""
    if not values:
        return None
    return {name: [np.asarray(v[a:b], np.float64).tolist() for a, b in zip(offsets[:-1], offsets[1:])]
            for name, v in values.items()}


def batch_inputs(side: dict[str, np.ndarray] | None, users: np.ndarray | None, offsets: np.ndarray, start: int,
                 stop: int) -> tuple[dict[str, list[list[float]]] | None, np.ndarray | None]:
    """What an external generator embeds besides the items, for histories start..stop-1 of CSR
    `offsets`: `side` (name -> flat values aligned with all the histories) in `retrieve`'s
    per-history form, and those rows of `users` ((U, F) user-feature ids)."""
    lo, hi = offsets[start], offsets[stop]
    return (per_history(None if side is None else {n: v[lo:hi] for n, v in side.items()}, offsets[start:stop + 1] - lo),
            None if users is None else users[start:stop])


def generator_candidates(generator: Any, item_ids: np.ndarray, offsets: np.ndarray, items: np.ndarray, k1: int,
                         item_index: Any = None, side: dict[str, list] | None = None,
                         user_features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Another family's retriever's top k1 unseen items per CSR dense history, in its order: (U, k1)
    dense indices (-1 where fewer remain) and its scores (-inf there).

    An embedding retriever returns its exact top k1 unseen items. A beam-search decoder (DualGR) is
    asked as its own evaluation asks it: k1 + the history margin items with the history left in,
    then the history is dropped, so a user whose history fills more than the margin keeps fewer than
    k1. (Its `retrieve` would decode such a user again with a beam as wide as k1 + the history:
    thousands of beams for ML-1M's heaviest users, which made caching candidates take hours.)

    Args:
        generator: a loaded retriever over the catalogue `item_ids` (raw id of each dense index).
        offsets, items: CSR dense histories (U + 1,), (N,); every history item is dropped.
        item_index: raw id -> dense index (built from item_ids when not given).
        side: raw per-action side features as `retrieve` takes them (name -> one list of values per
            history), handed to a generator that embeds them (e.g. DualGR with the rating).
        user_features: (U, F) user-feature ids in the generator's `user_feature_names` order, for a
            generator that embeds them (e.g. DualGR on ML-1M).
    """
    item_index = item_index if item_index is not None else requests.item_lookup(item_ids)
    beams = hasattr(generator, "retrieve_indices")
    ask = requests.request_size(k1, len(item_ids), exclude_seen=True) if beams else min(k1, len(item_ids))
    histories = [item_ids[items[a:b]].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    result = generator.retrieve(histories, k=ask, side=side or None, exclude_seen=not beams,
                                user_features=user_features)
    candidates = np.full((len(histories), k1), -1, np.int64)
    scores = np.full((len(histories), k1), -np.inf)
    for u, (raw, score) in enumerate(zip(result.items, result.scores)):
        seen = set(items[offsets[u]:offsets[u + 1]].tolist())
        kept = [(item_index[x], s) for x, s in zip(raw, score) if item_index[x] not in seen][:k1]
        if kept:
            candidates[u, :len(kept)] = [i for i, _ in kept]
            scores[u, :len(kept)] = [s for _, s in kept]
    return candidates, scores


@torch.no_grad()
def generator_top_items(generator: str, item_ids: Sequence[Any], offsets: np.ndarray, items: np.ndarray, k: int,
                        device: str | torch.device = "cpu", beam_width: int | None = None, batch_size: int = 256,
                        width: int | None = None, progress: bool | None = None,
                        inputs: Callable[[list[str], list[str]], tuple] | None = None,
                        with_scores: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The top k unseen items of the generator checkpoint at `generator` for every CSR dense history:
    (U, width or k) int64 dense indices in its order, -1 where fewer remain.

    The generator is loaded (frozen: it is only asked) on `device`, asked `batch_size` histories at
    a time behind a tqdm bar (`progress` None: only on a terminal), and freed before returning.
    GRank's `hard_negatives_from: generator` caches these for its ranker's hard negatives.
    `inputs(side_names, user_names)` gives what the loaded generator embeds besides the items:
    (raw per-action side values aligned with `items`, name -> (N,), or None; (U, F) user-feature
    ids, or None). `with_scores`: also return the generator's scores of
    those items, (U, width or k) float32, -inf where no item is.
    """
    import gc

    from tqdm.auto import tqdm

    item_ids = np.asarray(item_ids)
    model = load_generator(generator, device, beam_width)
    if model is None:
        raise ValueError("generator_top_items needs a generator checkpoint, not 'grank'")
    if not np.array_equal(np.asarray(model.item_ids), item_ids):
        raise ValueError(f"the generator {generator} serves another catalogue ({len(model.item_ids):,} items) than "
                         f"the training data ({len(item_ids):,}); train both on the same data")
    index = requests.item_lookup(item_ids)
    side_names = list(getattr(model, "side_features", None) or [])
    user_names = list(getattr(model, "user_feature_names", None) or [])
    side, users = inputs(side_names, user_names) if inputs is not None else (None, None)
    k = min(k, len(item_ids))
    n_users = len(offsets) - 1
    out = np.full((n_users, max(width or k, k)), -1, np.int64)
    out_scores = np.full(out.shape, -np.inf, np.float32)
    try:
        for start in tqdm(range(0, n_users, batch_size), desc="generator candidates", unit="batch",
                          disable=None if progress is None else not progress):
            stop = min(start + batch_size, n_users)
            lo, hi = offsets[start], offsets[stop]
            batch_side, batch_users = batch_inputs(side, users, offsets, start, stop)
            out[start:stop, :k], out_scores[start:stop, :k] = generator_candidates(
                model, item_ids, offsets[start:stop + 1] - lo, items[lo:hi], k, item_index=index,
                side=batch_side, user_features=batch_users)
    finally:
        del model
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return (out, out_scores) if with_scores else out


def scorer_scores(scorer: Any, item_ids: np.ndarray, offsets: np.ndarray, items: np.ndarray, candidates: np.ndarray,
                  side: dict[str, list] | None = None, user_features: np.ndarray | None = None) -> np.ndarray:
    """The scorer's (a DualGR retriever's) log-probability of each candidate: (U, C) dense
    candidates of CSR dense histories (-1 = padding) -> (U, C) float32, -inf at padding."""
    histories = [item_ids[items[a:b]].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    wanted = [item_ids[row[row >= 0]].tolist() for row in candidates]
    scored = scorer.score_items(histories, wanted, side=side or None, user_features=user_features)
    out = np.full(candidates.shape, -np.inf, np.float32)
    for u, (row, values) in enumerate(zip(candidates, scored)):
        out[u, np.flatnonzero(row >= 0)] = values
    return out


def load_scorer(scorer: str | None, device):
    """None for no scorer (None / "none"), else the DualGR retriever of the checkpoint at `scorer`."""
    if scorer in (None, "none"):
        return None
    from genret.decoding.export import artifact_family
    from genret.families import load_retriever

    if not Path(scorer).exists():
        raise FileNotFoundError(f"scorer checkpoint {scorer} does not exist; set model.scorer to a trained DualGR "
                                "checkpoint of the same data, or to none")
    family = artifact_family(scorer)
    if family != "dualgr":
        raise ValueError(f"the scorer {scorer} is a {family} checkpoint; a scorer is a DualGR model (it scores items "
                         "by their SIDs)")
    return load_retriever(scorer, device=device)


def load_generator(generator: str, device, beam_width: int | None = None):
    """None for GRank's own generator ("grank"), else the retriever of the checkpoint at `generator`."""
    if generator in (None, "grank"):
        return None
    from genret.families import load_retriever

    from genret.training.grank_generator import is_training_config

    if is_training_config(generator):
        raise ValueError(f"generator {generator} is a training config; `genret benchmark` / `genret train` train it "
                         "first (into DIR/generator), serving needs the trained checkpoint")
    if not Path(generator).is_file():
        raise FileNotFoundError(f"generator checkpoint {generator} does not exist; set model.generator to 'grank' "
                                "or to a trained SASRec / KuaiFormer / DualGR checkpoint of the same data")
    return load_retriever(generator, device=device, beam_width=beam_width)
