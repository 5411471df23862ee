"""Leave-one-out ranked lists of a generative retriever (beam search) or an embedding model (exact
top-K), and their metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from genret.eval.distributed import map_batches
from genret.eval.metrics import ranking_metrics


def evaluate_retriever(retriever, eval_set, ks=(5, 10, 20, 50, 100, 500), batch_size: int = 64,
                       exclude_history: bool = True, history_margin: int = 20, desc: str = "evaluate",
                       max_users: int | None = None, user_feats: np.ndarray | None = None,
                       history_side: np.ndarray | None = None) -> dict[str, Any]:
    """Leave-one-out full-ranking metrics of a generative retriever; args as `retriever_ranked_lists`."""
    ranked = retriever_ranked_lists(retriever, eval_set, max(ks), batch_size, exclude_history, history_margin,
                                    desc, max_users, user_feats, history_side)
    return ranking_metrics(ranked, eval_set.targets[:len(ranked)], ks)


def retriever_ranked_lists(retriever, eval_set, k_max: int, batch_size: int = 64, exclude_history: bool = True,
                           history_margin: int = 20, desc: str = "evaluate", max_users: int | None = None,
                           user_feats: np.ndarray | None = None,
                           history_side: np.ndarray | None = None) -> np.ndarray:
    """(m, k_max) item indices, best first (-1 padded): a generative retriever's beam-search lists
    for the first m users of `eval_set` (all, or `max_users`).

    With `exclude_history`, items already in a user's history are removed from the list (as for
    every model in `genret benchmark`); the beam then asks for `history_margin` extra items so the
    list stays full. `history_side` (len(history_items), S) holds the side-feature buckets of the
    history actions when the model embeds side features. Under several processes each scores a
    share of the batches (genret.eval.distributed) and all return the whole list.
    """
    from genret.decoding.beam_search import Histories

    n_items = len(retriever.item_ids)
    k_req = min(k_max + (history_margin if exclude_history else 0), n_items)
    m = len(eval_set) if max_users is None else min(len(eval_set), max_users)
    device = retriever.device
    offsets = np.asarray(eval_set.history_offsets)
    n_fields = len(retriever.model.user_embeddings)
    feats = torch.zeros(m, n_fields, dtype=torch.long, device=device) if user_feats is None or n_fields == 0 \
        else torch.as_tensor(np.asarray(user_feats)[:m], dtype=torch.long, device=device)
    progress = tqdm(total=-(-m // batch_size), desc=desc, unit="batch")

    def score(start: int) -> np.ndarray:
        stop = min(start + batch_size, m)
        lo, hi = offsets[start], offsets[stop]
        hist = Histories(torch.as_tensor(offsets[start:stop + 1] - lo, device=device),
                         torch.as_tensor(eval_set.history_items[lo:hi], device=device),
                         feats[start:stop],
                         None if history_side is None else torch.as_tensor(history_side[lo:hi], device=device))
        items, _ = retriever.retrieve_indices(hist, k_req)
        items = items.cpu().numpy()
        if exclude_history:
            owner = np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1]))
            seen = np.zeros((stop - start, n_items + 1), bool)  # +1 column absorbs the -1 padding
            seen[owner, eval_set.history_items[lo:hi]] = True
            drop = seen[np.arange(stop - start)[:, None], items]
            items = np.where(drop, -1, items)
            # Stable compaction: surviving items move to the front in their order.
            order = np.argsort(items < 0, axis=1, kind="stable")
            items = np.take_along_axis(items, order, 1)
        progress.update()
        return items[:, :k_max] if items.shape[1] >= k_max else np.pad(
            items, ((0, 0), (0, k_max - items.shape[1])), constant_values=-1)

    lists = map_batches(list(range(0, m, batch_size)), score)
    progress.close()
    ranked = np.full((m, k_max), -1, np.int64)
    for start, rows in lists.items():
        ranked[start:start + len(rows)] = rows
    return ranked


@torch.no_grad()
def embedding_ranked_lists(retriever, datamodule, stage: str, k: int) -> np.ndarray:
    """(m, k) leave-one-out lists of an embedding model (`genret.decoding.EmbeddingRetriever`) for an
    evaluation split of its data module, history excluded, best first, -1 padded. Under several
    processes each computes a share of the user vectors and all rank every user."""
    from genret.decoding.embedding_retriever import rank_items

    es = datamodule.eval_sets[stage]
    rows = np.arange(len(es))
    size = datamodule.eval_batch_size
    model, device = retriever.model, retriever.device
    progress = tqdm(total=-(-len(es) // size), desc=f"user vectors ({stage})", unit="batch", disable=None)

    def vectors(start: int) -> np.ndarray:
        batch = datamodule.eval_batch(stage, rows[start:start + size])
        out = model.user_vectors(batch["items"].to(device), batch["side"].to(device))
        progress.update()
        return out.float().cpu().numpy()

    parts = map_batches(list(range(0, len(es), size)), vectors)
    progress.close()
    users = torch.from_numpy(np.concatenate([parts[start] for start in sorted(parts)]))
    return rank_items(users, model.item_vectors().float(), k, exclude=(es.history_offsets, es.history_items),
                      device=device)


def user_features_for(datamodule, eval_set) -> np.ndarray:
    """The static user features of an EvalSet's users, as the data module holds them."""
    return datamodule.user_feats[eval_set.users]
