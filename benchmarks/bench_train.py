"""DualGR training-step throughput (targets/s): all targets of a sequence in one pass vs one
padded example per prefix (the slow toy version, on the batches' first users), in the same run;
then genret's CPU dropout (genret/models/layers.py) vs torch's `nn.Dropout` in the same model,
alternating rounds on the same batches (nn.Dropout's draws were 16% of an ML-1M step on a CPU);
then the loss in `--length-chunks` length-sorted pieces (`model.length_chunks`: same loss and
gradient, less padding) vs one piece, and bfloat16 autocast vs float32, each alternating with its
baseline on the same batches in the same run.

    python benchmarks/bench_train.py --config configs/dualgr_ml1m.yaml --data /path/to/ml-1m
    python benchmarks/bench_train.py                       # quickstart config, synthetic data

A "target" is one positive next-item prediction (all SID levels). Exposure negatives are counted
separately. The per-prefix version materialises, for each target of the batch's first
`--naive-users` users, its own history row (the last `max_history` positives before it) and scores
only that row's last position.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--data", default=None, help="override the config's data")
    p.add_argument("--steps", type=int, default=5, help="timed optimiser steps per variant")
    p.add_argument("--naive-steps", type=int, default=2)
    p.add_argument("--naive-users", type=int, default=16, help="users of each batch the per-prefix version sees")
    p.add_argument("--dropout-rounds", type=int, default=2, help="alternating rounds of the dropout comparison")
    p.add_argument("--length-chunks", type=int, default=8, help="pieces per batch in the chunked-loss comparison")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the chunk and bf16 comparisons")
    return p.parse_args(argv)


def per_prefix_batch(batch, max_history):
    """One row per target: its history (positives before it) then the target; loss on the last."""
    from genret.models.dualgr import TrainBatch

    B, T = batch.items.shape
    rows, cols = (batch.items >= 0).nonzero(as_tuple=True)
    W = min(max_history, T)
    j = torch.arange(W)
    src = cols[:, None] - (W - 1) + j  # right-aligned window ending at the target
    ok = src >= 0
    items = torch.where(ok, batch.items[rows[:, None], src.clamp(min=0)], torch.full_like(src, -1))
    codes = batch.codes[rows[:, None], src.clamp(min=0)] * ok[..., None]
    # Left-align (the model expects padding at the end).
    order = torch.argsort(ok.logical_not().to(torch.int8), dim=1, stable=True)
    items, codes = items.gather(1, order), codes.gather(1, order[..., None].expand_as(codes))
    length = ok.sum(1)
    loss_mask = torch.zeros_like(ok)
    loss_mask[torch.arange(len(rows)), length - 1] = True
    n = len(rows)
    return TrainBatch(items=items, codes=codes, user_feats=batch.user_feats[rows],
                      side=torch.zeros(n, W, 0, dtype=torch.long), neg_items=torch.zeros(n, 0, dtype=torch.long),
                      neg_codes=torch.zeros(n, 0, codes.shape[-1], dtype=torch.long),
                      neg_pos=torch.zeros(n, 0, dtype=torch.long), loss_mask=loss_mask)


def first_users(batch, n):
    """The batch cut to its first n users (every field is indexed by user first)."""
    from genret.models.dualgr import TrainBatch

    return TrainBatch(**{k: v[:n] for k, v in batch.__dict__.items()})


def time_steps(model, batches, steps, dtype=None, chunks=1):
    """Optimiser steps over `batches`; dtype: an autocast dtype (None: float32); chunks: see DualGR.loss."""
    def autocast():
        return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    with autocast():
        out = model.loss(batches[0], chunks=chunks)  # warm-up
    out["loss"].backward()
    opt.zero_grad()
    targets = negatives = 0
    start = time.perf_counter()
    for i in range(steps):
        with autocast():
            out = model.loss(batches[i % len(batches)], chunks=chunks)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        targets += int(out["n_pos"])
        negatives += int(out["n_neg"])
    return time.perf_counter() - start, targets, negatives


def alternate(variants, rounds, steps, note=""):
    """Times each variant (name -> function running `steps` optimiser steps, returning seconds) in
    alternating rounds, so drift in the machine's speed hits all alike; prints ms a step. Returns
    the seconds spent per variant; the first variant is the baseline of the speed-up the caller prints."""
    spent = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, run in variants.items():
            spent[name] += run()
    for name, sec in spent.items():
        print(f"{name:<20}: {sec / (rounds * steps) * 1e3:6.0f} ms/step{note}")
    return spent


def with_torch_dropout(model):
    """A copy of `model` whose CPUFastDropout modules are torch's nn.Dropout (same p)."""
    import copy

    from genret.models.layers import CPUFastDropout

    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, CPUFastDropout):
                setattr(parent, name, torch.nn.Dropout(child.p))
    return twin


