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


def grank_lists(retriever, eval_set, k1: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, float]:
    """Generator-order and ranker-order lists (m, k1) for every user of an EvalSet, and the seconds
    the generate-and-rank calls took."""
    offsets, items = np.asarray(eval_set.history_offsets), np.asarray(eval_set.history_items)
    m = len(eval_set)
    generated = np.full((m, k1), -1, np.int64)
    ranked = np.full((m, k1), -1, np.int64)
    seconds = 0.0
    for start in range(0, m, batch_size):
        stop = min(start + batch_size, m)
        started = time.perf_counter()
        cand, _, final = retriever.generate_and_rank(offsets[start:stop + 1] - offsets[start],
                                                     items[offsets[start]:offsets[stop]], k1)
        seconds += time.perf_counter() - started
        generated[start:stop, :cand.shape[1]] = cand
        order = np.argsort(-final, axis=1, kind="stable")
        ranked[start:stop, :cand.shape[1]] = np.take_along_axis(cand, order, 1)
    return generated, ranked, seconds


def run_grank(family: str, config: str | Path, out_dir: Path, data: str | None = None,
              overrides: list[str] | None = None, ks=(5, 10, 20, 50, 100, 500)) -> dict[str, Any]:
    """Train GRank and evaluate generator-only and generator + ranker (see the module docstring).

    Returns:
        run_embedding's dict; "extra" holds "generator_only" (val / test metrics of the MIPS order),
        "candidate_recall" (val / test: the target among the k1 candidates), "k1", the evaluation
        time per user, "baselines" ({"grank generator only": ...} for the report) and "test_ranks"
        of both lists (paired comparisons).
    """
    from genret.decoding.grank_retriever import GRankRetriever
    from genret.training.run import build, fit

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module, dm, trainer = build(family, config, out_dir, overrides, data)
    checkpoint, train_seconds = fit(module, dm, trainer, out_dir)
    from genret.decoding.grank_retriever import load_generator

    k1 = min(module.k1, dm.n_items)
    own = GRankRetriever(module.model.eval(), dm.log_all.item_ids, k1=k1, blend=module.blend,
                         ranker=module.ranker_weight > 0)
    external = load_generator(module.generator, own.device, module.beam_width)
    retriever = own if external is None else GRankRetriever(module.model, dm.log_all.item_ids, k1=k1,
                                                            blend=module.blend, generator=external,
                                                            ranker=module.ranker_weight > 0)
    name = "grank generator" if external is None else f"{_family_of(module.generator)} generator"
    all_ks = sorted({*ks, k1, *(k for k in DEEP_KS if k <= k1)})
    result: dict[str, Any] = {"model": family, "dataset": dm.log_all.name, "train_seconds": train_seconds,
                              "checkpoint": str(checkpoint)}
    generator_only, candidate_recall, ranks, timing, own_ranked = {}, {}, {}, {}, {}
    for stage, key in (("valid", "val"), ("test", "test")):
        es = dm.eval_sets[stage]
        generated, ranked, seconds = grank_lists(retriever, es, k1, dm.eval_batch_size)
        result[key] = ranking_metrics(ranked, es.targets, all_ks)
        generator_only[key] = ranking_metrics(generated, es.targets, all_ks)
        candidate_recall[key] = float((generated == es.targets[:, None]).any(1).mean())
        timing[key] = 1000.0 * seconds / len(es)
        if external is not None:  # GRank's own generator + the same ranker, for comparison
            own_generated, own_list, _ = grank_lists(own, es, k1, dm.eval_batch_size)
            own_ranked[key] = {"ranked": ranking_metrics(own_list, es.targets, all_ks),
                               "generator_only": ranking_metrics(own_generated, es.targets, all_ks)}
        if key == "test":
            ranks = {"ranked": target_ranks(ranked, es.targets).tolist(),
                     "generator": target_ranks(generated, es.targets).tolist()}
    result["extra"] = {"k1": k1, "generator": module.generator, "generator_only": generator_only, "candidate_recall": candidate_recall,
                       "generate_and_rank_ms_per_user": timing, "test_ranks": ranks,
                       "loss_weights": {"ntp": module.ntp_weight, "aux": module.aux_weight,
                                        "ranker": module.ranker_weight, "position": module.position_loss_weight,
                                        "temperature": module.temperature}}
    result["baselines"] = {f"{name} only": {"val": generator_only["val"], "test": generator_only["test"]}}
    if own_ranked:
        result["extra"]["grank_own_generator"] = own_ranked
        for label, part in (("grank + ranker", "ranked"), ("grank generator only", "generator_only")):
            result["baselines"][label] = {key: own_ranked[key][part] for key in ("val", "test")}
    result["datamodule"] = dm
    log.info("grank on %s: test ranked hr@10 %.4f ndcg@10 %.4f | generator hr@10 %.4f ndcg@10 %.4f | "
             "candidates@%d %.4f; %.0f s training", result["dataset"], result["test"]["hr@10"],
             result["test"]["ndcg@10"], generator_only["test"]["hr@10"], generator_only["test"]["ndcg@10"], k1,
             candidate_recall["test"], train_seconds)
    return result


def _family_of(checkpoint: str) -> str:
    from genret.training.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)[1]["family"]
