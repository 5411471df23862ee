"""The content-only baseline under the leave-one-out-cold protocol, without training anything.

    GENRET_DATA_DIR=/work/shared/data python benchmarks/looc_content_baseline.py ml-1m
    GENRET_DATA_DIR=/work/shared/data python benchmarks/looc_content_baseline.py amazon-beauty

Prints the LOOC split's sizes and the content baseline's cold / warm metrics as JSON (the same
numbers `genret benchmark --model retrievalformer --protocol looc` writes under baselines.content).
"""

import json
import sys
import time

from genret.eval.retrievalformer_benchmark import looc_blocks
from genret.training.retrievalformer_datamodule import RetrievalFormerDataModule


def main(data: str, seed_users: int = 500) -> None:
    start = time.time()
    kwargs = {"load_kwargs": {"low_ratings_as_negatives": False}} if data.rstrip("/").endswith("ml-1m") else {}
    dm = RetrievalFormerDataModule(data=data, protocol="looc", cold_seed_users=seed_users, **kwargs)
    dm.setup()
    out = looc_blocks(dm, (5, 10, 20, 50, 100))
    out["seconds"] = time.time() - start
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
