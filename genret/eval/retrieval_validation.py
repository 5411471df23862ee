"""Validation by retrieval: beam-search HR@K on a fixed sample of validation users after each epoch.

The validation loss is the NLL of the target's SID under teacher forcing. On sparse data it stops
tracking what serving returns: on Amazon Beauty the level-1 NLL rises from the third epoch while
Recall@10 of the decoded list keeps improving for many more. This callback measures the list
itself, so `genret benchmark` can keep the checkpoint with the best validation HR@K instead of the
lowest loss (add it under `trainer.callbacks` in a config; the run then keeps the epoch by its metric).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytorch_lightning as pl
import torch

from genret.eval.metrics import ranking_metrics
from genret.eval.ranked_lists import retriever_ranked_lists, user_features_for

log = logging.getLogger(__name__)


class RetrievalValidation(pl.Callback):
    """Log `val/hr@{k}` and `val/ndcg@{k}` of the decoded top-k on `users` validation users.

    Leave-one-out, full ranking, history items removed, exactly as `genret benchmark` evaluates
    (HR@K == Recall@K with one target per user). The users are a seeded random sample drawn once,
    so every epoch is scored on the same people.

    Args:
        k: the cut-off (the beam asks for k plus a margin for removed history items).
        users: how many validation users to decode (None: all). The standard error of HR@K on n
            users is about sqrt(p (1 - p) / n): 0.004 for p = 0.07 and n = 4,000.
        seed: seeds the sample.
        batch_size: users per beam-search call.
        kernel: the Retriever's kernel choice ("auto", "torch", "triton").
        branch_merge: how the two DBR branches' lists merge ("sum" or "max"; see Retriever).
    """

    def __init__(self, k: int = 10, users: int | None = 4000, seed: int = 0, batch_size: int = 128,
                 kernel: str = "auto", branch_merge: str = "sum"):
        if k < 1:
            raise ValueError(f"RetrievalValidation k must be >= 1, got {k}")
        if users is not None and users < 1:
            raise ValueError(f"RetrievalValidation users must be >= 1 or None (all), got {users}")
        if batch_size < 1:
            raise ValueError(f"RetrievalValidation batch_size must be >= 1, got {batch_size}")
        from genret.decoding.beam_search import BRANCH_MERGES

        if branch_merge not in BRANCH_MERGES:
            raise ValueError(f"RetrievalValidation branch_merge must be {' or '.join(map(repr, BRANCH_MERGES))}, "
                             f"got {branch_merge!r}")
        self.k = k
        self.users = users
        self.seed = seed
        self.batch_size = batch_size
        self.kernel = kernel
        self.branch_merge = branch_merge
        self._sample = None  # (EvalSet of the sampled users, their user features, their history side features)
        self._sample_of = None  # the data module the sample was drawn from

    @property
    def selection_metric(self) -> str:
        """The metric the run keeps the best epoch by (higher is better; see genret.training.run)."""
        return f"val/hr@{self.k}"

    def _sampled_eval_set(self, dm):

        if self._sample is None or self._sample_of is not dm:
            es = dm.eval_sets["valid"]  # under LOOC with a cold validation set: without its users
            if self.users is not None and self.users < len(es):
                rng = np.random.default_rng(self.seed)
                es = es.subset(rng.choice(len(es), self.users, replace=False))
            self._sample = (es, user_features_for(dm, es), dm.history_side(es))
            self._sample_of = dm
        return self._sample

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        from genret.decoding.retriever import Retriever
        from genret.models.dualgr import DualGR

        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "split"):
            raise RuntimeError("RetrievalValidation needs genret's SequenceDataModule (trainer.datamodule)")
        model = getattr(pl_module, "model", None)
        if not isinstance(model, DualGR):
            raise RuntimeError(f"RetrievalValidation beam-searches a DualGR; {type(pl_module).__name__} does not "
                               "train one (embedding models are validated by their own top-K)")
        start = time.perf_counter()
        es, user_feats, history_side = self._sampled_eval_set(dm)
        model.set_item_codes(torch.as_tensor(dm.codes))
        side = dm.side if len(dm.side) else None
        # The beams' own order picks the epoch: a content term (model.config.content_weight) acts at
        # ranking only and would not change what training learnt.
        retriever = Retriever(model, dm.sid_index.to(model.bos.device), dm.log_all.item_ids, kernel=self.kernel,
                              side_features=side, branch_merge=self.branch_merge, content_weight=0.0)
        ranked = retriever_ranked_lists(retriever, es, self.k, self.batch_size, user_feats=user_feats,
                                        history_side=history_side, desc="validation retrieval")
        metrics = ranking_metrics(ranked, es.targets, (self.k,))
        hr, ndcg = metrics[f"hr@{self.k}"], metrics[f"ndcg@{self.k}"]
        # The ranks share the users' batches and all get every list, so every rank logs the same
        # value; sync_dist only averages equal values.
        pl_module.log(self.selection_metric, hr, prog_bar=True, batch_size=len(es), sync_dist=True)
        pl_module.log(f"val/ndcg@{self.k}", ndcg, batch_size=len(es), sync_dist=True)
        log.info("epoch %d: validation HR@%d %.4f, NDCG@%d %.4f on %d users (%.0f s)", trainer.current_epoch,
                 self.k, hr, self.k, ndcg, len(es), time.perf_counter() - start)
