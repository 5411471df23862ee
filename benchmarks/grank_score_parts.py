"""What each part of a trained GRank's score buys over an external generator's candidates.

A GRank checkpoint with `ranker_residual` orders a generator's top k1 by
    s = s_ca + <h_u, e(c)> + blend x g
(s_ca: the ranker's cross-attention score; <h_u, e(c)>: GRank's own generator score, the residual;
g: the external generator's score, e.g. a DualGR beam's log-probability). This scores one set of
candidates once and compares, on the same users:

    generator            g alone (the external generator's order)
    + grank generator    <h_u, e(c)> + blend x g   (no cross-attention)
    + cross-attention    s_ca + blend x g          (no residual)
    full                 s_ca + <h_u, e(c)> + blend x g

Each variant's blend is chosen on validation (best NDCG@10 among --blends); test is then scored
once per variant with its blend, and every row gets the paired HR@K difference to the generator's
order with a 95% interval. An ablation of the score, not a choice of setting: the recipe's own
blend is chosen by `genret benchmark`.

    python benchmarks/grank_score_parts.py --data amazon-beauty --config configs/grank_amazon.yaml \
        --checkpoint runs/x/model.ckpt --generator runs/dualgr/model.ckpt --k1 100 --beam-width 128 \
        [-- config overrides, e.g. --data.load_kwargs {}]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
import torch
from tqdm.auto import tqdm

from genret.eval.metrics import ranking_metrics, target_ranks
from genret.eval.report import format_paired_hits

VARIANTS = ("+ grank generator", "+ cross-attention", "full")


def score_parts(retriever, eval_set, k1: int, batch_size: int, inputs=None):
    """(candidates (m, k1), g, residual, s_ca) for every user of an EvalSet, -1 / -inf padded."""
    from genret.decoding.grank_retriever import batch_inputs, windows

    model, dev = retriever.model, retriever.device
    c = model.config
    offsets, items = np.asarray(eval_set.history_offsets), np.asarray(eval_set.history_items)
    side, users_feats = inputs if inputs is not None else (None, None)
    parts = {name: [] for name in ("cand", "g", "residual", "s_ca")}
    for start in tqdm(range(0, len(eval_set), batch_size), desc="scoring", unit="batch"):
        stop = min(start + batch_size, len(eval_set))
        lo, hi = offsets[start], offsets[stop]
        sub, its = offsets[start:stop + 1] - lo, items[lo:hi]
        cand, g = retriever.external_candidates(sub, its, k1, *batch_inputs(side, users_feats, offsets, start, stop))
        with torch.no_grad():
            users = model.user_vectors(windows(sub, its, c.max_len).to(dev))
            ct = torch.from_numpy(cand).to(dev)
            full = model.rank_candidates(ct, windows(sub, its, c.long_len).to(dev), users)
            residual = model.generator_scores(ct.clamp(min=0), users).float()  # the part rank_scores adds
        residual = residual.masked_fill(ct < 0, float("-inf")).cpu().numpy()
        parts["cand"].append(cand)
        parts["g"].append(np.asarray(g, np.float32))
        parts["residual"].append(residual)
        parts["s_ca"].append(np.where(cand >= 0, full.cpu().numpy() - np.nan_to_num(residual, neginf=0.0),
                                      -np.inf))
    return {name: np.concatenate(v) for name, v in parts.items()}


def ordered(cand: np.ndarray, score: np.ndarray) -> np.ndarray:
    order = np.argsort(-score, axis=1, kind="stable")
    return np.take_along_axis(cand, order, 1)


def variant_score(parts: dict, variant: str, blend: float) -> np.ndarray:
    g = np.where(np.isfinite(parts["g"]), parts["g"], 0.0)
    base = {"+ grank generator": parts["residual"], "+ cross-attention": parts["s_ca"],
            "full": parts["s_ca"] + np.nan_to_num(parts["residual"], neginf=0.0)}[variant]
    return np.where(parts["cand"] >= 0, base + blend * g, -np.inf)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", required=True, help="the GRank YAML the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="a trained GRank checkpoint (ranker_residual on)")
    parser.add_argument("--generator", required=True, help="the external generator's checkpoint")
    parser.add_argument("--k1", type=int, default=100)
    parser.add_argument("--beam-width", type=int, default=None)
    parser.add_argument("--blends", default="0,0.5,1,2,4,8,16")
    parser.add_argument("--ks", default="10,50,100")
    parser.add_argument("--batch-size", type=int, default=512)
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1:]  # after "--": config overrides
    from genret.decoding.grank_retriever import GRankRetriever
    from genret.eval.grank_negatives import generator_inputs
    from genret.training.run import build

    ks = [int(k) for k in args.ks.split(",")]
    blends = [float(b) for b in args.blends.split(",")]
    retriever = GRankRetriever.from_checkpoint(args.checkpoint, device="cpu", k1=args.k1, generator=args.generator,
                                               beam_width=args.beam_width)
    if not retriever.model.config.ranker_residual:
        raise SystemExit(f"{args.checkpoint} has no residual score (ranker_residual false): nothing to split")
    with tempfile.TemporaryDirectory() as out:
        _, dm, _ = build("grank", args.config, out, overrides, data=args.data)
        dm.setup("fit")
    if retriever.item_ids.tolist() != dm.log_all.item_ids.tolist():
        raise SystemExit(f"{args.checkpoint} was trained on another catalogue than {args.data}")
    needs = retriever.side_features, retriever.user_feature_names
    parts = {}
    for stage in ("valid", "test"):
        inputs = generator_inputs(dm, stage)(*needs) if any(needs) else None
        parts[stage] = score_parts(retriever, dm.eval_sets[stage], args.k1, args.batch_size, inputs)
    report(parts, dm.eval_sets, blends, ks, args.k1)
    return 0


def report(parts: dict, eval_sets: dict, blends: list[float], ks: list[int], k1: int) -> dict[str, float]:
    """Choose each variant's blend on validation, print validation and test; the chosen blends."""
    chosen = {}
    es = eval_sets["valid"]
    for variant in VARIANTS:
        by_blend = {b: ranking_metrics(ordered(parts["valid"]["cand"], variant_score(parts["valid"], variant, b)),
                                       es.targets, [10])["ndcg@10"] for b in blends}
        chosen[variant] = max(blends, key=lambda b: (by_blend[b], -blends.index(b)))
        print(f"{variant}: validation NDCG@10 by blend " + ", ".join(f"{b:g} {v:.4f}" for b, v in by_blend.items()))
    for stage, name in (("valid", "validation"), ("test", "test")):
        es, p = eval_sets[stage], parts[stage]
        reference = target_ranks(p["cand"], es.targets)
        m = ranking_metrics(p["cand"], es.targets, ks)
        print(f"\n{name} ({len(es)} users, {k1} candidates; their recall "
              f"{float((p['cand'] == es.targets[:, None]).any(1).mean()):.4f})")
        print(f"  generator alone: R@10 {m['recall@10']:.4f} NDCG@10 {m['ndcg@10']:.4f}")
        for variant in VARIANTS:
            lists = ordered(p["cand"], variant_score(p, variant, chosen[variant]))
            m = ranking_metrics(lists, es.targets, ks)
            print(f"  {variant} (blend {chosen[variant]:g}): R@10 {m['recall@10']:.4f} NDCG@10 {m['ndcg@10']:.4f}; "
                  + format_paired_hits(target_ranks(lists, es.targets), reference, ks))
    return chosen


if __name__ == "__main__":
    raise SystemExit(main())
