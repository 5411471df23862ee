"""A training run: build it from a YAML, keep the best epoch through Lightning's callbacks, fit, and
write DIR/model.ckpt. `genret train` and `genret benchmark` both run training through here.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path


log = logging.getLogger(__name__)


def seed_override(overrides: list[str] | None) -> int | None:
    """The seed of the last `--seed_everything S` (or `--seed_everything=S`) among command-line
    overrides; None without one, or when its value is not an integer (Lightning's `true`: a random seed)."""
    seed, args = None, list(overrides or [])
    for i, arg in enumerate(args):
        if arg == "--seed_everything":
            seed = args[i + 1] if i + 1 < len(args) else None
        elif arg.startswith("--seed_everything="):
            seed = arg.split("=", 1)[1]
    return int(seed) if seed is not None and seed.lstrip("-").isdigit() else None


def build(family, config: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
          data: str | None = None, log_to_out_dir: bool = True):
    """(module, datamodule, trainer) of `family` from a YAML, checkpointing into out_dir/checkpoints.

    Args:
        family: a `genret.families.Family` or its name.
        config: the YAML. out_dir: the run's folder (Lightning's default_root_dir).
        overrides: LightningCLI arguments applied last, e.g. ["--trainer.max_epochs", "3"].
        data: the data set, overriding the YAML's data.data.
        log_to_out_dir: log with a CSVLogger to out_dir/logs/version_0 (what the benchmark report
            reads) instead of the YAML's loggers.
    """
    from genret.training.cli import build_cli

    out_dir = Path(out_dir)
    args = ["--config", str(config)]
    if data is not None:
        args += ["--data.data", str(data)]
    args += ["--trainer.default_root_dir", str(out_dir)]
    if log_to_out_dir:
        args += ["--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
                 "--trainer.logger.save_dir", str(out_dir), "--trainer.logger.name", "logs",
                 "--trainer.logger.version", "0"]
    cli = build_cli(family, args + list(overrides or []))
    add_family_callbacks(cli.trainer, family)
    set_checkpointing(cli.trainer, out_dir / "checkpoints", cli.model)
    return cli.model, cli.datamodule, cli.trainer


def add_family_callbacks(trainer, family) -> None:
    """The callbacks the family's registry entry says every run needs (e.g. an embedding model's
    validation by exact ranking), unless the config lists them already."""
    from genret.families import get_family, load_class

    family = get_family(family) if isinstance(family, str) else family
    for path in family.callbacks:
        cls = load_class(path)
        if not any(isinstance(cb, cls) for cb in trainer.callbacks):
            trainer.callbacks.append(cls())


def selection(trainer, module) -> tuple[str, str]:
    """(metric, mode) that picks the epoch to keep: a callback's `selection_metric` (e.g.
    RetrievalValidation's decoded HR@K), else the module's `selection` attribute, else val/loss."""
    chosen = [cb for cb in trainer.callbacks if getattr(cb, "selection_metric", None)]
    if len(chosen) > 1:
        raise ValueError(f"a config may add one callback that selects the epoch, found {len(chosen)}: "
                         f"{[type(cb).__name__ for cb in chosen]}")
    if chosen:
        return chosen[0].selection_metric, "max"
    return getattr(module, "selection", ("val/loss", "min"))


def set_checkpointing(trainer, dirpath: Path, module) -> None:
    """Replace the trainer's checkpoint callbacks with the run's two (and early stopping, when the
    module asks for it with a `patience`).

    "best" keeps the weights the run ends with (see `selection`). "last" rewrites last.ckpt after
    every epoch for `--ckpt_path DIR/checkpoints/last.ckpt` (Lightning's save_last on a monitored
    callback only rewrites it when a new best is saved, so it could lag behind the final epoch).
    """
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, WeightAveraging

    monitor, mode = selection(trainer, module)
    best = ModelCheckpoint(dirpath=dirpath, monitor=monitor, mode=mode)
    last = ModelCheckpoint(dirpath=dirpath, filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                           enable_version_counter=False)
    # Checkpoint callbacks go last so they see every metric logged by the others; `best` comes
    # first because trainer.checkpoint_callback (read by `fit`) is the first of them. A weight
    # averaging callback (EMA) swaps the averaged weights in when validation starts and out when it
    # ends, so it goes after the callbacks that validate (RetrievalValidation must decode the averaged ones).
    averaging = [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)]
    others = [cb for cb in trainer.callbacks if not isinstance(cb, (ModelCheckpoint, WeightAveraging))]
    patience = getattr(module, "patience", None)
    if patience is not None and not any(isinstance(cb, EarlyStopping) for cb in others):
        # strict=False: a partial validation (limit_val_batches) logs no ranking metric to compare.
        others.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience, strict=False))
    trainer.callbacks = others + averaging + [best, last]


