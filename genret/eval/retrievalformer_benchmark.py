"""`genret benchmark --model retrievalformer`: train, evaluate leave-one-out with full ranking, and
under the leave-one-out-cold protocol (`--protocol looc`, i.e. `data.protocol: looc`) also the
cold users and the content-only baseline.

The content baseline (the floor of the paper's cold-start comparison): each item is a TF-IDF
vector over its non-id features (title words, genres, year, categories) with the vocabularies
fitted on the warm items only; a user is the mean of their history's item vectors; items are
ranked by cosine similarity.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genret.eval.metrics import paired_hit_difference, ranking_metrics, target_ranks

log = logging.getLogger(__name__)

DEFAULT_KS = (5, 10, 20, 50, 100, 500)


def rank_with_exclusion(users: torch.Tensor, items: torch.Tensor, k: int, offsets: np.ndarray,
                        exclude: np.ndarray, chunk: int = 1024, extra=None) -> np.ndarray:
    """Exact top-k of users (m, d) . items (n, d)^T with each user's CSR `exclude` items removed: (m, k) int64.
    `extra(start, stop)`, if given, returns (stop - start, n) scores added to those users' rows."""
    out = []
    for start in range(0, len(users), chunk):
        scores = users[start:start + chunk] @ items.T
        stop = min(start + chunk, len(users))
        if extra is not None:
            scores = scores + extra(start, stop)
        rows = np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1]))
        cols = exclude[offsets[start]:offsets[stop]]
        scores[torch.as_tensor(rows), torch.as_tensor(cols)] = float("-inf")
        out.append(scores.topk(min(k, items.shape[0]), dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def eval_retrievalformer(model, dm, es, k: int) -> np.ndarray:
    """(m, k) ranked lists of a RetrievalFormer for an EvalSet of its data module, history excluded."""
    rows = np.arange(len(es))
    parts = []
    with torch.no_grad():
        item_vectors = model.item_vectors().float().cpu()
        for start in range(0, len(es), dm.eval_batch_size):
            chunk = rows[start:start + dm.eval_batch_size]
            hist = es.history_lengths()[chunk]
            window, _ = _windows(dm, es, chunk, hist)
            feats = torch.from_numpy(dm.user_feats[es.users[chunk]])
            parts.append(model.user_vectors(window, feats)[:, 0].float().cpu())
    users = torch.cat(parts) if parts else torch.zeros(0, model.config.d_model)
    extra = None
    if model.config.content_weight > 0:  # the content term: on the whole history, as the baseline's
        content = model.content_rows()
        beta = model.config.content_weight

        def extra(start, stop):
            offsets = es.history_offsets[start:stop + 1]
            return beta * model.content_scores(offsets, es.history_items, content)
    return rank_with_exclusion(users, item_vectors, k, es.history_offsets, es.history_items, extra=extra)


def _windows(dm, es, chunk, lengths):
    from genret.training.embedding_datamodule import gather_windows

    window, valid = gather_windows(es.history_offsets, es.history_items, chunk, lengths, dm.max_len, -1)
    T = max(int(valid.sum(1).max(initial=0)), 1)
    return torch.from_numpy(window[:, -T:]), valid


def content_vectors(dm) -> "Any":
    """(n_items, V) L2-normalised TF-IDF rows (scipy CSR) over the data module's non-id item features."""
    from genret.data.item_features import tfidf_vectors

    fit = np.ones(dm.n_items, bool)
    if dm.cold_split is not None:
        fit[dm.cold_split.cold_items] = False
    kept = [(table, width) for name, table, width in zip(dm.item_features, dm.item_feature_tables,
                                                          dm.item_feature_cardinalities) if name != "item_id"]
    if not kept:
        raise ValueError("the content baseline needs item features besides item_id (title words, genres, ...)")
    return tfidf_vectors([t for t, _ in kept], [w for _, w in kept], fit)


def content_ranked_lists(vectors, es, k: int, chunk: int = 2048) -> np.ndarray:
    """(m, k) content-baseline lists: cosine to the mean of the history's item vectors, history excluded."""
    from genret.models.content_term import history_content_scores

    out = []
    item_t = vectors.T.tocsc()
    for start in range(0, len(es), chunk):
        stop = min(start + chunk, len(es))
        offsets = es.history_offsets[start:stop + 1]
        rows = np.repeat(np.arange(stop - start), np.diff(offsets))
        hist = es.history_items[offsets[0]:offsets[-1]]
        scores = torch.from_numpy(history_content_scores(vectors, offsets, es.history_items, item_t))
        scores[torch.as_tensor(rows), torch.as_tensor(hist)] = float("-inf")
        out.append(scores.topk(min(k, scores.shape[1]), dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def run_retrievalformer(family: str, config: str | Path, out_dir: Path, data: str | None = None,
                        overrides: list[str] | None = None, ks=DEFAULT_KS,
                        checkpoint: str | Path | None = None, seed: int | None = None,
                        stages: tuple[str, ...] = ("valid", "test")) -> dict[str, Any]:
    """Train RetrievalFormer from a YAML and evaluate it (genret.eval.benchmark.run_embedding's shape).

    With `checkpoint`, that trained model is evaluated instead (no training; "train_seconds" 0) on
    the YAML's split, e.g. the best epoch of a run that was stopped before it finished; the YAML's
    `model.config.content_weight` (it acts at ranking only) replaces the checkpoint's. `seed`
    overrides the config's seed_everything. `stages=("valid",)` is a validation-only run (a sweep):
    no test user, warm or cold, is ranked; under LOOC with `data.cold_valid_users` the validation
    cold users are ("cold_val"). "val_ranks" / "test_ranks" / "cold_val_ranks" hold each user's
    target rank (-1: not listed) for paired comparisons.

    Under `data.protocol: looc`, "test" is the warm users' test, and "extra" holds "cold" and
    "warm" blocks (same keys as "test"), the split's sizes, and "baselines": {"content": {"cold",
    "warm"}}; with `data.cold_valid_users` also "cold_val" (the validation cold users), in "extra"
    and in the content baseline.
    """
    from genret.eval.benchmark import check_stages
    from genret.training.run import build, fit, why_stopped

    check_stages(stages)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides or []) + ([] if seed is None else ["--seed_everything", str(int(seed))])
    module, dm, trainer = build(family, config, out_dir, overrides, data)
    trained = checkpoint is None
    if trained:
        checkpoint, train_seconds = fit(module, dm, trainer, out_dir)
        model = module.model.eval()
    else:
        from genret.training.retrievalformer_module import load_retrievalformer

        dm.setup("fit")
        model, entry = load_retrievalformer(checkpoint)
        if entry["catalogue"]["item_ids"] != dm.log_all.item_ids.tolist():
            raise ValueError(f"{checkpoint} was trained on another catalogue than {dm.log_all.name}")
        # The content term acts at ranking only, so the config's beta applies to a trained model too
        # (a validation sweep of model.config.content_weight scores one checkpoint per value).
        beta = module.config.content_weight
        if beta != model.config.content_weight:
            log.info("content_weight %g from the config (the checkpoint has %g)", beta, model.config.content_weight)
        model.set_content_weight(beta, None if hasattr(model, "value_weight_0") else
                                 [torch.from_numpy(w) for w in dm.value_idf])
        train_seconds = 0.0
    result: dict[str, Any] = {"model": family, "dataset": dm.log_all.name, "train_seconds": train_seconds,
                              "checkpoint": str(checkpoint)}
    if seed is not None:
        result["seed"] = int(seed)
    read_test = "test" in stages
    for stage, key in (("valid", "val"), ("test", "test")):
        if stage not in stages:
            continue
        ranked = eval_retrievalformer(model, dm, dm.eval_sets[stage], max(ks))
        result[key] = ranking_metrics(ranked, dm.eval_sets[stage].targets, ks)
        result[f"{key}_ranks"] = target_ranks(ranked, dm.eval_sets[stage].targets)
    extra: dict[str, Any] = {"item_features": dm.feature_report, "user_features": dm.user_feature_names}
    if trained:  # trained here: why training ended (a limit while validation rose, patience, ...)
        extra["training"] = why_stopped(trainer)
    if dm.protocol == "looc":
        # The cold test users only when test is read; the validation cold users whenever there are some.
        cold = {stage: eval_retrievalformer(model, dm, dm.eval_sets[stage], max(ks))
                for stage in (("cold",) if read_test else ()) + ("cold_valid",) if stage in dm.eval_sets}
        extra.update(looc_blocks(dm, ks, cold_ranked=cold.get("cold"), cold_valid_ranked=cold.get("cold_valid"),
                                 test=read_test))
        if read_test:
            extra["warm"] = result["test"]
        if "cold_valid" in cold:  # cold-start settings are chosen on these users
            result["cold_val"] = extra["cold_val"]
            result["cold_val_ranks"] = target_ranks(cold["cold_valid"], dm.eval_sets["cold_valid"].targets)
    result["extra"] = extra
    result["datamodule"] = dm
    stage, key = ("test", "test") if read_test else ("validation", "val")
    log.info("%s on %s: %s hr@20 %.4f, %.0f s training", family, result["dataset"], stage,
             result[key].get("hr@20", float("nan")), train_seconds)
    return result


def looc_blocks(dm, ks, model=None, cold_ranked: np.ndarray | None = None, content=None,
                max_users: int | None = None, cold_valid_ranked: np.ndarray | None = None,
                test: bool = True, with_content_ranks: bool = False) -> dict[str, Any]:
    """The cold block of a model (if given), the content baseline's cold / warm blocks, the split's sizes;
    with a cold validation set (`eval_sets["cold_valid"]`) also "cold_val" (the model's) and the
    baseline's "cold_val", with the same keys as "cold"; "vs_content": the model's paired HR@K
    difference to the baseline on the cold (validation) users, with its 95% interval.

    Any family's LOOC data module serves (`eval_sets` "cold" and "test", `train_log`, `cold_split`).
    Args:
        model: a RetrievalFormer, ranked here; or `cold_ranked` / `cold_valid_ranked`: another
            model's (m, k) lists for the first m cold / validation cold users (DualGR's beam search).
        content: the baseline's (n_items, V) item rows (default: `content_vectors(dm)`, the
            RetrievalFormer data module's feature tables).
        max_users: the baseline ranks only the first users of each set, as the model was evaluated.
        test: False for a validation-only run (a sweep): nothing of the cold or warm test users is
            read, only "cold_val" and the split's sizes are written.
        with_content_ranks: also return "content_ranks": {"cold" / "cold_val": the baseline's (m,)
            target ranks on the users the model was paired with}, for pairing over seeds.
    """
    if np.isin(dm.train_log.item, dm.cold_split.cold_items).any():
        raise RuntimeError("LOOC: a cold item is in the training log")
    sets = {"cold": dm.eval_sets["cold"], "warm": dm.eval_sets["test"]} if test else {}
    if "cold_valid" in dm.eval_sets:
        sets["cold_val"] = dm.eval_sets["cold_valid"]
    out: dict[str, Any] = {"looc": dm.cold_split.summary()}
    ranked = {"cold": cold_ranked, "cold_val": cold_valid_ranked}
    if model is not None:
        ranked = {name: eval_retrievalformer(model, dm, sets[name], max(ks)) for name in ("cold", "cold_val")
                  if name in sets}
    for name in ("cold", "cold_val"):
        if name in sets and ranked.get(name) is not None:
            out[name] = ranking_metrics(ranked[name], sets[name].targets[:len(ranked[name])], ks)
    if max_users is not None:  # the same first users as the model's blocks
        sets = {name: es.subset(np.arange(min(len(es), max_users))) for name, es in sets.items()}
    vectors = content_vectors(dm) if content is None else content
    lists = {name: content_ranked_lists(vectors, es, max(ks)) for name, es in sets.items()}
    out["baselines"] = {"content": {name: ranking_metrics(lists[name], es.targets, ks) for name, es in sets.items()}}
    # The target is the model above the baseline on the cold users: the paired per-user difference says
    # whether a gap is more than noise (same users, same targets).
    paired = {}
    for name in ("cold", "cold_val"):
        if name in sets and ranked.get(name) is not None:
            m = min(len(ranked[name]), len(lists[name]))
            targets = sets[name].targets[:m]
            mine, theirs = target_ranks(ranked[name][:m], targets), target_ranks(lists[name][:m], targets)
            paired[name] = {}
            if with_content_ranks:
                out.setdefault("content_ranks", {})[name] = theirs
            for k in ks:
                diff, half = paired_hit_difference(mine, theirs, k)
                paired[name][f"hr@{k}"] = {"diff": diff, "ci95": [diff - half, diff + half], "n_users": int(m)}
    if paired:
        out["vs_content"] = paired
    return out
