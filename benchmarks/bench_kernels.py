"""Speed of the decoding kernels against their PyTorch reference and a naive baseline, same run.

    python benchmarks/bench_kernels.py                 # CUDA if present, else a reduced CPU size
    python benchmarks/bench_kernels.py --device cuda --users 32 --beams 256 --history 1000

Ops:
  decode cross-attention  Triton (all beams of a user in one tile, history read once per head)
                          vs reference (pad + mask + fp32 softmax) vs naive (K/V copied per beam + SDPA).
  beam step               Triton (fused log-softmax + mask + two-stage top-k) vs reference
                          (log_softmax + stable sort) vs naive (log_softmax + masked_fill + torch.topk).
  CSR beam step           the same candidates given as CSR children lists instead of a dense mask
                          (csr_beam_step, what the decode loop runs): Triton vs its reference vs the
                          dense Triton beam step reading the mask.
  prefix self-attention   Triton (cache write + attention over the prefix slots, one launch) vs
                          reference (cache write + products, sums and a softmax).

GB/s and TFLOP/s are effective rates: the minimal bytes an implementation must move and the useful
FLOPs, divided by each implementation's measured time. On CUDA, time is triton.testing.do_bench's
median and the % columns compare with the card's peak. On CPU the Triton column runs in the
Triton interpreter: a correctness smoke, not a speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

# name fragment -> (HBM bytes/s, dense bf16 FLOP/s, tf32 FLOP/s, fp32 FLOP/s without tensor cores); NVIDIA datasheets.
GPU_PEAKS = {
    "H200": (4.8e12, 989e12, 494e12, 67e12),
    "H100 PCIe": (2.0e12, 756e12, 378e12, 51e12),
    "H100 NVL": (3.9e12, 835e12, 418e12, 60e12),
    "H100": (3.35e12, 989e12, 494e12, 67e12),  # SXM (HBM3), e.g. "NVIDIA H100 80GB HBM3"
}


def gpu_peaks(name: str):
    for fragment, peaks in GPU_PEAKS.items():  # the specific names come before "H100"
        if fragment in name:
            return peaks
    return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--users", type=int, default=None, help="users per batch (GPU 32, CPU 2)")
    parser.add_argument("--beams", type=int, default=None, help="beam width W (GPU 256, CPU 16)")
    parser.add_argument("--history", type=int, default=None,
                        help="history length incl. the static token (GPU 1000, CPU 200)")
    parser.add_argument("--d-model", type=int, default=None, help="model width (GPU 512, CPU 128)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (GPU 8, CPU 4)")
    parser.add_argument("--codes", type=int, default=None, help="codebook size V (GPU 8192, CPU 1024)")
    parser.add_argument("--keep", type=int, default=None, help="beams kept per user k (default: --beams)")
    parser.add_argument("--buckets", type=int, default=64, help="level-1 buckets a history is split into")
    parser.add_argument("--ranges", choices=["bucket", "full", "both"], default="both",
                        help="bucket: each beam attends one s1 bucket (S2D); full: the whole history")
    parser.add_argument("--density", type=float, default=0.05, help="fraction of codes allowed per beam")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="GPU bf16, CPU fp32")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement on CPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is steadier on a busy machine")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    defaults = dict(users=(32, 2), beams=(256, 16), history=(1000, 200), d_model=(512, 128), heads=(8, 4),
                    codes=(8192, 1024), dtype=("bf16", "fp32"))
    for name, (on_gpu, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    if args.keep is None:
        args.keep = args.beams
    if args.history < 2:
        parser.error("--history must be >= 2 (the static token plus at least one action)")
    if args.d_model % args.heads:
        parser.error(f"--d-model {args.d_model} is not divisible by --heads {args.heads}")
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA GPU")
    if args.device == "cpu" and args.dtype == "bf16":
        parser.error("the Triton interpreter computes bf16 wrongly; use --dtype fp32 on CPU")
    return args


def timer(device: str, repeats: int):
    """Return measure(fn) -> milliseconds: do_bench's median on CUDA, the median of perf_counter runs on CPU."""
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, return_mode="median")

    def measure(fn):
        fn()  # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - start) * 1e3)
        return statistics.median(runs)

    return measure


