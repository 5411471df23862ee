"""Top-k of distinct items from lists that may repeat an item."""

from __future__ import annotations

import torch
import torch.nn.functional as F

COMBINES = ("max", "sum")


def distinct_topk(items: torch.Tensor, scores: torch.Tensor, k: int,
                  combine: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """Per user: one entry per distinct item, top k by score. Every retriever that merges lists
    (DualGR's two DBR branches, KuaiFormer's interests) dedupes through here.

    combine="max": an item listed more than once keeps its best score (earlier position breaks ties).
    combine="sum": its scores (log-probabilities) are summed as probabilities, log(sum(exp)), so an
    item both DBR branches decode ranks by the mixture's probability rather than by one branch's.
    items/scores (U, M) with -1 / -inf padding -> (U, k) each, -1 / -inf where fewer exist.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    U, M = items.shape
    # Order by score desc, then position: a stable sort of position-ordered data by -score.
    order = torch.sort(-scores, dim=1, stable=True).indices
    items_s, scores_s = items.gather(1, order), scores.gather(1, order)
    # Within equal items, the first in this order is the best: mark later copies.
    by_item = torch.sort(items_s, dim=1, stable=True)
    same_as_prev = F.pad(by_item.values[:, 1:] == by_item.values[:, :-1], (1, 0), value=False)
    duplicate = torch.zeros_like(same_as_prev).scatter(1, by_item.indices, same_as_prev)
    listed = (items_s >= 0) & torch.isfinite(scores_s)
    if combine == "sum" and M:
        # Runs of equal items in item order, numbered per user and mapped back to score order.
        run = torch.zeros_like(by_item.indices).scatter(1, by_item.indices, (~same_as_prev).long().cumsum(1) - 1)
        s = scores_s.masked_fill(~listed, float("-inf"))
        peak = torch.full_like(s, float("-inf")).scatter_reduce(1, run, s, "amax").gather(1, run)
        shifted = torch.where(listed, (s - peak).exp(), torch.zeros_like(s))  # <= 1: no overflow
        total = torch.zeros_like(s).scatter_add(1, run, shifted).gather(1, run)
        scores_s = torch.where(listed, peak + total.log(), scores_s)
    scores_s = scores_s.masked_fill(duplicate | ~listed, float("-inf"))
    kk = min(k, M)
    # A stable descending sort keeps the score-then-position order among the survivors.
    order2 = torch.sort(-scores_s, dim=1, stable=True).indices[:, :kk]
    top_items, top_scores = items_s.gather(1, order2), scores_s.gather(1, order2)
    top_items = top_items.masked_fill(~torch.isfinite(top_scores), -1)
    if kk < k:
        top_items = F.pad(top_items, (0, k - kk), value=-1)
        top_scores = F.pad(top_scores, (0, k - kk), value=float("-inf"))
    return top_items, top_scores
