"""GRank's `hard_negatives_from: generator`: before training, the external generator's top
`hard_pool` items (history excluded) for each training user's last cut, handed to the module as
the pool its ranker's hard negatives are drawn from (genret.training.grank_module), and its top
`val_k1` (with its scores) for every validation user, which validation re-ranks: the kept epoch is
then chosen on the candidates the ranker will serve, not on GRank's own generator's.

A callback (the grank family lists it, like GRankValidation) because training may not import the
decoding stage that loads another family's retriever.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch

from genret.decoding.grank_retriever import generator_top_items

log = logging.getLogger(__name__)


def cache_generator_pool(module, dm) -> torch.Tensor:
    """Compute the external generator's candidates for `dm`'s training users (`dm.train_users`
    order, the history of each one's last cut) and keep them in `module.generator_pool`."""
    if not dm.include_last_cut:
        log.warning("hard_negatives_from: generator with data.include_last_cut false: the ranker only trains on "
                    "the random cuts that fall on a user's last training positive")
    offsets, items = dm.last_cut_histories()
    n_users = len(offsets) - 1
    log.info("caching %s's top %d items for %d training users (the ranker's hard negatives)", module.generator,
             module.hard_pool, n_users)
    pool = generator_top_items(module.generator, module.catalogue["item_ids"], offsets, items, module.hard_pool,
                               device=module.device, beam_width=module.beam_width,
                               batch_size=module.generator_batch_size, width=module.hard_pool,
                               inputs=generator_inputs(dm, "last_cut"))
    empty = int((pool[:, 0] < 0).sum())
    if empty:
        log.warning("%d of %d training users get no candidate from %s; the ranker skips them", empty, n_users,
                    module.generator)
    module.set_generator_pool(torch.from_numpy(pool))
    es = dm.eval_sets["valid"]
    log.info("caching %s's top %d items for %d validation users (what validation re-ranks)", module.generator,
             module.val_k1, len(es))
    items, scores = generator_top_items(module.generator, module.catalogue["item_ids"], np.asarray(es.history_offsets),
                                        np.asarray(es.history_items), module.val_k1, device=module.device,
                                        beam_width=module.beam_width, batch_size=module.generator_batch_size,
                                        inputs=generator_inputs(dm, "valid"),
                                        with_scores=True)
    module.set_generator_validation(torch.from_numpy(items), torch.from_numpy(scores))
    return module.generator_pool


def generator_inputs(dm, stage: str):
    """What an external generator embeds besides the items, for the histories of `stage`
    ("last_cut", "valid", "test"): a function of (side-feature names, user-feature names)."""
    return lambda side_names, user_names: (dm.history_side_values(side_names, stage),
                                           dm.history_user_features(user_names, stage))


class GeneratorHardNegatives(pl.Callback):
    """Fills a GRankModule's `generator_pool` when fitting starts (a no-op unless it asks for one)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if getattr(pl_module, "uses_generator_pool", False):
            cache_generator_pool(pl_module, trainer.datamodule)
