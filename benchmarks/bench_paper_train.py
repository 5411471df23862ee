"""Training speed of the paper-size DualGR (configs/dualgr_paper.yaml: 4 blocks, d 512, 8 heads, FFN
1024, 3 x 8192 codes, history 1000) on its synthetic catalogue (synthetic:200000x500000), for a fixed
number of optimiser steps.

    OMP_NUM_THREADS=1 python benchmarks/bench_paper_train.py --steps 3        # a CPU: targets/s
    python benchmarks/bench_paper_train.py --steps 50 --warmup 5             # a GPU: + step time, memory, MFU

Prints targets/s (a "target" is one positive next-item prediction, all SID levels; exposure
negatives are counted apart) and ms a step. On a GPU also the peak memory allocated and the model
FLOP utilisation: the FLOP of a step counted from the shapes of its batches (`step_flops`: matrix
products only, backward = 2 x forward, masked attention counted at the full T+1 keys that training
computes) over the device's dense bf16 peak (`--peak_tflops`, or a table of known devices).

The tokenizer is fitted with `--sid_iters` Lloyd iterations (default 2) and cached: the SIDs'
quality does not change a step's cost, only the code count does. The synthetic users' histories are
short (about `--mean_length` positives, default the generator's 40) unless raised, so the history
side of a step is far below the paper's 1000 actions; the output says the batch's mean length.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets.
_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "dualgr_paper.yaml"))
    p.add_argument("--data", default="synthetic:200000x500000")
    p.add_argument("--steps", type=int, default=3, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch_size", type=int, default=None,
                   help="override the config's 128 users (on a CPU use ~8: the 3 x 8192-way logits of 128 users' "
                        "targets and their gradients take over 10 GB)")
    p.add_argument("--mean_length", type=float, default=None,
                   help="the synthetic users' mean positives (default: the generator's 40)")
    p.add_argument("--sid_iters", type=int, default=2, help="RQ-KMeans iterations (speed does not depend on them)")
    p.add_argument("--cache_dir", default="runs/cache", help="where the fitted tokenizer is cached")
    p.add_argument("--peak_tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p.parse_args(argv)


def step_flops(cfg, batch, attention: bool = True) -> float:
    """Matrix-product FLOP of one training step (forward + backward = 3 x forward) for `batch`.

    Per positive target the decoder runs L query tokens (BOS, s1, .., s_{L-1}); per negative one.
    Each block: self-attention projections (4 d^2 per query token), cross-attention Q and O on the
    query tokens and K and V on the B x (T+1) context tokens, FFN (2 d d_ffn); heads: d x K logits per
    query token. With `attention`, also the attention scores and values: over the <= L prefix tokens
    and over all T+1 context positions (training computes the masked ones too). Padded positions
    count: they are computed. Without `attention` this equals torch.utils.flop_counter's count on a
    CPU, which does not see the CPU attention kernel (tests/benchmarks/test_benchmarks_paper_train.py).
    """
    B, T = batch.items.shape
    d, f, K, L, blocks = cfg.d_model, cfg.d_ffn, cfg.codebook_size, cfg.n_levels, cfg.n_blocks
    n_neg = batch.neg_items.shape[1] if cfg.use_entp else 0
    queries = B * (T * L + n_neg)
    context = B * (T + 1)
    per_block = (2 * queries * 4 * d * d  # self-attention Q, K, V, O
                 + 2 * queries * 2 * d * d + 2 * context * 2 * d * d  # cross Q, O; cross K, V
                 + 2 * queries * 2 * d * f)  # FFN
    if attention:
        per_block += 2 * queries * 2 * L * d + 2 * queries * 2 * (T + 1) * d  # self and cross scores + values
    heads = 2 * queries * d * K
    return 3.0 * (blocks * per_block + heads)


def _phase(name: str, started: float) -> None:
    """Progress on stderr with the process's resident memory: the set-up of 500,000 items takes minutes."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    print(f"[bench] {name}: {time.perf_counter() - started:.0f} s, peak RSS {rss:.1f} GiB", file=sys.stderr, flush=True)


