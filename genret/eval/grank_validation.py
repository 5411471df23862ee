"""Validation of GRank by its serving pipeline: each validation_step returns, per user, the
generator's top-k1 (history excluded) and the same list re-ordered by the ranker, once per score
blend it tries; at the epoch's end this callback logs val/hr@K and val/ndcg@K of the ranked list
of the best blend by `monitor` (what `monitor` selects the epoch by; val/blend is that blend),
val/gen_hr@K and val/gen_ndcg@K of the generator alone, and val/candidate_recall (the ranker's
ceiling: the target is among the k1 candidates)."""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class GRankValidation(pl.Callback):
    """Collects the lists of a validation (or test) epoch and logs generator and generator+ranker metrics."""

    def __init__(self) -> None:
        self._outputs: list[dict[str, torch.Tensor]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._outputs = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._outputs = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._outputs.append(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._outputs.append(outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._score(trainer, pl_module, "valid", "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "test", "test")

    def _score(self, trainer, pl_module, stage: str, prefix: str) -> None:
        from genret.eval.metrics import ranking_metrics

        if not self._outputs:
            return
        es = trainer.datamodule.eval_sets[stage]
        generator = np.concatenate([o["generator"].numpy() for o in self._outputs])
        blends = list(self._outputs[0]["ranked"])
        ranked = {b: np.concatenate([o["ranked"][b].numpy() for o in self._outputs]) for b in blends}
        self._outputs = []
        if len(generator) != len(es):
            return  # a partial epoch cannot be scored against every target
        ks = pl_module.eval_ks
        by_blend = {b: ranking_metrics(ranked[b], es.targets, ks) for b in blends}
        key = pl_module.monitor.removeprefix(f"{prefix}/")
        best = max(range(len(blends)), key=lambda i: (by_blend[blends[i]].get(key, 0.0), -i))  # first on a tie
        full = by_blend[blends[best]]
        gen = ranking_metrics(generator, es.targets, ks)
        pl_module.log(f"{prefix}/blend", float(blends[best]))
        for k in ks:
            pl_module.log(f"{prefix}/hr@{k}", full[f"hr@{k}"], prog_bar=k == 10)
            pl_module.log(f"{prefix}/ndcg@{k}", full[f"ndcg@{k}"], prog_bar=k == 10)
            pl_module.log(f"{prefix}/gen_hr@{k}", gen[f"hr@{k}"])
            pl_module.log(f"{prefix}/gen_ndcg@{k}", gen[f"ndcg@{k}"])
        recall = float((generator == es.targets[:, None]).any(1).mean())
        pl_module.log(f"{prefix}/candidate_recall", recall)
        if prefix == "val" and pl_module.monitor.removeprefix("val/") not in {**full, "candidate_recall": 0,
                                                                             **{f"gen_{m}": 0 for m in gen}}:
            raise ValueError(f"monitor {pl_module.monitor!r} is not logged; use val/hr@K, val/ndcg@K or "
                             f"val/gen_ndcg@K with K in eval_ks={ks}")
        log.info("epoch %d: %s ranked%s %s | generator %s | candidates@%d %.4f", trainer.current_epoch, prefix,
                 f" (blend {blends[best]:g} of {', '.join(f'{b:g}' for b in blends)})" if len(blends) > 1 else "",
                 " ".join(f"{m}@{k} {full[f'{m}@{k}']:.4f}" for k in ks for m in ("hr", "ndcg")),
                 " ".join(f"{m}@{k} {gen[f'{m}@{k}']:.4f}" for k in ks for m in ("hr", "ndcg")),
                 generator.shape[1], recall)
