"""RetrievalFormer (retrievalformer.txt): a two-tower transformer whose item tower reads item
features only, so an item never seen in training still gets a vector.

Item tower. Each item feature f (genres, release year, title words, categories, optionally the
item id) has one embedding table E_f, shared by every place the feature appears (the item tower
and, through it, every history token). A multi-valued feature is the mean of its values'
embeddings (with `value_pooling: attention`, their softmax-weighted sum; with `idf`, their mean
weighted by each value's inverse document frequency); each feature is
projected by its own W_f, giving H = [W_1 E_1(f_1); ...; W_M E_M(f_M)] (n, M, d).
AttentionFusion (the paper's eq.: Z = LN(H + MHA(H)), U = LN(Z + FFN(Z)), mean over the present
features; no positions, missing features masked) fuses them into h_i, and a small MLP (the "item
tower DNN") gives the scoring vector y_i.

User tower. A history of items becomes the sequence [p_u, h_1, ..., h_T] where h_t is the item
tower's fused vector of the t-th item (the tables and the fusion are shared with the item tower)
plus a learned recency position, and p_u = AttentionFusion(user profile features) (gender, age,
occupation, zip prefix on MovieLens; absent elsewhere). A causal Llama-style transformer runs over
it; position t's output x_t scores the next item by x_t . y_i. The paper puts the profile and a
CLS token at the end and reads CLS; putting the profile first lets every position predict its next
item in one pass (SASRec's dense training), which on a CPU budget is many times more targets per
step, and the last position plays CLS at retrieval.

With `item_id` among the features a warm item also has an id embedding; a cold item's id is 0
(unknown), so it is scored from its other features (train with `id_dropout` > 0 so the model
learns to do without the id).

An addition beyond the paper, off by default: `content_weight` beta > 0 adds beta times a fixed
content score to x_u . y_i when items are ranked (not in training): the mean, over the user's
history, of the TF-IDF cosine between a history item's feature values and the candidate's (the
content-only baseline's score; IDF fitted on the training catalogue). A TF-IDF row matches exact
values (a brand, a product-line word) in thousands of dimensions, which a d-wide learned vector
cannot hold for every value; the learned score adds what interactions teach.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genret.models.kuaiformer import Block, attention_mask
from genret.models.layers import init_weights


@dataclass
class RetrievalFormerConfig:
    """Sizes and switches. Fields marked "from the data" are filled in by the training module."""

    n_items: int = 0  # catalogue size (from the data)
    max_len: int = 50  # history window in items (from the data module)
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    d_ffn: int = 0  # SwiGLU width of the user transformer; 0 = 4 * d_model
    fusion_heads: int = 2
    dropout: float = 0.2
    normalize: bool = False  # L2-normalise both towers and divide scores by `temperature`
    temperature: float = 0.05
    id_dropout: float = 0.0  # training: chance an item's id feature is hidden (cold-start practice)
    # How a multi-valued feature's values (title words, attribute ids) become one vector: "mean", or
    # "attention" (the paper allows both): softmax weights from a learned query per feature, so a
    # brand or a product-line word can outweigh "cream" and "oz"; the query starts at zero (= mean).
    # "idf": a weighted mean with fixed weights, each value's inverse document frequency among the
    # fitting items (set from the data; under LOOC the warm items only), so a rare word a cold item
    # shares with the history counts as it does in a TF-IDF cosine, before any training has seen it.
    value_pooling: str = "mean"
    # beta of the content term added at ranking time (see the module docstring); 0 = the paper's model.
    # Acts on the raw x_u . y_i (a cosine when `normalize`), so it is chosen on validation per recipe.
    content_weight: float = 0.0
    item_feature_names: list[str] = field(default_factory=list)  # (from the data)
    item_feature_widths: list[int] = field(default_factory=list)  # values per item, per feature (from the data)
    item_feature_cardinalities: list[int] = field(default_factory=list)  # (from the data)
    user_feature_cardinalities: list[int] = field(default_factory=list)  # (from the data; empty = no profile)

    @property
    def ffn_width(self) -> int:
        return self.d_ffn or 4 * self.d_model

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.n_items < 0:
            raise ValueError(f"n_items must be >= 0, got {self.n_items}")
        for name in ("d_model", "n_heads", "fusion_heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads or self.d_model % self.fusion_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads} and "
                             f"fusion_heads={self.fusion_heads}")
        if not self.item_feature_names:
            raise ValueError("RetrievalFormer needs at least one item feature (data.item_features)")
        if not (len(self.item_feature_names) == len(self.item_feature_widths) == len(self.item_feature_cardinalities)):
            raise ValueError("item_feature_names, _widths and _cardinalities need one entry per item feature")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must lie in [0, 1), got {self.id_dropout}")
        if not self.content_weight >= 0.0:  # also refuses NaN
            raise ValueError(f"content_weight must be >= 0 (0 = no content term), got {self.content_weight}")
        if self.value_pooling not in ("mean", "attention", "idf"):
            raise ValueError(f"value_pooling must be 'mean', 'attention' or 'idf', got {self.value_pooling!r}")


class AttentionFusion(nn.Module):
    """Fuse M feature vectors into one: post-LN transformer block without positions, masked mean.

    Args:
        d_model: width. n_heads: attention heads. dropout: on the residual branches.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """h (n, M, d) feature vectors, present (n, M) bool -> (n, d); an entity with no feature gives zeros."""
        any_present = present.any(-1, keepdim=True)
        key_mask = ~(present | ~any_present)  # an all-missing row attends to everything (no NaN), then is zeroed
        z, _ = self.attn(h, h, h, key_padding_mask=key_mask, need_weights=False)
        z = self.norm1(h + self.drop(z))
        u = self.norm2(z + self.drop(self.ffn(z)))
        weight = present.float()
        pooled = (u * weight[..., None]).sum(1) / weight.sum(1, keepdim=True).clamp(min=1.0)
        return pooled * any_present