def main(argv=None) -> int:
    args = parse_args(argv)
    from genret.families import family_for_config
    from genret.training.run import build

    overrides = ["--trainer.enable_progress_bar", "false"]
    module, dm, _ = build(family_for_config(args.config), args.config, Path("/tmp/genret-bench-train"), overrides,
                          data=args.data)
    dm.setup("fit")
    module.build(n_levels=dm.sid.n_levels, codebook_size=dm.sid.codebook_size, n_items=dm.n_items,
                 user_feature_cardinalities=dm.user_feature_cardinalities, max_history=dm.max_history)
    model = module.model
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(max(args.steps, 1))]
    cfg = model.cfg
    print(f"data {dm.log_all.name}: batch {dm.batch_size} users, max_history {dm.max_history}, d {cfg.d_model}, "
          f"blocks {cfg.n_blocks}, codes {cfg.n_levels} x {cfg.codebook_size}, threads {torch.get_num_threads()}")
    seconds, targets, negatives = time_steps(model, batches, args.steps)
    fast = targets / seconds
    print(f"all targets per pass : {fast:10.0f} targets/s  ({negatives / seconds:.0f} negatives/s, "
          f"{args.steps * dm.batch_size / seconds:.1f} users/s, {seconds / args.steps * 1e3:.0f} ms/step)")
    # The naive version sees the same kind of targets; negatives are left out of it, which only flatters it.
    # Its first users only: one row per target of a whole ML-1M batch (6,400 x 100) exhausts 24 GB.
    naive_batches = [per_prefix_batch(first_users(b, args.naive_users), dm.max_history)
                     for b in batches[: args.naive_steps]]
    seconds_n, targets_n, _ = time_steps(model, naive_batches, args.naive_steps)
    slow = targets_n / seconds_n
    print(f"one example per prefix: {slow:10.0f} targets/s  ({seconds_n / args.naive_steps * 1e3:.0f} ms/step)")
    print(f"speed-up: {fast / slow:.1f}x")
    # Dropout: genret's vs torch's, in two otherwise identical models.
    twin = with_torch_dropout(model)
    n_steps = args.dropout_rounds * args.steps
    spent = alternate({"genret CPU dropout": lambda: time_steps(model, batches, args.steps)[0],
                       "torch nn.Dropout": lambda: time_steps(twin, batches, args.steps)[0]},
                      args.dropout_rounds, args.steps, f"  (dropout {cfg.dropout}, {n_steps} steps)")
    print(f"dropout speed-up: {spent['torch nn.Dropout'] / spent['genret CPU dropout']:.2f}x")

    # The loss in length-sorted pieces vs one padded pass, same batches.
    real = sum(int((b.items >= 0).sum()) for b in batches) / sum(b.items.numel() for b in batches)
    pieces = f"{args.length_chunks} pieces"
    spent = alternate({"one piece": lambda: time_steps(model, batches, args.steps)[0],
                       pieces: lambda: time_steps(model, batches, args.steps, chunks=args.length_chunks)[0]},
                      args.rounds, args.steps, f"  ({real:.0%} of a batch's padded positions are real)")
    print(f"length-chunk speed-up: {spent['one piece'] / spent[pieces]:.2f}x")

    # bfloat16 autocast (what `trainer.precision: bf16-mixed` does) vs float32, same batches.
    spent = alternate({"float32": lambda: time_steps(model, batches, args.steps)[0],
                       "bf16 autocast": lambda: time_steps(model, batches, args.steps, dtype=torch.bfloat16)[0]},
                      args.rounds, args.steps)
    print(f"bf16 speed-up: {spent['float32'] / spent['bf16 autocast']:.2f}x "
          f"(below 1 where this CPU lacks bf16 matrix units or the matrices are small)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
