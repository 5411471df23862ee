"""Constrained beam search over SID levels for DualGR, batched over users, on the model's device.

One request batch runs both DBR branches (long, short) as one batch of stacked users:
  level 1: one BOS query per user cross-attends the branch window;
  level l > 1: W beam queries per user cross-attend their in-bucket keys (S2D): the user's
  history sorted by s1 once, so a beam's bucket is one contiguous key range.
Each step's self-attention over the SID prefix reuses cached keys/values (one preallocated
buffer, reordered by parent beam). The prefix self-attention, the beam step (the LM head's
epilogue: log-softmax, + beam score, the SID index's CSR children lists as the constraint,
top-W) and the decode cross-attention go through genret.kernels' dispatchers, so the same code
runs the PyTorch references on CPU and the Triton kernels on CUDA. Finished SIDs expand to items
through the SID index; the branches are merged (each weighted by its routing prior from
training; by default an item found by both scores the sum of its two weighted probabilities) and
the top k distinct items returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from genret.decoding.decode_weights import DecodeWeights, decode_weights
from genret.decoding.op_count import LEVEL_STEP
from genret.decoding.topk import distinct_topk
from genret.kernels import add_layer_norm, csr_beam_step, decode_cross_attention, prefix_self_attention
from genret.models.dualgr import DualGR


@dataclass
class Histories:
    """A batch of users' positive histories as dense item indices (CSR), oldest first."""

    offsets: torch.Tensor  # (U + 1,) int64
    items: torch.Tensor  # (sum of lengths,) int64
    user_feats: torch.Tensor  # (U, F) int64
    side: torch.Tensor | None = None  # (sum of lengths, S) int64 side-feature buckets; None = all missing

    @property
    def n_users(self) -> int:
        return self.offsets.numel() - 1


@dataclass
class _Context:
    """Per-block cross-attention keys/values of one context layout, padded: every user owns
    `rows` consecutive key rows (its user token, then its actions, then padding), so the offsets
    and the padded length are known without reading any value on the host."""

    keys: list[torch.Tensor]  # per block (U * rows, H, Dh)
    values: list[torch.Tensor]
    seg_offsets: torch.Tensor  # (U + 1,) = arange(U + 1) * rows
    lengths: torch.Tensor  # (U,) actions in each segment (without the user token); rows past them are padding
    latest: torch.Tensor  # (U, d) context token of the newest action (the user token if none), any layout
    rows: int  # key rows per user: 1 + the layout's width


def _project_history(model: DualGR, ctx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """ctx (U, 1+T, d) time-ordered context tokens -> per block its cross-attention keys, values
    (U, 1+T, H, Dh), before any recency rotation. Projected once per block for a request: the
    branch windows and S2D's bucket layout are row gathers of them."""
    return [block.cross_attn.project_kv(ctx) for block in model.blocks]


def _pack_context(model: DualGR, ctx: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]],
                  take: torch.Tensor, items: torch.Tensor, positions: torch.Tensor,
                  users: torch.Tensor | None = None) -> _Context:
    """One layout of the history: the user token, then the actions `take` (U, T) (indices into the
    time-ordered actions of ctx (U, 1+T_full, d) and kv from `_project_history`), whose items
    (U, T) (dense indices, -1 padded) and positions (U, T) (each action's index in its
    time-ordered window, for recency) are given -> per-block padded K/V of U * (1 + T) rows.
    The target sits at position `lengths` (after every action), which is where `_decoder_step`
    places the queries.

    users (U',) maps each row of take / items / positions to the user of ctx and kv it reads
    (default: the same row), so the DBR branches can stack copies of the users without copying
    the history first."""
    U, T = items.shape
    if users is None:
        users = torch.arange(U, device=items.device)
    # (U, 1+T) rows of the flattened (U_src * (1+T_full)) ctx / kv; each segment's row 0 is its user token.
    rows = F.pad(take + 1, (1, 0)) + users.unsqueeze(1) * ctx.shape[1]
    flat_rows = rows.reshape(-1)
    lengths = (items >= 0).sum(1)
    keys, values = [], []
    for k, v in kv:
        k = k.reshape(-1, *k.shape[2:]).index_select(0, flat_rows).reshape(U, 1 + T, *k.shape[2:])
        k = model.position_keys(k, positions)
        keys.append(k.reshape(U * (1 + T), *k.shape[2:]))
        values.append(v.reshape(-1, *v.shape[2:]).index_select(0, flat_rows))
    seg = torch.arange(U + 1, device=items.device) * (1 + T)
    # The newest action is the one with the largest position, whatever the layout (time order or
    # S2D's bucket order); row 0, the user token, when there is none.
    newest = torch.where(items >= 0, positions, -1).argmax(1, keepdim=True)
    newest = torch.where(lengths.unsqueeze(1) > 0, rows[:, 1:].gather(1, newest), rows[:, :1])
    latest = ctx.reshape(-1, ctx.shape[-1]).index_select(0, newest.reshape(-1))
    return _Context(keys, values, seg, lengths, latest, 1 + T)