class RetrievalFormer(nn.Module):
    """The two towers. Histories are right-aligned (newest last), left-padded with -1.

    Args:
        config: a RetrievalFormerConfig with the item features set (validated here).
    """

    def __init__(self, config: RetrievalFormerConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        d = c.d_model
        # Per-item feature id tables (0 = none), buffers so the checkpoint holds the catalogue.
        for f, width in enumerate(c.item_feature_widths):
            self.register_buffer(f"item_feature_{f}", torch.zeros(c.n_items, width, dtype=torch.long))
        self.feature_tables = nn.ModuleList(nn.Embedding(card, d, padding_idx=0) for card in c.item_feature_cardinalities)
        self.feature_projections = nn.ModuleList(nn.Linear(d, d) for _ in c.item_feature_cardinalities)
        self.item_fusion = AttentionFusion(d, c.fusion_heads, c.dropout)
        self.item_head = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.user_tables = nn.ModuleList(nn.Embedding(card, d, padding_idx=0) for card in c.user_feature_cardinalities)
        self.user_fusion = AttentionFusion(d, c.fusion_heads, c.dropout) if c.user_feature_cardinalities else None
        self.position_embedding = nn.Embedding(c.max_len + 1, d)  # 0 = the newest item; the profile sits beyond
        self.blocks = nn.ModuleList(Block(d, c.n_heads, c.ffn_width, c.dropout) for _ in range(c.n_layers))
        self.final_norm = nn.RMSNorm(d, eps=1e-6)
        self.dropout = nn.Dropout(c.dropout)
        self.apply(init_weights)
        # One pooling query per item feature (after init_weights: zero queries pool as the mean does).
        self.value_queries = (nn.Parameter(torch.zeros(len(c.item_feature_cardinalities), d))
                              if c.value_pooling == "attention" else None)
        if self.uses_value_weights:
            self._register_value_weights()
        self._id_feature = c.item_feature_names.index("item_id") if "item_id" in c.item_feature_names else None

    # ------------------------------------------------------------------------------ catalogue
    @property
    def uses_value_weights(self) -> bool:
        """Whether the model holds per-value IDF weights (IDF pooling or the content term uses them)."""
        return self.config.value_pooling == "idf" or self.config.content_weight > 0

    @property
    def n_items(self) -> int:
        return int(self.item_feature_0.shape[0])

    def feature_tables_of(self, items: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The feature id tables of dense `items` (None = all), each (n, W_f)."""
        tables = [getattr(self, f"item_feature_{f}") for f in range(len(self.config.item_feature_widths))]
        return tables if items is None else [t[items] for t in tables]

    def set_item_features(self, tables: list[torch.Tensor]) -> None:
        """Replace the catalogue's feature tables, each (n_items, W_f) int64 (0 = none); n_items may change
        (catalogue updates), widths may not exceed the model's (narrower tables are zero-padded)."""
        widths = self.config.item_feature_widths
        if len(tables) != len(widths):
            raise ValueError(f"expected {len(widths)} item feature tables ({self.config.item_feature_names}), "
                             f"got {len(tables)}")
        n = None
        for f, table in enumerate(tables):
            table = torch.as_tensor(table, dtype=torch.long)
            if n is None:
                n = table.shape[0]
            if table.ndim != 2 or table.shape[0] != n or table.shape[1] > widths[f]:
                raise ValueError(f"item feature {self.config.item_feature_names[f]!r} has shape {tuple(table.shape)}; "
                                 f"expected ({n}, <= {widths[f]})")
            if table.numel() and (table.min() < 0 or table.max() >= self.config.item_feature_cardinalities[f]):
                raise ValueError(f"item feature {self.config.item_feature_names[f]!r} ids must lie in "
                                 f"0..{self.config.item_feature_cardinalities[f] - 1}")
            table = F.pad(table, (0, widths[f] - table.shape[1]))
            setattr(self, f"item_feature_{f}", table.to(getattr(self, f"item_feature_{f}").device))
        self.config.n_items = int(n)

    def _register_value_weights(self) -> None:
        """Per-value IDF buffers (ones until set_value_weights), so the checkpoint serves them."""
        device = self.item_feature_0.device
        for f, card in enumerate(self.config.item_feature_cardinalities):
            self.register_buffer(f"value_weight_{f}", torch.ones(card, device=device))

    def set_value_weights(self, weights: list[torch.Tensor]) -> None:
        """Set the per-value IDF weights (`value_pooling: idf`, the content term): one (cardinality,)
        non-negative float tensor per item feature."""
        if not self.uses_value_weights:
            raise ValueError(f"value weights are for value_pooling 'idf' or content_weight > 0; this model pools by "
                             f"{self.config.value_pooling!r} with content_weight 0")
        cards = self.config.item_feature_cardinalities
        if len(weights) != len(cards):
            raise ValueError(f"expected {len(cards)} value weight vectors ({self.config.item_feature_names}), "
                             f"got {len(weights)}")
        for f, (w, card) in enumerate(zip(weights, cards)):
            w = torch.as_tensor(w, dtype=torch.float32)
            if w.shape != (card,) or not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"value weights of {self.config.item_feature_names[f]!r} must be {card} finite, "
                                 f"non-negative numbers, got shape {tuple(w.shape)}")
            setattr(self, f"value_weight_{f}", w.to(getattr(self, f"value_weight_{f}").device))

    def set_content_weight(self, weight: float, value_weights: list | None = None) -> None:
        """Change the content term's beta after training (it acts at ranking only). A model trained
        without per-value weights needs `value_weights` (the data module's `value_idf`) to turn it on."""
        weight = float(weight)
        replace(self.config, content_weight=weight).validate()
        if weight > 0 and not hasattr(self, "value_weight_0"):
            if value_weights is None:
                raise ValueError("this model was trained without per-value IDF weights: give the data module's "
                                 "value_idf to turn the content term on")
            self._register_value_weights()
        self.config.content_weight = weight
        if weight > 0 and value_weights is not None:
            self.set_value_weights(value_weights)

    def content_rows(self):
        """(n_items, V) scipy CSR: each item's L2-normalised TF-IDF row over its feature values (the item
        id excluded), V = their summed cardinalities; the content-only baseline's item vectors."""
        from genret.data.item_features import tfidf_rows

        if not self.uses_value_weights:
            raise ValueError("content rows need the per-value IDF weights: set content_weight > 0 (or value_pooling "
                             "'idf') before training")
        kept = [f for f in range(len(self.config.item_feature_cardinalities)) if f != self._id_feature]
        if not kept:
            raise ValueError("the content term needs an item feature besides item_id")
        tables = self.feature_tables_of()
        return tfidf_rows([tables[f].cpu().numpy() for f in kept],
                          [self.config.item_feature_cardinalities[f] for f in kept],
                          [getattr(self, f"value_weight_{f}").cpu().numpy() for f in kept])

    def history_content(self, offsets: np.ndarray, items: np.ndarray, rows=None):
        """(m, V) scipy CSR: the mean content row of each of m CSR histories (`offsets` (m + 1,), dense
        `items`); its dot product with an item's row is the content term. `rows`: content_rows() if
        already computed (it does not change between batches)."""
        from genret.models.content_term import history_content

        return history_content(self.content_rows() if rows is None else rows, offsets, items)

    def content_scores(self, offsets: np.ndarray, items: np.ndarray, rows=None) -> torch.Tensor:
        """(m, n_items) float32 content scores of m CSR histories: the mean over each whole history of its
        items' rows . each candidate's row (see history_content)."""
        from genret.models.content_term import history_content_scores

        return torch.from_numpy(history_content_scores(self.content_rows() if rows is None else rows, offsets, items))

    # ------------------------------------------------------------------------------ item tower
    def fuse_items(self, tables: list[torch.Tensor]) -> torch.Tensor:
        """Fused item vectors h (n, d) from feature id tables, each (n, W_f) int64 (0 = none)."""
        parts, present = [], []
        for f, (ids, table, proj) in enumerate(zip(tables, self.feature_tables, self.feature_projections)):
            if f == self._id_feature and self.training and self.config.id_dropout > 0:
                ids = ids * (torch.rand(ids.shape[0], 1, device=ids.device) >= self.config.id_dropout)
            has = ids > 0
            count = has.sum(-1, keepdim=True)
            values = table(ids)  # (n, W_f, d); padding rows are zero
            if self.config.value_pooling == "idf":
                weight = getattr(self, f"value_weight_{f}")[ids] * has  # (n, W_f)
                pooled = (weight[..., None] * values).sum(-2) / weight.sum(-1, keepdim=True).clamp(min=1e-6)
            elif self.value_queries is None:
                pooled = values.sum(-2) / count.clamp(min=1)
            else:
                logits = (values @ self.value_queries[f]).masked_fill(~has, float("-inf"))
                pooled = (torch.softmax(logits, -1).nan_to_num(0.0)[..., None] * values).sum(-2)  # no value: zeros
            parts.append(proj(pooled))
            present.append(count[:, 0] > 0)
        return self.item_fusion(torch.stack(parts, 1), torch.stack(present, 1))

    def score_vectors(self, fused: torch.Tensor) -> torch.Tensor:
        """The item tower's output y (n, d) from fused vectors h (n, d)."""
        y = fused + self.item_head(fused)
        return F.normalize(y, dim=-1) if self.config.normalize else y

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scoring vectors y of dense `items` (None = the whole catalogue): (n, d)."""
        return self.score_vectors(self.fuse_items(self.feature_tables_of(items)))

    def encode_features(self, tables: list[torch.Tensor]) -> torch.Tensor:
        """Scoring vectors of items described only by feature id tables (not in the catalogue): (n, d)."""
        return self.score_vectors(self.fuse_items([torch.as_tensor(t, dtype=torch.long) for t in tables]))

    # ------------------------------------------------------------------------------ user tower
    def profile(self, user_features: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """p_u (B, d) from (B, F) user feature ids (0 = unknown), or None without a profile."""
        if self.user_fusion is None:
            return None
        if user_features is None:
            user_features = torch.zeros(batch, len(self.user_tables), dtype=torch.long, device=device)
        h = torch.stack([table(user_features[:, j]) for j, table in enumerate(self.user_tables)], 1)
        return self.user_fusion(h, user_features > 0)

    def encode(self, items: torch.Tensor, user_features: torch.Tensor | None = None,
               fused: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs (B, T, d) of the causal transformer at each history position.

        Args:
            items: (B, T) int64 dense items, -1 = padding, right-aligned.
            user_features: (B, F) int64 or None.
            fused: the catalogue's fused vectors h (n_items, d) if already computed this step
                (training computes them once for the history and the scores); None = computed here
                for the batch's items.
        """
        B, T = items.shape
        valid = items >= 0
        if fused is None:
            unique, inverse = torch.unique(items.clamp(min=0), return_inverse=True)
            x = self.fuse_items(self.feature_tables_of(unique))[inverse]
        else:
            x = fused[items.clamp(min=0)]
        recency = torch.arange(T - 1, -1, -1, device=items.device).clamp(max=self.config.max_len - 1)
        x = (x + self.position_embedding(recency)[None]) * valid[..., None]
        p = self.profile(user_features, B, items.device)
        if p is not None:
            p = p + self.position_embedding.weight[self.config.max_len]
            x = torch.cat([p[:, None], x], 1)
            valid = torch.cat([valid.new_ones(B, 1), valid], 1)
        x = self.dropout(x)
        mask = attention_mask(valid, causal=True)
        for block in self.blocks:
            x = block(x, mask)
        x = self.final_norm(x)
        x = x[:, 1:] if p is not None else x
        return F.normalize(x, dim=-1) if self.config.normalize else x

    def user_vectors(self, items: torch.Tensor, user_features: torch.Tensor | None = None) -> torch.Tensor:
        """x_u, the last position's output: (B, 1, d) (one interest, as genret's embedding ranking expects)."""
        return self.encode(items, user_features)[:, -1:]

    def scale(self) -> float:
        """Factor on x . y in the softmax (1 / temperature when normalised)."""
        return 1.0 / self.config.temperature if self.config.normalize else 1.0
