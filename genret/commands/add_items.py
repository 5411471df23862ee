"""`genret add-items --checkpoint CKPT --items new.jsonl --out DIR`: add items to a trained DualGR's
catalogue without retraining, and write the result as an export directory that `genret serve`
loads (a running server switches to it with POST /reload {"checkpoint": "DIR"}).

Each line of --items is one item, in one of three forms:

    {"id": 4001, "features": {"title": "Heat (1995)", "genres": ["Action", "Crime"]}}
    {"id": 4002, "vector": [0.12, -0.03, ...]}     # in the space the catalogue's SIDs were made from
    {"id": 4003, "sid": [12, 40, 7]}

"features" needs a model whose SIDs came from item content (data.sid.embeddings: content); the
checkpoint's fitted vocabularies, IDF and SVD basis place the item and its tokenizer gives the SID,
by the rule the model was trained with (data.cold_sids). A model that ranks with the content term
(model.config.content_weight > 0) needs every new item's "features" too: give them alone, or beside
"vector" / "sid" (which then set the SID). Items are added in file order (an item on a
SID that is already taken is listed after the items there). The model must have been trained
without item-id embeddings (model.use_item_id: false): a new item has no trained id row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from genret.commands.arguments import Parser

FORMS = {"features": "features", "vector": "vectors", "sid": "codes"}


def read_items(path: Path) -> list[tuple[str, bool, list]]:
    """The file's items as runs of one form, in order: [(add_items keyword, with features,
    [(id, value, features or None), ...]), ...].

    Raises:
        ValueError: a line that is not a JSON object with "id" and one form ("features" may come
            beside "vector" or "sid").
    """
    runs: list[tuple[str, bool, list]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from None
            forms = [k for k in FORMS if isinstance(item, dict) and k in item]
            sid_forms = [k for k in forms if k != "features"]
            if (not isinstance(item, dict) or "id" not in item or not forms or len(sid_forms) > 1
                    or set(item) != {"id", *forms}):
                raise ValueError(f'{path}:{number}: expected {{"id": ..., and one of "features", "vector", "sid"}} '
                                 f'("features" may come beside "vector" or "sid"), got {line.strip()[:120]}')
            form = sid_forms[0] if sid_forms else "features"
            keyword, described = FORMS[form], bool(sid_forms) and "features" in item
            if not runs or runs[-1][:2] != (keyword, described):
                runs.append((keyword, described, []))
            runs[-1][2].append((item["id"], item[form], item["features"] if described else None))
    if not runs:
        raise ValueError(f"{path} holds no items")
    return runs


def main(argv: list[str]) -> int:
    parser = Parser(prog="genret add-items", description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a DualGR .ckpt or a genret export directory")
    parser.add_argument("--items", required=True, type=Path, help="JSON lines, one new item each (see above)")
    parser.add_argument("--out", required=True, type=Path,
                        help="export directory to write (an earlier export there, --checkpoint's included, is "
                             "replaced once the new one is complete)")
    args = parser.parse_args(argv)
    import numpy as np

    from genret.decoding.retriever import Retriever

    try:
        runs = read_items(args.items)
        retriever = Retriever.from_checkpoint(args.checkpoint, device="cpu")
        before = {tuple(c) for c in retriever.model.item_codes.tolist()}
        added = shared = 0
        for keyword, described, items in runs:
            ids = [i for i, _, _ in items]
            value = [v for _, v, _ in items]
            if keyword != "features":
                value = np.asarray(value, dtype=np.int64 if keyword == "codes" else np.float32)
            features = {"features": [f for _, _, f in items]} if described else {}
            codes = retriever.add_items(ids, **{keyword: value}, **features)
            shared += sum(tuple(c) in before for c in codes.tolist())
            before.update(tuple(c) for c in codes.tolist())
            added += len(ids)
        out = retriever.export(args.out)
    except (FileNotFoundError, FileExistsError, RuntimeError, ValueError) as err:
        hint = ("; genret add-items grows DualGR catalogues (a RetrievalFormer takes new items through its "
                "retriever's add_items, in Python)") if "not a 'dualgr' one" in str(err) else ""
        raise SystemExit(f"genret add-items: {err}{hint}") from None
    print(f"added {added} items ({shared} on a SID an item already had); the catalogue holds "
          f"{len(retriever.item_ids)}; wrote {out}/", file=sys.stderr)
    return 0
