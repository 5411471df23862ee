"""Validation of an embedding model (KuaiFormer, SASRec) by exact full ranking after each epoch.

The run adds this callback to every embedding family (genret.families): the module's
validation_step returns each batch's user vectors, and at the epoch's end every item is ranked for
every validation user (history excluded) and HR@K / NDCG@K are logged for the cut-offs in the
module's `eval_ks`, one of which its `monitor` selects the kept epoch by.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class EmbeddingValidation(pl.Callback):
    """Ranks the user vectors of a validation (or test) epoch and logs `val/` (`test/`) HR@K and NDCG@K."""

    def __init__(self) -> None:
        self._vectors: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._vectors = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._vectors = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._vectors.append(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._vectors.append(outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._score(trainer, pl_module, "valid", "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._score(trainer, pl_module, "test", "test")

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, prefix: str) -> None:
        if not self._vectors:
            return
        from genret.decoding.embedding_retriever import rank_items
        from genret.eval.metrics import ranking_metrics

        es = trainer.datamodule.eval_sets[stage]
        users = torch.cat(self._vectors)
        self._vectors = []
        if len(users) != len(es):
            return  # a partial epoch (limit_val_batches, several processes) cannot be ranked against all targets
        ks = pl_module.eval_ks
        ranked = rank_items(users, pl_module.model.item_vectors().detach().float().cpu(), max(ks),
                            exclude=(es.history_offsets, es.history_items), device="cpu")
        metrics = ranking_metrics(ranked, es.targets, ks)
        for k in ks:
            pl_module.log(f"{prefix}/hr@{k}", metrics[f"hr@{k}"], prog_bar=k == 10)
            pl_module.log(f"{prefix}/ndcg@{k}", metrics[f"ndcg@{k}"], prog_bar=k == 10)
        if prefix == "val" and pl_module.monitor.removeprefix("val/") not in metrics:
            raise ValueError(f"monitor {pl_module.monitor!r} is not among the logged metrics; use val/hr@K or "
                             f"val/ndcg@K with K in eval_ks={ks}")
        log.info("epoch %d: %s %s", trainer.current_epoch, prefix,
                 " ".join(f"{name}@{k} {metrics[f'{name}@{k}']:.4f}" for k in ks for name in ("hr", "ndcg")))
