"""End-to-end DualGR decode throughput: naive vs PyTorch reference path vs Triton path, one run.

* naive: recomputes the whole decoder over the SID prefix at every level (no KV cache), each
  beam reads its own copy of the user's history (K/V expanded per beam, masked SDPA), and the
  beam step is log_softmax + masked_fill + torch.topk over the flattened W x V candidates;
* reference: genret's decode path with kernel="torch" (prefix cache, packed jagged history,
  in-bucket key ranges, the PyTorch references of the two ops);
* triton: the same path with kernel="triton" (CUDA, or the interpreter on a CPU, where it is a
  correctness smoke, not a speed number).

Defaults: the paper's serving size on a GPU (beam 256, history 1000, d=512, 8 heads, 4 blocks,
3 x 8192 codes); a reduced size on a CPU so it runs anywhere in a minute or two. Both DBR
branches are decoded, as in serving. The per-kernel bandwidth and FLOP rates against the GPU's
peak come from benchmarks/bench_kernels.py run at the same shapes (printed at the end).

    python benchmarks/bench_decode.py                 # CPU, reduced size
    python benchmarks/bench_decode.py --device cuda   # GPU, paper size
    python benchmarks/bench_decode.py --device cuda --profile 20   # + where the time goes
    python benchmarks/bench_decode.py --device cuda --precision bf16   # bf16 autocast, all paths
    python benchmarks/bench_decode.py --device cuda --precision bf16-weights   # bf16 weights (serving), no autocast
    python benchmarks/bench_decode.py --count-ops     # ops launched / host syncs per level-step (JSON, last line)
    python benchmarks/bench_decode.py --device cuda --precision tf32   # tf32 matmuls

Every run prints the roofline of its configuration (FLOPs and bytes from the shapes, see
`roofline`) and, on an H100 / H200, each path's achieved fraction of it.

--count-ops runs genret's decode path once (by default the serving path, kernel=triton: on CUDA, or
in the Triton interpreter on a CPU, where a launch is counted as on a GPU; kernel=torch when triton
is not installed or with `--kernel torch`) under
genret.decoding.op_count.OpCounter, which counts every ATen op that launches work and every op that
forces a host synchronisation on CUDA (see that module for the list and why it is sound on a CPU),
per level-step of the beam search (one level, both DBR branches in one batch; marked by
record_function). Its
last line is one JSON object: {"host_syncs": syncs inside the level-steps of one batch,
"ops_per_level_step": ..., ...}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--users", type=int, default=None, help="users per batch (GPU 32, CPU 4)")
    p.add_argument("--beam", type=int, default=None, help="beam width (GPU 256, CPU 32)")
    p.add_argument("--history", type=int, default=None, help="history length (GPU 1000, CPU 200)")
    p.add_argument("--d-model", type=int, default=None, help="GPU 512, CPU 128")
    p.add_argument("--heads", type=int, default=None, help="GPU 8, CPU 4")
    p.add_argument("--blocks", type=int, default=None, help="GPU 4, CPU 2")
    p.add_argument("--codes", type=int, default=None, help="codes per level (GPU 8192, CPU 256)")
    p.add_argument("--items", type=int, default=None, help="catalogue size (GPU 2,000,000, CPU 20,000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-triton", action="store_true", help="skip the Triton path")
    p.add_argument("--no-kernel-bench", action="store_true", help="skip the per-kernel rates")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16", "bf16-weights"], default="fp32",
                   help="every path alike: fp32; tf32 matmuls (CUDA); bf16 autocast (weights stay fp32); or "
                        "bf16-weights: the model cast to bf16, no autocast (Retriever(dtype=torch.bfloat16))")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile one batch of the fastest path and print its N costliest ops")
    p.add_argument("--count-ops", action="store_true",
                   help="count launched ops and host syncs per level-step of one batch; prints one JSON line last")
    p.add_argument("--kernel", choices=["auto", "torch", "triton"], default=None,
                   help="kernel of the --count-ops run (default: triton, the serving path, interpreted on "
                        "a CPU; torch when triton is not installed)")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device == "cuda"
    for name, g, c in (("users", 32, 4), ("beam", 256, 32), ("history", 1000, 200), ("d_model", 512, 128),
                       ("heads", 8, 4), ("blocks", 4, 2), ("codes", 8192, 256), ("items", 2_000_000, 20_000)):
        if getattr(args, name) is None:
            setattr(args, name, g if gpu else c)
    return args


def build(args):
    from genret.models.dualgr import DualGR, DualGRConfig
    from genret.tokenizers import SIDIndex

    torch.manual_seed(0)
    cfg = DualGRConfig(codebook_size=args.codes, n_levels=3, n_items=0, d_model=args.d_model, n_heads=args.heads,
                       n_blocks=args.blocks, d_ffn=2 * args.d_model, dropout=0.0, max_history=args.history,
                       long_window=args.history, short_window=min(64, args.history), in_bucket_cap=256)
    model = DualGR(cfg).eval().to(args.device)
    if args.precision == "bf16-weights":
        model = model.to(torch.bfloat16)
    # Random SIDs with a skewed level 1 (real codebooks are not uniform).
    g = torch.Generator().manual_seed(1)
    level1 = torch.multinomial(torch.rand(args.codes, generator=g) ** 3 + 1e-3, args.items, replacement=True,
                               generator=g)
    rest = torch.randint(0, args.codes, (args.items, 2), generator=g)
    codes = torch.cat([level1[:, None], rest], 1)
    model.set_item_codes(codes.to(args.device))
    index = SIDIndex.build(codes.numpy(), args.codes).to(args.device)
    return model, index


def histories(args):
    from genret.decoding.beam_search import Histories

    U, T = args.users, args.history
    g = torch.Generator().manual_seed(2)
    items = torch.randint(0, args.items, (U * T,), generator=g)
    return Histories(torch.arange(0, U * T + 1, T).to(args.device), items.to(args.device),
                     torch.zeros(U, 0, dtype=torch.long, device=args.device))


@torch.no_grad()
def naive_decode(model, index, hist, beam: int, k: int):
    """The unfused, cache-free baseline: see the module docstring."""
    from genret.decoding.beam_search import _bucket_ranges, _sorted_by_bucket, _window, branch_log_priors, \
        model_codes, sids_to_items
    from genret.decoding.topk import distinct_topk

    cfg = model.cfg
    U, L, K, dev = hist.n_users, cfg.n_levels, cfg.codebook_size, hist.items.device
    outs_items, outs_scores = [], []
    log_priors = branch_log_priors(model)  # as Retriever's default
    for width, log_prior in zip((cfg.long_window, cfg.short_window), log_priors):
        window, window_side = _window(model, hist, width)
        full, full_side, _ = _sorted_by_bucket(model, *_window(model, hist, cfg.max_history))
        ctx_coarse = model.context(window, model_codes(model, window), hist.user_feats, window_side)
        ctx_fine = model.context(full, model_codes(model, full), hist.user_feats, full_side)
        prefix = torch.zeros(U, 1, 0, dtype=torch.long, device=dev)
        scores = torch.zeros(U, 1, device=dev)
        for level in range(L):
            W = prefix.shape[1]
            x = model.query_tokens(prefix).reshape(U * W, level + 1, -1)
            if level == 0:
                ctx, valid = ctx_coarse, F.pad(window >= 0, (1, 0), value=True)
                mask = valid[:, None, :].expand(U, W, -1)
            else:
                ctx = ctx_fine
                lo, hi = _bucket_ranges(model, full, prefix[..., 0])
                j = torch.arange(ctx.shape[1], device=dev)
                mask = (j == 0) | ((j >= lo[..., None]) & (j < hi[..., None]))
            mask = mask.reshape(U * W, 1, -1)
            for block in model.blocks:
                x = block.self_attention(x)
                k_ctx, v_ctx = block.cross_attn.project_kv(ctx)  # recomputed every level (no cache)
                k_b = k_ctx.repeat_interleave(W, 0)  # every beam its own copy of the history
                v_b = v_ctx.repeat_interleave(W, 0)
                h = block.norm_cross(x)
                x = x + block.cross_attn.attend(block.cross_attn.project_q(h), k_b, v_b,
                                                mask.expand(-1, x.shape[1], -1))
                x = block.ffn_residual(x)
            logits = model.heads[level](model.final_norm(x[:, -1])).reshape(U, W, K)
            nodes = index.node_of(prefix.reshape(U * W, level)) if level else torch.zeros(U * W, dtype=torch.long,
                                                                                          device=dev)
            allowed = index.valid_mask(level, nodes.clamp(min=0)).reshape(U, W, K)
            cand = (logits.log_softmax(-1) + scores[..., None]).masked_fill(~allowed, float("-inf"))
            top = cand.reshape(U, W * K).topk(min(beam, W * K), dim=1)
            parent, token = top.indices // K, top.indices % K
            prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, level)), token[..., None]], -1)
            scores = top.values
        items, item_scores = sids_to_items(index, prefix, scores, k)
        outs_items.append(items)
        outs_scores.append(item_scores + log_prior)
    return distinct_topk(torch.cat(outs_items, 1), torch.cat(outs_scores, 1), k, "sum")  # as Retriever's default


# Dense peak rates (FLOP/s by precision, bytes/s) of the GPUs the issue measures on, from the vendors'
# data sheets (SXM parts, no sparsity). A name not listed gets no fraction.
GPU_PEAKS = {
    "H100": {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12, "bytes": 3.35e12},
    "H200": {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12, "bytes": 4.8e12},
}


def roofline(model, args) -> dict:
    """FLOPs and bytes of one batch of genret's decode, from the shapes alone (issue 26's count).

    Matmuls count 2 FLOP per multiply-add; every weight, the history's K/V and every activation
    that crosses a kernel boundary in the fused design (the logits are not: the fused beam step
    consumes them) is read or written once. Both DBR branches decode (2U query users) over one
    history encoding; a level-1 beam attends its window, a level-2/3 beam at most 1 + in_bucket_cap
    keys with S2D (its bucket), the whole window without. Returns flops, bytes and the seconds each
    takes at the device's peak (when its name is in GPU_PEAKS) for the run's precision.
    """
    cfg = model.cfg
    d, f, K, L, H = cfg.d_model, cfg.d_ffn, cfg.codebook_size, cfg.n_levels, len(model.blocks)
    U, T = args.users, min(args.history, cfg.max_history)
    branches = 2 if cfg.use_dbr else 1
    width = 2 if args.precision.startswith("bf16") else 4
    # Per query token and block: self-attention q, kv, out; cross-attention q, out; the FFN's two layers.
    per_token_block = 2 * (d * d + 2 * d * d + d * d) + 2 * (2 * d * d) + 2 * (2 * d * f)
    flops = 2 * U * (1 + T) * d * 2 * d * H  # the history's K/V, once per block
    bytes_ = U * (1 + T) * d * width  # context tokens in
    weights = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("blocks", "heads", "final_norm")))
    W = 1
    for level in range(L):
        users = U * branches
        windows = [min(w, T) for w in ((cfg.long_window, cfg.short_window) if branches == 2 else (cfg.long_window,))]
        if level == 0:
            keys = sum(1 + w for w in windows) * U  # summed over the query users (one query each)
        else:
            keys = users * W * (1 + (min(cfg.in_bucket_cap, T) if cfg.use_s2d else max(windows)))
        N = users * W
        flops += N * per_token_block * H + 4 * keys * d * H + 2 * N * d * K
        # weights once; history K/V (2 x d per key row) once per block; activations in/out; the
        # beam step's top-W (score + index) per user.
        bytes_ += weights * width + 2 * users * (1 + T) * d * width * H + 2 * N * d * width + users * W * 12
        W = min(args.beam, W * K)
    out = {"flops": flops, "bytes": bytes_, "intensity": round(flops / bytes_, 1)}
    name = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else ""
    peak = next((v for k, v in GPU_PEAKS.items() if k in name), None)
    if peak is not None:
        rate = peak["bf16" if args.precision.startswith("bf16") else "tf32" if args.precision == "tf32" else "fp32"]
        out["roofline_s"] = max(flops / rate, bytes_ / peak["bytes"])
    return out


def timed(fn, device, repeats):
    fn()  # warm-up (Triton compiles here)
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=1, rep=max(repeats, 1) * 100) / 1000.0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def with_precision(fn, precision: str, device: str):
    """fn run under the chosen precision: bf16 autocast, or fp32 (tf32 is a global switch, set in main)."""
    if precision != "bf16":
        return fn

    def run():
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            return fn()

    return run


def profile(fn, name: str, device: str, rows: int) -> None:
    """Where one batch's time goes: torch.profiler's op table, costliest first (device time on CUDA)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    fn()  # warm (compiles, allocator)
    with torch_profile(activities=activities) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    # torch >= 2.4 calls the GPU column "device" time; older releases call it "cuda" time.
    keys = ["self_device_time_total", "self_cuda_time_total"] if device == "cuda" else ["self_cpu_time_total"]
    for sort_by in keys:
        try:
            table = prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60)
        except (AttributeError, KeyError, ValueError):
            continue
        print(f"\nprofile of one batch, path {name!r}, sorted by {sort_by}:")
        print(table)
        return


