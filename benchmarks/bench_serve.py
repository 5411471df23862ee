"""Load test of `genret serve`: latency (p50 / p99) and requests/s at 1, 8 and 32 concurrent clients,
beside the in-process `Retriever.retrieve` speed measured in the same run as the baseline.

    OMP_NUM_THREADS=1 python benchmarks/bench_serve.py --checkpoint runs/quickstart/model.ckpt

It starts `genret serve` as a subprocess on a free 127.0.0.1 port (the only address it talks to),
waits for /ready, and first times `Retriever.retrieve` in this process, one user a call, with the
server's thread setting (and, with --thread-sweep, at 1 and 2 torch threads, one user and 32 users
a call). Then, per concurrency level, that many asyncio httpx clients each send one-user requests
(a history of --history-length items drawn from the catalogue with a fixed seed) back to back,
until the level has sent --requests requests or run --seconds seconds. The client shares the CPU
with the server: on a small machine its own cost is part of what is measured, so each level also
prints the CPU the server and the client used (100% = one core busy for the level's duration).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .ckpt or a genret export directory")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=400, help="most requests per concurrency level")
    p.add_argument("--seconds", type=float, default=30.0, help="most seconds per concurrency level")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--history-length", type=int, default=20)
    p.add_argument("--kernel", default="auto", choices=("auto", "torch", "triton"), help="decode kernels, both sides")
    p.add_argument("--threads", type=int, default=1, help="torch threads, in the server and the in-process baseline")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--baseline-calls", type=int, default=100, help="in-process retrieve calls (bounded by --seconds)")
    p.add_argument("--thread-sweep", action="store_true", help="also time in-process retrieve at 1 and 2 threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def genret_command() -> list[str]:
    # The installed console script; `python -m` would put the checkout first on sys.path.
    script = Path(sys.executable).with_name("genret")
    return [str(script)] if script.is_file() else [shutil.which("genret") or "genret"]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_in_process(retriever, histories: list[list], k: int, users: int, calls: int, limit_s: float) -> dict:
    """Latency of `retrieve` on `users` histories a call, sequential calls, bounded in count and time."""
    retriever.retrieve(histories[:users], k=k)  # warm-up
    latencies, start, i = [], time.perf_counter(), 0
    while i < calls and time.perf_counter() - start < limit_s:
        batch = [histories[(i * users + u) % len(histories)] for u in range(users)]
        t0 = time.perf_counter()
        retriever.retrieve(batch, k=k, batch_size=users)
        latencies.append(time.perf_counter() - t0)
        i += 1
    p50, p99 = percentiles(latencies)
    return {"calls": len(latencies), "p50_ms": p50, "p99_ms": p99,
            "users_per_s": users * len(latencies) / sum(latencies)}


async def load_level(url: str, clients: int, histories: list[list], k: int, max_requests: int,
                     limit_s: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + limit_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        for h in histories[:clients]:  # open the connections
            await client.post("/retrieve", json={"histories": [h], "k": k})

        async def worker():
            nonlocal sent, errors
            while sent < max_requests and time.perf_counter() < deadline:
                body = {"histories": [histories[sent % len(histories)]], "k": k}
                sent += 1
                t0 = time.perf_counter()
                response = await client.post("/retrieve", json=body)
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    p50, p99 = percentiles(latencies)
    return {"requests": len(latencies), "errors": errors, "p50_ms": p50, "p99_ms": p99,
            "requests_per_s": len(latencies) / elapsed}


def batch_stats(url: str) -> tuple[float, float]:
    """(requests, batches) the server has decoded so far, from /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    total = re.search(r"^genret_batch_requests_sum (\S+)", text, re.M)
    count = re.search(r"^genret_batch_requests_count (\S+)", text, re.M)
    return (float(total.group(1)) if total else 0.0), (float(count.group(1)) if count else 0.0)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(url: str, server: subprocess.Popen, limit_s: float = 120) -> None:
    import httpx

    deadline = time.time() + limit_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"genret serve exited with code {server.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"genret serve was not ready after {limit_s:.0f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from genret.serving import load_retriever

    levels = [int(c) for c in args.concurrency.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = genret_command() + ["serve", "--checkpoint", args.checkpoint, "--port", str(port),
                              "--threads", str(args.threads), "--kernel", args.kernel,
                              "--max_batch_size", str(args.max_batch_size), "--max_wait_ms", str(args.max_wait_ms)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    try:
        wait_ready(url, server)
        retriever = load_retriever(args.checkpoint, "cpu", kernel=args.kernel)
        rng = np.random.default_rng(args.seed)
        ids = retriever.item_ids
        histories = [ids[rng.choice(len(ids), args.history_length, replace=False)].tolist() for _ in range(256)]

        print(f"checkpoint {args.checkpoint}: {len(ids):,} items, model {retriever.model_version}; k={args.k}, "
              f"histories of {args.history_length}; {os.cpu_count()} CPUs; server --threads {args.threads} "
              f"--max-batch-size {args.max_batch_size} --max-wait-ms {args.max_wait_ms}")
        print("\nin-process Retriever.retrieve (sequential calls, server idle):")
        print("| torch threads | users a call | calls | p50 ms | p99 ms | users/s |")
        print("|---|---|---|---|---|---|")
        runs = [(args.threads, 1)]
        if args.thread_sweep:
            runs = [(t, u) for t in (1, 2) for u in (1, 32)]
        baseline = None
        for threads, users in runs:
            torch.set_num_threads(threads)
            r = time_in_process(retriever, histories, args.k, users, args.baseline_calls, args.seconds)
            if (threads, users) == (args.threads, 1):
                baseline = r
            print(f"| {threads} | {users} | {r['calls']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['users_per_s']:.1f} |", flush=True)
        torch.set_num_threads(args.threads)
        del retriever

        print(f"\ngenret serve over HTTP (one user a request; at most {args.requests} requests or "
              f"{args.seconds:.0f} s a level):")
        print("| clients | requests | errors | p50 ms | p99 ms | requests/s | requests per batch | "
              "vs in-process users/s | server CPU | client CPU |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for clients in levels:
            before = batch_stats(url)
            server_cpu, client_cpu, wall = process_cpu_seconds(server.pid), time.process_time(), time.perf_counter()
            r = asyncio.run(load_level(url, clients, histories, args.k, args.requests, args.seconds))
            wall = time.perf_counter() - wall
            client_cpu = (time.process_time() - client_cpu) / wall
            server_cpu = None if server_cpu is None else (process_cpu_seconds(server.pid) - server_cpu) / wall
            after = batch_stats(url)
            per_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
            ratio = r["requests_per_s"] / baseline["users_per_s"]
            server_text = "n/a" if server_cpu is None else f"{server_cpu:.0%}"
            print(f"| {clients} | {r['requests']} | {r['errors']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['requests_per_s']:.1f} | {per_batch:.1f} | {ratio:.2f}x | {server_text} | {client_cpu:.0%} |",
                  flush=True)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
