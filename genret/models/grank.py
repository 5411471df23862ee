"""GRank (arXiv 2510.15299; second-hand notes in shared/papers/grank-notes.md): generate, then rank.

Generator: a causal transformer over the recent history (right-aligned, the newest item last)
followed by one user query token U. U's output is the user vector h_u; an item's retrieval score
is <h_u, e(i)> with the shared item table e, searched by exact MIPS (matmul + top-k).

Auxiliary candidate tokens (training only): the target and some in-batch negatives, each through a
small MLP, are appended behind a decomposed mask: history tokens (and U) never see them; a
candidate sees the history, U and itself, never another candidate. Each candidate token's output
gives a score s_sa(u, c), supervised by an InfoNCE term. At serving they are absent, so they shape
the shared weights only. The decomposed attention is computed directly (history keys + the
candidate's own key), so its cost is B*C*T, not (T+C)^2.

Ranker: one single-head cross-attention from each candidate's embedding (query) over the long
history (keys / values: the last `long_len` items through an MLP, with a recency embedding), then
an MLP over [attention output, e(c), their product] to a scalar s_ca(u, c). It scores any
candidate list, so it re-ranks GRank's own MIPS top-k1 as well as another generator's.

Choices the paper leaves open (see docs/experiments/2026-12-04-grank.md): U = a learned token plus the mean of the
window's item embeddings through a linear map (no user profile in our data); candidates do attend
to U; s_sa is a linear head on the candidate token's output; no item-side projection in the
generator score; the ranker's recency embedding and the product feature in its MLP; InfoNCE with
one temperature for all three terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genret.models.kuaiformer import Block, attention_mask
from genret.models.layers import init_weights


READOUTS = ("user_token", "last_position")


@dataclass
class GRankConfig:
    """Sizes of GRank. n_items, max_len and long_len are filled in from the data module."""

    n_items: int = 0  # catalogue size (from the data)
    max_len: int = 64  # generator window (the paper's short sequence: 64 items)
    long_len: int = 1000  # ranker history (the paper: up to the last 1,000 actions)
    d_model: int = 64  # the paper uses 128
    n_heads: int = 2
    n_layers: int = 2  # the paper uses 4
    d_ffn: int = 0  # SwiGLU width; 0 = 4 * d_model
    dropout: float = 0.2
    ranker_hidden: int = 128  # width of the ranker's scoring MLP
    # Score = s_ca + <h_u, e(c)>: the ranker learns a correction of the generator's score (not in the
    # paper, whose final order is s_ca alone; see docs/experiments/2026-12-04-grank.md). Any candidate source works: h_u is
    # GRank's own user vector.
    ranker_residual: bool = False
    # Which output is the user vector h_u: "user_token" (U, the paper's) or "last_position" (the newest
    # item's output, as SASRec reads it; U is then unused). Beyond the paper: a diagnostic of why
    # GRank's generator trails SASRec on Beauty (docs/experiments/2026-12-05-grank-two-stage-beauty.md).
    readout: str = "user_token"

    @property
    def ffn_width(self) -> int:
        return self.d_ffn or 4 * self.d_model

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1 (the catalogue size), got {self.n_items}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        for name in ("max_len", "long_len", "n_layers", "ranker_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class Ranker(nn.Module):
    """One-head cross-attention from each candidate over the long history, then an MLP to a score.

    Args:
        d_model: width of the item embeddings it receives. long_len: longest history (recency table).
        hidden: width of the scoring MLP. dropout: on the history tokens in training.
    """

    def __init__(self, d_model: int, long_len: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.recency = nn.Embedding(long_len, d_model)
        self.history_mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.SiLU(), nn.Linear(2 * d_model, d_model))
        # Norms on both sides: the shared item table is small at initialisation (std 0.02) and the
        # score is a product of it with itself, so without them the ranker starts with no gradient.
        self.query_norm = nn.RMSNorm(d_model, eps=1e-6)
        self.key_norm = nn.RMSNorm(d_model, eps=1e-6)
        self.attention = nn.MultiheadAttention(d_model, 1, batch_first=True)
        self.score_mlp = nn.Sequential(nn.Linear(3 * d_model, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.dropout = nn.Dropout(dropout)

    def history_tokens(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """history (B, L, d) item tokens (already through `history_mlp`), right-aligned, valid (B, L)
        bool -> keys/values (B, L, d). The recency embedding is added after the MLP so the MLP runs
        once per item, not once per (user, position): 1,000-item histories made it the step's cost."""
        L = history.shape[1]
        recency = torch.arange(L - 1, -1, -1, device=history.device)  # 0 = newest
        return self.dropout(history + self.recency(recency)[None])

    def forward(self, candidates: torch.Tensor, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Score candidates against a user's long history.

        Args:
            candidates: (B, K, d) candidate item embeddings.
            history: (B, L, d) long-history item embeddings, right-aligned. valid: (B, L) bool.

        Returns:
            (B, K) scores s_ca.
        """
        kv = self.key_norm(self.history_tokens(history, valid))
        candidates = self.query_norm(candidates)
        # A user with no valid history item attends to one zero token instead of nothing (no NaN).
        pad = ~valid
        empty = ~valid.any(1)
        if bool(empty.any()):
            pad = pad.clone()
            pad[empty, -1] = False
        out, _ = self.attention(candidates, kv, kv, key_padding_mask=pad, need_weights=False)
        return self.score_mlp(torch.cat([out, candidates, out * candidates], dim=-1)).squeeze(-1)


class GRank(nn.Module):
    """Generator (causal transformer + user token, MIPS) and Ranker over one shared item table.

    Args:
        config: a GRankConfig with n_items set.
    """

    def __init__(self, config: GRankConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        d = c.d_model
        self.item_embedding = nn.Embedding(c.n_items, d)
        self.position_embedding = nn.Embedding(c.max_len + 1, d)  # by recency; U is position 0
        self.user_token = nn.Parameter(torch.randn(d) * 0.02)
        self.user_pool = nn.Linear(d, d)  # U = token + W * mean(history embeddings)
        self.blocks = nn.ModuleList(Block(d, c.n_heads, c.ffn_width, c.dropout) for _ in range(c.n_layers))
        self.final_norm = nn.RMSNorm(d, eps=1e-6)
        self.dropout = nn.Dropout(c.dropout)
        self.aux_mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
        self.aux_head = nn.Linear(d, 1)
        self.ranker = Ranker(d, c.long_len, c.ranker_hidden, c.dropout)
        self.apply(init_weights)

    def check_items(self, items: torch.Tensor, what: str) -> None:
        if items.numel() and int(items.max()) >= self.config.n_items:
            raise ValueError(f"{what}: item id {int(items.max())} is outside the catalogue of "
                             f"{self.config.n_items:,} items")

    # ------------------------------------------------------------------------------ generator
    def encode(self, items: torch.Tensor, aux_candidates: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the generator over [history; U] (+ candidate tokens behind the decomposed mask).

        Args:
            items: (B, T) int64, right-aligned, -1 = padding, T <= max_len.
            aux_candidates: (B, C) int64 candidate items to append as auxiliary tokens, or None.

        Returns:
            hidden (B, T + 1, d) after the final norm (position T is U), and the candidate tokens'
            outputs (B, C, d) or None.
        """
        c = self.config
        if items.ndim != 2:
            raise ValueError(f"items must be (batch, length), got shape {tuple(items.shape)}")
        if items.shape[1] > c.max_len:
            raise ValueError(f"history window of {items.shape[1]} items exceeds max_len={c.max_len}; "
                             f"keep the most recent {c.max_len}")
        self.check_items(items, "history")
        B, T = items.shape
        valid = items >= 0
        emb = self.item_embedding(items.clamp(min=0)) * valid[..., None]
        mean = emb.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        user = (self.user_token + self.user_pool(mean))[:, None]  # (B, 1, d)
        x = torch.cat([emb, user], dim=1)
        recency = torch.arange(T, -1, -1, device=x.device)  # U = 0, newest item = 1
        x = self.dropout(x + self.position_embedding(recency)[None])
        valid = torch.cat([valid, valid.new_ones(B, 1)], dim=1)
        mask = attention_mask(valid, causal=True)
        cand = None
        if aux_candidates is not None:
            self.check_items(aux_candidates, "auxiliary candidates")
            cand = self.dropout(self.aux_mlp(self.item_embedding(aux_candidates)))  # (B, C, d)
        for block in self.blocks:
            if cand is None:
                x = block(x, mask)
            else:
                x, cand = decomposed_block(block, x, mask, cand, valid)
        return self.final_norm(x), None if cand is None else self.final_norm(cand)

    def user_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T) right-aligned windows -> user vectors h_u (B, d)."""
        hidden, _ = self.encode(items)
        return self.readout(hidden)

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """h_u (B, d) from `encode`'s hidden (B, T + 1, d): U's output, or the newest item's (windows are
        right-aligned, so position T - 1 holds every user's newest item)."""
        return hidden[:, -1] if self.config.readout == "user_token" else hidden[:, -2]

    def position_states(self, hidden: torch.Tensor) -> torch.Tensor:
        """Outputs at the history positions (B, T, d): position t predicts item t + 1 (dense NTP)."""
        return hidden[:, :-1]

    def aux_scores(self, candidate_states: torch.Tensor) -> torch.Tensor:
        """s_sa: (B, C, d) candidate-token outputs -> (B, C) scores."""
        return self.aux_head(candidate_states).squeeze(-1)

    def item_vectors(self) -> torch.Tensor:
        """(n_items, d): the item side of the MIPS score."""
        return self.item_embedding.weight

    def generator_scores(self, candidates: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """The generator's MIPS score <h_u, e(c)> of candidates (B, K) int64 for user vectors (B, d) -> (B, K)."""
        return self.mips(self.item_embedding(candidates), users)

    @staticmethod
    def mips(candidate_embeddings: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """<h_u, e(c)> from embedded candidates (B, K, d) and user vectors (B, d) -> (B, K)."""
        return (candidate_embeddings * users[:, None]).sum(-1)

    # ------------------------------------------------------------------------------ ranker
    def rank_scores(self, candidates: torch.Tensor, long_items: torch.Tensor,
                    users: torch.Tensor | None = None) -> torch.Tensor:
        """Ranker scores of candidates (B, K) int64 for long histories (B, L) int64 (right-aligned, -1
        pad) -> (B, K): s_ca, plus <h_u, e(c)> (no gradient) with `ranker_residual`, which then
        needs the user vectors `users` (B, d)."""
        if long_items.shape[1] > self.config.long_len:
            raise ValueError(f"long history of {long_items.shape[1]} items exceeds long_len={self.config.long_len}")
        self.check_items(candidates, "candidates")
        self.check_items(long_items, "long history")
        valid = long_items >= 0
        history = self.ranker_history(long_items)
        embedded = self.item_embedding(candidates.clamp(min=0))
        scores = self.ranker(embedded, history, valid)
        if self.config.ranker_residual:
            if users is None:
                raise ValueError("ranker_residual adds the generator's score: pass the user vectors (users=)")
            with torch.no_grad():  # the generator's score is added, not trained through the ranker term
                residual = self.mips(embedded, users)  # generator_scores, on the embeddings looked up above
            scores = scores + residual
        return scores

    def rank_candidates(self, candidates: torch.Tensor, long_items: torch.Tensor, users: torch.Tensor | None,
                        chunk: int = 256) -> torch.Tensor:
        """`rank_scores` of candidate lists (B, K) int64 with -1 padding, `chunk` candidates per call
        (bounds memory for large K): (B, K) float32, -inf at the padding."""
        scores = torch.cat([self.rank_scores(candidates[:, s:s + chunk].clamp(min=0), long_items, users)
                            for s in range(0, candidates.shape[1], chunk)], dim=1).float()
        return scores.masked_fill(candidates < 0, float("-inf"))

    def ranker_history(self, long_items: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (B, L, d) history tokens MLP(e(i)), the MLP run once per distinct item."""
        unique, inverse = torch.unique(long_items.clamp(min=0), return_inverse=True)
        return self.ranker.history_mlp(self.item_embedding(unique))[inverse]

    @torch.no_grad()
    def generate_and_rank(self, items: torch.Tensor, long_items: torch.Tensor, k1: int,
                          exclude: torch.Tensor | None = None, chunk: int = 256
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exact MIPS top-k1 with the generator, then the ranker's scores of those candidates.

        Args:
            items: (B, T) generator windows. long_items: (B, L) ranker windows.
            k1: candidates per user (<= n_items). exclude: (B, n_items) bool, True = never return
                (e.g. the user's history), or None.
            chunk: candidates the ranker scores per call (bounds memory for large k1).

        Returns:
            candidates (B, k1) int64 in generator order (-1 where fewer than k1 items remain),
            generator scores (B, k1), ranker scores (B, k1) (-inf at -1 slots).
        """
        if not 1 <= k1 <= self.config.n_items:
            raise ValueError(f"k1={k1} must lie in 1..{self.config.n_items} (the catalogue size)")
        users = self.user_vectors(items)
        scores = users.float() @ self.item_vectors().float().T  # (B, n_items)
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        gen_scores, candidates = scores.topk(k1, dim=1)
        candidates = torch.where(torch.isinf(gen_scores), -1, candidates)
        return candidates, gen_scores, self.rank_candidates(candidates, long_items, users, chunk)


def blended_scores(gen_scores, rank_scores, blend: float):
    """The score a GRank list is sorted by: the ranker's s_ca, plus blend x the generator's score
    (blend 0 = the ranker alone, the paper's). Works on tensors and arrays alike; blend 0 never
    multiplies, so a generator's -inf padding cannot turn into NaN."""
    return rank_scores if blend == 0 else rank_scores + blend * gen_scores


def decomposed_block(block: Block, x: torch.Tensor, mask: torch.Tensor, cand: torch.Tensor,
                     valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One transformer block over history tokens x (B, S, d) and candidate tokens cand (B, C, d).

    History tokens attend as usual (causal `mask`, never to candidates). Each candidate attends to
    the valid history tokens and to itself only: scores against the shared history keys plus one
    score against its own key, softmaxed together. Same weights as `block`.
    """
    x_out = block(x, mask)
    h, hc = block.attn_norm(x), block.attn_norm(cand)
    attn = block.attn
    k, v = attn.project_kv(h)  # (B, S, H, Dh)
    qc = attn.project_q(hc)  # (B, C, H, Dh)
    kc, vc = attn.project_kv(hc)
    scale = attn.head_dim ** -0.5
    s_hist = torch.einsum("bchd,bshd->bhcs", qc, k) * scale
    s_hist = s_hist.masked_fill(~valid[:, None, None, :], float("-inf"))
    s_self = (qc * kc).sum(-1).transpose(1, 2)[..., None] * scale  # (B, H, C, 1)
    p = torch.softmax(torch.cat([s_hist, s_self], dim=-1), dim=-1)
    out = torch.einsum("bhcs,bshd->bchd", p[..., :-1], v) + p[..., -1].transpose(1, 2)[..., None] * vc
    cand = cand + block.drop(attn.out(out.flatten(-2)))
    cand = cand + block.drop(block.ffn(block.ffn_norm(cand)))
    return x_out, cand


def info_nce(logits: torch.Tensor, target_column: torch.Tensor, temperature: float,
             allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE: softmax over each row's allowed columns of logits / temperature.

    Args:
        logits: (N, C). target_column: (N,) int64. allowed: (N, C) bool or None (all).
    """
    logits = logits.float()
    if temperature != 1.0:  # dividing (N, catalogue) logits by 1 took a fifth of the full-catalogue loss's CPU time
        logits = logits / temperature
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return F.cross_entropy(logits, target_column)