@torch.no_grad()
def count_ops(args, model, index, hist) -> dict:
    """Ops launched and host syncs of one warm batch (genret.decoding.op_count), per level-step and in all."""
    from genret.decoding.beam_search import retrieve_indices
    from genret.decoding.op_count import LEVEL_STEP, OpCounter

    kernel = args.kernel or ("triton" if args.device == "cuda" else "torch")
    run = with_precision(lambda: retrieve_indices(model, index, hist, args.beam, kernel=kernel),
                         args.precision, args.device)
    run()  # warm: compiles, caches, allocator
    with OpCounter() as counter:
        run()
    steps = counter.regions.get(LEVEL_STEP)
    n_steps = steps.entries if steps else 0
    loop_ops, loop_syncs = (steps.ops, steps.syncs) if steps else (0, 0)
    return {
        "host_syncs": loop_syncs,
        "ops_per_level_step": round(loop_ops / max(n_steps, 1), 1),
        "level_steps": n_steps,
        "host_syncs_per_batch": counter.total.syncs,
        "ops_per_batch": counter.total.ops,
        "ops_outside_level_steps": counter.total.ops - loop_ops,
        "sync_sites": dict(counter.sync_sites.most_common()),
        "roofline": roofline(model, args),
        "kernel": kernel,
        "device": args.device,
        "precision": args.precision,
        "shape": {"users": args.users, "beam": args.beam, "history": args.history, "d_model": args.d_model,
                  "heads": args.heads, "blocks": args.blocks, "codes": args.codes, "items": args.items},
    }


