"""`genret export-embeddings --checkpoint C --out X.npy`: item vectors of a KuaiFormer / SASRec checkpoint.

Writes an (n_items, d) float32 .npy whose row i is dense item i (the checkpoint's catalogue order),
e.g. as collaborative embeddings for the RQ-KMeans tokenizer.
"""

from __future__ import annotations

from genret.commands.arguments import Parser


def main(argv: list[str]) -> int:
    parser = Parser(prog="genret export-embeddings", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="model.ckpt written by a kuaiformer / sasrec run")
    parser.add_argument("--out", required=True, help="output .npy path")
    args = parser.parse_args(argv)
    import numpy as np

    from genret.io import atomic_path
    from genret.training.embedding_module import checkpoint_item_vectors

    vectors, _ = checkpoint_item_vectors(args.checkpoint)
    with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors)
    print(f"[genret] wrote {args.out}: {vectors.shape[0]:,} items x {vectors.shape[1]} float32")
    return 0
