"""LightningModule for DualGR: loss, optimiser, schedule and logging. The maths lives in the model."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from genret.models.content_term import NO_CONTENT
from genret.models.dualgr import DualGR, DualGRConfig, TrainBatch
from genret.training.family_module import FamilyModule
from genret.training.optim import adamw, warmup_cosine

log = logging.getLogger(__name__)


class DualGRModule(FamilyModule):
    """Trains DualGR with the ENTP loss.

    The SID depth, codebook size, catalogue size and user-feature cardinalities come from the
    data module at `configure_model` time, so one YAML works for any data set. The checkpoint
    carries everything `genret.Retriever.from_checkpoint` needs: the resolved model config, the
    SID index, every item's SID and raw id.

    Args:
        config: model sizes and the DBR / S2D / ENTP switches.
        lr: peak AdamW learning rate. weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up, then cosine decay to 10% over the trainer's total steps.
        use_item_id: add an item-id embedding to each action (off for pure-SID models).
        length_chunks: run each batch as this many length-sorted pieces, each padded only to its own
            longest sequence (DualGR.loss): same loss and gradient, less padded work where lengths are
            skewed. The batches themselves stay random: batches of similar lengths trained faster
            still but worse on Beauty (docs/experiments/2026-11-27-cpu-training-speed.md).
    """

    family, config_class, network_class = "dualgr", DualGRConfig, DualGR

    def __init__(self, config: DualGRConfig = DualGRConfig(), lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 100, use_item_id: bool = True, length_chunks: int = 1):
        super().__init__()
        self.config = dataclasses.replace(config)  # a copy: the default instance is shared
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.use_item_id = use_item_id
        if length_chunks < 1:
            raise ValueError(f"length_chunks must be >= 1 (1 runs each batch in one piece), got {length_chunks}")
        self.length_chunks = length_chunks
        self.save_hyperparameters()
        self.model: DualGR | None = None
        self.catalogue: dict[str, Any] | None = None
        self.content_weight_asked = 0.0  # > 0: the config's content weight, set to 0 for data without content

    # ------------------------------------------------------------------ model from data facts
    def build_from_data(self, dm) -> DualGR:
        """Size the network from the SequenceDataModule's facts and record the catalogue serving needs."""
        if getattr(dm, "protocol", "loo") == "looc" and self.use_item_id:
            # A cold item joins after training with a SID only; an id row for it would be untrained.
            raise ValueError("data.protocol looc adds the cold items after training by their SIDs, and they have no "
                             "trained item-id row: set model.use_item_id: false")
        term = dm.content_term() if self.config.content_weight > 0 else None
        if self.config.content_weight > 0 and term is None:
            # The recipe runs unchanged on a data set without item content; its checkpoint says what it does.
            log.warning("model.config.content_weight %g: %s", self.config.content_weight, NO_CONTENT)
            self.content_weight_asked = self.config.content_weight
        self.build(
            n_levels=dm.sid.n_levels, codebook_size=dm.sid.codebook_size, n_items=dm.n_items,
            user_feature_cardinalities=dm.user_feature_cardinalities, max_history=dm.max_history,
            n_side_features=len(dm.side), side_buckets=dm.side.n_buckets,
            **({"content_weight": 0.0} if term is None else {}),
        )
        self.catalogue = {
            "item_ids": list(dm.log_all.item_ids.tolist()),
            "codes": torch.as_tensor(dm.codes),
            "sid_index": dm.sid_index.state_dict(),
            "dataset": dm.log_all.name,
            "side_features": dm.side.state_dict(),  # the decode API bucketises raw values with these
            # The keys of `retrieve(user_features=...)`, one per user embedding table.
            "user_feature_names": list(dm.log_all.user_feature_names) if dm.user_feature_cardinalities else [],
            # Tokenizer, added-item rule and content vectorizer: a served model gives new items SIDs with them.
            "new_items": dm.new_item_encoder().state_dict(),
        }
        if term is not None:  # the content term's item rows (genret.models.content_term)
            self.catalogue["content_term"] = term.state_dict()
        return self.model

    def build(self, **data_facts) -> DualGR:
        """Resolve the config with the data's facts and create the network."""
        overrides = dict(data_facts)
        if not self.use_item_id:
            overrides["n_items"] = 0
        cfg = dataclasses.replace(self.config, **overrides)
        cfg.long_window = min(cfg.long_window, cfg.max_history)
        cfg.short_window = min(cfg.short_window, cfg.long_window)
        self.config = cfg
        self.model = DualGR(cfg)
        return self.model

    # ------------------------------------------------------------------ steps
    def _shared_step(self, batch: TrainBatch, stage: str) -> torch.Tensor:
        out = self.model.loss(batch, chunks=self.length_chunks)
        size = batch.items.shape[0]
        self.log(f"{stage}/loss", out["loss"], prog_bar=True, batch_size=size)
        for level, nll in enumerate(out["nll_levels"]):
            self.log(f"{stage}/nll_s{level + 1}", nll, batch_size=size)
        if stage == "train":
            self.log("train/neg_loss", out["neg_loss"], batch_size=size)
            self.log("train/short_fraction", out["short_fraction"], batch_size=size)
            if self.model.cfg.use_dbr:
                self.model.record_routing(out["n_short"], out["n_split"])
            self.log("train/targets", out["n_pos"].float(), batch_size=size, reduce_fx="sum")
        return out["loss"]

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: TrainBatch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: TrainBatch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        opt = adamw(self.model, self.lr, self.weight_decay)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.warmup_steps, self.trainer.estimated_stepping_batches)}
