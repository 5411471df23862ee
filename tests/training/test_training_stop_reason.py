"""Why a fit ended (`genret.training.run.why_stopped`), and the warning when a limit cut a run whose
validation was still rising: on tiny Lightning runs whose validation score follows a given curve."""

import logging
from datetime import timedelta
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("pytorch_lightning")
from pytorch_lightning.callbacks import EarlyStopping  # noqa: E402

from genret.training.run import warn_if_cut_short, why_stopped  # noqa: E402


class CurveModule(pl.LightningModule):
    """Logs val/score = curve[epoch] (the last value repeats); sleeps `step_seconds` a training step."""

    def __init__(self, curve, step_seconds: float = 0.0):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.curve, self.step_seconds = list(curve), step_seconds

    def training_step(self, batch, batch_idx):
        if self.step_seconds:
            time.sleep(self.step_seconds)
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(self.curve[min(self.current_epoch, len(self.curve) - 1)]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _loader(self):
        return DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()


def _fit(curve, patience=2, step_seconds=0.0, **trainer_kwargs):
    callbacks = [] if patience is None else [EarlyStopping("val/score", mode="max", patience=patience)]
    trainer = pl.Trainer(callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", **trainer_kwargs)
    trainer.fit(CurveModule(curve, step_seconds))
    return trainer


def test_a_run_cut_by_max_epochs_while_validation_rises_is_called_under_trained(caplog):
    trainer = _fit([0.1, 0.2, 0.3], max_epochs=3)
    assert why_stopped(trainer) == {"stopped_by": "max_epochs", "limit": 3, "epochs": 3, "improving": True}
    with caplog.at_level(logging.INFO, logger="genret.training.run"):
        warn_if_cut_short(trainer)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "under-trained" in warnings[0] and "trainer.max_epochs (3)" in warnings[0]
    assert "--ckpt_path" in warnings[0]


def test_a_run_past_its_best_at_max_epochs_is_not_flagged(caplog):
    trainer = _fit([0.1, 0.3, 0.2], patience=5, max_epochs=3)
    assert why_stopped(trainer) == {"stopped_by": "max_epochs", "limit": 3, "epochs": 3, "improving": False}
    with caplog.at_level(logging.INFO, logger="genret.training.run"):
        warn_if_cut_short(trainer)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_patience_is_named_as_the_reason(caplog):
    trainer = _fit([0.3, 0.2, 0.1, 0.1, 0.1, 0.1], patience=1, max_epochs=6)
    stop = why_stopped(trainer)
    assert stop["stopped_by"] == "patience" and stop["improving"] is False and stop["epochs"] < 6
    with caplog.at_level(logging.INFO, logger="genret.training.run"):
        warn_if_cut_short(trainer)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("stopped by patience" in r.getMessage() for r in caplog.records)


def test_the_time_limit_is_named_with_a_warning(caplog):
    trainer = _fit([0.1 * i for i in range(1, 100)], patience=50, step_seconds=0.05,
                   max_epochs=1000, max_time=timedelta(seconds=1))
    stop = why_stopped(trainer)
    assert stop["stopped_by"] == "max_time" and stop["limit"] == 1 and stop["epochs"] < 1000
    with caplog.at_level(logging.INFO, logger="genret.training.run"):
        warn_if_cut_short(trainer)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "trainer.max_time (1 s)" in warnings[0]


def test_without_early_stopping_improvement_is_unknown(caplog):
    trainer = _fit([0.1, 0.2], patience=None, max_epochs=2)
    assert why_stopped(trainer) == {"stopped_by": "max_epochs", "limit": 2, "epochs": 2, "improving": None}
    with caplog.at_level(logging.INFO, logger="genret.training.run"):
        warn_if_cut_short(trainer)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_fit_warns_on_a_run_cut_short(tmp_path, caplog):
    from genret.training.run import fit

    trainer = pl.Trainer(callbacks=[EarlyStopping("val/score", mode="max", patience=3)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, accelerator="cpu", max_epochs=2)
    with caplog.at_level(logging.INFO, logger="genret.training.run"):
        ckpt, _ = fit(CurveModule([0.1, 0.2]), None, trainer, tmp_path)
    assert ckpt.is_file()
    assert any(r.levelno == logging.WARNING and "under-trained" in r.getMessage() for r in caplog.records)
