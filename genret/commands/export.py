"""`genret export --checkpoint CKPT --out DIR`: a checkpoint as safetensors weights + JSON config +
catalogue (SID index, item ids, feature buckets), which `Retriever.from_checkpoint(DIR)` and
`genret serve --checkpoint DIR` load with no pickle involved.
"""

from __future__ import annotations

import sys
from pathlib import Path

from genret.commands.arguments import Parser


def main(argv: list[str]) -> int:
    parser = Parser(prog="genret export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a .ckpt written by genret train / quickstart")
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory (an earlier export there is replaced)")
    args = parser.parse_args(argv)
    try:
        from genret.decoding.export import export_checkpoint
    except ImportError as err:
        raise SystemExit(f"genret export needs safetensors: pip install 'genret[serve]' ({err})") from None
    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, FileExistsError, RuntimeError) as err:
        raise SystemExit(f"genret export: {err}") from None
    print(f"wrote {out}/ (config.json, weights.safetensors, catalogue.safetensors)", file=sys.stderr)
    return 0