def _tail_indices(start: torch.Tensor, end: torch.Tensor, width: int,
                  static: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [start, end) per user, cut to their last `width`, left-aligned: positions (U, T) and
    which of them are real (U, T) bool. T = `width` when `static`, else the longest kept row (at
    least 1), which costs one host sync."""
    length = (end - start).clamp(max=width)
    T = width if static else max(int(length.max().item()) if length.numel() else 0, 1)
    j = torch.arange(T, device=start.device)
    return (end - length).unsqueeze(1) + j, j < length.unsqueeze(1)


def _last_actions(full: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `width` actions of each left-aligned history full (U, T): items (U, min(width, T))
    (-1 padded, left-aligned) and their indices into full. Static shapes: no host sync."""
    take, valid = _tail_indices(torch.zeros_like(full[:, 0]), (full >= 0).sum(1), min(width, full.shape[1]),
                                static=True)
    take = take.clamp(max=full.shape[1] - 1)
    items = torch.where(valid, full.gather(1, take), torch.full_like(take, -1))
    return items, take


def model_codes(model: DualGR, items: torch.Tensor) -> torch.Tensor:
    """SIDs of dense item indices (the table the decoder was built with); padding gets 0s."""
    table = model.item_codes
    return table[items.clamp(min=0)] * (items >= 0).unsqueeze(-1)


def _window(model: DualGR, hist: Histories, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last min(width, max_history) actions of each history, left-aligned:
    items (U, T) (-1 = padding) and their side-feature buckets (U, T, S) (0 at padding)."""
    idx, valid = _tail_indices(hist.offsets[:-1], hist.offsets[1:], min(width, model.cfg.max_history))
    safe = idx.clamp(max=max(hist.items.numel() - 1, 0))
    gathered = hist.items[safe] if hist.items.numel() else torch.zeros_like(idx)
    items = torch.where(valid, gathered, torch.full_like(idx, -1))
    S = model.cfg.n_side_features
    if hist.side is None or not S or not hist.items.numel():
        side = torch.zeros(items.shape + (S,), dtype=torch.long, device=items.device)
    else:
        if hist.side.shape != (hist.items.numel(), S):
            raise ValueError(f"side features must have shape ({hist.items.numel()}, {S}) (one row per history "
                             f"action, one column per feature the model was trained with); got {tuple(hist.side.shape)}")
        side = hist.side[safe] * valid.unsqueeze(-1)
    return items, side


def _positions(window: torch.Tensor) -> torch.Tensor:
    """Index of each action inside its (time-ordered, left-aligned) window."""
    return torch.arange(window.shape[1], device=window.device).expand_as(window)


def _sorted_by_bucket(model: DualGR, window: torch.Tensor, side: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort each user's actions by (s1, time) so every s1 bucket is contiguous, recent last.
    Returns the sorted items, their side features and their positions in the time-ordered window."""
    T = window.shape[1]
    s1 = model_codes(model, window)[..., 0]
    pos = _positions(window)
    big = model.cfg.codebook_size
    key = torch.where(window >= 0, s1 * T + pos, torch.full_like(pos, big * T + T))  # padding last
    order = key.argsort(dim=1)
    return window.gather(1, order), side.gather(1, order.unsqueeze(-1).expand_as(side)), order


def _bucket_keys(model: DualGR, sorted_items: torch.Tensor) -> torch.Tensor:
    """(U, T) bucket-sorted history -> (U, 1 + T) the s1 of each key row of the user's segment:
    -1 for the user token (below every code), then the actions' s1, K for padding (above every
    code). Ascending, so a beam's bucket is one searchsorted away; built once per request."""
    K = model.cfg.codebook_size
    s1 = model_codes(model, sorted_items)[..., 0]
    s1 = torch.where(sorted_items >= 0, s1, torch.full_like(s1, K))
    return F.pad(s1, (1, 0), value=-1).contiguous()


def _key_ranges(bucket_keys: torch.Tensor, beam_s1: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bucket_keys (U, 1 + T) from `_bucket_keys`, beam s1 (U, W) -> key_lo, key_hi (U, W) relative
    to the segment start (the user token's row counts, so the actions start at 1), capped to the
    `cap` most recent keys of the bucket."""
    beam_s1 = beam_s1.contiguous()
    lo = torch.searchsorted(bucket_keys, beam_s1, right=False)
    hi = torch.searchsorted(bucket_keys, beam_s1, right=True)
    return torch.maximum(lo, hi - cap), hi


def _bucket_ranges(model: DualGR, sorted_items: torch.Tensor, beam_s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, T) bucket-sorted history, (U, W) beam s1 -> key_lo, key_hi (U, W), relative to the
    segment start (+1 for the user token), capped to the `in_bucket_cap` most recent."""
    return _key_ranges(_bucket_keys(model, sorted_items), beam_s1, model.cfg.in_bucket_cap)


class _PrefixCache:
    """Self-attention keys/values of the SID prefix tokens, every block in one buffer allocated at the
    first use: (n_blocks, U, max_width, n_levels, 2, H, Dh). Level l's tokens go to slot l of their
    beams' rows (genret.kernels.prefix_self_attention writes them); `reorder` then moves each
    surviving beam's ancestry (its parent's row, slots 0..l) into the beam's own row for every
    block at once: one gather and one copy a level, where a cat and a gather per block and level
    rebuilt the cache before."""

    def __init__(self, n_blocks: int, n_users: int, max_width: int, n_levels: int, n_heads: int, head_dim: int,
                 device: torch.device):
        self.shape = (n_blocks, n_users, max_width, n_levels, 2, n_heads, head_dim)
        self.users = torch.arange(n_users, device=device).unsqueeze(1)  # (U, 1), indexes rows by user
        self.buffer: torch.Tensor | None = None
        self.level = 0  # the slot this level's tokens go to

    def block(self, b: int, like: torch.Tensor) -> torch.Tensor:
        """Block b's cache (U, max_width, n_levels, 2, H, Dh), in `like`'s dtype (the projections')."""
        if self.buffer is None:
            self.buffer = like.new_empty(self.shape)
        return self.buffer[b]

    def reorder(self, parent_row: torch.Tensor) -> None:
        """Keep the surviving beams' ancestries. parent_row (U, W') in [0, W) (an empty slot may
        point anywhere: its score is -inf, so it never becomes a parent)."""
        self.level += 1
        ancestry = self.buffer[:, self.users, parent_row, :self.level]  # (n_blocks, U, W', level, 2, H, Dh)
        self.buffer[:, :, :parent_row.shape[1], :self.level] = ancestry


def _decoder_step(model: DualGR, weights: DecodeWeights, x: torch.Tensor, cache: _PrefixCache, ctx: _Context,
                  key_lo: torch.Tensor, key_hi: torch.Tensor, kernel: str) -> torch.Tensor:
    """One new prefix token per beam through every block. x (U, W, d) -> hidden (U, W, d), normed.

    The blocks of DecoderBlock (pre-norm: self-attention over the prefix, cross-attention to the
    context, FFN), laid out for one token per beam: self-attention through the fused QKV weight and
    the prefix cache, cross-attention through the packed decode kernel, and each residual add fused
    with the LayerNorm that reads its sum (the next sub-layer's, the next block's first, or the
    final norm after the last block), one launch for the two (genret.kernels.add_layer_norm).
    Eval-mode only: dropout is not applied."""
    U, W, d = x.shape
    target_positions = ctx.lengths.unsqueeze(1).expand(U, W)
    blocks = model.blocks
    h = blocks[0].norm_self(x)
    for b, block in enumerate(blocks):
        qkv = F.linear(h, *weights.qkv[b])
        att = prefix_self_attention(qkv, cache.block(b, qkv), cache.level, kernel=kernel)
        x, h = _add_norm(x, block.self_attn.out(att.reshape(U, W, d)), block.norm_cross, kernel)
        q = model.position_queries(block.cross_attn.project_q(h), target_positions)
        # The padded layout fixes every segment's length (ctx.rows), so nothing is read on the host.
        att = decode_cross_attention(q, ctx.keys[b], ctx.values[b], ctx.seg_offsets, key_lo, key_hi, n_always=1,
                                     kernel=kernel, max_len=ctx.rows, check_offsets=False)
        x, h = _add_norm(x, block.cross_attn.out(att.flatten(-2)), block.norm_ffn, kernel)
        after = blocks[b + 1].norm_self if b + 1 < len(blocks) else model.final_norm
        x, h = _add_norm(x, block.ffn(h), after, kernel)
    return h


def _add_norm(x: torch.Tensor, y: torch.Tensor, norm: torch.nn.LayerNorm, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y, norm(x + y))."""
    return add_layer_norm(x, y, norm.weight, norm.bias, norm.eps, kernel=kernel)


@dataclass
class _EncodedHistories:
    """What both DBR branches of a request share: the time-ordered window of the last
    `max_history` actions, its context tokens, their cross-attention K/V per block, and S2D's
    bucket-sorted fine context."""

    full: torch.Tensor  # (U, T) dense items, -1 padded
    ctx: torch.Tensor  # (U, 1+T, d)
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block (U, 1+T, H, Dh) keys, values
    full_sorted: torch.Tensor | None  # (U, T) sorted by (s1, time); None without S2D
    fine: _Context | None
    bucket_keys: torch.Tensor | None = None  # (U, 1+T) s1 of the fine context's key rows (`_bucket_keys`)


def _encode_histories(model: DualGR, hist: Histories, copies: int = 1) -> _EncodedHistories:
    """The shared encoding of a request. With `copies` > 1 the fine (S2D) context and the sorted
    history are stacked that many times over the users ((copies * U, ...), copy c's user u at
    row c * U + u), for decoding the DBR branches as one batch; `full` and `ctx` stay (U, ...)."""
    # Context tokens and their K/V once, over the time-ordered history (the optional encoder is
    # causal over time); a branch window and S2D's bucket layout are row gathers of them.
    # The window's width is the batch's longest history: the one host sync of a request.
    full, full_side = _window(model, hist, model.cfg.max_history)
    ctx = model.context(full, model_codes(model, full), hist.user_feats, full_side)
    kv = _project_history(model, ctx)
    if not (model.cfg.use_s2d and model.cfg.n_levels > 1):
        return _EncodedHistories(full, ctx, kv, None, None)
    full_sorted, _, order = _sorted_by_bucket(model, full, full_side)
    users = torch.arange(full.shape[0], device=full.device).repeat(copies)
    full_sorted, order = full_sorted.repeat(copies, 1), order.repeat(copies, 1)
    fine = _pack_context(model, ctx, kv, order, full_sorted, order, users)
    return _EncodedHistories(full, ctx, kv, full_sorted, fine, _bucket_keys(model, full_sorted))


@torch.no_grad()
def decode_branch(model: DualGR, index, hist: Histories, window_width: int, beam_width: int,
                  kernel: str = "auto", encoded: _EncodedHistories | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search for one DBR branch. `encoded` (from `_encode_histories`) lets the branches of
    one request share the encoding; without it the branch encodes `hist` itself.

    Returns:
        sids (U, W, L) int64 full SIDs (-1 where fewer than W exist), scores (U, W) float32 log-probs.
    """
    encoded = encoded or _encode_histories(model, hist)
    return _beam_search(model, index, _branch_context(model, encoded, (window_width,)), encoded, beam_width, kernel)


def _branch_context(model: DualGR, encoded: _EncodedHistories, widths: tuple[int, ...]) -> _Context:
    """The level-1 context of each branch window in `widths`, stacked over the users
    ((len(widths) * U) segments, branch b's user u at b * U + u), every window padded to the widest."""
    full = encoded.full
    U = full.shape[0]
    T = min(max(widths), full.shape[1])
    windows, takes = [], []
    for width in widths:
        window, take = _last_actions(full, width)
        pad = T - window.shape[1]
        windows.append(F.pad(window, (0, pad), value=-1))
        takes.append(F.pad(take, (0, pad)))
    window, take = torch.cat(windows), torch.cat(takes)
    users = torch.arange(U, device=full.device).repeat(len(widths))
    return _pack_context(model, encoded.ctx, encoded.kv, take, window, _positions(window), users)


def _beam_search(model: DualGR, index, coarse: _Context, encoded: _EncodedHistories, beam_width: int,
                 kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The level loop over the users of `coarse` (U' segments; `encoded`'s fine context and sorted
    history have as many rows). Returns sids (U', W, L) and scores (U', W), as `decode_branch`."""
    cfg = model.cfg
    L, K = cfg.n_levels, cfg.codebook_size
    U = coarse.lengths.shape[0]
    device = coarse.lengths.device
    fine = encoded.fine
    weights = decode_weights(model)
    heads = model.blocks[0].self_attn
    cache = _PrefixCache(len(model.blocks), U, beam_width, L, heads.n_heads, heads.head_dim, device)

    # Level 1: one start query per user (BOS, plus the newest action with last_action_query) over the window.
    x = model.start_tokens(coarse.latest)  # (U, 1, d)
    lo = torch.ones(U, 1, dtype=torch.long, device=device)
    hi = (coarse.lengths + 1).unsqueeze(1)
    with record_function(LEVEL_STEP):
        hidden = _decoder_step(model, weights, x, cache, coarse, lo, hi, kernel)
        logits = model.heads[0](hidden)  # (U, 1, K)
        root = torch.zeros(U, 1, dtype=torch.long, device=device)
        scores = torch.zeros(U, 1, device=device)
        # node: each new beam's node in the index (depth 1), whose children the next level expands.
        scores, parent, token, node = csr_beam_step(logits, scores, root, *index.children(0), min(beam_width, K),
                                                    kernel=kernel)
        prefix = token.unsqueeze(-1)  # (U, W, 1)
        if L > 1:
            cache.reorder(parent.clamp(min=0))

    for level in range(1, L):
        with record_function(LEVEL_STEP):
            safe_prefix = prefix.clamp(min=0)
            x = F.embedding(safe_prefix[..., -1], weights.prefix_tokens[level - 1])  # code + level position
            W = x.shape[1]
            if cfg.use_s2d:
                ctx = fine
                lo, hi = _key_ranges(encoded.bucket_keys, safe_prefix[..., 0], cfg.in_bucket_cap)
            else:
                ctx = coarse
                lo = torch.ones(U, W, dtype=torch.long, device=device)
                hi = (coarse.lengths + 1).unsqueeze(1).expand(U, W)
            hidden = _decoder_step(model, weights, x, cache, ctx, lo, hi, kernel)
            logits = model.heads[level](hidden)  # (U, W, K)
            # Each beam's children under its depth-`level` node are its candidates; a dead beam
            # (node -1, score -inf) has none.
            scores, parent, token, node = csr_beam_step(logits, scores, node, *index.children(level),
                                                        min(beam_width, W * K), kernel=kernel)
            parent_row = parent.clamp(min=0)
            prefix = torch.cat([prefix.gather(1, parent_row.unsqueeze(-1).expand(-1, -1, level)),
                                token.unsqueeze(-1)], dim=-1)
            if level < L - 1:  # the last level's cache is never read again
                cache.reorder(parent_row)
    dead = ~torch.isfinite(scores)
    prefix = prefix.masked_fill(dead.unsqueeze(-1), -1)
    return prefix, scores


def sids_to_items(index, sids: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k items of a branch's SIDs, in beam order (best first) and, inside a colliding
    SID, in the index's order; each item gets its SID's score.

    Items of one branch are distinct (an item has one SID), so k of them are all a merge needs:
    slot j of the output reads beam `searchsorted(cumulative counts, j)`, never the whole W x C grid.
    Returns items (U, k) and scores (U, k), -1 / -inf where the SIDs hold fewer than k items.
    """
    U, W, L = sids.shape
    leaves = index.node_of(sids.clamp(min=0).reshape(U * W, L)).reshape(U, W)
    leaves = torch.where(sids[..., 0] >= 0, leaves, torch.full_like(leaves, -1))
    ptr = index.leaf_item_ptr
    start = ptr[leaves.clamp(min=0)]
    count = torch.where(leaves >= 0, ptr[leaves.clamp(min=0) + 1] - start, torch.zeros_like(start))
    ends = count.cumsum(1)  # (U, W) items available up to and including beam w
    slots = torch.arange(k, device=sids.device).expand(U, k).contiguous()
    beam = torch.searchsorted(ends, slots, right=True)  # (U, k) beam that holds slot j
    filled = beam < W
    beam = beam.clamp(max=W - 1)
    before = (ends - count).gather(1, beam)
    pos = start.gather(1, beam) + slots - before
    pos = pos.clamp(0, max(index.leaf_items.numel() - 1, 0))
    items = torch.where(filled, index.leaf_items[pos], torch.full_like(pos, -1))
    item_scores = torch.where(filled, scores.gather(1, beam), torch.full_like(scores[:, :1].expand(U, k), float("-inf")))
    return items, item_scores


BRANCH_MERGES = ("sum", "max")


def check_short_weight(short_weight: float | None) -> None:
    """A given short-branch weight must be a probability strictly inside (0, 1); None means the model's prior."""
    if short_weight is not None and not 0.0 < short_weight < 1.0:
        raise ValueError(f"short_weight is the short DBR branch's prior probability and must lie in (0, 1), "
                         f"got {short_weight}; leave it unset to use the one the model learned in training")


def branch_log_priors(model: DualGR, short_weight: float | None = None) -> tuple[float, float]:
    """(log P(long), log P(short)) the merge adds to each branch's scores: `short_weight`, else the model's."""
    check_short_weight(short_weight)
    short_weight = model.short_weight if short_weight is None else short_weight
    return math.log1p(-short_weight), math.log(short_weight)


@torch.no_grad()
def retrieve_indices(model: DualGR, index, hist: Histories, k: int, beam_width: int | None = None,
                     kernel: str = "auto", branch_merge: str = "sum",
                     short_weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k dense item indices per user: both DBR branches decoded and merged.

    With DBR off in the model only the long branch is decoded. Each branch's log-probabilities are
    first weighted by the branch's prior: `short_weight` for the short one and 1 - `short_weight`
    for the long one (default: the model's `short_weight`, how often the DBR gate routed a training
    target to the short window where the two windows differ).
    `branch_merge` then scores an item both branches decode: "sum" of its weighted probabilities
    (the mixture's probability) or "max" of the two (see genret.decoding.topk.distinct_topk).
    Returns items (U, k) int64 (-1 where the catalogue has fewer reachable items) and scores.
    """
    if branch_merge not in BRANCH_MERGES:
        raise ValueError(f"branch_merge must be one of {BRANCH_MERGES}, got {branch_merge!r}")
    check_short_weight(short_weight)
    cfg = model.cfg
    beam_width = beam_width or k
    branches = [(cfg.long_window, 0.0)]  # (window, log prior); one branch alone keeps its own log-probs
    if cfg.use_dbr:
        branches = list(zip((cfg.long_window, cfg.short_window), branch_log_priors(model, short_weight)))
    # Both branches in one batch: their users stacked (branch b's user u at b * U + u), so every
    # level runs its kernels once for the two; they share the fine context and the history's K/V.
    U = hist.n_users
    encoded = _encode_histories(model, hist, copies=len(branches))
    coarse = _branch_context(model, encoded, tuple(width for width, _ in branches))
    sids, scores = _beam_search(model, index, coarse, encoded, beam_width, kernel)
    items, item_scores = sids_to_items(index, sids, scores, k)  # (B * U, k)
    all_items = [items[b * U:(b + 1) * U] for b in range(len(branches))]
    all_scores = [item_scores[b * U:(b + 1) * U] + log_prior for b, (_, log_prior) in enumerate(branches)]
    return distinct_topk(torch.cat(all_items, 1), torch.cat(all_scores, 1), k, branch_merge)


@torch.no_grad()
def score_indices(model: DualGR, hist: Histories, candidates: torch.Tensor, kernel: str = "auto",
                  branch_merge: str = "sum", short_weight: float | None = None, chunk: int = 256) -> torch.Tensor:
    """DualGR's log-probability of given items, teacher-forced: what the beam search would score
    each of them had it kept its SID path (an item the beams reach gets its beam score, up to the
    merge below), so DualGR can score another generator's candidates.

    Each candidate's SID levels are fed as the beam search feeds its beams (level 1 from the start
    query over the branch window, level l > 1 over the in-bucket keys of its s1 with S2D), and the
    level log-softmaxes at its codes are summed. The DBR branches are merged as `retrieve_indices`
    merges them (each weighted by its prior, then "sum" or "max"), except that every candidate gets
    both branches' probability (the beams add a branch's only where that branch reached the item).
    Items sharing a SID get the same score.

    Args:
        candidates: (U, C) dense item indices, -1 = padding. chunk: candidates fed at once per user.

    Returns:
        (U, C) float32 log-probabilities, -inf at padding.
    """
    if branch_merge not in BRANCH_MERGES:
        raise ValueError(f"branch_merge must be one of {BRANCH_MERGES}, got {branch_merge!r}")
    check_short_weight(short_weight)
    U = hist.n_users
    if candidates.dim() != 2 or candidates.shape[0] != U:
        raise ValueError(f"candidates must be (users, C) for {U} users, got {tuple(candidates.shape)}")
    cfg = model.cfg
    branches = [(cfg.long_window, 0.0)]
    if cfg.use_dbr:
        branches = list(zip((cfg.long_window, cfg.short_window), branch_log_priors(model, short_weight)))
    candidates = candidates.to(hist.offsets.device).long()
    out = torch.full(candidates.shape, float("-inf"), device=candidates.device)
    if U == 0 or candidates.shape[1] == 0:
        return out
    encoded = _encode_histories(model, hist, copies=len(branches))
    coarse = _branch_context(model, encoded, tuple(width for width, _ in branches))
    for start in range(0, candidates.shape[1], chunk):
        part = candidates[:, start:start + chunk]
        codes = model_codes(model, part).repeat(len(branches), 1, 1)  # (B * U, C', L), branch-stacked
        per_branch = _forced_log_probs(model, coarse, encoded, codes, kernel).reshape(len(branches), U, -1)
        per_branch = per_branch + torch.tensor([p for _, p in branches], device=out.device).view(-1, 1, 1)
        merged = per_branch.logsumexp(0) if branch_merge == "sum" else per_branch.amax(0)
        out[:, start:start + chunk] = torch.where(part >= 0, merged, torch.full_like(merged, float("-inf")))
    return out


def _forced_log_probs(model: DualGR, coarse: _Context, encoded: _EncodedHistories, codes: torch.Tensor,
                      kernel: str) -> torch.Tensor:
    """codes (U', C, L): per user of `coarse`, C SIDs fed as C beams -> (U', C) their summed level
    log-probabilities (the beam search's log-softmax over the whole codebook at every level)."""
    cfg = model.cfg
    U, C, L = codes.shape
    device = codes.device
    weights = decode_weights(model)
    heads = model.blocks[0].self_attn
    cache = _PrefixCache(len(model.blocks), U, C, L, heads.n_heads, heads.head_dim, device)
    lo = torch.ones(U, 1, dtype=torch.long, device=device)
    hidden = _decoder_step(model, weights, model.start_tokens(coarse.latest), cache, coarse, lo,
                           (coarse.lengths + 1).unsqueeze(1), kernel)
    log_probs = F.log_softmax(model.heads[0](hidden).float(), -1)  # (U, 1, K): one start query per user
    total = log_probs[:, 0].gather(1, codes[..., 0])
    if L > 1:
        cache.reorder(torch.zeros(U, C, dtype=torch.long, device=device))  # every candidate extends the start
    for level in range(1, L):
        x = F.embedding(codes[..., level - 1], weights.prefix_tokens[level - 1])
        if cfg.use_s2d:
            ctx = encoded.fine
            lo, hi = _key_ranges(encoded.bucket_keys, codes[..., 0].contiguous(), cfg.in_bucket_cap)
        else:
            ctx = coarse
            lo = torch.ones(U, C, dtype=torch.long, device=device)
            hi = (coarse.lengths + 1).unsqueeze(1).expand(U, C)
        hidden = _decoder_step(model, weights, x, cache, ctx, lo, hi, kernel)
        log_probs = F.log_softmax(model.heads[level](hidden).float(), -1)  # (U, C, K)
        total = total + log_probs.gather(2, codes[..., level:level + 1]).squeeze(-1)
        if level < L - 1:
            cache.reorder(torch.arange(C, device=device).expand(U, C))  # each candidate is its own beam
    return total
