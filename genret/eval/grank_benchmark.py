"""`genret benchmark --model grank`: train GRank from a YAML, then evaluate leave-one-out with full
ranking (history excluded) twice on the same candidates: the generator alone (its MIPS order) and
generator + ranker (the ranker's order of the generator's top k1). The ranked list is the main
result ("val" / "test"); the generator-only metrics and the candidate set's recall (the ranker's
ceiling) go into "extra" and, as a baseline row, into the report beside it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from genret.eval.metrics import ranking_metrics, target_ranks

log = logging.getLogger(__name__)

DEEP_KS = (50, 100, 500, 1000)


def grank_lists(retriever, eval_set, k1: int, batch_size: int = 256, blends: list[float] | None = None,
                side: dict[str, np.ndarray] | None = None, user_features: np.ndarray | None = None
                ) -> tuple[np.ndarray, dict[float, np.ndarray], float]:
    """Generator-order lists (m, k1) for every user of an EvalSet, the ranked lists (m, k1) for each
    blend (default: the retriever's own), and the seconds the scoring calls took. The candidates
    and both scores are computed once; each blend only re-sorts them. `side` (raw per-action side
    features aligned with the histories, name -> (N,) values) and `user_features` ((m, F) ids): what
    an external generator embeds besides the items."""
    from genret.decoding.grank_retriever import batch_inputs

    blends = [retriever.blend] if blends is None else list(blends)
    offsets, items = np.asarray(eval_set.history_offsets), np.asarray(eval_set.history_items)
    m = len(eval_set)
    generated = np.full((m, k1), -1, np.int64)
    ranked = {b: np.full((m, k1), -1, np.int64) for b in blends}
    seconds = 0.0
    for start in range(0, m, batch_size):
        stop = min(start + batch_size, m)
        started = time.perf_counter()
        lo, hi = offsets[start], offsets[stop]
        sub = offsets[start:stop + 1] - lo
        cand, gen, rank = retriever.candidate_scores(sub, items[lo:hi], k1,
                                                     *batch_inputs(side, user_features, offsets, start, stop))
        seconds += time.perf_counter() - started
        generated[start:stop, :cand.shape[1]] = cand
        for b in blends:
            order = np.argsort(-retriever.final_scores(gen, rank, b), axis=1, kind="stable")
            ranked[b][start:stop, :cand.shape[1]] = np.take_along_axis(cand, order, 1)
    return generated, ranked, seconds


def evaluate_grank(retriever, eval_sets: dict, k1: int, ks, batch_size: int, blends: list[float] | None,
                   metric: str, inputs: Any = None) -> dict[str, Any]:
    """Generator-only and ranked metrics on "val" and "test" for one retriever, the blend chosen on
    validation (best `metric`, e.g. "ndcg@10"; the first listed on a tie; `blends` None: the
    retriever's own) and the test ranks of both lists. When several blends are tried, the
    generator's own order competes too: if it beats every blend on validation, the ranker (and a
    scorer) is left out ("ranker": False, "blend": None) and test is served in the generator's
    order. "ranker" says whether the blended order is served; with a scorer and no ranker, the
    blend is of the generator's score and the scorer's.
    `inputs(stage)`: (side features, user features) of that stage's histories for an external
    generator that embeds them (genret.eval.grank_negatives.generator_inputs; None: none).

    Test is scored once, with the chosen blend."""
    choices = [retriever.blend] if not blends or not retriever.blends else list(blends)
    out: dict[str, Any] = {"ranked": {}, "generator_only": {}, "candidate_recall": {}, "ms_per_user": {},
                           "ranker": bool(retriever.blends)}
    for key, stage in (("val", "valid"), ("test", "test")):
        es = eval_sets[stage]
        side, users = (None, None) if inputs is None else inputs(stage)
        generated, ranked, seconds = grank_lists(retriever, es, k1, batch_size, choices, side, users)
        out["generator_only"][key] = ranking_metrics(generated, es.targets, ks)
        if key == "val":
            by_blend = {b: ranking_metrics(ranked[b], es.targets, ks) for b in choices}
            best = max(range(len(choices)), key=lambda i: (by_blend[choices[i]][metric], -i))
            out["blend"] = choices[best]
            if len(choices) > 1:
                out["val_by_blend"] = {str(b): by_blend[b] for b in choices}
                alone = out["generator_only"][key][metric]
                if alone > by_blend[out["blend"]][metric]:
                    out["blend"], out["ranker"] = None, False
                log.info("blend chosen on validation %s: %s; the generator alone %.4f -> %s", metric,
                         ", ".join(f"{b:g} -> {by_blend[b][metric]:.4f}" for b in choices), alone,
                         "the generator's order (no ranker)" if not out["ranker"] else f"blend {out['blend']:g}")
            choices = [out["blend"]] if out["ranker"] else []
        final = ranked[out["blend"]] if out["ranker"] else generated
        out["ranked"][key] = ranking_metrics(final, es.targets, ks)
        out["candidate_recall"][key] = float((generated == es.targets[:, None]).any(1).mean())
        out["ms_per_user"][key] = 1000.0 * seconds / len(es)
        # Each user's target rank in both lists, for paired comparisons: on validation to choose
        # between settings, on test to report the chosen one.
        out[f"{key}_ranks"] = {"ranked": target_ranks(final, es.targets).tolist(),
                               "generator": target_ranks(generated, es.targets).tolist()}
    return out


def record_serving(checkpoint: str | Path, blend: float | None, ranker: bool, scorer: str | None = None) -> None:
    """Write what validation chose (the blend, or the generator's order: ranker and scorer off) into
    a GRank checkpoint's serving settings (atomically), so `GRankRetriever.from_checkpoint` serves
    what was measured."""
    import torch

    from genret.io import atomic_path
    from genret.training.checkpoint import load_checkpoint

    state, entry = load_checkpoint(checkpoint, family="grank")
    serving = entry.setdefault("serving", {})
    wanted = {"blend": serving.get("blend", 0.0) if blend is None else blend, "ranker": ranker, "scorer": scorer}
    if all(serving.get(key) == value for key, value in wanted.items()):
        return
    serving.update(wanted)
    with atomic_path(checkpoint) as tmp:
        torch.save(state, tmp)


def run_grank(family: str, config: str | Path, out_dir: Path, data: str | None = None,
              overrides: list[str] | None = None, ks=(5, 10, 20, 50, 100, 500),
              checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Train GRank and evaluate generator-only and generator + ranker (see the module docstring).

    With `checkpoint`, that trained GRank is evaluated instead (no training; "train_seconds" 0): its
    ranker over the generator the config / overrides name (`--model.generator CKPT`), which need not
    be the one it was trained with, e.g. the ranker trained on DualGR's beams re-ranking SASRec's top
    k1. The blend is chosen on validation as after training; the checkpoint itself is not rewritten.

    Returns:
        run_embedding's dict; "extra" holds "generator_only" (val / test metrics of the MIPS order),
        "candidate_recall" (val / test: the target among the k1 candidates), "k1", the evaluation
        time per user, "baselines" ({"grank generator only": ...} for the report) and "val_ranks" /
        "test_ranks" of both lists (paired comparisons).
    """
    from genret.decoding.grank_retriever import GRankRetriever
    from genret.training.grank_generator import train_generator, train_init, train_scorer
    from genret.training.run import build, fit, seed_override, why_stopped

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module, dm, trainer = build(family, config, out_dir, overrides, data)
    evaluated = checkpoint is not None
    # model.init_from / model.generator given as YAMLs: train those first (out_dir/init, out_dir/generator;
    # with this run's --seed_everything), then use their checkpoints (a GRank being evaluated needs no init).
    seed = seed_override(overrides)
    if not evaluated:
        train_init(module, dm, out_dir, Path(config).parent, seed)
    train_generator(module, dm, out_dir, Path(config).parent, seed)
    train_scorer(module, dm, out_dir, Path(config).parent, seed)
    if not evaluated:
        checkpoint, train_seconds = fit(module, dm, trainer, out_dir)
    else:
        from genret.training.grank_module import load_grank

        dm.setup("fit")
        module.model, entry = load_grank(checkpoint)
        if entry["catalogue"]["item_ids"] != dm.log_all.item_ids.tolist():
            raise ValueError(f"{checkpoint} was trained on another catalogue than {dm.log_all.name}: evaluate it on "
                             "the data it was trained on")
        train_seconds = 0.0
    from genret.decoding.grank_retriever import load_generator, load_scorer

    k1 = min(module.k1, dm.n_items)
    own = GRankRetriever(module.model.eval(), dm.log_all.item_ids, k1=k1, blend=module.blend,
                         ranker=module.ranker_weight > 0)
    scored = None if module.scorer is None else GRankRetriever(
        module.model, dm.log_all.item_ids, k1=k1, blend=module.blend, ranker=module.ranker_weight > 0,
        scorer=load_scorer(module.scorer, own.device))
    external = load_generator(module.generator, own.device, module.beam_width)
    retriever = (scored or own) if external is None else GRankRetriever(
        module.model, dm.log_all.item_ids, k1=k1, blend=module.blend, generator=external,
        ranker=module.ranker_weight > 0)
    name = "grank generator" if external is None else f"{_family_of(module.generator)} generator"
    all_ks = sorted({*ks, k1, *(k for k in DEEP_KS if k <= k1)})
    metric = module.monitor.removeprefix("val/")
    result: dict[str, Any] = {"model": family, "dataset": dm.log_all.name, "train_seconds": train_seconds,
                              "checkpoint": str(checkpoint)}
    from genret.eval.grank_negatives import generator_inputs

    # what the external generator embeds besides the items (e.g. DualGR on ML-1M: ratings, user features)
    needs = retriever.side_features, retriever.user_feature_names
    main = evaluate_grank(retriever, dm.eval_sets, k1, all_ks, dm.eval_batch_size, module.blend_choices, metric,
                          inputs=(lambda stage: generator_inputs(dm, stage)(*needs)) if any(needs) else None)
    # main["ranker"]: the blended order won on validation; it keeps the ranker and the scorer it blends
    ranker_on, scorer_on = main["ranker"] and module.ranker_weight > 0, module.scorer if main["ranker"] else None
    if not evaluated and (main["blend"] != module.blend or ranker_on != (module.ranker_weight > 0)
                          or scorer_on != module.scorer):
        record_serving(checkpoint, main["blend"], ranker_on, scorer_on)
    result["val"], result["test"] = main["ranked"]["val"], main["ranked"]["test"]
    generator_only = main["generator_only"]
    result["extra"] = {"k1": k1, "generator": module.generator, "scorer": module.scorer,
                       "generator_only": generator_only,
                       "candidate_recall": main["candidate_recall"], "blend": main["blend"],
                       "ranker_served": main["ranker"],
                       "generate_and_rank_ms_per_user": main["ms_per_user"], "val_ranks": main["val_ranks"],
                       "test_ranks": main["test_ranks"],
                       "loss_weights": {"ntp": module.ntp_weight, "aux": module.aux_weight,
                                        "ranker": module.ranker_weight, "position": module.position_loss_weight,
                                        "temperature": module.temperature}}
    if "val_by_blend" in main:
        result["extra"]["val_by_blend"] = main["val_by_blend"]
    if not evaluated:  # why training ended (a limit while validation rose, patience, ...)
        result["extra"]["training"] = why_stopped(trainer)
    result["baselines"] = {f"{name} only": {"val": generator_only["val"], "test": generator_only["test"]}}
    if external is not None or scored is not None:  # GRank's own pipeline, for comparison (its own blend choice)
        mine = evaluate_grank(own, dm.eval_sets, k1, all_ks, dm.eval_batch_size, module.blend_choices, metric)
        result["extra"]["grank_own_generator"] = {
            key: {"ranked": mine["ranked"][key], "generator_only": mine["generator_only"][key]} for key in ("val", "test")}
        result["extra"]["grank_own_generator"]["blend"] = mine["blend"]
        result["extra"]["grank_own_generator"]["ranker_served"] = mine["ranker"]
        result["extra"]["grank_own_generator"]["test_ranks"] = mine["test_ranks"]["ranked"]  # for paired comparisons
        if "val_by_blend" in mine:
            result["extra"]["grank_own_generator"]["val_by_blend"] = mine["val_by_blend"]
        for label, part in (("grank + ranker", "ranked"), ("grank generator only", "generator_only")):
            if part == "ranked" and not own.ranker:
                continue  # a GRank trained without a ranker (the *_lastpos generators) has no such list
            result["baselines"][label] = {key: mine[part][key] for key in ("val", "test")}
    result["datamodule"] = dm
    log.info("grank on %s: test ranked hr@10 %.4f ndcg@10 %.4f | generator hr@10 %.4f ndcg@10 %.4f | "
             "candidates@%d %.4f; %.0f s training", result["dataset"], result["test"]["hr@10"],
             result["test"]["ndcg@10"], generator_only["test"]["hr@10"], generator_only["test"]["ndcg@10"], k1,
             main["candidate_recall"]["test"], train_seconds)
    return result


def _family_of(checkpoint: str) -> str:
    from genret.training.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)[1]["family"]