def attention_inputs(args, ranges, dtype, device):
    g = torch.Generator().manual_seed(args.seed)
    U, W, L, H = args.users, args.beams, args.history, args.heads
    Dh = args.d_model // H
    seg_offsets = torch.arange(U + 1, dtype=torch.int64) * L
    q = torch.randn(U, W, H, Dh, generator=g)
    k = torch.randn(U * L, H, Dh, generator=g)
    v = torch.randn(U * L, H, Dh, generator=g)
    n_always = 1
    if ranges == "full":
        key_lo = torch.full((U, W), n_always, dtype=torch.int64)
        key_hi = torch.full((U, W), L, dtype=torch.int64)
    else:
        # History sorted by s1: buckets are consecutive ranges of random sizes; each beam picks one.
        n_buckets = max(1, min(args.buckets, L - n_always))
        cuts = torch.sort(torch.randperm(L - n_always - 1, generator=g)[: n_buckets - 1] + 1).values
        bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([L - n_always])]) + n_always
        pick = torch.randint(0, n_buckets, (U, W), generator=g)
        key_lo, key_hi = bounds[pick], bounds[pick + 1]
    to = dict(device=device)
    return (q.to(dtype=dtype, **to), k.to(dtype=dtype, **to), v.to(dtype=dtype, **to), seg_offsets.to(**to),
            key_lo.to(**to), key_hi.to(**to), n_always)


def per_beam_copies(history, W):
    """(U, L, H, Dh) -> (U*W, H, L, Dh): a materialised copy of the user's history for every beam."""
    U, L, H, Dh = history.shape
    return history[:, None].expand(U, W, L, H, Dh).reshape(U * W, L, H, Dh).transpose(1, 2).contiguous()


def naive_attention(q, k_per_beam, v_per_beam, mask_per_beam):
    """Every beam reads its own copy of the history: (U*W, H, L, Dh) keys and values, SDPA with a mask."""
    UW = k_per_beam.shape[0]
    U, W, H, Dh = q.shape
    out = torch.nn.functional.scaled_dot_product_attention(
        q.reshape(UW, 1, H, Dh).transpose(1, 2), k_per_beam, v_per_beam, attn_mask=mask_per_beam
    )  # (U*W, H, 1, Dh)
    return out.transpose(1, 2).reshape(U, W, H, Dh)


def beam_inputs(args, dtype, device):
    g = torch.Generator().manual_seed(args.seed + 1)
    U, W, V = args.users, args.beams, args.codes
    logits = torch.randn(U, W, V, generator=g) * 2
    beam_scores = -torch.rand(U, W, generator=g).cumsum(1)
    allowed = torch.rand(U, W, V, generator=g) < args.density
    return logits.to(device=device, dtype=dtype), beam_scores.to(device), allowed.to(device)


def naive_beam_step(logits, beam_scores, allowed, k):
    U, W, V = logits.shape
    cand = (torch.log_softmax(logits.float(), dim=-1) + beam_scores[..., None]).masked_fill(~allowed, float("-inf"))
    scores, flat = torch.topk(cand.reshape(U, W * V), k, dim=1)
    return scores, flat // V, flat % V


