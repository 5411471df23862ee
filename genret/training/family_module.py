"""What every family's LightningModule shares: sizing the network from the data module, and the
"genret" checkpoint entry (genret.training.checkpoint) it writes and reads back.

A family's module sets `family` (the name its checkpoints carry), `config_class` and
`network_class`, and implements `build_from_data(dm)`: resolve the config with the data's facts,
create `self.model` and fill `self.catalogue` (what serving needs besides the weights).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytorch_lightning as pl
import torch

from genret.training.checkpoint import genret_entry, read_entry
from genret.training.optim import adamw_warmup_cosine


class FamilyModule(pl.LightningModule):
    family: str
    config_class: type
    network_class: type

    def configure_model(self) -> None:
        if self.model is not None:
            return
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            raise RuntimeError(f"{type(self).__name__} needs its family's data module to size its model; "
                               "pass datamodule=")
        dm.setup("fit")
        self.build_from_data(dm)

    def build_from_data(self, dm) -> torch.nn.Module:
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, Any]:
        """Entries beside config and catalogue that the family's retriever reads (none by default)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["genret"] = genret_entry(self.family, dataclasses.asdict(self.config), self.catalogue,
                                            **self.checkpoint_extra())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        entry = read_entry(checkpoint, "checkpoint", family=self.family)
        self.catalogue = entry["catalogue"]
        if self.model is None:
            self.config = self.config_class(**entry["config"])
            self.model = self.network_class(self.config)
            self.network_restored()

    def network_restored(self) -> None:
        """Called when on_load_checkpoint has built the network from the entry (before the weights load)."""


class ItemSoftmaxModule(FamilyModule):
    """The families scored by a softmax over items (KuaiFormer / SASRec, RetrievalFormer, GRank): the
    kept epoch is the best validation `monitor` (higher is better), test runs the validation step,
    AdamW with warm-up + cosine, and a `item_log_prob` buffer (log Q of each item) in the weights."""

    @property
    def selection(self) -> tuple[str, str]:
        """The metric, and its better direction, that picks the epoch the run keeps."""
        return self.monitor, "max"

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        return self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self)

    def network_restored(self) -> None:
        # Filled by the checkpoint's state dict; the data module computes it when training.
        self.register_buffer("item_log_prob", torch.zeros(self.config.n_items))
