"""`genret decode --checkpoint C --histories FILE --k 500 [--out FILE]`: batch retrieval.

Input: JSON lines, each either a list of raw item ids (oldest first) or an object
{"user": ..., "history": [...], "side": {"rating": [...], ...}, "user_features": {"gender": 2, ...}};
"side" is optional and gives, per side feature the model was trained with, one raw value per
history item (null = missing); "user_features" is optional and gives the user's static fields as
categorical ids (0 or absent = unknown).
Output: one JSON object per input line,
{"user": ..., "items": [...], "scores": [...]}, to --out or stdout. Items already in a history are
left out (as evaluation does) unless --include_seen. --out is written atomically and only when
the run succeeded with results: a failed or empty run leaves an existing file as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genret.commands.arguments import Parser


def read_histories(path: Path) -> tuple[list, list, list, list]:
    """-> users, histories, sides (per line a {feature: values} dict or None), user features (per
    line a {field: id} dict or None)."""
    users, histories, sides, user_feats = [], [], [], []
    if not path.is_file():
        raise SystemExit(f"genret decode: histories file {path} does not exist")
    with path.open() as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"genret decode: {path}:{line_no}: not valid JSON ({err.msg})") from None
            if isinstance(row, dict):
                if not isinstance(row.get("history"), list):
                    raise SystemExit(f"genret decode: {path}:{line_no}: object needs a 'history' list")
                side = row.get("side")
                if side is not None and not (isinstance(side, dict) and all(
                        isinstance(v, list) and len(v) == len(row["history"]) for v in side.values())):
                    raise SystemExit(f"genret decode: {path}:{line_no}: 'side' must map each feature name to a "
                                     f"list with one value per history item")
                feats = row.get("user_features")
                if feats is not None and not isinstance(feats, dict):
                    raise SystemExit(f"genret decode: {path}:{line_no}: 'user_features' must map each field name "
                                     f"to an integer id")
                users.append(row.get("user", line_no - 1))
                histories.append(row["history"])
                sides.append(side)
                user_feats.append(feats)
            elif isinstance(row, list):
                users.append(line_no - 1)
                histories.append(row)
                sides.append(None)
                user_feats.append(None)
            else:
                raise SystemExit(f"genret decode: {path}:{line_no}: expected a list of item ids or an object")
    return users, histories, sides, user_feats


def side_columns(names: list[str], histories: list, sides: list) -> dict[str, list] | None:
    """Per-line side dicts -> the Retriever's {feature: [values per history]}; lines without one
    are all "missing". None when no line gives side features."""
    given = set().union(*(side or {} for side in sides)) if sides else set()
    if given - set(names):
        raise ValueError(f"side features {sorted(given - set(names))} are not ones this model was trained with "
                         f"({names or 'none'})")
    if not names or not given:
        return None
    return {name: [(side or {}).get(name, [None] * len(history)) for history, side in zip(histories, sides)]
            for name in names}


def user_feature_columns(user_feats: list) -> dict[str, list] | None:
    """Per-line {field: id} dicts -> the Retriever's {field: [id per history]} (None = unknown)."""
    names = sorted(set().union(*(feats or {} for feats in user_feats))) if user_feats else []
    if not names:
        return None
    return {name: [(feats or {}).get(name) for feats in user_feats] for name in names}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str]) -> int:
    parser = Parser(prog="genret decode", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--histories", required=True, type=Path, help="JSON lines file")
    parser.add_argument("--k", type=positive_int, default=500, help="items per history (at most the catalogue size)")
    parser.add_argument("--beam_width", type=positive_int, default=None,
                        help="beams per level (default, and at least: the decoded list length, k + 20 when seen "
                             "items are excluded)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="histories decoded together")
    parser.add_argument("--include_seen", action="store_true",
                        help="keep items already in the history (default: leave them out, as evaluation does)")
    parser.add_argument("--kernel", default="auto", choices=("auto", "torch", "triton"))
    parser.add_argument("--unknown", default="error", choices=("error", "drop"),
                        help="an item id missing from the catalogue: fail (default) or drop it with a warning")
    parser.add_argument("--branch_merge", default="sum", choices=("sum", "max"),
                        help="score of an item both DBR branches decode: the sum of its probabilities "
                             "(default) or the larger one")
    parser.add_argument("--short_weight", type=float, default=None,
                        help="the short DBR branch's weight in the merge, in (0, 1) (default: how often the "
                             "gate chose the short branch in training, stored in the checkpoint)")
    parser.add_argument("--index", default=None, choices=("hnsw", "ivfpq", "flat"),
                        help="RetrievalFormer: search the ANN index of this kind saved beside the checkpoint "
                             "(`genret build-index`) instead of scoring every item")
    parser.add_argument("--out", type=Path, default=None, help="output JSON lines (default: stdout)")
    args = parser.parse_args(argv)
    from genret.decoding.beam_search import check_short_weight

    try:
        check_short_weight(args.short_weight)
    except ValueError as err:
        parser.error(f"--short_weight: {err}")

    from genret.families import load_retriever
    from genret.io import atomic_path

    users, histories, sides, user_feats = read_histories(args.histories)
    if not histories:
        raise SystemExit(f"genret decode: {args.histories} holds no histories; nothing written"
                         + (f" ({args.out} left as it was)" if args.out else ""))
    if args.index is not None:
        from genret.commands.build_index import index_family_check

        index_family_check(args.checkpoint, args.index, need_file=True)
    try:
        retriever = load_retriever(args.checkpoint, kernel=args.kernel, beam_width=args.beam_width,
                                   branch_merge=args.branch_merge, short_weight=args.short_weight,
                                   **({"index": args.index} if args.index else {}))
    except (FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"genret decode: {err}") from None
    try:
        result = retriever.retrieve(histories, k=args.k, unknown=args.unknown, batch_size=args.batch_size,
                                    side=side_columns(retriever.side_features, histories, sides),
                                    exclude_seen=not args.include_seen,
                                    user_features=user_feature_columns(user_feats))
    except ValueError as err:
        raise SystemExit(f"genret decode: {err}") from None
    lines = [json.dumps({"user": u, "items": items, "scores": [round(s, 6) for s in scores]})
             for u, items, scores in zip(users, result.items, result.scores)]
    text = "\n".join(lines) + ("\n" if lines else "")
    if args.out is None:
        sys.stdout.write(text)
    else:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
        print(f"wrote {len(lines)} results to {args.out}", file=sys.stderr)
    return 0

