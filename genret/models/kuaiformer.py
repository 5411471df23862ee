"""KuaiFormer (kuaiformer.txt, sections 2.2-2.5): an embedding-based retriever.

Each watched item becomes one token, MLP([id embedding; bucketised side features]) (eq. 5). Older
items are compressed (section 2.3): the window is split into an earlier part (groups of 64 items),
a middle part (groups of 16) and the latest items; each group goes through one bidirectional
transformer layer and is mean-pooled into one token. With the defaults a 256-item window becomes
2 + 5 + 48 = 55 tokens (Table 3; eq. 7-8: groups 1-64, 65-128, then five groups of 16 up to item
208, then items 209-256 kept as they are). k learned query tokens are appended (eq. 9); a
Llama-style causal transformer (RMSNorm, masked multi-head attention, SwiGLU) runs over the whole
thing, so each query token sees every sequence token and the query tokens before it. Their outputs
are the k interests u_1..u_k, and an item's score is max_j x^T u_j (eq. 10).

SASRec is the setting k = 1, no compression, no item MLP, the interest read at the last sequence
position (`readout="last_position"`, eq. 6), which also lets every position predict its next item.

The losses (eq. 11-12: in-batch softmax with logQ correction and label smoothing, or a full
softmax) are plain functions at the end of this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from genret.models.layers import Attention, init_weights, rotary

READOUTS = ("query_tokens", "last_position")
POSITIONS = ("learned", "rope", "none")


@dataclass
class KuaiFormerConfig:
    """Sizes and switches of KuaiFormer. Fields marked "from the data" are filled in by the
    training module from the data set, so one YAML serves any catalogue."""

    n_items: int = 0  # catalogue size (from the data)
    max_len: int = 256  # history window in items (from the data module's max_len)
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    d_ffn: int = 0  # SwiGLU hidden width; 0 = 4 * d_model
    dropout: float = 0.2  # on tokens and residual branches
    positions: str = "learned"  # "learned" (indexed by recency, as SASRec's left-padded table), "rope", "none"
    n_interests: int = 4  # k
    readout: str = "query_tokens"  # or "last_position" (SASRec; needs n_interests = 1)
    compression: bool = True  # adaptive item compression (section 2.3)
    early_group_size: int = 64  # items per earlier-part group
    early_groups: int = 2
    middle_group_size: int = 16  # items per middle-part group
    middle_groups: int = 5
    item_mlp: bool = True  # eq. 5; off = the raw id embedding is the token (SASRec; no features allowed)
    feature_dim: int = 16  # embedding width of each side / item feature
    item_feature_widths: list[int] = field(default_factory=list)  # ids per item, per item feature (from the data)
    item_feature_cardinalities: list[int] = field(default_factory=list)  # (from the data)
    side_cardinalities: list[int] = field(default_factory=list)  # per-row bucketised features (from the data)

    @property
    def compressed_span(self) -> int:
        """Items covered by the earlier and middle groups."""
        return self.early_group_size * self.early_groups + self.middle_group_size * self.middle_groups

    @property
    def latest_items(self) -> int:
        """Items kept uncompressed at the end of the window."""
        return self.max_len - self.compressed_span if self.compression else self.max_len

    @property
    def sequence_tokens(self) -> int:
        """Tokens the causal transformer sees for a full window, query tokens excluded."""
        if not self.compression:
            return self.max_len
        return self.early_groups + self.middle_groups + self.latest_items

    @property
    def ffn_width(self) -> int:
        return self.d_ffn or 4 * self.d_model

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1 (the catalogue size), got {self.n_items}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError("rope needs an even head width (d_model / n_heads)")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.n_interests < 1:
            raise ValueError(f"n_interests must be >= 1, got {self.n_interests}")
        if self.readout == "last_position" and self.n_interests != 1:
            raise ValueError("readout='last_position' gives one interest; set n_interests: 1 or use query_tokens")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.compression:
            sizes = (self.early_group_size, self.early_groups, self.middle_group_size, self.middle_groups)
            if min(sizes) < 0 or self.early_group_size * self.middle_group_size == 0:
                raise ValueError(f"group sizes must be >= 1 and group counts >= 0, got {sizes}")
            if self.latest_items < 1:
                raise ValueError(
                    f"compression covers {self.compressed_span} items but max_len is {self.max_len}; "
                    f"max_len must exceed early_group_size*early_groups + middle_group_size*middle_groups")
        if len(self.item_feature_widths) != len(self.item_feature_cardinalities):
            raise ValueError("item_feature_widths and item_feature_cardinalities need one entry per item feature")
        has_features = bool(self.item_feature_widths or self.side_cardinalities)
        if has_features and not self.item_mlp:
            raise ValueError("side / item features are mixed into the token by the item MLP; set item_mlp: true")


# ---------------------------------------------------------------------------------------- blocks
class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Llama block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)). The mask decides causal or not."""

    def __init__(self, d_model: int, n_heads: int, ffn_width: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.RMSNorm(d_model, eps=1e-6)
        self.attn = Attention(d_model, n_heads, bias=False)
        self.ffn_norm = nn.RMSNorm(d_model, eps=1e-6)
        self.ffn = SwiGLU(d_model, ffn_width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, S, d), mask (B, S, S) bool (True = may attend), positions (S,) for rotary positions or None."""
        h = self.attn_norm(x)
        q, (k, v) = self.attn.project_q(h), self.attn.project_kv(h)
        if positions is not None:
            q, k = rotary(q, positions, self.attn.head_dim), rotary(k, positions, self.attn.head_dim)
        x = x + self.drop(self.attn.attend(q, k, v, mask))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


def attention_mask(valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean attention mask (B, S, S), True = may attend.

    A token attends to valid keys (at or before it when `causal`) and always to itself, so padding
    rows are never fully masked (SDPA would return NaN); valid tokens never see padding.
    """
    S = valid.shape[1]
    allowed = valid[:, None, :].expand(-1, S, -1)
    if causal:
        allowed = allowed & torch.ones(S, S, dtype=torch.bool, device=valid.device).tril()
    return allowed | torch.eye(S, dtype=torch.bool, device=valid.device)


# ----------------------------------------------------------------------------------------- model
class KuaiFormer(nn.Module):
    """The network. Histories are right-aligned (most recent item last) and left-padded with -1.

    Args:
        config: a KuaiFormerConfig with n_items set (validated here).
    """

    def __init__(self, config: KuaiFormerConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        d = c.d_model
        self.item_embedding = nn.Embedding(c.n_items, d)
        # Item features are per-item id lists (0 = none), kept as buffers so a checkpoint is self-contained.
        for f, width in enumerate(c.item_feature_widths):
            self.register_buffer(f"item_feature_{f}", torch.zeros(c.n_items, width, dtype=torch.long))
        self.item_feature_embeddings = nn.ModuleList(
            nn.Embedding(card, c.feature_dim, padding_idx=0) for card in c.item_feature_cardinalities)
        self.side_embeddings = nn.ModuleList(
            nn.Embedding(card, c.feature_dim, padding_idx=0) for card in c.side_cardinalities)
        self.item_mlp = None
        if c.item_mlp:
            width = d + c.feature_dim * (len(c.item_feature_cardinalities) + len(c.side_cardinalities))
            self.item_mlp = nn.Sequential(nn.Linear(width, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
        self.group_encoder = Block(d, c.n_heads, c.ffn_width, c.dropout) if c.compression else None
        self.position_embedding = nn.Embedding(c.sequence_tokens, d) if c.positions == "learned" else None
        self.query_tokens = nn.Parameter(torch.randn(c.n_interests, d) * 0.02) if c.readout == "query_tokens" else None
        self.blocks = nn.ModuleList(
            Block(d, c.n_heads, c.ffn_width, c.dropout) for _ in range(c.n_layers))
        self.final_norm = nn.RMSNorm(d, eps=1e-6)
        self.dropout = nn.Dropout(c.dropout)
        self.apply(init_weights)

    def set_item_features(self, tables: list[torch.Tensor]) -> None:
        """Copy per-item feature id tables, each (n_items, width_f) int64 (0 = none)."""
        widths = self.config.item_feature_widths
        if len(tables) != len(widths):
            raise ValueError(f"expected {len(widths)} item feature tables, got {len(tables)}")
        for f, table in enumerate(tables):
            table = torch.as_tensor(table, dtype=torch.long)
            if table.shape != (self.config.n_items, widths[f]):
                raise ValueError(f"item feature {f} has shape {tuple(table.shape)}, "
                                 f"expected ({self.config.n_items}, {widths[f]})")
            getattr(self, f"item_feature_{f}").copy_(table)

    # ---------------------------------------------------------------------------------- tokens
    def tokens(self, items: torch.Tensor, side: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 5 with a skip: t_i = x_i + MLP([x_i; f_i]).

        The skip keeps the input token in the space of the id embedding that also scores items
        (eq. 10), as SASRec's tied embeddings do; without it the model must learn that link and,
        on the synthetic data, trains markedly slower.

        Args:
            items: (B, T) int64 item ids, -1 = padding.
            side: (B, T, S) int64 bucket ids (0 = missing), or None (all missing).

        Returns:
            tokens (B, T, d) float with zeros at padding, valid (B, T) bool.
        """
        valid = items >= 0
        if self.item_mlp is None:
            return self.item_embedding(items.clamp(min=0)) * valid[..., None], valid
        n_side = len(self.side_embeddings)
        if side is None:
            side = items.new_zeros(*items.shape, n_side)
        if side.shape != (*items.shape, n_side):
            raise ValueError(f"side must have shape {(*items.shape, n_side)}, got {tuple(side.shape)}")
        if side.numel():
            cards = torch.tensor(self.config.side_cardinalities, device=side.device)
            if bool((side < 0).any()) or bool((side.reshape(-1, n_side).amax(0) >= cards).any()):
                raise ValueError(f"side bucket ids must lie in 0..cardinality-1 (cardinalities "
                                 f"{self.config.side_cardinalities})")
        # A token depends only on (item, side buckets): run the MLP once per distinct pair in the batch
        # (overlapping windows of one user repeat most of them).
        key = items.clamp(min=0)
        for s, card in enumerate(self.config.side_cardinalities):
            key = key * card + side[..., s]
        unique_keys, inverse = torch.unique(key[valid], return_inverse=True)
        side_ids = []
        for card in reversed(self.config.side_cardinalities):
            side_ids.append(unique_keys % card)
            unique_keys = unique_keys // card
        unique_items = unique_keys
        parts = [self.item_embedding(unique_items)]
        for f, embedding in enumerate(self.item_feature_embeddings):
            ids = getattr(self, f"item_feature_{f}")[unique_items]  # (U, W)
            count = (ids > 0).sum(-1, keepdim=True).clamp(min=1)
            parts.append(embedding(ids).sum(-2) / count)  # mean over the item's ids
        parts += [embedding(ids) for embedding, ids in zip(self.side_embeddings, reversed(side_ids))]
        unique_tokens = self.item_mlp(torch.cat(parts, dim=-1)) + parts[0]  # (U, d)
        x = unique_tokens.new_zeros(*items.shape, unique_tokens.shape[-1])
        return x.index_put((valid,), unique_tokens[inverse]), valid

    def compress(self, tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Section 2.3: earlier / middle groups -> one bidirectional layer -> mean; latest kept.

        Args:
            tokens: (B, T, d) with T <= max_len, right-aligned; it is left-padded to max_len first.
            valid: (B, T) bool.

        Returns:
            (B, sequence_tokens, d) tokens and (B, sequence_tokens) bool validity; a group with no
            valid item is padding.
        """
        c = self.config
        B, T, d = tokens.shape
        if T < c.max_len:
            tokens = F.pad(tokens, (0, 0, c.max_len - T, 0))
            valid = F.pad(valid, (c.max_len - T, 0), value=False)
        out, out_valid, start = [], [], 0
        for size, count in ((c.early_group_size, c.early_groups), (c.middle_group_size, c.middle_groups)):
            if count == 0:
                continue
            stop = start + size * count
            groups = tokens[:, start:stop].reshape(B * count, size, d)
            group_valid = valid[:, start:stop].reshape(B * count, size)
            out.append(self._pool_groups(groups, group_valid).view(B, count, d))
            out_valid.append(group_valid.any(-1).view(B, count))
            start = stop
        out.append(tokens[:, start:])
        out_valid.append(valid[:, start:])
        return torch.cat(out, dim=1), torch.cat(out_valid, dim=1)

    def _pool_groups(self, groups: torch.Tensor, group_valid: torch.Tensor) -> torch.Tensor:
        """Mean of Bi_Transformer(group) over valid items (eq. 7); only non-empty groups are run."""
        pooled = groups.new_zeros(groups.shape[0], groups.shape[2])
        keep = group_valid.any(-1).nonzero().squeeze(1)
        if keep.numel() == 0:
            return pooled
        members, member_valid = groups[keep], group_valid[keep]
        hidden = self.group_encoder(members, attention_mask(member_valid, causal=False))
        weights = member_valid.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(1) / weights.sum(1)
        return pooled.index_put((keep,), mean)

    # -------------------------------------------------------------------------------- encoder
    def encode(self, items: torch.Tensor, side: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Run the causal transformer over [sequence tokens; query tokens].

        Args:
            items: (B, T) int64, right-aligned, -1 = padding, T <= max_len.
            side: (B, T, S) int64 bucket ids or None.

        Returns:
            hidden (B, T' + q, d) after the final RMSNorm, and T' (sequence tokens; q = k query
            tokens or 0).
        """
        c = self.config
        if items.ndim != 2:
            raise ValueError(f"items must be (batch, length), got shape {tuple(items.shape)}")
        if items.shape[1] > c.max_len:
            raise ValueError(f"history window of {items.shape[1]} items exceeds max_len={c.max_len}; "
                             f"keep the most recent {c.max_len}")
        if items.numel() and int(items.max()) >= c.n_items:
            raise ValueError(f"item id {int(items.max())} is outside the catalogue of {c.n_items:,} items")
        x, valid = self.tokens(items, side)
        if c.compression:
            x, valid = self.compress(x, valid)
        B, T, _ = x.shape
        if self.position_embedding is not None:
            recency = torch.arange(T - 1, -1, -1, device=x.device)  # 0 = most recent token
            x = x + self.position_embedding(recency)[None]
        if self.query_tokens is not None:
            x = torch.cat([x, self.query_tokens.expand(B, -1, -1)], dim=1)
            valid = torch.cat([valid, valid.new_ones(B, c.n_interests)], dim=1)
        x = self.dropout(x)
        mask = attention_mask(valid, causal=True)
        positions = torch.arange(x.shape[1], device=x.device) if c.positions == "rope" else None
        for block in self.blocks:
            x = block(x, mask, positions)
        return self.final_norm(x), T

    def user_vectors(self, items: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """The k interests u_1..u_k (eq. 9), or the last position's output (eq. 6).

        Returns:
            (B, k, d) float.
        """
        return self.interests(*self.encode(items, side))

    def interests(self, hidden: torch.Tensor, n_sequence_tokens: int) -> torch.Tensor:
        """Read the (B, k, d) interests from `encode`'s output."""
        T = n_sequence_tokens
        return hidden[:, T:] if self.query_tokens is not None else hidden[:, T - 1:T]

    def latest_item_states(self, hidden: torch.Tensor, n_sequence_tokens: int, items: torch.Tensor,
                           targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs of the uncompressed (latest) item tokens, each paired with the item after it.

        The item after the last one is the example's target. These pairs give an optional dense
        next-item loss (as SASRec's) on top of the query tokens' single target per example.

        Args:
            hidden, n_sequence_tokens: `encode`'s output for `items` (B, T).
            targets: (B,) int64 item after each history.

        Returns:
            states (M, 1, d) and next items (M,) over the M valid latest positions.
        """
        latest = min(self.config.latest_items, n_sequence_tokens)
        if items.shape[1] < latest:
            items = F.pad(items, (latest - items.shape[1], 0), value=-1)
        current = items[:, -latest:]
        following = torch.cat([current[:, 1:], targets[:, None]], dim=1)
        states = hidden[:, n_sequence_tokens - latest:n_sequence_tokens]
        valid = current >= 0
        return states[valid][:, None], following[valid]

    def position_vectors(self, items: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """Every position's output (SASRec training: position t predicts item t + 1).

        Returns:
            (B, T, d) float.
        """
        if self.config.readout != "last_position" or self.config.compression:
            raise ValueError("position_vectors needs readout='last_position' and compression off "
                             "(per-position targets do not exist for query tokens or compressed groups)")
        hidden, _ = self.encode(items, side)
        return hidden

    def item_vectors(self) -> torch.Tensor:
        """Item side of the score, x in eq. 10 (the id embedding table): (n_items, d) float."""
        return self.item_embedding.weight


# ---------------------------------------------------------------------------------------- scores and losses
def max_interest_scores(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Eq. 10: score(x) = max_j x^T u_j.

    Args:
        users: (N, k, d) interests. items: (C, d) candidate vectors.

    Returns:
        (N, C) scores.
    """
    if users.shape[1] == 1:
        return users[:, 0] @ items.T
    return torch.einsum("nkd,cd->nkc", users, items).amax(dim=1)


def smoothed_softmax_loss(logits: torch.Tensor, target_column: torch.Tensor, allowed: torch.Tensor | None = None,
                          alpha: float = 0.0) -> torch.Tensor:
    """Eq. 12: softmax over each row's allowed columns, then
    -(1 - alpha) log p(positive) - alpha / |B| * sum over the |B| negatives of log p(negative).

    With alpha = 0 it is eq. 11 (cross-entropy). Subtract log Q from `logits` beforehand for the
    logQ-corrected version (eq. 11-12's Score - log Q).

    Args:
        logits: (N, C) float.
        target_column: (N,) int64 column of each row's positive.
        allowed: (N, C) bool, False = not a candidate for that row (e.g. an accidental hit of its
            own positive); None = all. The positive's column must be allowed.
        alpha: label-smoothing mass moved to the negatives, in [0, 1).

    Returns:
        (N,) per-row loss.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"label smoothing alpha must lie in [0, 1), got {alpha}")
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    log_p = F.log_softmax(logits.float(), dim=-1)
    loss = -(1.0 - alpha) * log_p.gather(1, target_column[:, None]).squeeze(1)
    if alpha > 0:
        negative = torch.ones_like(log_p, dtype=torch.bool) if allowed is None else allowed.clone()
        negative[torch.arange(len(target_column), device=logits.device), target_column] = False
        n_negatives = negative.sum(1).clamp(min=1)
        loss = loss - alpha * torch.where(negative, log_p, 0.0).sum(1) / n_negatives
    return loss


def in_batch_candidates(targets: torch.Tensor, n_items: int, n_uniform: int = 0,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate columns for the in-batch softmax: every row's positive, then `n_uniform` shared
    uniformly drawn items. A column holding a row's own positive item (other than its own column)
    is an accidental hit and not allowed for that row.

    Args:
        targets: (N,) int64 positives.

    Returns:
        candidates (N + n_uniform,) int64 and allowed (N, N + n_uniform) bool; row i's positive is column i.
    """
    candidates = targets
    if n_uniform > 0:
        extra = torch.randint(0, n_items, (n_uniform,), device=targets.device, generator=generator)
        candidates = torch.cat([targets, extra])
    allowed = candidates[None, :] != targets[:, None]
    rows = torch.arange(len(targets), device=targets.device)
    allowed[rows, rows] = True
    return candidates, allowed


def sampling_log_q(item_log_prob: torch.Tensor, candidates: torch.Tensor, n_in_batch: int, n_uniform: int,
                   n_items: int) -> torch.Tensor:
    """log Q of each candidate (Yi et al. 2019): the log of its expected count among the candidates,
    N * p(item) from the in-batch positives plus n_uniform / n_items from the uniform draws.

    Args:
        item_log_prob: (n_items,) log of each item's training frequency (its chance to be a positive).
        candidates: (C,) int64.

    Returns:
        (C,) float.
    """
    log_q = item_log_prob[candidates] + math.log(n_in_batch)
    if n_uniform > 0:
        log_q = torch.logaddexp(log_q, torch.full_like(log_q, math.log(n_uniform / n_items)))
    return log_q