def peak_tflops(override: float | None) -> float | None:
    if override is not None:
        return override
    name = torch.cuda.get_device_name(0)
    for key, value in _PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    from genret.training.run import build

    cuda = torch.cuda.is_available()
    overrides = ["--trainer.enable_progress_bar", "false", "--trainer.devices", "1",
                 "--data.sid.n_iter", str(args.sid_iters), "--data.sid.cache_dir", args.cache_dir,
                 "--data.num_workers", "0"]
    if args.batch_size:
        overrides += ["--data.batch_size", str(args.batch_size)]
    if args.mean_length:
        overrides += ["--data.load_options", json.dumps({"mean_length": args.mean_length})]
    started = time.perf_counter()
    module, dm, _ = build("dualgr", args.config, Path("/tmp/genret-bench-paper-train"), overrides, data=args.data)
    _phase("options parsed", started)
    dm.setup("fit")
    _phase("data, SIDs and index ready", started)
    module.build(n_levels=dm.sid.n_levels, codebook_size=dm.sid.codebook_size, n_items=dm.n_items,
                 user_feature_cardinalities=dm.user_feature_cardinalities, max_history=dm.max_history,
                 n_side_features=len(dm.side), side_buckets=dm.side.n_buckets)
    set_up = time.perf_counter() - started
    model = module.model
    model.set_item_codes(torch.as_tensor(dm.codes))
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    # bf16 autocast on a GPU (the config's bf16-mixed); float32 on a CPU, where bf16 is slower.
    dtype = torch.bfloat16 if cuda else None
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.warmup + args.steps)]
    batches = [b.to(device) if hasattr(b, "to") else b for b in batches]
    _phase(f"model built, {len(batches)} batches drawn", started)
    cfg = model.cfg
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model.loss(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    for batch in batches[: args.warmup]:
        step(batch)
    _phase("warm-up done", started)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    targets = negatives = 0
    flops = 0.0
    timed = batches[args.warmup:]
    start = time.perf_counter()
    for batch in timed:
        out = step(batch)
        targets += int(out["n_pos"])
        negatives += int(out["n_neg"])
        flops += step_flops(cfg, batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    lengths = torch.cat([(b.items >= 0).sum(1).float().cpu() for b in timed])
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu, {torch.get_num_threads()} threads",
        "config": str(args.config), "data": args.data, "n_items": dm.n_items, "codebook_size": cfg.codebook_size,
        "d_model": cfg.d_model, "n_blocks": cfg.n_blocks, "batch_size": dm.batch_size,
        "mean_history_in_batch": float(lengths.mean()), "steps": args.steps, "set_up_seconds": set_up,
        "targets_per_s": targets / seconds, "negatives_per_s": negatives / seconds,
        "ms_per_step": seconds / args.steps * 1e3, "gflop_per_step": flops / args.steps / 1e9,
        "dtype": "bf16 autocast" if dtype else "float32",
    }
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        peak = peak_tflops(args.peak_tflops)
        if peak:
            result["mfu"] = flops / seconds / (peak * 1e12)
    print(f"set-up (data, SIDs, model) {set_up:.0f} s; {cfg.n_blocks} blocks, d {cfg.d_model}, "
          f"{cfg.n_levels} x {cfg.codebook_size} codes, batch {dm.batch_size} users, mean history "
          f"{result['mean_history_in_batch']:.0f} positives, {result['dtype']}, {result['device']}")
    print(f"{result['targets_per_s']:.0f} targets/s ({result['negatives_per_s']:.0f} negatives/s), "
          f"{result['ms_per_step']:.0f} ms/step, {result['gflop_per_step']:.1f} GFLOP/step "
          f"({flops / seconds / 1e9:.1f} GFLOP/s)")
    if cuda:
        print(f"peak memory {result['peak_memory_gib']:.2f} GiB; MFU "
              + (f"{100 * result['mfu']:.1f}%" if "mfu" in result else "unknown (pass --peak_tflops)"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
