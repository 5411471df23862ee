"""LightningModule for RetrievalFormer: next-item prediction with the in-batch softmax and logQ
correction genret's KuaiFormer uses (or a full softmax over the catalogue, which a feature-based
item tower can afford on catalogues of a few ten thousand items: every item vector is computed
once per step anyway, because history tokens and scores share the tower).

Validation ranks every item for every validation user (genret.eval.embedding_validation), so the
kept epoch is chosen on validation, as for SASRec.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from genret.models.kuaiformer import sampling_log_q, smoothed_softmax_loss
from genret.models.retrievalformer import RetrievalFormer, RetrievalFormerConfig
from genret.training.family_module import ItemSoftmaxModule

LOSSES = ("full_softmax", "sampled_softmax")


class RetrievalFormerModule(ItemSoftmaxModule):
    """Trains RetrievalFormer.

    Args:
        config: model sizes (RetrievalFormerConfig); the item/user feature fields come from the data.
        loss: "sampled_softmax" (in-batch positives + `uniform_negatives` shared uniform draws, i.e.
            mixed negative sampling, with log Q subtracted) or "full_softmax".
        label_smoothing: alpha moved to the negatives.
        logq_correction: subtract log Q (sampled_softmax only).
        uniform_negatives: uniformly drawn shared negatives per batch.
        max_in_batch_candidates: more targets than this: each row's positive against R random rows'.
        lr, weight_decay, warmup_steps, cosine: AdamW and its schedule.
        monitor, patience, eval_ks: validation metric that picks the epoch; early stopping; cut-offs.
    """

    family, config_class, network_class = "retrievalformer", RetrievalFormerConfig, RetrievalFormer

    def __init__(self, config: RetrievalFormerConfig | None = None, loss: str = "sampled_softmax",
                 label_smoothing: float = 0.0, logq_correction: bool = True, uniform_negatives: int = 0,
                 max_in_batch_candidates: int = 4096, lr: float = 1e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 0, cosine: bool = True, monitor: str = "val/hr@20",
                 patience: int | None = None, eval_ks: list[int] | None = None):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        if loss == "full_softmax" and logq_correction:
            raise ValueError("logq_correction corrects sampled negatives; set logq_correction: false with full_softmax")
        self.config = config or RetrievalFormerConfig()
        self.loss_name = loss
        self.label_smoothing = label_smoothing
        self.logq_correction = logq_correction
        self.uniform_negatives = uniform_negatives
        self.max_in_batch_candidates = max_in_batch_candidates
        self.lr, self.weight_decay, self.warmup_steps, self.cosine = lr, weight_decay, warmup_steps, cosine
        self.monitor = monitor
        self.patience = patience
        self.eval_ks = sorted(set(eval_ks or [10, 20, 100]))
        self.save_hyperparameters({"config": dataclasses.asdict(self.config), "loss": loss,
                                   "label_smoothing": label_smoothing, "logq_correction": logq_correction,
                                   "uniform_negatives": uniform_negatives, "lr": lr, "weight_decay": weight_decay,
                                   "warmup_steps": warmup_steps, "cosine": cosine})
        self.model: RetrievalFormer | None = None
        self.catalogue: dict[str, Any] | None = None

    # ------------------------------------------------------------------ model from data facts
    def build_from_data(self, dm) -> RetrievalFormer:
        """Resolve the config with the data's features, create the network, copy the feature tables."""
        if not hasattr(dm, "encoder"):
            raise ValueError("RetrievalFormer needs a RetrievalFormerDataModule (item features)")
        self.config = dataclasses.replace(
            self.config, n_items=dm.n_items, max_len=dm.max_len, item_feature_names=list(dm.item_features),
            item_feature_widths=[t.shape[1] for t in dm.item_feature_tables],
            item_feature_cardinalities=list(dm.item_feature_cardinalities),
            user_feature_cardinalities=list(dm.user_feature_cardinalities))
        self.model = RetrievalFormer(self.config)
        self.model.set_item_features([torch.from_numpy(t) for t in dm.item_feature_tables])
        if self.model.uses_value_weights:
            self.model.set_value_weights([torch.from_numpy(w) for w in dm.value_idf])
        self.register_buffer("item_log_prob", torch.from_numpy(dm.item_log_prob))
        mask = getattr(dm, "train_item_mask", None)
        mask = torch.ones(dm.n_items, dtype=torch.bool) if mask is None else torch.from_numpy(mask)
        self.register_buffer("train_items", torch.nonzero(mask).flatten(), persistent=False)
        self.register_buffer("cold_mask", ~mask, persistent=False)
        self.catalogue = {"dataset": dm.log_all.name, "item_ids": dm.log_all.item_ids.tolist(),
                          "encoder": dm.encoder.state_dict(), "user_feature_names": list(dm.user_feature_names),
                          "protocol": dm.protocol}
        return self.model

    # ------------------------------------------------------------------ loss
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch's targets and their number.

        The item tower runs once per step: over the whole catalogue for the full softmax, and over
        the batch's own items only (history items, targets, uniform negatives) for the sampled
        softmax, which is what keeps it affordable on large catalogues.
        """
        m = self.model
        items, targets = batch["items"], batch["targets"]
        n_items = m.n_items
        flat_targets = targets[targets >= 0] if targets.ndim == 2 else targets
        if self.loss_name == "full_softmax":
            needed = None
            fused = m.fuse_items(m.feature_tables_of())
            history = items
        else:
            pool = self.train_items  # uniform negatives come from the training catalogue only (LOOC)
            uniform = pool[torch.randint(0, len(pool), (self.uniform_negatives,), device=items.device)]
            needed = torch.unique(torch.cat([items[items >= 0], flat_targets, uniform]))
            fused = m.fuse_items(m.feature_tables_of(needed))
            local = torch.full((n_items,), -1, dtype=torch.long, device=items.device)
            local[needed] = torch.arange(len(needed), device=items.device)
            history = torch.where(items >= 0, local[items.clamp(min=0)], -1)
        table = m.score_vectors(fused)
        states = m.encode(history, batch.get("user_features"), fused=fused)
        if targets.ndim == 2:
            states = states[targets >= 0]
        else:
            states = states[:, -1]
        if needed is None:
            return self.full_loss(states, flat_targets, table), len(flat_targets)
        return self.sampled_loss(states, flat_targets, table, local, uniform), len(flat_targets)

    def full_loss(self, users: torch.Tensor, targets: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """Softmax over the training catalogue: users (N, d), targets (N,), item_table (n_items, d).
        LOOC's cold items are left out of it (they may not be trained on, not even as negatives)."""
        logits = users @ item_table.T * self.model.scale()
        allowed = (~self.cold_mask)[None].expand_as(logits) if bool(self.cold_mask.any()) else None
        return smoothed_softmax_loss(logits, targets, allowed, self.label_smoothing).mean()

    def sampled_loss(self, users: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, local: torch.Tensor,
                     uniform: torch.Tensor) -> torch.Tensor:
        """In-batch softmax with shared uniform negatives (mixed negative sampling) and log Q.

        Args:
            users: (N, d) states. targets: (N,) global item ids. table: vectors of the batch's items,
                row local[i] for global item i. uniform: (U,) the shared uniform negatives.
        """
        scale, n, n_items = self.model.scale(), len(targets), self.model.n_items
        positives = targets
        if n > self.max_in_batch_candidates:  # too many rows: the positives of R random rows are shared
            positives = targets[torch.randperm(n, device=targets.device)[:self.max_in_batch_candidates]]
        shared = torch.cat([positives, uniform])
        allowed = shared[None, :] != targets[:, None]
        own = (users * table[local[targets]]).sum(-1, keepdim=True) * scale  # (N, 1) each row's positive
        logits = torch.cat([own, users @ table[local[shared]].T * scale], dim=1)
        if self.logq_correction:
            log_q = sampling_log_q(self.item_log_prob, torch.cat([targets, shared]), len(positives), len(uniform),
                                   n_items)
            logits = logits - torch.cat([log_q[:n, None], log_q[None, n:].expand(n, -1)], dim=1)
        allowed = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=targets.device), allowed], dim=1)
        column = torch.zeros(n, dtype=torch.long, device=targets.device)
        return smoothed_softmax_loss(logits, column, allowed, self.label_smoothing).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """User vectors (B, 1, d); genret.eval.embedding_validation ranks them at the epoch's end."""
        return self.model.user_vectors(batch["items"], batch.get("user_features")).float().cpu()


def load_retrievalformer(path, device: str | torch.device = "cpu") -> tuple[RetrievalFormer, dict[str, Any]]:
    """The network of a RetrievalFormer checkpoint (eval mode) and its checked "genret" entry."""
    from genret.training.checkpoint import load_network

    return load_network(path, "retrievalformer", lambda config: RetrievalFormer(RetrievalFormerConfig(**config)), device)