def report(rows, n_bytes, flops, peaks, flop_peak):
    """Print one line per implementation: ms, effective GB/s, TFLOP/s and, on a known GPU, % of peak.

    rows: (name, ms or None, note); the last row is the naive baseline the ratios refer to.
    """
    base = rows[-1][1]
    for name, ms, note in rows:
        if ms is None:
            print(f"  {name:<10} {'-':>10}   {note}")
            continue
        seconds = ms / 1e3
        line = f"  {name:<10} {ms:10.3f} ms {n_bytes / seconds / 1e9:9.3g} GB/s {flops / seconds / 1e12:9.3g} TFLOP/s"
        if peaks is not None:
            line += f"  {100 * n_bytes / seconds / peaks[0]:5.1f}% HBM {100 * flops / seconds / flop_peak:5.1f}% FLOP"
        if base is not None and not note.startswith("(Triton interpreter"):
            line += f"  x{base / ms:6.2f} vs naive"
        print(line + (f"  {note}" if note else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    elif os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1 would time the interpreter on the GPU; unset it", file=sys.stderr)
        return 2
    from genret.kernels import (
        HAVE_TRITON,
        beam_step_reference,
        beam_step_triton,
        csr_beam_step_reference,
        csr_beam_step_triton,
        decode_cross_attention_reference,
        decode_cross_attention_triton,
        prefix_self_attention_reference,
        prefix_self_attention_triton,
    )

    device = args.device
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    element = torch.finfo(dtype).bits // 8
    measure = timer(device, args.repeats)
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peaks = gpu_peaks(gpu_name) if device == "cuda" else None
    triton_note = "" if device == "cuda" else "(Triton interpreter: correctness smoke, 1 run, not a speed)"
    print(f"device: {gpu_name}, dtype {args.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if device == "cuda" and peaks is None:
        print(f"  (no peak table entry for {gpu_name!r}; % of peak columns omitted)")

    def time_triton(fn):
        """(ms, note, output): do_bench on CUDA; on CPU one interpreter run, timed once."""
        if not HAVE_TRITON:
            return None, "triton not installed", None
        start = time.perf_counter()
        output = fn()
        once_ms = (time.perf_counter() - start) * 1e3
        if device == "cuda":
            return measure(fn), "", output
        return once_ms, triton_note, output

    # ---- decode cross-attention ----
    for ranges in ["bucket", "full"] if args.ranges == "both" else [args.ranges]:
        U, W, L, H, Dh = args.users, args.beams, args.history, args.heads, args.d_model // args.heads
        q, k, v, seg_offsets, key_lo, key_hi, n_always = attention_inputs(args, ranges, dtype, device)
        attended = (n_always + (key_hi - key_lo)).sum().item()  # keys per beam, summed over beams
        flops = 4 * H * Dh * attended  # q.k and p.v, 2 FLOP per multiply-add
        j = torch.arange(L, device=device)
        touched = ((j >= key_lo[..., None]) & (j < key_hi[..., None])).any(1) | (j < n_always)  # (U, L)
        n_bytes = element * (2 * q.numel() + 2 * int(touched.sum()) * H * Dh)  # q, out, each touched K/V row once
        print(f"\ndecode cross-attention: U={U} W={W} history={L} H={H} Dh={Dh} ranges={ranges} "
              f"(mean {attended / (U * W):.1f} keys/beam); min traffic {n_bytes / 1e6:.2f} MB, {flops / 1e9:.3f} GFLOP")

        def run_triton():
            return decode_cross_attention_triton(q, k, v, seg_offsets, key_lo, key_hi, n_always)

        def run_reference():
            return decode_cross_attention_reference(q, k, v, seg_offsets, key_lo, key_hi, n_always)

        expected = run_reference()
        triton_ms, note, got = time_triton(run_triton)
        if got is not None:
            print(f"  check: max |triton - reference| = {(got.float() - expected.float()).abs().max().item():.2e}")
        rows = [("triton", triton_ms, note), ("reference", measure(run_reference), "")]
        try:
            rows_index = seg_offsets[:-1, None] + j  # (U, L)
            k_per_beam = per_beam_copies(k[rows_index], W)  # (U*W, H, L, Dh)
            v_per_beam = per_beam_copies(v[rows_index], W)
            mask = (j < n_always) | ((j >= key_lo[..., None]) & (j < key_hi[..., None]))  # (U, W, L)
            mask = mask.reshape(U * W, 1, 1, L)
            rows.append(("naive", measure(lambda: naive_attention(q, k_per_beam, v_per_beam, mask)),
                         f"(reads {k_per_beam.numel() * 2 * element / 1e9:.2f} GB of per-beam K/V copies)"))
            del k_per_beam, v_per_beam
        except torch.OutOfMemoryError:
            rows.append(("naive", None, "skipped: per-beam K/V copies do not fit in memory"))
        flop_peak = None if peaks is None else (peaks[1] if dtype == torch.bfloat16 else
                                                peaks[2] if torch.backends.cuda.matmul.allow_tf32 else peaks[3])
        report(rows, n_bytes, flops, peaks, flop_peak)

    # ---- beam step ----
    V, keep = args.codes, args.keep
    logits, beam_scores, allowed = beam_inputs(args, dtype, device)
    n_bytes = logits.numel() * element + allowed.numel() + beam_scores.numel() * 4
    flops = 5 * logits.numel()  # max, exp, sum, two subtractions per logit: a rough count
    print(f"\nbeam step: U={args.users} W={W} V={V} k={keep} allowed density {args.density}; "
          f"min traffic {n_bytes / 1e6:.2f} MB (logits + mask), ~5 FLOP/logit")

    def run_beam_triton():
        return beam_step_triton(logits, beam_scores, allowed, keep)

    def run_beam_reference():
        return beam_step_reference(logits, beam_scores, allowed, keep)

    expected = run_beam_reference()
    triton_ms, note, got = time_triton(run_beam_triton)
    if got is not None:
        same = ((got[1] == expected[1]) & (got[2] == expected[2])).float().mean().item()
        finite = torch.isfinite(expected[0])
        error = (got[0][finite] - expected[0][finite]).abs().max().item() if bool(finite.any()) else 0.0
        print(f"  check: (parent, token) equal to the reference in {100 * same:.2f}% of slots, "
              f"max |score diff| = {error:.2e}")
    rows = [
        ("triton", triton_ms, note),
        ("reference", measure(run_beam_reference), "(stable sort of W*V)"),
        ("naive", measure(lambda: naive_beam_step(logits, beam_scores, allowed, keep)), "(topk, ties unordered)"),
    ]
    report(rows, n_bytes, flops, peaks, None if peaks is None else peaks[3])

    # ---- CSR beam step: the same candidates as children lists, one parent node per beam ----
    counts = allowed.reshape(-1, V).sum(1)
    child_ptr = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
    child_codes = allowed.reshape(-1, V).nonzero()[:, 1].contiguous()  # row-major: ascending inside a row
    max_children = int(counts.max()) if counts.numel() else 0
    parents = torch.arange(args.users * W, device=device).reshape(args.users, W)
    csr_args = (logits, beam_scores, parents, child_ptr, child_codes, max_children, keep)
    n_bytes = logits.numel() * element + child_codes.numel() * 8 + beam_scores.numel() * 4
    print(f"\nCSR beam step: same shapes, largest fan-out {max_children}; min traffic {n_bytes / 1e6:.2f} MB "
          f"(logits + children lists, no mask)")
    csr_expected = csr_beam_step_reference(*csr_args)
    triton_ms, note, got = time_triton(lambda: csr_beam_step_triton(*csr_args))
    if got is not None:
        same = ((got[1] == csr_expected[1]) & (got[2] == csr_expected[2])).float().mean().item()
        dense_same = ((csr_expected[1] == expected[1]) & (csr_expected[2] == expected[2])).float().mean().item()
        print(f"  check: (parent, token) equal to its reference in {100 * same:.2f}% of slots; the reference "
              f"equals the dense beam step's in {100 * dense_same:.2f}%")
    dense_ms, dense_note, _ = time_triton(run_beam_triton)
    rows = [
        ("triton", triton_ms, note),
        ("reference", measure(lambda: csr_beam_step_reference(*csr_args)), "(gathered children, stable sort)"),
        ("dense", dense_ms, dense_note or "(Triton beam step reading the dense mask)"),
        ("naive", measure(lambda: naive_beam_step(logits, beam_scores, allowed, keep)), "(topk, ties unordered)"),
    ]
    report(rows, n_bytes, flops, peaks, None if peaks is None else peaks[3])

    # ---- prefix self-attention: the last level (every prefix slot read) ----
    H, Dh, n_levels = args.heads, args.d_model // args.heads, 3
    g = torch.Generator().manual_seed(args.seed + 2)
    qkv = torch.randn(args.users, W, 3 * H * Dh, generator=g).to(device=device, dtype=dtype)
    cache = torch.randn(args.users, W, n_levels, 2, H, Dh, generator=g).to(device=device, dtype=dtype)
    n_bytes = element * (qkv.numel() + cache.numel() + 2 * args.users * W * H * Dh)  # qkv, cache, new slot + out
    flops = 4 * args.users * W * H * Dh * n_levels
    print(f"\nprefix self-attention: U={args.users} W={W} H={H} Dh={Dh} level {n_levels - 1}; "
          f"min traffic {n_bytes / 1e6:.2f} MB")
    expected = prefix_self_attention_reference(qkv, cache.clone(), n_levels - 1)
    triton_ms, note, got = time_triton(lambda: prefix_self_attention_triton(qkv, cache, n_levels - 1))
    if got is not None:
        print(f"  check: max |triton - reference| = {(got.float() - expected.float()).abs().max().item():.2e}")
    rows = [("triton", triton_ms, note),
            ("reference", measure(lambda: prefix_self_attention_reference(qkv, cache, n_levels - 1)),
             "(no naive form: the ratio's baseline)")]
    report(rows, n_bytes, flops, peaks, None if peaks is None else (peaks[1] if dtype == torch.bfloat16 else peaks[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
