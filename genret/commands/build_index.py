"""`genret build-index --checkpoint CKPT [--kind hnsw] [--tune_histories FILE --target_recall 0.95]`:
a faiss ANN index over a RetrievalFormer checkpoint's item tower, saved beside it
(`CKPT.<kind>.faiss` + a JSON sidecar, written atomically), for `genret serve --index KIND`,
`genret decode --index KIND` and `RetrievalFormerRetriever.from_checkpoint(CKPT, index=KIND)`.

With --tune_histories (JSON lines as `genret decode` reads them, e.g. some validation users) the
index's search breadth (HNSW efSearch, IVF nprobe) is set to the smallest that finds
--target_recall of the exact top --k for those users; the sidecar records the recall measured.
"""

from __future__ import annotations

import json
from pathlib import Path

from genret.commands.arguments import Parser
from genret.commands.decode import positive_int, read_histories


def index_family_check(checkpoint: str | Path, kind: str, need_file: bool) -> None:
    """SystemExit naming the problem unless `checkpoint` is a RetrievalFormer artifact (the family
    served from an ANN index) and, with `need_file`, its `kind` index exists beside it."""
    from genret.decoding.ann import index_path
    from genret.decoding.export import artifact_family

    family = artifact_family(checkpoint)
    if family != "retrievalformer":
        raise SystemExit(f"--index: {checkpoint} holds a {family!r} model; only RetrievalFormer (a two-tower "
                         f"model) is served from an ANN index, every other family ranks on its own")
    if need_file and not index_path(checkpoint, kind).is_file():
        raise SystemExit(f"--index {kind}: no index beside {checkpoint}; build it first with "
                         f"`genret build-index --checkpoint {checkpoint} --kind {kind}`")


def main(argv: list[str]) -> int:
    parser = Parser(prog="genret build-index", description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a RetrievalFormer .ckpt")
    parser.add_argument("--kind", default="hnsw", choices=("hnsw", "ivfpq", "flat"))
    parser.add_argument("--tune_histories", type=Path, default=None,
                        help="JSON lines of histories the search breadth is tuned on (default: not tuned)")
    parser.add_argument("--target_recall", type=float, default=0.95, help="recall@k of exact search to reach")
    parser.add_argument("--k", type=positive_int, default=100, help="list length the recall is measured at")
    parser.add_argument("--hnsw_m", type=positive_int, default=32, help="HNSW links per node")
    parser.add_argument("--ef_construction", type=positive_int, default=80, help="HNSW build beam width")
    parser.add_argument("--nlist", type=positive_int, default=None, help="IVF lists (default ~4 sqrt(items))")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    if not args.checkpoint.exists():
        parser.error(f"--checkpoint {args.checkpoint} does not exist")
    if not 0 < args.target_recall <= 1:
        parser.error(f"--target_recall must be in (0, 1], got {args.target_recall}")
    index_family_check(args.checkpoint, args.kind, need_file=False)
    from genret.decoding.retrievalformer_retriever import RetrievalFormerRetriever

    tune = read_histories(args.tune_histories)[1] if args.tune_histories is not None else None
    if tune is not None and not tune:
        parser.error(f"--tune_histories {args.tune_histories} holds no histories")
    retriever = RetrievalFormerRetriever.from_checkpoint(args.checkpoint, device=args.device)
    params = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction} if args.kind == "hnsw" else (
        {"nlist": args.nlist} if args.kind == "ivfpq" else {})
    path = retriever.build_index(args.kind, tune_histories=tune, target_recall=args.target_recall, tune_k=args.k,
                                 **params)
    print(f"wrote {path} ({len(retriever.item_ids)} items): {json.dumps(retriever.ann.params)}")
    return 0
