"""The runs behind `genret benchmark` and `genret quickstart`: train a family (through
genret.training.run), evaluate it leave-one-out with full ranking on valid and test, and return
what metrics.json and the report need. One function per kind of family (see genret.families).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genret.eval.metrics import ranking_metrics, target_ranks
from genret.eval.ranked_lists import embedding_ranked_lists, retriever_ranked_lists, user_features_for
from genret.models.content_term import NO_CONTENT

log = logging.getLogger(__name__)

DEFAULT_KS = (5, 10, 20, 50, 100, 500)

# Ablations of the DualGR paper's Table 2: result name -> model-config overrides on top of the family's.
ABLATIONS: dict[str, dict[str, bool]] = {
    "dualgr": {},
    "w/o DBR": {"use_dbr": False},
    "w/o S2D": {"use_s2d": False},
    "w/o ENTP": {"use_entp": False},
    "tiger": {"use_dbr": False, "use_s2d": False, "use_entp": False},
}


def _config_overrides(overrides: dict[str, Any]) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--model.config.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def check_stages(stages: tuple[str, ...]) -> None:
    """A benchmark run reads validation, test or both (("valid",) = a validation-only run, a sweep's)."""
    if not stages or set(stages) - {"valid", "test"}:
        raise ValueError(f"stages must be a non-empty subset of ('valid', 'test'), got {stages!r}")


def run_generative(config: str | Path, out_dir: Path, variant: str = "dualgr", data: str | None = None,
                   overrides: list[str] | None = None, ks=DEFAULT_KS, eval_batch_size: int = 64,
                   max_eval_users: int | None = None, kernel: str = "auto", branch_merge: str = "sum",
                   checkpoint: str | Path | None = None, short_weight: float | None = None,
                   seed: int | None = None, stages: tuple[str, ...] = ("valid", "test"),
                   resume: bool = False) -> dict[str, Any]:
    """Train one DualGR variant (a family, or an ABLATIONS name) and evaluate it on valid and test.

    Returns a result dict; its "val_ranks" / "test_ranks" hold each user's target rank (-1: not
    listed) for paired comparisons, and "short_weight" the short DBR branch's weight in the merge
    (`short_weight`, else the model's routing prior). With `checkpoint`, that trained model is
    evaluated instead (no training; "train_seconds" 0): the same split and protocol, e.g. to
    re-score a run after a decoding change. `seed` overrides the config's seed_everything (weights,
    batch order, dropout; the split and the SIDs do not depend on it). `stages=("valid",)` reads
    validation only (a sensitivity sweep must not look at test).

    Under `data.protocol: looc` the cold items join the trained catalogue by their SIDs
    (`dm.cold_items()`, `Retriever.add_items`) before anything is evaluated; "test" is then the
    warm users, "cold" the cold users, and "extra" / "baselines" hold RetrievalFormer's LOOC
    blocks (genret.eval.retrievalformer_benchmark.looc_blocks) for metrics.json. With a cold
    validation set (`data.cold_valid_users`) its users are ranked too ("cold_val", in "extra" and
    in the content baseline), also by a validation-only run, which still reads no test user: the
    cold items (test ones included: a catalogue holds every item, and their content is no test
    user's behaviour) join the catalogue there as well, so "val" and "cold_val" are the numbers a
    full run of the same model gets. Without a cold validation set a validation-only run adds no
    cold item and ranks "val" on the warm catalogue, as before.

    Every finished run writes out_dir/run_result.json (genret.eval.run_record). With `resume`, a
    run whose record was written with these same settings (config text, data, overrides, seed,
    cut-offs, evaluation options) is read back instead of trained again, so a long `--seeds` or
    `--ablations` job that stopped half-way picks up where it stopped; a run that stopped during
    training (its out_dir/run_started.json has these settings) continues from its last epoch's
    checkpoint.
    """
    from genret.decoding.retriever import Retriever
    from genret.eval.run_record import (RECORD_NAME, earlier_signatures, mark_run_started, read_run_record,
                                        run_signature, unfinished_checkpoint, write_run_record)
    from genret.training.run import build, fit, why_stopped

    out_dir.mkdir(parents=True, exist_ok=True)
    check_stages(stages)
    extra = _config_overrides(ABLATIONS.get(variant, {}))
    if seed is not None:
        extra += ["--seed_everything", str(int(seed))]
    family = variant if variant in ("dualgr", "tiger") else "dualgr"
    signature = run_signature(config=config, variant=variant, data=data, overrides=overrides, seed=seed, ks=ks,
                              max_eval_users=max_eval_users, stages=stages, kernel=kernel,
                              branch_merge=branch_merge, short_weight=short_weight, checkpoint=checkpoint)
    module, dm, trainer = build(family, config, out_dir, extra + list(overrides or []), data)
    earlier = earlier_signatures(signature, config)
    if resume and (done := read_run_record(out_dir, signature, earlier)) is not None:
        dm.setup("fit")  # the caller reads the split and the training log from it (baselines, negatives)
        log.info("%s: reusing the finished run in %s (same settings)", variant, out_dir)
        return done | {"datamodule": dm, "resumed": True}
    # Whatever record is there describes a run this one replaces: it must not outlive it half-way.
    (out_dir / RECORD_NAME).unlink(missing_ok=True)
    if checkpoint is None:
        unfinished = unfinished_checkpoint(out_dir, signature, earlier) if resume else None
        if unfinished is None:
            # A new run: checkpoints another run left here must not pass for this one's if it stops early.
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
            mark_run_started(out_dir, signature)
        else:
            # Lightning restores weights, optimiser, schedule, epoch, EMA and the epoch selection;
            # the batch order after the stop is not the one the uninterrupted run would have drawn.
            log.info("%s: continuing the unfinished run in %s from %s", variant, out_dir, unfinished)
        ckpt, seconds = fit(module, dm, trainer, out_dir, ckpt_path=None if unfinished is None else str(unfinished))
    else:
        ckpt, seconds = Path(checkpoint), 0.0
        dm.setup("fit")
    retriever = Retriever.from_checkpoint(ckpt, kernel=kernel, branch_merge=branch_merge, short_weight=short_weight,
                                          content_weight=0.0)
    if not np.array_equal(retriever.item_ids, np.asarray(dm.log_all.item_ids)):
        raise ValueError(f"{ckpt} was trained on another catalogue ({len(retriever.item_ids)} items) than "
                         f"{dm.log_all.name} ({dm.n_items}); evaluate it on the data it was trained on")
    # The content term acts at ranking only: the config's weight (a --sweep value with --checkpoint)
    # applies, with the checkpoint's item rows or, for one trained without the term, the data's.
    content_weight = module.config.content_weight
    # A module trained on data without item content ranks with weight 0 and keeps the weight asked.
    asked = getattr(module, "content_weight_asked", 0.0) or content_weight
    content = {"content_term": {"weight": 0.0, "asked_weight": asked, "note": NO_CONTENT}} if asked > 0 else {}
    if content_weight > 0:
        term = retriever.content_term if retriever.content_term is not None else dm.content_term()
        if term is None:
            log.warning("model.config.content_weight %g: %s", content_weight, NO_CONTENT)
        else:
            cfg = module.config
            retriever.set_content_term(content_weight, term, prefix_weight=cfg.content_prefix_weight,
                                       prefix_depth=cfg.content_prefix_depth)
            content = {"content_term": {"weight": content_weight, "features": term.names}}
            if cfg.content_prefix_weight > 0:
                content["content_term"] |= {"prefix_weight": cfg.content_prefix_weight,
                                            "prefix_depth": cfg.content_prefix_depth}
    result: dict[str, Any] = {"model": variant, "checkpoint": str(ckpt), "train_seconds": seconds,
                              "dataset": dm.log_all.name, "sid_report": dm.sid_report, "datamodule": dm}
    if retriever.model.cfg.use_dbr:
        result["short_weight"] = retriever.short_weight
    if seed is not None:
        result["seed"] = int(seed)
    if checkpoint is None and unfinished is not None:
        result["continued_from"] = str(unfinished)  # train_seconds counts the continuation only
    if checkpoint is None:
        result["training"] = why_stopped(trainer)
    looc = getattr(dm, "cold_split", None) is not None
    cold_valid = looc and "cold_valid" in dm.eval_sets
    read_test = "test" in stages
    # A validation-only run (a sweep) must not read the cold test users: it ranks the validation
    # cold users only, and without a cold validation set no cold user at all.
    if looc and (read_test or cold_valid):
        # DualGR's cold start: the cold items join the trained model's catalogue by the SIDs the
        # fitted tokenizer gives their content vectors (no retraining), then every user is served
        # from the full catalogue, as RetrievalFormer's LOOC users are.
        cold_ids, cold_codes = cold_item_codes(dm, retriever)
        features = cold_item_features(dm, retriever.content_term.names) if retriever.uses_content else None
        retriever.add_items(cold_ids, cold_codes, features=features)
        stages = (*stages, *(("cold",) if read_test else ()), *(("cold_valid",) if cold_valid else ()))
    ranked_by_stage = {}
    for stage, key in (("valid", "val"), ("test", "test"), ("cold", "cold"), ("cold_valid", "cold_val")):
        if stage not in stages:
            continue
        es = dm.eval_sets[stage]
        ranked = retriever_ranked_lists(retriever, es, max(ks), eval_batch_size, desc=f"{variant} {stage}",
                                        max_users=max_eval_users, user_feats=user_features_for(dm, es),
                                        history_side=dm.history_side(es))
        targets = es.targets[:len(ranked)]
        result[key] = ranking_metrics(ranked, targets, ks)
        result[f"{key}_ranks"] = target_ranks(ranked, targets)
        ranked_by_stage[stage] = ranked
    if "cold" in stages or "cold_valid" in stages:
        result.update(_looc_result(dm, retriever, ranked_by_stage, result, ks, max_eval_users, test=read_test))
    if content:  # metrics.json says what ranked the lists
        result["extra"] = {**result.get("extra", {}), **content}
    write_run_record(out_dir, signature, {k: v for k, v in result.items() if k != "datamodule"})
    return result


def cold_item_codes(dm, retriever) -> tuple[np.ndarray, np.ndarray]:
    """LOOC's cold items and their SIDs, given by the trained model's own new-item encoder from the
    items' features: what serving does (`Retriever.add_items(features=...)`). When this run trained
    the model the data module's tokenizer is that encoder's; with `--checkpoint` the data module
    refits it, and the SVDs behind the item vectors can differ in the last bits (they depend on the
    BLAS thread count), which moves SIDs: only the checkpoint's encoder matches its catalogue. Models
    without a content placer (SIDs from titles or data set vectors, older checkpoints) take the data
    module's codes."""
    ids, codes = dm.cold_items()
    encoder = retriever.new_items
    if encoder is None or not encoder.feature_names:
        return ids, codes
    features = cold_item_features(dm, encoder.feature_names)
    own = encoder.codes(encoder.vectors(features), retriever.model.item_codes[:dm.n_items].cpu().numpy())
    moved = int((own != codes).any(1).sum())
    if moved:
        log.warning("%d of %d cold items get other SIDs from the checkpoint's encoder than from this data module's "
                    "refitted tokenizer (SVDs differ with the thread count); the checkpoint's are used", moved, len(ids))
    return ids, own


def cold_item_features(dm, names: list[str]) -> list[dict[str, list[str]]]:
    """LOOC's cold items described as a user describes new items (`Retriever.add_items(features=...)`):
    one mapping feature name -> values per item, in `dm.cold_items()` order."""
    from genret.data.item_features import raw_item_features

    full = dm.cold_split.log
    raw = raw_item_features(full, names)
    return [{name: raw[name][i] for name in raw} for i in range(dm.n_items, full.n_items)]


def _looc_result(dm, retriever, ranked_by_stage: dict[str, np.ndarray], result: dict[str, Any], ks,
                 max_eval_users: int | None, test: bool = True) -> dict[str, Any]:
    """metrics.json's LOOC blocks of a generative run, as RetrievalFormer writes them: "cold" and
    "warm" (= "test": the warm users), "cold_val" (the validation cold users, with a cold
    validation set), the split's sizes, the content baseline (on the same users) with the paired
    difference to it ("vs_content") and how the cold items' SIDs sit in the index; beside them the
    baseline's per-user ranks ("content_cold_ranks", "content_cold_val_ranks"). `test` False (a
    validation-only run): "cold_val" only, of the model and of the baseline."""
    from genret.data.item_features import content_tfidf
    from genret.eval.retrievalformer_benchmark import looc_blocks

    n_warm = dm.n_items
    # The baseline's TF-IDF of every item with vocabularies and IDF fitted on the warm items.
    content, _ = content_tfidf(dm.cold_split.log, dm.sid.content_features, fit_items=np.arange(n_warm))
    blocks = looc_blocks(dm, ks, cold_ranked=ranked_by_stage.get("cold"),
                         cold_valid_ranked=ranked_by_stage.get("cold_valid"), content=content,
                         max_users=max_eval_users, test=test, with_content_ranks=True)
    codes = retriever.model.item_codes.cpu().numpy()
    warm_sids = {tuple(c) for c in codes[:n_warm].tolist()}
    shared = sum(tuple(c) in warm_sids for c in codes[n_warm:].tolist())
    extra = {"cold": blocks["cold"], "warm": result["test"]} if test else {}
    if "cold_val" in blocks:
        extra["cold_val"] = blocks["cold_val"]
    if "vs_content" in blocks:
        extra["vs_content"] = blocks["vs_content"]
    extra.update(looc=blocks["looc"],
                 cold_start={"cold_items_added": int(len(codes) - n_warm), "sharing_a_warm_sid": int(shared),
                             "sid_source": dm.sid_report.get("embedding_source")})
    # The baseline's per-user ranks go in the run record (not metrics.json): `--seeds` pairs the model
    # with them over seeds (genret.eval.looc_seeds).
    ranks = {f"content_{name}_ranks": r for name, r in blocks.get("content_ranks", {}).items()}
    return {"extra": extra, "baselines": blocks["baselines"], **ranks}


def run_embedding(family: str, config: str | Path, out_dir: Path, data: str | None = None,
                  overrides: list[str] | None = None, ks=DEFAULT_KS) -> dict[str, Any]:
    """Train KuaiFormer / SASRec from a YAML and evaluate it leave-one-out with full ranking.

    Returns:
        {"model", "dataset", "train_seconds", "val", "test", "checkpoint", "datamodule"}; val / test
        are `ranking_metrics` dicts (exact top-K over all items, history excluded); "datamodule" is
        the set-up data module (its split / train_log serve baselines such as popularity). Every
        family's benchmark function (genret.families' `benchmark`) returns this shape; an optional
        "extra" dict is written into metrics.json as it is.
    """
    from genret.decoding.embedding_retriever import EmbeddingRetriever
    from genret.training.run import build, fit, why_stopped

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module, dm, trainer = build(family, config, out_dir, overrides, data)
    checkpoint, train_seconds = fit(module, dm, trainer, out_dir)
    retriever = EmbeddingRetriever(module.model, dm.log_all.item_ids, side=dm.side)
    result: dict[str, Any] = {"model": family, "dataset": dm.log_all.name, "train_seconds": train_seconds,
                              "checkpoint": str(checkpoint)}
    for stage, key in (("valid", "val"), ("test", "test")):
        ranked = embedding_ranked_lists(retriever, dm, stage, max(ks))
        result[key] = ranking_metrics(ranked, dm.eval_sets[stage].targets, ks)
    if dm.item_features or dm.skipped_item_features:  # what the item MLP read, and what the data set lacked
        result["extra"] = {"item_features": {"used": list(dm.item_features), "skipped": list(dm.skipped_item_features)}}
    result.setdefault("extra", {})["training"] = why_stopped(trainer)  # a limit while validation rose, patience, ...
    result["datamodule"] = dm
    log.info("%s on %s: test hr@10 %.4f ndcg@10 %.4f, %.0f s training", family, result["dataset"],
             result["test"].get("hr@10", float("nan")), result["test"].get("ndcg@10", float("nan")), train_seconds)
    return result


def run_popularity(family: str, config: str | Path, out_dir: Path, data: str | None = None,
                   overrides: list[str] | None = None, ks=DEFAULT_KS) -> dict[str, Any]:
    """The popularity baseline on the split of the config's own family (its data module); no training."""
    from genret.families import family_for_config
    from genret.training.run import build

    _, dm, _ = build(family_for_config(config), config, out_dir, overrides, data)
    dm.setup("fit")
    return {"model": family, "dataset": dm.log_all.name, "train_seconds": 0.0, **popularity_metrics(dm, ks),
            "datamodule": dm}


def popularity_metrics(datamodule, ks, max_users: int | None = None) -> dict[str, dict[str, Any]]:
    """Popularity baseline on valid and test; `max_users` keeps the same first users as the
    models it is compared with (`genret benchmark --max_eval_users`)."""
    from genret.decoding.popularity import PopularityRecommender

    pop = PopularityRecommender().fit(datamodule.train_log)
    out = {}
    for stage in ("valid", "test"):
        es = datamodule.eval_sets[stage]  # the models' users (under LOOC, "test" = the warm users)
        m = len(es) if max_users is None else min(len(es), max_users)
        ranked = pop.recommend(es, max(ks))[:m]
        out["val" if stage == "valid" else "test"] = ranking_metrics(ranked, es.targets[:m], ks)
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