def _csv_log(trainer) -> tuple[Path, list[dict], list[str]] | None:
    """The CSV log a continued run will write to, with the rows already in it (path, rows, columns)."""
    from pytorch_lightning.loggers import CSVLogger

    if not isinstance(trainer.logger, CSVLogger):
        return None
    path = Path(trainer.logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        # A run stopped while Lightning was adding a column leaves rows longer than the header; their
        # unnamed extra values (csv's None key) cannot be written back under any column: drop them.
        rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
        return path, rows, list(reader.fieldnames or [])


def _keep_earlier_epochs(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Lightning's CSVLogger starts its file afresh when a run continues from a checkpoint: put the
    epochs before the continuation back in front of the new rows, so the log covers the whole run."""
    from genret.io import write_text

    new_rows, new_columns = [], []
    if path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            new_rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
            new_columns = list(reader.fieldnames or [])
    new_epochs = [int(float(r["epoch"])) for r in new_rows if r.get("epoch")]
    first_new = min(new_epochs) if new_epochs else None
    kept = [r for r in rows if first_new is None or not r.get("epoch") or int(float(r["epoch"])) < first_new]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns + [c for c in new_columns if c not in columns],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept + new_rows)
    write_text(path, out.getvalue())


def why_stopped(trainer) -> dict:
    """Why a fit ended: {"stopped_by": "patience" | "max_time" | "max_steps" | "max_epochs" | "other",
    "limit": that limit's value (seconds for max_time; None for patience and other), "epochs": epochs
    trained, "improving": True when the last validation was the best so far, None when the run has no
    early stopping to tell (or never validated)}."""
    import math

    from pytorch_lightning.callbacks import EarlyStopping, Timer

    early = next((cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)), None)
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    remaining = timer.time_remaining("train") if timer is not None else None
    if early is not None and early.stopped_epoch > 0:
        by, limit = "patience", None
    elif remaining is not None and remaining <= 0:
        by, limit = "max_time", round(timer.time_elapsed("train") + remaining)
    elif trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        by, limit = "max_steps", trainer.max_steps
    elif trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs:
        by, limit = "max_epochs", trainer.max_epochs
    else:
        by, limit = "other", None
    improving = None
    if early is not None and math.isfinite(float(early.best_score)):
        improving = by != "patience" and early.wait_count == 0
    return {"stopped_by": by, "limit": limit, "epochs": int(trainer.current_epoch), "improving": improving}


def cut_short(stop: dict) -> bool:
    """Whether a `why_stopped` record says a limit ended training while validation was still improving."""
    return bool(stop.get("improving")) and stop.get("stopped_by") in ("max_time", "max_epochs", "max_steps")


def warn_if_cut_short(trainer) -> dict:
    """Log why training ended, with a warning when a limit ended it while validation was still
    rising (the model is likely under-trained) or the time limit ended it. Returns `why_stopped`."""
    stop = why_stopped(trainer)
    by, limit, epochs = stop["stopped_by"], stop["limit"], stop["epochs"]
    shown = f"{limit} s" if by == "max_time" else limit
    if cut_short(stop):
        log.warning("training stopped at trainer.%s (%s) after %d epochs while validation was still "
                    "improving (its last check was the best so far): the model is likely under-trained; "
                    "raise trainer.%s (`genret train ... --ckpt_path <run dir>/checkpoints/last.ckpt` continues)",
                    by, shown, epochs, by)
    elif by == "max_time":
        log.warning("training stopped at trainer.max_time (%s) after %d of %s epochs", shown, epochs,
                    trainer.max_epochs)
    else:
        log.info("training stopped by %s after %d epochs", by if by != "other" else "the module", epochs)
    return stop


def fit(module, datamodule, trainer, out_dir: str | Path, ckpt_path: str | None = None) -> tuple[Path, float]:
    """Fit, load the kept epoch's weights and write out_dir/model.ckpt (atomically).

    Returns (checkpoint path, seconds of training)."""
    from pytorch_lightning.callbacks import WeightAveraging

    from genret.training.checkpoint import load_checkpoint

    earlier_log = _csv_log(trainer) if ckpt_path is not None else None
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    if trainer.is_global_zero:  # once, not once a process
        warn_if_cut_short(trainer)
    if earlier_log is not None:
        _keep_earlier_epochs(*earlier_log)
    selector = trainer.checkpoint_callback
    best = getattr(selector, "best_model_path", "")
    if best and selector.best_model_score is not None:
        module.load_state_dict(load_checkpoint(best)[0]["state_dict"])
        log.info("best %s %.4f at %s; keeping those weights", selector.monitor,
                 float(selector.best_model_score), Path(best).name)
    # A weight averaging callback would write its final average over the selected weights.
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, WeightAveraging)]
    ckpt = Path(out_dir) / "model.ckpt"
    # Every rank calls save_checkpoint (it ends in a barrier) but only rank 0 writes, to a fixed
    # temporary name, then renames it over model.ckpt: readers see the old file or the whole new one.
    tmp = ckpt.with_name(".model.ckpt.tmp")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    try:
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, ckpt)
    finally:
        if trainer.is_global_zero:
            tmp.unlink(missing_ok=True)
    trainer.strategy.barrier("genret model.ckpt")
    return ckpt, seconds
