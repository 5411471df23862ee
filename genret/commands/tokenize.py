"""`genret tokenize`: fit RQ-KMeans on item embeddings and write the tokenizer, codes, SID index and report.

    genret tokenize --embeddings items.npy --out runs/tok [--n_levels 3 --codebook_size 8192 --n_iter 20
                    --sample_size N --seed 0 --device auto --keep_collisions]

Writes OUT/tokenizer.pt (RQKMeans.save), OUT/codes.npy ((N, L) int64), OUT/sid_index.pt
(SIDIndex.save; items inside a shared SID ordered by distance to its reconstruction) and
OUT/report.json (codebook_report), then prints the report table. Items that share a SID are
spread over their prefix's free last codes (genret.tokenizers.spread_last_level) unless
--keep_collisions is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from genret.commands.arguments import Parser
from genret.io import atomic_path, write_json


def build_parser() -> Parser:
    # The flags carry the names of the training config's data.sid keys (n_levels, codebook_size, n_iter).
    parser = Parser(prog="genret tokenize", description=__doc__, renamed={"--levels": "--n_levels"})
    parser.add_argument("--embeddings", required=True, help="(N, d) float .npy file, row i = item i")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--n_levels", type=int, default=3, help="SID length L (default 3)")
    parser.add_argument("--codebook_size", type=int, default=8192, help="codes per level K (default 8192)")
    parser.add_argument("--n_iter", type=int, default=20, help="Lloyd iterations per level (default 20)")
    parser.add_argument("--sample_size", type=int, default=None, help="fit on this many random rows (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--init", default="random", choices=["random", "kmeans||"])
    parser.add_argument("--chunk_size", type=int, default=None, help="rows per distance chunk (default: automatic)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--keep_collisions", action="store_true",
                        help="keep the greedy codes (items with near-identical embeddings share a SID)")
    return parser


def load_embeddings(path: str | Path) -> np.ndarray:
    """Open an (N, d) real-valued .npy file memory-mapped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a .npy file, not 2-D, or not real numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"embeddings file {path} does not exist (make one with `genret embed --data ... --out X.npy`)"
        )
    try:
        X = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy array (np.save format expected): {err}") from err
    if not isinstance(X, np.ndarray):
        raise ValueError(f"{path} holds {type(X).__name__}, not a single array; save the (N, d) matrix with np.save")
    if X.ndim != 2:
        raise ValueError(f"{path} holds an array of shape {X.shape}; expected 2-D (n_items, dim)")
    if X.dtype.kind not in "fiu":
        raise ValueError(f"{path} holds dtype {X.dtype}; expected real numbers (e.g. float32)")
    return X


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from genret.tokenizers import RQKMeans, SIDIndex, codebook_report, format_report, spread_last_level

    try:
        X = load_embeddings(args.embeddings)
        tok = RQKMeans(
            n_levels=args.n_levels,
            codebook_size=args.codebook_size,
            n_iter=args.n_iter,
            random_state=args.seed,
            device=args.device,
            sample_size=args.sample_size,
            chunk_size=args.chunk_size,
            init=args.init,
            verbose=not args.no_progress,
        )
        tok.fit(X)
    except (FileNotFoundError, ValueError) as err:
        print(f"genret tokenize: error: {err}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codes, residual_norm = tok.encode(X, return_residual_norm=True, progress=not args.no_progress)
    if not args.keep_collisions:
        codes, residual_norm = spread_last_level(tok, X, codes)
    index = SIDIndex.build(codes, tok.codebook_size, residual_norm=residual_norm)
    report = codebook_report(tok, X, codes)
    report["params"] = tok.get_params()
    report["embeddings"] = str(Path(args.embeddings).resolve())
    report["inertia"] = tok.inertia_

    tok.save(out / "tokenizer.pt")
    with atomic_path(out / "codes.npy") as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temp name
            np.save(f, codes)
    index.save(out / "sid_index.pt")
    write_json(out / "report.json", report)

    print(format_report(report))
    print(f"\nwrote {out}/tokenizer.pt, codes.npy, sid_index.pt, report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
