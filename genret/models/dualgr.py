"""DualGR: an encoder-free generative retriever over semantic IDs (dualgr.txt, sections 2.2-2.5).

The context is LN([user token; action embeddings]); no encoder runs over it. A small decoder
generates the SID (s1, s2, s3) of the next item: each block has causal self-attention over the
SID prefix (BOS, s1, s2), cross-attention to the context, and an FFN. The cross-attention is
step-wise:

* the token that predicts s1 sees the DBR-chosen window (the last `long_window` or the last
  `short_window` actions);
* the tokens that predict s2 and s3 see the S2D in-bucket subset: the actions whose s1 equals
  the target's (training) or the beam's (inference) s1, most recent first, capped.

The user token is always visible, so no query ever sees an empty context. An action embedding
sums its SID-level embeddings, an optional item-id embedding and bucketised side features (rating,
watch time, time gap, ...). With `cross_rope` the cross-attention also knows how long ago each
action happened (rotary positions, relative to the target); without it the context is a bag.
With `last_action_query` the level-1 token starts from the newest action instead of a shared BOS.
With `encoder_blocks` > 0 a small causal transformer runs over the actions first (an option
beyond the paper): each context token then summarises the history up to its action.

Training trains every target of a user's sequence in one forward pass (as SASRec does): each
target's query group cross-attends only the actions before it, further restricted by the masks
above; exposure negatives are extra one-token query groups at their own positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from genret.models.layers import Attention, CPUFastDropout, init_weights, rotary


@dataclass
class DualGRConfig:
    """Sizes and switches of DualGR. The defaults are a small CPU-friendly model; the paper's
    production setting is configs/dualgr_paper.yaml (4 blocks, d=512, 8 heads, FFN 1024,
    history 1000, windows 1000/64, 3 x 8192 codes, alpha 0.1)."""

    n_levels: int = 3  # SID depth L
    codebook_size: int = 256  # codes per level K
    n_items: int = 0  # catalogue size, for the optional item-id embedding (0 = off)
    user_feature_cardinalities: list[int] = field(default_factory=list)  # one per static field
    n_side_features: int = 0  # bucketised per-action side features (watch time, rating, gap, ...)
    side_buckets: int = 16  # buckets per side feature (0 is reserved for "missing")
    d_model: int = 64
    n_heads: int = 4
    n_blocks: int = 2
    d_ffn: int = 128
    dropout: float = 0.1
    max_history: int = 200  # H_t: most recent positives kept
    long_window: int = 200  # L_long
    short_window: int = 16  # L_short
    in_bucket_cap: int = 64  # S2D: most recent same-s1 actions kept
    use_dbr: bool = True  # off: the long branch only ("w/o DBR")
    use_s2d: bool = True  # off: fine levels see the level-1 context ("w/o S2D")
    use_entp: bool = True  # off: plain NTP, negatives ignored ("w/o ENTP")
    # Recency in cross-attention: rotary positions on half of each head's dims of the action keys
    # and target queries, so a score depends on how long ago an action happened (the actions carry
    # no position otherwise). The user token gets no rotated dims. Off reproduces a bag of actions.
    cross_rope: bool = False
    # The level-1 query starts from the most recent action (its context token, projected) instead
    # of a BOS shared by every user, so the first cross-attention already asks "what follows
    # this?". Off (the paper's decoder): the first hop's weights depend on the keys alone.
    last_action_query: bool = False
    # Optional action encoder: this many pre-norm blocks of causal self-attention (rotary
    # positions) + FFN over the actions before the decoder reads them, so each context token
    # carries what came before it (SASRec's strength). 0 (the paper's decoder) keeps the context
    # encoder-free. Causal, so a target still sees nothing from its own position onward, and the
    # decode cache is unchanged: the encoder runs once per request.
    encoder_blocks: int = 0
    # Dropout on each action's embedding before it enters the context (SASRec drops its input
    # embeddings too): the item-id rows of a sparse catalogue otherwise memorise the training
    # sequences within a few epochs.
    context_dropout: float = 0.0
    alpha: float = 0.1  # ENTP negative weight
    eps: float = 1e-6  # probability clip for ENTP
    # Ranking only, beyond the paper (genret.models.content_term): > 0 ranks the whole catalogue
    # by the content baseline's score plus this weight x the beams' probability; the checkpoint then
    # carries every item's TF-IDF rows. Training ignores it. 0: the beams' own order.
    content_weight: float = 0.0
    # Ranking only, with the content term (genret.models.content_term.PrefixTerm): also add this
    # weight x the beams' probability of each item's depth-`content_prefix_depth` SID prefix, so an
    # item the beams did not list (a cold item among them) is lifted inside the regions they expect.
    # Nothing with content_weight 0 (so a sweep of content_weight may include 0).
    content_prefix_weight: float = 0.0
    content_prefix_depth: int = 1

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_levels < 1:
            raise ValueError(f"n_levels must be >= 1, got {self.n_levels}")
        if not 0 < self.short_window <= self.long_window:
            raise ValueError(
                f"need 0 < short_window <= long_window, got {self.short_window} and {self.long_window}"
            )
        if self.long_window > self.max_history:
            raise ValueError(f"long_window={self.long_window} exceeds max_history={self.max_history}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0 <= self.context_dropout < 1:
            raise ValueError(f"context_dropout must lie in [0, 1), got {self.context_dropout}")
        if self.encoder_blocks < 0:
            raise ValueError(f"encoder_blocks must be >= 0, got {self.encoder_blocks}")
        if not self.content_weight >= 0.0:  # also refuses NaN
            raise ValueError(f"content_weight must be >= 0 (0 = no content term), got {self.content_weight}")
        if not self.content_prefix_weight >= 0.0:
            raise ValueError(f"content_prefix_weight must be >= 0 (0 = off), got {self.content_prefix_weight}")
        if self.content_prefix_weight > 0 and not 1 <= self.content_prefix_depth < self.n_levels:
            raise ValueError(f"content_prefix_depth must lie in [1, {self.n_levels - 1}] (a proper SID prefix), "
                             f"got {self.content_prefix_depth}")


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention over the SID prefix, cross-attention to the context, FFN.

    Training runs these methods; beam search runs the same three steps laid out for one new token
    per beam (genret.decoding.beam_search._decoder_step): the self-attention against the prefix
    cache, the context through the packed decode kernel, each residual add fused with the next norm.
    """

    def __init__(self, cfg: DualGRConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.n_heads)
        self.norm_cross = nn.LayerNorm(d)
        self.cross_attn = Attention(d, cfg.n_heads)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.d_ffn), nn.GELU(), nn.Linear(cfg.d_ffn, d))
        self.drop = CPUFastDropout(cfg.dropout)

    def self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """x (G, Lq, d): each group is one target's prefix tokens; causal inside the group."""
        h = self.norm_self(x)
        q = self.self_attn.project_q(h)
        k, v = self.self_attn.project_kv(h)
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
        return x + self.drop(self.self_attn.attend(q, k, v, causal.expand(x.shape[0], -1, -1)))

    def cross_attention(self, x: torch.Tensor, attend_heads, place_queries=None) -> torch.Tensor:
        """x + out(attend_heads(q)): q (..., H, Dh) is this block's query projection of LN(x),
        passed through `place_queries` (recency positions) when given; `attend_heads` returns the
        heads' outputs in q's shape (the training mask or the decode kernel)."""
        q = self.cross_attn.project_q(self.norm_cross(x))
        if place_queries is not None:
            q = place_queries(q)
        return x + self.drop(self.cross_attn.out(attend_heads(q).flatten(-2)))

    def ffn_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class EncoderBlock(nn.Module):
    """Pre-norm causal self-attention (rotary positions on every head dim) + FFN over the actions."""

    def __init__(self, cfg: DualGRConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.n_heads)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.d_ffn), nn.GELU(), nn.Linear(cfg.d_ffn, d))
        self.drop = CPUFastDropout(cfg.dropout)

    def forward(self, x: torch.Tensor, causal: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) left-aligned actions, causal (T, T) bool, positions (T,)."""
        h = self.norm_self(x)
        head_dim = self.self_attn.head_dim
        q = rotary(self.self_attn.project_q(h), positions, head_dim)
        k, v = self.self_attn.project_kv(h)
        k = rotary(k, positions, head_dim)
        x = x + self.drop(self.self_attn.attend(q, k, v, causal.expand(x.shape[0], -1, -1)))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


@dataclass
class TrainBatch:
    """One batch of users, every positive of each sequence a target (see genret.training.sequence_datamodule).

    items:      (B, T) int64 positive item indices in time order, -1 = padding
    codes:      (B, T, L) int64 SIDs of those items (0 where padded)
    user_feats: (B, F) int64 static user features (0 = unknown), F may be 0
    side:       (B, T, S) int64 bucketised side features (0 = missing), S may be 0
    neg_items:  (B, N) int64 exposure negatives, -1 = padding
    neg_codes:  (B, N, L) int64
    neg_pos:    (B, N) int64 number of positives before each negative (its history length)
    loss_mask:  (B, T) bool positives that are scored (all valid ones in training; the last in validation)
    """

    items: torch.Tensor
    codes: torch.Tensor
    user_feats: torch.Tensor
    side: torch.Tensor
    neg_items: torch.Tensor
    neg_codes: torch.Tensor
    neg_pos: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device) -> "TrainBatch":
        return TrainBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


class DualGR(nn.Module):
    def __init__(self, cfg: DualGRConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, K, L = cfg.d_model, cfg.codebook_size, cfg.n_levels
        # Action frontend: E_a(a) = sum_l E_sid^(l)[s_l(a)] (+ item id) (+ side buckets).
        # sid_embeddings[0] is also DBR's E_vocab^(1).
        self.sid_embeddings = nn.ModuleList(nn.Embedding(K, d) for _ in range(L))
        self.item_embedding = nn.Embedding(cfg.n_items, d) if cfg.n_items > 0 else None
        self.side_embeddings = nn.ModuleList(
            nn.Embedding(cfg.side_buckets + 1, d) for _ in range(cfg.n_side_features)
        )
        # User frontend: one summed token of the static fields, or a learned default token.
        self.user_default = nn.Parameter(torch.zeros(d))
        self.user_embeddings = nn.ModuleList(nn.Embedding(c + 1, d) for c in cfg.user_feature_cardinalities)
        self.context_drop = CPUFastDropout(cfg.context_dropout)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.encoder_blocks))
        self.context_norm = nn.LayerNorm(d)
        # Decoder inputs: BOS, then the embedding of the code chosen at each earlier level.
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.prefix_embeddings = nn.ModuleList(nn.Embedding(K, d) for _ in range(L - 1))
        self.level_position = nn.Parameter(torch.randn(L, d) * 0.02)
        self.last_action = nn.Linear(d, d) if cfg.last_action_query else None
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_blocks))
        self.final_norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, K) for _ in range(L))
        # Every item's SID, for decoding from raw histories (set by set_item_codes; not trained). A plain
        # attribute, not a buffer: weight averaging (EMA) averages buffers too, and would blend these
        # integers. _apply still moves it with the model.
        self.item_codes = torch.zeros(0, L, dtype=torch.long)
        # DBR's routing prior P(short branch): how often the gate sent a training target to the short
        # window, among the targets whose two windows differ (where they do not, both branches decode
        # the same list and the weight is moot). Decoding weighs the branches' lists by it, so their
        # merge is the mixture sum_b P(b) p(item | b) the gate trained. Kept as exponential averages of
        # the two counts per training step (short, windows differ): their ratio needs no bias
        # correction, and zeros mean "unknown".
        self.register_buffer("routing_stats", torch.zeros(2))
        self.apply(init_weights)

    def _apply(self, fn, recurse=True):
        # .to(device) / .cuda() move the SID table too; dtype casts leave integer tensors alone.
        super()._apply(fn, recurse)
        self.item_codes = fn(self.item_codes)
        return self

    ROUTING_MOMENTUM = 0.01  # an average over the last ~100 training steps

    @torch.no_grad()
    def record_routing(self, n_short: torch.Tensor, n_split: torch.Tensor) -> None:
        """Fold one training batch into the prior: n_short targets routed to the short window out of
        n_split whose two windows differ."""
        m = self.ROUTING_MOMENTUM
        step = torch.stack([torch.as_tensor(n_short).detach(), torch.as_tensor(n_split).detach()])
        self.routing_stats.mul_(1 - m).add_(step.to(self.routing_stats), alpha=m)

    @property
    def short_weight(self) -> float:
        """P(short branch | the windows differ) from training, kept inside [0.01, 0.99]; 0.5 when no
        such target was recorded (an untrained model, or windows that never differ)."""
        short, split = self.routing_stats.tolist()
        return 0.5 if split <= 0 else min(max(short / split, 0.01), 0.99)

    def set_item_codes(self, codes: torch.Tensor) -> None:
        """codes (n_items, L) int64: the SID table the decoder maps history items through."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != self.cfg.n_levels:
            raise ValueError(f"item codes must have shape (n_items, {self.cfg.n_levels}), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cfg.codebook_size):
            raise ValueError(f"item codes must lie in [0, {self.cfg.codebook_size})")
        self.item_codes = codes.to(self.bos.device)

    # ------------------------------------------------------------------ frontend
    def user_token(self, user_feats: torch.Tensor) -> torch.Tensor:
        """(B, F) int64 -> (B, d)."""
        token = self.user_default.expand(user_feats.shape[0], -1)
        for f, emb in enumerate(self.user_embeddings):
            token = token + emb(user_feats[:, f])
        return token

    def action_embeddings(self, items: torch.Tensor, codes: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """items (B, T) (-1 = pad), codes (B, T, L), side (B, T, S) -> (B, T, d), zero at padding."""
        x = sum(emb(codes[..., level]) for level, emb in enumerate(self.sid_embeddings))
        if self.item_embedding is not None:
            x = x + self.item_embedding(items.clamp(min=0))
        for s, emb in enumerate(self.side_embeddings):
            x = x + emb(side[..., s])
        return x * (items >= 0).unsqueeze(-1)

    def context(self, items, codes, user_feats, side) -> torch.Tensor:
        """LN([user token; actions]) -> (B, 1 + T, d). Padding keys must be masked by the caller.

        The actions must be in time order, oldest first, padding last: the optional encoder is
        causal over that order (other layouts are gathered from its output, see beam_search)."""
        actions = self.context_drop(self.action_embeddings(items, codes, side))
        if len(self.encoder):
            T = actions.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=actions.device).tril()
            positions = torch.arange(T, device=actions.device)
            for block in self.encoder:
                actions = block(actions, causal, positions)
            actions = actions * (items >= 0).unsqueeze(-1)
        tokens = torch.cat([self.user_token(user_feats)[:, None], actions], 1)
        return self.context_norm(tokens)

    def query_tokens(self, prefix_codes: torch.Tensor) -> torch.Tensor:
        """prefix_codes (..., j) codes of levels 1..j -> (..., j + 1, d): BOS then one token per code."""
        bos = (self.bos + self.level_position[0]).expand(prefix_codes.shape[:-1] + (1, -1))
        rest = [
            self.prefix_embeddings[level](prefix_codes[..., level]) + self.level_position[level + 1]
            for level in range(prefix_codes.shape[-1])
        ]
        return torch.cat([bos] + [r.unsqueeze(-2) for r in rest], dim=-2)

    def start_tokens(self, latest: torch.Tensor) -> torch.Tensor:
        """latest (..., d): the context token of each target's most recent action (the user token
        when there is none) -> (..., 1, d) the level-1 query token."""
        bos = (self.bos + self.level_position[0]).expand(latest.shape)
        if self.last_action is not None:
            bos = bos + self.last_action(latest)
        return bos.unsqueeze(-2)

    # ------------------------------------------------------------------ recency (cross_rope)
    @property
    def rope_dims(self) -> int:
        """Rotated dims per head (0 when cross_rope is off)."""
        return (self.cfg.d_model // self.cfg.n_heads) // 4 * 2 if self.cfg.cross_rope else 0

    def position_keys(self, k: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """k (B, 1 + T, H, Dh) context keys (user token first), positions (B, T) of the actions."""
        n = self.rope_dims
        if not n:
            return k
        user = torch.cat([torch.zeros_like(k[:, :1, :, :n]), k[:, :1, :, n:]], -1)  # position-free
        return torch.cat([user, rotary(k[:, 1:], positions, n)], 1)

    def position_queries(self, q: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """q (B, Q, H, Dh), positions (B, Q): how many actions precede each query's target."""
        return rotary(q, positions, self.rope_dims) if self.rope_dims else q

    # ------------------------------------------------------------------ DBR
    @torch.no_grad()
    def dbr_choose_short(self, level1: torch.Tensor, valid: torch.Tensor, target_level1: torch.Tensor,
                         positions: torch.Tensor) -> torch.Tensor:
        """The hard gate of eq. 3-5, for many targets of each sequence at once.

        level1 (B, T) level-1 codes of the history, valid (B, T) bool, target_level1 (B, Q) the
        target's level-1 code, positions (B, Q) the number of actions before each target.
        Returns (B, Q) bool: True where the short window is more similar to the target.
        No gradient flows through the choice (it is an argmax).
        """
        cfg = self.cfg
        emb = self.sid_embeddings[0].weight.detach()
        vec = emb[level1] * valid.unsqueeze(-1)  # (B, T, d)
        csum = F.pad(vec.cumsum(1), (0, 0, 1, 0))  # (B, T + 1, d): csum[:, p] = sum of first p actions
        ccount = F.pad(valid.long().cumsum(1), (1, 0))  # (B, T + 1)

        def window_mean(width: int) -> torch.Tensor:
            start = (positions - width).clamp(min=0)
            total = _gather_rows(csum, positions) - _gather_rows(csum, start)
            count = ccount.gather(1, positions) - ccount.gather(1, start)
            return total / count.clamp(min=1).unsqueeze(-1)

        target = emb[target_level1]
        gamma_long = F.cosine_similarity(target, window_mean(cfg.long_window), dim=-1)
        gamma_short = F.cosine_similarity(target, window_mean(cfg.short_window), dim=-1)
        return gamma_short > gamma_long

    # ------------------------------------------------------------------ masks
    def window_mask(self, positions: torch.Tensor, choose_short: torch.Tensor, n_keys: int,
                    valid: torch.Tensor) -> torch.Tensor:
        """(B, Q) positions and gate -> (B, Q, 1 + T) cross-attention mask for the level-1 token."""
        j = torch.arange(n_keys - 1, device=positions.device)
        width = torch.where(choose_short, self.cfg.short_window, self.cfg.long_window)
        pos = positions.unsqueeze(-1)
        actions = (j < pos) & (j >= pos - width.unsqueeze(-1)) & valid.unsqueeze(1)
        return F.pad(actions, (1, 0), value=True)  # the user token is always visible

    def in_bucket_mask(self, level1: torch.Tensor, valid: torch.Tensor, target_level1: torch.Tensor,
                       positions: torch.Tensor) -> torch.Tensor:
        """S2D (eq. 8): actions before each target with the target's s1, the most recent
        `in_bucket_cap` of them. (B, Q) -> (B, Q, 1 + T)."""
        T = level1.shape[1]
        j = torch.arange(T, device=level1.device)
        same = (level1.unsqueeze(1) == target_level1.unsqueeze(-1)) & valid.unsqueeze(1)
        same &= j < positions.unsqueeze(-1)  # (B, Q, T)
        # rank from the most recent: how many same-bucket actions come at or after j (before t).
        recency_rank = same.flip(-1).long().cumsum(-1).flip(-1)
        same &= recency_rank <= self.cfg.in_bucket_cap
        return F.pad(same, (1, 0), value=True)

    # ------------------------------------------------------------------ training forward
    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Teacher-forced logits for every positive target and every exposure negative.

        Returns:
            pos_logits: list of L tensors (B, T, K): level-l logits for target t (history = items[:t]).
            neg_logits: (B, N, K) level-1 logits of each negative at its position.
            choose_short: (B, T) the DBR gate of each positive target.
        """
        cfg = self.cfg
        B, T = batch.items.shape
        L = cfg.n_levels
        valid = batch.items >= 0
        level1 = batch.codes[..., 0]
        ctx = self.context(batch.items, batch.codes, batch.user_feats, batch.side)  # (B, 1+T, d)
        positions = torch.arange(T, device=ctx.device).expand(B, T)

        if cfg.use_dbr:
            short_pos = self.dbr_choose_short(level1, valid, level1, positions)
        else:
            short_pos = torch.zeros_like(valid)
        coarse_mask = self.window_mask(positions, short_pos, T + 1, valid)  # (B, T, 1+T)
        if cfg.use_s2d and L > 1:
            fine_mask = self.in_bucket_mask(level1, valid, level1, positions)
        else:
            fine_mask = coarse_mask
        # Query group per target: L tokens (BOS, s1, ..., s_{L-1}). ctx[:, t] is the newest
        # context token before target t (the user token for t = 0).
        pos_queries = self.query_tokens(batch.codes[..., : L - 1])  # (B, T, L, d)
        if self.last_action is not None:
            pos_queries = torch.cat([self.start_tokens(ctx[:, :T]), pos_queries[:, :, 1:]], 2)
        step_masks = [coarse_mask] + [fine_mask] * (L - 1)
        pos_mask = torch.stack(step_masks, dim=2).reshape(B, T * L, T + 1)

        n_neg = batch.neg_items.shape[1] if cfg.use_entp else 0
        if n_neg:
            neg_valid = batch.neg_items >= 0
            neg_level1 = batch.neg_codes[..., 0]
            neg_pos = batch.neg_pos.clamp(max=T)
            if cfg.use_dbr:
                short_neg = self.dbr_choose_short(level1, valid, neg_level1, neg_pos)
            else:
                short_neg = torch.zeros_like(neg_valid)
            neg_mask = self.window_mask(neg_pos, short_neg, T + 1, valid)  # (B, N, 1+T)
            neg_queries = self.start_tokens(_gather_rows(ctx, neg_pos))  # (B, N, 1, d): the level-1 token only
            cross_mask = torch.cat([pos_mask, neg_mask], dim=1)
        else:
            cross_mask = pos_mask

        # Each query sits at its target's position: t for the L tokens of target t, neg_pos for negatives.
        query_pos = positions.repeat_interleave(L, dim=1)
        if n_neg:
            query_pos = torch.cat([query_pos, neg_pos], 1)
        x_pos = pos_queries.reshape(B * T, L, -1)
        x_neg = neg_queries.reshape(B * n_neg, 1, -1) if n_neg else None
        for block in self.blocks:
            k, v = block.cross_attn.project_kv(ctx)  # (B, 1+T, H, Dh): once per block, shared by all queries
            k = self.position_keys(k, positions)
            x_pos = block.self_attention(x_pos)
            parts = [x_pos.reshape(B, T * L, -1)]
            if n_neg:
                x_neg = block.self_attention(x_neg)
                parts.append(x_neg.reshape(B, n_neg, -1))
            x = torch.cat(parts, dim=1)
            x = block.cross_attention(x, lambda q: block.cross_attn.attend_heads(q, k, v, cross_mask),
                                      lambda q: self.position_queries(q, query_pos))
            x = block.ffn_residual(x)
            x_pos = x[:, : T * L].reshape(B * T, L, -1)
            if n_neg:
                x_neg = x[:, T * L:].reshape(B * n_neg, 1, -1)

        h_pos = self.final_norm(x_pos).reshape(B, T, L, -1)
        out = {
            "pos_logits": [self.heads[level](h_pos[:, :, level]) for level in range(L)],
            "choose_short": short_pos,
        }
        if n_neg:
            out["neg_logits"] = self.heads[0](self.final_norm(x_neg).reshape(B, n_neg, -1))
        return out

    def loss(self, batch: TrainBatch, out: dict[str, torch.Tensor] | None = None,
             chunks: int = 1) -> dict[str, torch.Tensor]:
        """ENTP (eq. 10): NLL at every level for positives, -alpha log(1 - p1) for negatives,
        averaged over all tuples in the batch. Without negatives (or use_entp off) it is NTP.

        chunks > 1 runs the batch as that many length-sorted pieces (split_by_length), each padded
        only to its own longest sequence, and sums their terms: the same loss and gradient as one
        pass, for a fraction of the padded work when lengths are skewed (Amazon 5-core). A given
        `out` (one forward pass of the whole batch) is scored as it is."""
        if out is not None or chunks <= 1:
            return self._combine([self._loss_terms(batch, self(batch) if out is None else out)])
        return self._combine([self._loss_terms(piece, self(piece)) for piece in split_by_length(batch, chunks)])

    def _loss_terms(self, batch: TrainBatch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums and counts of one forward pass (combined across chunks by _combine)."""
        cfg = self.cfg
        valid = batch.loss_mask & (batch.items >= 0)
        level_nll = []
        # Scored in float32 whatever the autocast dtype: a bf16 log-softmax loses the small probabilities.
        for level, logits in enumerate(out["pos_logits"]):
            logp = logits.float().log_softmax(-1).gather(-1, batch.codes[..., level : level + 1]).squeeze(-1)
            p = logp.exp().clamp(cfg.eps, 1 - cfg.eps)
            level_nll.append((-p.log() * valid).sum())
        neg_sum = torch.zeros((), device=valid.device)
        n_neg = torch.zeros((), dtype=torch.long, device=valid.device)
        if "neg_logits" in out:
            neg_valid = batch.neg_items >= 0
            n_neg = neg_valid.sum()
            p1 = out["neg_logits"].float().softmax(-1).gather(-1, batch.neg_codes[..., :1]).squeeze(-1)
            p1 = p1.clamp(cfg.eps, 1 - cfg.eps)
            neg_sum = (-cfg.alpha * torch.log1p(-p1) * neg_valid).sum()
        # Targets whose two DBR windows hold different actions: more actions before them than the short
        # window (left-aligned sequences: a target's index is its history length). Elsewhere both
        # branches see the same actions, so the gate's tie-break to "long" says nothing about them.
        positions = torch.arange(valid.shape[1], device=valid.device)
        split = valid & (positions > cfg.short_window) & (cfg.long_window > cfg.short_window)
        return {"level_nll": torch.stack(level_nll), "neg_sum": neg_sum, "n_pos": valid.sum(), "n_neg": n_neg,
                "n_short": (out["choose_short"] & valid).sum(), "n_split": split.sum()}

    @staticmethod
    def _combine(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        total = {k: sum(part[k] for part in parts) for k in parts[0]}
        n_pos, n_neg = total["n_pos"], total["n_neg"]
        return {
            "loss": (total["level_nll"].sum() + total["neg_sum"]) / (n_pos + n_neg).clamp(min=1),
            "nll_levels": total["level_nll"] / n_pos.clamp(min=1),
            "neg_loss": total["neg_sum"] / n_neg.clamp(min=1),
            "n_pos": n_pos,
            "n_neg": n_neg,
            "short_fraction": total["n_short"].float() / n_pos.clamp(min=1),
            "n_short": total["n_short"],
            "n_split": total["n_split"],
        }


def split_by_length(batch: TrainBatch, chunks: int) -> list[TrainBatch]:
    """The batch's sequences sorted by length and cut into up to `chunks` pieces of equal row count,
    each trimmed to its longest sequence and its last valid negative. Sequences are left-aligned
    (padding at the end), so trimming drops padding only."""
    lengths = (batch.items >= 0).sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    neg_valid = batch.neg_items >= 0
    neg_last = torch.where(neg_valid, torch.arange(1, neg_valid.shape[1] + 1, device=neg_valid.device), 0)
    neg_len = neg_last.max(1).values if neg_valid.shape[1] else torch.zeros_like(lengths)
    pieces = []
    for rows in order.tensor_split(min(chunks, len(order))):  # never more pieces than rows: none is empty
        T = max(int(lengths[rows].max()), 1)
        N = int(neg_len[rows].max())
        pieces.append(TrainBatch(
            items=batch.items[rows, :T], codes=batch.codes[rows, :T], user_feats=batch.user_feats[rows],
            side=batch.side[rows, :T], neg_items=batch.neg_items[rows, :N], neg_codes=batch.neg_codes[rows, :N],
            neg_pos=batch.neg_pos[rows, :N], loss_mask=batch.loss_mask[rows, :T]))
    return pieces


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, S, d), index (B, Q) -> (B, Q, d)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_config(**overrides) -> DualGRConfig:
    """The paper's production sizes (section 3)."""
    base = dict(n_levels=3, codebook_size=8192, d_model=512, n_heads=8, n_blocks=4, d_ffn=1024,
                max_history=1000, long_window=1000, short_window=64, alpha=0.1)
    base.update(overrides)
    return DualGRConfig(**base)


__all__ = ["DualGR", "DualGRConfig", "TrainBatch", "paper_config", "count_parameters"]
