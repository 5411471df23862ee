"""`genret serve --checkpoint CKPT [--host 127.0.0.1] [--port 8000] [--device cpu|cuda]`: HTTP retrieval.

POST /retrieve, GET /health, GET /ready, GET /metrics, POST /reload; see genret/serving/app.py.
CKPT is a `.ckpt` from `genret train` / `genret quickstart` or a `genret export` directory.
Needs the serving extra: pip install 'genret[serve]'.
"""

from __future__ import annotations

import logging
from pathlib import Path

from genret.commands.arguments import Parser


def main(argv: list[str]) -> int:
    parser = Parser(prog="genret serve", description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a .ckpt or a genret export directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--kernel", default="auto", choices=("auto", "torch", "triton"),
                        help="decode kernels: auto = Triton on CUDA (or under TRITON_INTERPRET=1), else PyTorch")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for decoding (default 1: on a 2-core box one thread answered a "
                             "single-user request faster than two; see the serving notes)")
    parser.add_argument("--max_batch_size", type=int, default=32, help="most histories decoded together")
    parser.add_argument("--max_wait_ms", type=float, default=2.0,
                        help="longest a batch waits for more requests after its first one")
    parser.add_argument("--max_k", type=int, default=1000, help="largest k a request may ask for")
    parser.add_argument("--max_histories", type=int, default=256, help="most histories in one request")
    parser.add_argument("--access_log", action="store_true", help="log every request (off: it costs latency)")
    parser.add_argument("--index", default=None, choices=("hnsw", "ivfpq", "flat"),
                        help="RetrievalFormer: search the ANN index of this kind saved beside the checkpoint "
                             "(`genret build-index`) instead of scoring every item")
    args = parser.parse_args(argv)
    for name in ("threads", "max_batch_size", "max_k", "max_histories"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.max_wait_ms < 0:
        parser.error("--max_wait_ms must be >= 0")
    if not args.checkpoint.exists():
        parser.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.index is not None:
        from genret.commands.build_index import index_family_check

        index_family_check(args.checkpoint, args.index, need_file=True)
    try:
        import uvicorn

        from genret.serving.app import create_app
    except ImportError as err:
        raise SystemExit(f"genret serve needs the serving extra: pip install 'genret[serve]' ({err})") from None
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(args.checkpoint, device=args.device, kernel=args.kernel, max_batch_size=args.max_batch_size,
                     max_wait_ms=args.max_wait_ms, max_k=args.max_k, max_histories=args.max_histories,
                     **({"index": args.index} if args.index else {}))
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    return 0
