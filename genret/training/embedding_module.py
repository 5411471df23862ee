"""LightningModule for the embedding families: KuaiFormer, and SASRec as its setting.

Loss (model.loss):
  * "sampled_softmax": eq. 11-12. Candidates are the batch's positives (plus optional shared
    uniform negatives); accidental hits of a row's own positive are dropped; every logit has log Q
    subtracted (Q from training frequencies, `logq_correction`); label smoothing alpha moves
    alpha / |B| to each negative.
  * "full_softmax": softmax over the whole catalogue (no sampling, so no log Q); smoothing spreads
    alpha over the other n_items - 1 items.

One target per cut-point example learns slowly, so `position_loss_weight` (not in the paper; 0 =
off) adds a dense next-item loss on the latest, uncompressed item tokens (each predicts the item
after it, the last one the example's target). Validation ranks every item exactly for each
validation user and logs HR@K / NDCG@K; the run keeps the best epoch by `monitor` and stops after
`patience` validations without improvement (Lightning's ModelCheckpoint and EarlyStopping, set up
by genret.training.run).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from genret.models.kuaiformer import (
    KuaiFormer,
    KuaiFormerConfig,
    in_batch_candidates,
    max_interest_scores,
    sampling_log_q,
    smoothed_softmax_loss,
)
from genret.training.family_module import ItemSoftmaxModule
from genret.training.embedding_datamodule import KuaiFormerDataModule

log = logging.getLogger(__name__)

LOSSES = ("full_softmax", "sampled_softmax")


class KuaiFormerModule(ItemSoftmaxModule):
    """Trains KuaiFormer (or SASRec as its setting) for next-item prediction.

    The catalogue size, window and feature cardinalities come from the data module at
    `configure_model` time. Validation computes full-ranking HR@K / NDCG@K on the validation
    users; `selection` and `patience` tell the run which epoch to keep and when to stop.

    Args:
        config: model sizes and switches (KuaiFormerConfig).
        loss: "sampled_softmax" (eq. 11-12) or "full_softmax".
        label_smoothing: alpha of eq. 12.
        logq_correction: subtract log Q from in-batch logits (sampled_softmax only).
        uniform_negatives: shared uniformly drawn negatives added to the in-batch ones.
        lr, weight_decay: AdamW. warmup_steps: linear warm-up. cosine: cosine decay to 10% after it.
        monitor: validation metric that picks the best weights (e.g. "val/ndcg@10").
        patience: validations without improvement before stopping (None = never stop early).
        eval_ks: cut-offs logged at validation.
        position_loss_weight: weight of an extra dense next-item loss on the latest (uncompressed)
            item tokens with cut points (not in the paper; 0 = off). Each example then trains up to
            latest_items + 1 targets instead of one, which matters when epochs are few (CPU).
        max_in_batch_candidates: with more targets than this in a batch, the in-batch softmax scores
            each row's positive against the positives of this many randomly drawn rows instead of
            all N (an N x N matrix of dense position targets would not fit).
    """

    family, config_class, network_class = "kuaiformer", KuaiFormerConfig, KuaiFormer

    def __init__(self, config: KuaiFormerConfig | None = None, loss: str = "sampled_softmax",
                 label_smoothing: float = 0.0, logq_correction: bool = True, uniform_negatives: int = 0,
                 lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 0,
                 cosine: bool = False, monitor: str = "val/ndcg@10", patience: int | None = None,
                 eval_ks: list[int] | None = None, position_loss_weight: float = 0.0,
                 max_in_batch_candidates: int = 2048):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        if loss == "full_softmax" and logq_correction:
            raise ValueError("logq_correction corrects sampled negatives; set logq_correction: false with full_softmax")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.config = config or KuaiFormerConfig()
        self.loss_name = loss
        self.label_smoothing = label_smoothing
        self.logq_correction = logq_correction
        self.uniform_negatives = uniform_negatives
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.cosine = cosine
        self.monitor = monitor
        self.patience = patience
        self.eval_ks = sorted(set(eval_ks or [10, 100]))
        self.position_loss_weight = position_loss_weight
        self.max_in_batch_candidates = max_in_batch_candidates
        self.save_hyperparameters({"config": dataclasses.asdict(self.config), "loss": loss,
                                   "label_smoothing": label_smoothing, "logq_correction": logq_correction,
                                   "uniform_negatives": uniform_negatives, "lr": lr,
                                   "weight_decay": weight_decay, "warmup_steps": warmup_steps, "cosine": cosine,
                                   "position_loss_weight": position_loss_weight,
                                   "max_in_batch_candidates": max_in_batch_candidates})
        self.model: KuaiFormer | None = None
        self.catalogue: dict[str, Any] | None = None

    # ------------------------------------------------------------------ model from data facts
    def build_from_data(self, dm: KuaiFormerDataModule) -> KuaiFormer:
        """Resolve the config with the data's facts, create the network and copy the feature tables."""
        if dm.targets == "every_position" and (self.config.readout != "last_position" or self.config.compression):
            raise ValueError("data.targets 'every_position' needs model.config.readout 'last_position' and "
                             "compression false (SASRec); use targets 'cut_points' for query tokens")
        self.config = dataclasses.replace(
            self.config, n_items=dm.n_items, max_len=dm.max_len,
            item_feature_widths=[t.shape[1] for t in dm.item_feature_tables],
            item_feature_cardinalities=list(dm.item_feature_cardinalities),
            side_cardinalities=list(dm.side_cardinalities))
        self.model = KuaiFormer(self.config)
        self.model.set_item_features([torch.from_numpy(t) for t in dm.item_feature_tables])
        self.register_buffer("item_log_prob", torch.from_numpy(dm.item_log_prob))
        self.catalogue = {
            "dataset": dm.log_all.name,
            "item_ids": dm.log_all.item_ids.tolist(),
            "item_features": list(dm.item_features),
            "side_features": dm.side.state_dict(),  # the retriever bucketises raw values with these
        }
        return self.model

    # ------------------------------------------------------------------ loss
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch's targets, and the number of targets."""
        targets = batch["targets"]
        if targets.ndim == 2:  # every position predicts the next item
            states = self.model.position_vectors(batch["items"], batch["side"])
            has_target = targets >= 0
            return self.softmax_loss(states[has_target][:, None], targets[has_target]), int(has_target.sum())
        if self.position_loss_weight <= 0:
            return self.softmax_loss(self.model.user_vectors(batch["items"], batch["side"]), targets), len(targets)
        hidden, n_tokens = self.model.encode(batch["items"], batch["side"])
        loss = self.softmax_loss(self.model.interests(hidden, n_tokens), targets)
        states, following = self.model.latest_item_states(hidden, n_tokens, batch["items"], targets)
        return loss + self.position_loss_weight * self.softmax_loss(states, following), len(targets)

    def softmax_loss(self, users: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean full or in-batch (eq. 11-12) softmax loss of interests `users` (N, k, d) for `targets` (N,)."""
        item_table = self.model.item_vectors()
        if self.loss_name == "full_softmax":
            logits = max_interest_scores(users, item_table)
            return smoothed_softmax_loss(logits, targets, None, self.label_smoothing).mean()
        n, n_items = len(targets), self.config.n_items
        if n <= self.max_in_batch_candidates:
            candidates, allowed = in_batch_candidates(targets, n_items, self.uniform_negatives)
            logits = max_interest_scores(users, item_table[candidates])
            if self.logq_correction:
                logits = logits - sampling_log_q(self.item_log_prob, candidates, n, self.uniform_negatives,
                                                 n_items)[None]
            column = torch.arange(n, device=targets.device)
            return smoothed_softmax_loss(logits, column, allowed, self.label_smoothing).mean()
        # Too many rows for an N x N matrix (dense position targets): every row scores its own
        # positive (column 0) against the positives of R randomly drawn rows (+ uniform draws).
        r = self.max_in_batch_candidates
        shared = targets[torch.randperm(n, device=targets.device)[:r]]
        if self.uniform_negatives > 0:
            shared = torch.cat([shared, torch.randint(0, n_items, (self.uniform_negatives,), device=shared.device)])
        allowed = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=targets.device),
                             shared[None, :] != targets[:, None]], dim=1)
        positive = (users * item_table[targets][:, None]).sum(-1).amax(1, keepdim=True)  # (N, 1)
        logits = torch.cat([positive, max_interest_scores(users, item_table[shared])], dim=1)
        if self.logq_correction:
            log_q = sampling_log_q(self.item_log_prob, torch.cat([targets, shared]), r, self.uniform_negatives,
                                   n_items)
            logits = logits - torch.cat([log_q[:n, None], log_q[None, n:].expand(n, -1)], dim=1)
        column = torch.zeros(n, dtype=torch.long, device=targets.device)
        return smoothed_softmax_loss(logits, column, allowed, self.label_smoothing).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/targets", float(n), reduce_fx="sum", batch_size=1)
        return loss

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The batch's user vectors (B, k, d); genret.eval.embedding_validation ranks them at the epoch's end."""
        return self.model.user_vectors(batch["items"], batch["side"]).float().cpu()


def load_kuaiformer(path, device: str | torch.device = "cpu") -> tuple[KuaiFormer, dict[str, Any]]:
    """The network of a KuaiFormer / SASRec checkpoint (eval mode) and its checked "genret" entry."""
    from genret.training.checkpoint import load_network

    return load_network(path, "kuaiformer", lambda config: KuaiFormer(KuaiFormerConfig(**config)), device)


def checkpoint_item_vectors(path) -> tuple[np.ndarray, list]:
    """(n_items, d) float32 item vectors of a KuaiFormer / SASRec checkpoint (the scoring side of
    eq. 10; row i = dense item i) and the raw item ids of its catalogue, in that order."""
    model, entry = load_kuaiformer(path)
    with torch.no_grad():
        vectors = np.ascontiguousarray(model.item_vectors().float().numpy(), dtype=np.float32)
    return vectors, list(entry["catalogue"]["item_ids"])
