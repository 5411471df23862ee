"""The end-to-end job behind `genret benchmark` and `genret quickstart`:
tokenize -> train (Lightning) -> evaluate leave-one-out (full ranking) -> metrics.json + report.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# Ablations of the DualGR paper's Table 2, as model-config overrides.
VARIANTS: dict[str, dict[str, bool]] = {
    "dualgr": {},
    "w/o DBR": {"use_dbr": False},
    "w/o S2D": {"use_s2d": False},
    "w/o ENTP": {"use_entp": False},
    "tiger": {"use_dbr": False, "use_s2d": False, "use_entp": False},
}


def build(config: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
          model_overrides: dict[str, Any] | None = None, data: str | None = None):
    """Instantiate (module, datamodule, trainer) from a YAML through LightningCLI (no run)."""
    from genret.commands.train import build_cli

    out_dir = Path(out_dir)
    args = ["--config", str(config)]
    if data is not None:
        args += ["--data.data", data]
    for key, value in (model_overrides or {}).items():
        args += [f"--model.config.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    args += [
        "--trainer.default_root_dir", str(out_dir),
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(out_dir), "--trainer.logger.name", "logs",
        "--trainer.logger.version", "0",
    ]
    args += list(overrides or [])
    cli = build_cli(args, run=False)
    _set_checkpointing(cli.trainer, out_dir / "checkpoints")
    return cli.model, cli.datamodule, cli.trainer


def _set_checkpointing(trainer, dirpath: Path) -> None:
    """Replace the trainer's checkpoint callbacks with the pipeline's two.

    "best" keeps the weights `train` evaluates: the highest validation HR@K when the config adds a
    RetrievalValidation callback, else the lowest validation loss. "last" rewrites last.ckpt after
    every epoch for `--ckpt_path last` (Lightning's save_last on a monitored callback only rewrites
    it when a new best is saved, so it could lag behind the final epoch).
    """
    from pytorch_lightning.callbacks import ModelCheckpoint, WeightAveraging

    from genret.training.retrieval_validation import RetrievalValidation

    selectors = [cb for cb in trainer.callbacks if isinstance(cb, RetrievalValidation)]
    if len(selectors) > 1:
        raise ValueError(f"a config may add one RetrievalValidation callback, found {len(selectors)}")
    monitor, mode = (selectors[0].metric, "max") if selectors else ("val/loss", "min")
    best = ModelCheckpoint(dirpath=dirpath, monitor=monitor, mode=mode)
    last = ModelCheckpoint(dirpath=dirpath, filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                           enable_version_counter=False)
    # Checkpoint callbacks go last so they see every metric logged by the others; `best` comes
    # first because trainer.checkpoint_callback (read by `train`) is the first of them. A weight
    # averaging callback (EMA) swaps the averaged weights in when validation starts and out when it
    # ends, so it goes after RetrievalValidation, whose decoding must still see the averaged ones.
    averaging = [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)]
    others = [cb for cb in trainer.callbacks if not isinstance(cb, (ModelCheckpoint, WeightAveraging))]
    trainer.callbacks = others + averaging + [best, last]


def train(module, datamodule, trainer, out_dir: Path) -> tuple[Path, float]:
    """Fit and write out_dir/model.ckpt (atomically) with the best validation weights (see `_set_checkpointing`).

    Returns (checkpoint path, seconds of training)."""
    from pytorch_lightning.callbacks import WeightAveraging

    from genret.io import atomic_path

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    selector = trainer.checkpoint_callback
    best = getattr(selector, "best_model_path", "")
    if best and selector.best_model_score is not None:
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
        log.info("best %s %.4f at %s; evaluating those weights", selector.monitor,
                 float(selector.best_model_score), Path(best).name)
    # A weight averaging callback would write its final average over the selected weights.
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, WeightAveraging)]
    ckpt = out_dir / "model.ckpt"
    with atomic_path(ckpt) as tmp:
        trainer.save_checkpoint(tmp)
    return ckpt, seconds


def evaluate_retriever(retriever, eval_set, ks=(5, 10, 20, 50, 100, 500), batch_size: int = 64,
                       exclude_history: bool = True, history_margin: int = 20, desc: str = "evaluate",
                       max_users: int | None = None, user_feats: np.ndarray | None = None,
                       history_side: np.ndarray | None = None) -> dict[str, Any]:
    """Leave-one-out full-ranking metrics of a generative retriever; args as `retriever_ranked_lists`."""
    from genret.eval import ranking_metrics

    ranked = retriever_ranked_lists(retriever, eval_set, max(ks), batch_size, exclude_history, history_margin,
                                    desc, max_users, user_feats, history_side)
    return ranking_metrics(ranked, eval_set.targets[:len(ranked)], ks)


def retriever_ranked_lists(retriever, eval_set, k_max: int, batch_size: int = 64, exclude_history: bool = True,
                           history_margin: int = 20, desc: str = "evaluate", max_users: int | None = None,
                           user_feats: np.ndarray | None = None,
                           history_side: np.ndarray | None = None) -> np.ndarray:
    """(m, k_max) item indices, best first (-1 padded): a generative retriever's beam-search lists
    for the first m users of `eval_set` (all, or `max_users`).

    With `exclude_history`, items already in a user's history are removed from the list (as for
    every model in `genret benchmark`); the beam then asks for `history_margin` extra items so the
    list stays full. `history_side` (len(history_items), S) holds the side-feature buckets of the
    history actions when the model embeds side features.
    """
    from genret.decoding.beam_search import Histories

    n_items = len(retriever.item_ids)
    k_req = min(k_max + (history_margin if exclude_history else 0), n_items)
    m = len(eval_set) if max_users is None else min(len(eval_set), max_users)
    ranked = np.full((m, k_max), -1, np.int64)
    device = retriever.device
    offsets = np.asarray(eval_set.history_offsets)
    n_fields = len(retriever.model.user_embeddings)
    feats = torch.zeros(m, n_fields, dtype=torch.long, device=device) if user_feats is None or n_fields == 0 \
        else torch.as_tensor(np.asarray(user_feats)[:m], dtype=torch.long, device=device)
    for start in tqdm(range(0, m, batch_size), desc=desc, unit="batch"):
        stop = min(start + batch_size, m)
        lo, hi = offsets[start], offsets[stop]
        hist = Histories(torch.as_tensor(offsets[start:stop + 1] - lo, device=device),
                         torch.as_tensor(eval_set.history_items[lo:hi], device=device),
                         feats[start:stop],
                         None if history_side is None else torch.as_tensor(history_side[lo:hi], device=device))
        items, _ = retriever.retrieve_indices(hist, k_req)
        items = items.cpu().numpy()
        if exclude_history:
            owner = np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1]))
            seen = np.zeros((stop - start, n_items + 1), bool)  # +1 column absorbs the -1 padding
            seen[owner, eval_set.history_items[lo:hi]] = True
            drop = seen[np.arange(stop - start)[:, None], items]
            items = np.where(drop, -1, items)
            # Stable compaction: surviving items move to the front in their order.
            order = np.argsort(items < 0, axis=1, kind="stable")
            items = np.take_along_axis(items, order, 1)
        ranked[start:stop] = items[:, :k_max] if items.shape[1] >= k_max else np.pad(
            items, ((0, 0), (0, k_max - items.shape[1])), constant_values=-1)
    return ranked


def user_features_for(datamodule, eval_set) -> np.ndarray:
    return datamodule.user_feats[eval_set.users]


def popularity_metrics(datamodule, ks, max_users: int | None = None) -> dict[str, dict[str, Any]]:
    """Popularity baseline on valid and test; `max_users` keeps the same first users as the
    models it is compared with (`genret benchmark --max-eval-users`)."""
    from genret.eval import PopularityRecommender, ranking_metrics

    pop = PopularityRecommender().fit(datamodule.train_log)
    out = {}
    for stage in ("valid", "test"):
        es = datamodule.split.eval_set(stage)
        m = len(es) if max_users is None else min(len(es), max_users)
        ranked = pop.recommend(es, max(ks))[:m]
        out["val" if stage == "valid" else "test"] = ranking_metrics(ranked, es.targets[:m], ks)
    return out


def run_variant(config: str | Path, out_dir: Path, variant: str = "dualgr", data: str | None = None,
                overrides: list[str] | None = None, ks=(5, 10, 20, 50, 100, 500), eval_batch_size: int = 64,
                max_eval_users: int | None = None, kernel: str = "auto", branch_merge: str = "sum",
                checkpoint: str | Path | None = None, short_weight: float | None = None) -> dict[str, Any]:
    """Train one DualGR variant and evaluate it on valid and test. Returns a result dict; its
    "test_ranks" holds each test user's target rank (-1: not listed) for paired comparisons, and
    "short_weight" the short DBR branch's weight in the merge (`short_weight`, else the model's prior).

    With `checkpoint`, that trained model is evaluated instead (no training; "train_seconds" 0):
    the same split and protocol, e.g. to re-score a run after a decoding change."""
    from genret.decoding.retriever import Retriever
    from genret.eval import ranking_metrics, target_ranks

    out_dir.mkdir(parents=True, exist_ok=True)
    module, dm, trainer = build(config, out_dir, overrides, VARIANTS[variant], data)
    if checkpoint is None:
        ckpt, seconds = train(module, dm, trainer, out_dir)
    else:
        ckpt, seconds = Path(checkpoint), 0.0
        dm.setup("fit")
    retriever = Retriever.from_checkpoint(ckpt, kernel=kernel, branch_merge=branch_merge, short_weight=short_weight)
    if not np.array_equal(retriever.item_ids, np.asarray(dm.log_all.item_ids)):
        raise ValueError(f"{ckpt} was trained on another catalogue ({len(retriever.item_ids)} items) than "
                         f"{dm.log_all.name} ({dm.n_items}); evaluate it on the data it was trained on")
    result: dict[str, Any] = {"model": variant, "checkpoint": str(ckpt), "train_seconds": seconds,
                              "dataset": dm.log_all.name, "sid_report": dm.sid_report, "datamodule": dm}
    if retriever.model.cfg.use_dbr:
        result["short_weight"] = retriever.branch_weight
    for stage, key in (("valid", "val"), ("test", "test")):
        es = dm.split.eval_set(stage)
        ranked = retriever_ranked_lists(retriever, es, max(ks), eval_batch_size, desc=f"{variant} {stage}",
                                        max_users=max_eval_users, user_feats=user_features_for(dm, es),
                                        history_side=dm.history_side(es))
        targets = es.targets[:len(ranked)]
        result[key] = ranking_metrics(ranked, targets, ks)
    result["test_ranks"] = target_ranks(ranked, targets)
    return result


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