def _rerun_interpreted(argv) -> int:
    """The Triton interpreter must be chosen before triton is imported: run ourselves again with it set."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.call([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])], env=env)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.count_ops:
        if args.kernel is None:
            args.kernel = "triton" if importlib.util.find_spec("triton") is not None else "torch"
        if args.device == "cpu" and args.kernel == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            return _rerun_interpreted(argv)
        model, index = build(args)
        hist = histories(args)
        result = count_ops(args, model, index, hist)
        print(f"ops and host syncs of one batch (device {args.device}, kernel {result['kernel']}): "
              f"{result['ops_per_level_step']} ops per level-step over {result['level_steps']} level-steps, "
              f"{result['host_syncs']} host syncs inside them, {result['host_syncs_per_batch']} in the whole batch")
        print(json.dumps(result), flush=True)
        return 0
    if args.device == "cpu" and not args.no_triton and os.environ.get("TRITON_INTERPRET") != "1":
        return _rerun_interpreted(argv)
    from genret.decoding.beam_search import retrieve_indices

    model, index = build(args)
    hist = histories(args)
    k = args.beam
    if args.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True  # the Triton attention follows this switch too
        torch.backends.cudnn.allow_tf32 = True
    print(f"device {args.device} ({torch.cuda.get_device_name(0) if args.device == 'cuda' else 'CPU'}), "
          f"users/batch {args.users}, beam {args.beam}, history {args.history}, d {args.d_model}, "
          f"heads {args.heads}, blocks {args.blocks}, codes 3 x {args.codes}, items {args.items:,}, "
          f"threads {torch.get_num_threads()}, precision {args.precision}")
    paths = [("naive (recompute, per-beam K/V, topk)", lambda: naive_decode(model, index, hist, args.beam, k)),
             ("reference (kernel=torch)", lambda: retrieve_indices(model, index, hist, k, kernel="torch"))]
    if not args.no_triton:
        label = "triton" if args.device == "cuda" else "triton (INTERPRETER: correctness smoke, not speed)"
        paths.append((label, lambda: retrieve_indices(model, index, hist, k, kernel="triton")))
    paths = [(name, with_precision(fn, args.precision, args.device)) for name, fn in paths]
    results = {}
    ref_items = None
    line = roofline(model, args)
    print(f"roofline of one batch: {line['flops'] / 1e9:,.3f} GFLOP, {line['bytes'] / 1e6:,.3f} MB "
          f"({line['intensity']} FLOP/byte)" + (f", {line['roofline_s'] * 1e3:.2f} ms at this GPU's peak"
                                                  if "roofline_s" in line else ""))
    print(f"{'path':<52} {'ms/batch':>10} {'users/s':>10} {'vs naive':>9}  same items as reference")
    for name, fn in paths:
        reps = 1 if "INTERPRETER" in name else args.repeats
        seconds = timed(fn, args.device, reps)
        items, _ = fn()
        if ref_items is None and "reference" in name:
            ref_items = items
        results[name] = seconds
        naive = results[paths[0][0]]
        same = "-" if ref_items is None else f"{(items == ref_items).float().mean().item():.4f}"
        frac = f"  {line['roofline_s'] / seconds:.1%} of roofline" if "roofline_s" in line else ""
        print(f"{name:<52} {seconds * 1e3:>10.1f} {args.users / seconds:>10.1f} {naive / seconds:>8.2f}x  {same}{frac}")
    if args.profile:
        fastest = min(results, key=results.get)
        profile(dict(paths)[fastest], fastest, args.device, args.profile)
    if not args.no_kernel_bench:
        print("\nper-kernel rates at these shapes (benchmarks/bench_kernels.py):", flush=True)
        cmd = [sys.executable, str(Path(__file__).with_name("bench_kernels.py")), "--device", args.device,
               "--users", str(args.users), "--beams", str(args.beam), "--history", str(args.history),
               "--d-model", str(args.d_model), "--heads", str(args.heads), "--codes", str(args.codes)]
        subprocess.call(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
