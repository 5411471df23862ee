"""`genret quickstart`: the whole pipeline on the seeded synthetic default, in minutes on a CPU.

Fits the tokenizer, trains DualGR, evaluates it beside the popularity and TIGER-style baselines
(leave-one-out, full ranking), retrieves for a few users through `Retriever`, and writes
runs/quickstart/{metrics.json, report.md, plots, model.ckpt}.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from genret.commands.arguments import Parser
from genret.configs import config_path

# The copy installed with the package (genret.configs), so the command works from any folder.
DEFAULT_CONFIG = config_path("quickstart.yaml")


def main(argv: list[str]) -> int:
    parser = Parser(prog="genret quickstart", description=__doc__,
                    epilog="Any other arguments are LightningCLI overrides, passed on in order, "
                           "e.g. --trainer.max_epochs 1 or --trainer.max_epochs=1.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML (default: the quickstart.yaml shipped with genret)")
    parser.add_argument("--out", default="runs/quickstart", help="output folder")
    parser.add_argument("--no_baseline_training", action="store_true",
                        help="skip training the TIGER-style baseline (popularity is always evaluated)")
    # No positional for the overrides: argparse would take the value of "--trainer.max_epochs 1" as
    # a positional and put it before its flag; unknown arguments alone keep their order.
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from genret.decoding.retriever import Retriever
    from genret.eval import benchmark as runs
    from genret.eval import format_metrics_table, write_metrics, write_report
    from genret.eval.report import code_version

    code_version()  # recorded in metrics.json: the code this run starts with

    out = Path(args.out)
    # Up to K=100 here: the beam must be >= K, and K=500 would make the quickstart's evaluation
    # dominate its ten-minute budget on two CPU cores (`genret benchmark` goes to 500).
    ks = (5, 10, 20, 50, 100)
    started = time.perf_counter()
    print(f"[genret] quickstart: config {args.config} -> {out}/", flush=True)
    print("[genret] 1/3 tokenize + train DualGR", flush=True)
    main_result = runs.run_generative(args.config, out, "dualgr", overrides=overrides, ks=ks)
    dm = main_result.pop("datamodule")
    print("[genret] 2/3 baselines: popularity" + ("" if args.no_baseline_training else " and TIGER-style"), flush=True)
    baselines = {"popularity": runs.popularity_metrics(dm, ks)}
    if not args.no_baseline_training:
        tiger = runs.run_generative(args.config, out / "tiger", "tiger", overrides=overrides, ks=ks)
        tiger.pop("datamodule")
        baselines["tiger"] = {k: tiger[k] for k in ("val", "test", "train_seconds")}

    print("[genret] 3/3 retrieve with the trained model", flush=True)
    retriever = Retriever.from_checkpoint(main_result["checkpoint"])
    es = dm.split.eval_set("test")
    for i in range(min(3, len(es))):
        history = retriever.item_ids[es.history(i)].tolist()
        got = retriever.retrieve([history], k=10).items[0]
        target = retriever.item_ids[es.targets[i]]
        print(f"  user {dm.log_all.user_ids[es.users[i]]}: last 5 of history {history[-5:]} -> top-10 {got}"
              f" (held-out next item {target}: {'hit' if target in got else 'miss'})")

    metrics = write_metrics(out / "metrics.json", model="dualgr", dataset=main_result["dataset"],
                            metrics_val=main_result["val"], metrics_test=main_result["test"],
                            train_seconds=main_result["train_seconds"], device=runs.device_name(),
                            extra={"baselines": baselines, "sid_report": main_result["sid_report"],
                                   "total_seconds": time.perf_counter() - started})
    report = write_report(out, metrics, baselines={k: v for k, v in baselines.items()},
                          train_log_csv=out / "logs" / "version_0" / "metrics.csv")
    rows = {"dualgr": main_result, **baselines}
    print(format_metrics_table(rows, ks=(10, 50, 100)))
    print(f"[genret] done in {time.perf_counter() - started:.0f} s: {out / 'metrics.json'}, {report}, "
          f"{main_result['checkpoint']}")
    return 0
