"""`genret benchmark --model dualgr --data PATH --config configs/<name>.yaml --out DIR`

Fits the tokenizer (cached), trains, evaluates leave-one-out with full ranking on valid and test,
and writes DIR/metrics.json and DIR/report.md (plots beside it). Models: the registered families
(genret.families): dualgr, tiger (DualGR with DBR, S2D and ENTP off), the embedding retrievers
kuaiformer and sasrec (exact top-K over all items), and popularity. `--ablations` trains every
Table-2 variant (w/o DBR, w/o S2D, w/o ENTP) under the same split and prints the paper's Table 2
layout. `--sid_embeddings_from CONFIG` first trains that KuaiFormer / SASRec YAML on the same data
and builds the generative model's SIDs from its item vectors; its time counts in the total.
`--checkpoint CKPT` evaluates a trained DualGR instead of training one (e.g. to re-score a run with
another `--branch_merge` or `--ks`), likewise a RetrievalFormer, or a GRank whose ranker then
re-ranks the candidates of the generator `--model.generator` names. Under several processes
(Lightning DDP, or `torchrun`) the evaluation is shared across them and rank 0 writes the results.

`--seeds N` trains every run (each ablation variant) with N seeds, seed_everything = S..S+N-1 where
S is the config's seed (or `--seeds 0,5,9` for a list, `--seeds 5,` for seed 5 alone); the split and the SIDs are the same for every
seed, only the weights' initialisation, batch order and dropout change. metrics.json then holds,
per variant, the mean and sd over seeds of the validation and test metrics and the paired per-user
difference to DualGR with a 95% interval (genret.eval.ablations), under "ablations"; the top-level
"val" / "test" are the means. `--seeds 1` (the default) writes what it always did plus that summary.
Under `--protocol looc` (DualGR / TIGER-style) the cold and warm users' blocks are the means over
the seeds and "vs_content" is the cold users' paired difference to the content-only baseline over
the seeds, with every seed's numbers under "looc_seeds" (genret.eval.looc_seeds).

`--resume` reads back every run already finished in DIR with the same settings (its
run_result.json) and trains only the others: a long `--ablations --seeds 3` job can be stopped and
started again, or extended by seeds (`--seeds 0,1,2` after `--seeds 0,1`); a run stopped during
training continues from its last finished epoch (DIR/.../checkpoints/last.ckpt), not from scratch.

`--sweep KEY=V1,V2,...` (e.g. `model.config.short_window=4,16,64`, the paper's Fig. 2) trains the
model (DualGR, TIGER-style or RetrievalFormer) once per value (and seed) and reports validation
only: a setting is chosen on validation, and test is read once, by the recipe that comes out of
it. Under `--protocol looc` with `data.cold_valid_users` the validation cold users are reported
too ("cold_val"), so a cold-start setting is chosen without reading the cold test users. With
`--checkpoint` a sweep of a data.* setting that acts at evaluation (e.g.
`data.cold_sids=shared,paths`), or of a model key that acts at ranking only (RetrievalFormer's
`model.config.content_weight`), evaluates that one trained model once per value instead of
training again.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from genret.commands.arguments import Parser
from genret.families import FAMILIES

if TYPE_CHECKING:  # annotations only: the CLI imports numpy where it needs it
    import numpy as np

# Model keys that change how a trained model ranks, not what it learned: sweepable with --checkpoint.
RANKING_TIME_MODEL_KEYS = {"retrievalformer": ("model.config.content_weight",),
                           "dualgr": ("model.config.content_weight", "model.config.content_prefix_weight",
                                      "model.config.content_prefix_depth")}


def main(argv: list[str]) -> int:
    parser = Parser(prog="genret benchmark", description=__doc__)
    parser.add_argument("--model", default="dualgr", choices=tuple(FAMILIES))
    parser.add_argument("--data", required=True, help="data folder (ml-1m, P5 Amazon, KuaiRand), table, or synthetic")
    parser.add_argument("--config", required=True, help="YAML, e.g. configs/dualgr_ml1m.yaml")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--ablations", action="store_true", help="also train w/o DBR, w/o S2D, w/o ENTP, TIGER")
    parser.add_argument("--seeds", default="1",
                        help="N: train every run with seeds S..S+N-1 (S = the config's seed_everything), or a "
                             "comma list of seeds ('1,2'; '2,' is seed 2 alone); reports mean, sd and paired "
                             "intervals over them")
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...", default=None,
                        help="train once per value of one config key (e.g. model.config.short_window=4,16,64) "
                             "and report validation metrics only; one value: a validation-only run of that setting")
    parser.add_argument("--resume", action="store_true",
                        help="reuse every DualGR / TIGER run (variant, seed, sweep value) whose folder holds a "
                             "finished run_result.json with the same settings, continue runs stopped during "
                             "training from their last epoch, and train only the rest")
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--max_eval_users", type=int, default=None, help="evaluate on the first N users only")
    parser.add_argument("--kernel", default="auto", choices=("auto", "torch", "triton"))
    parser.add_argument("--branch_merge", default="sum", choices=("sum", "max"),
                        help="score of an item both DBR branches decode: sum of its probabilities, or the larger")
    parser.add_argument("--short_weight", type=float, default=None,
                        help="the short DBR branch's weight in the merge, in (0, 1) (default: the one the model "
                             "recorded in training, how often its gate chose the short branch)")
    parser.add_argument("--ks", default="5,10,20,50,100,500",
                        help="cut-offs; the beam is max(K) + a margin, so a smaller max(K) decodes faster")
    parser.add_argument("--sid_embeddings_from", metavar="CONFIG", default=None,
                        help="a KuaiFormer / SASRec YAML: train it first and build the SIDs from its item vectors")
    parser.add_argument("--sid_embeddings_epochs", type=int, default=None,
                        help="max_epochs for that model (default: its YAML's)")
    parser.add_argument("--protocol", default="loo", choices=("loo", "looc"),
                        help="loo: leave-one-out; looc: leave-one-out-cold (cold items and all their rows leave "
                             "training; metrics.json gains 'cold' and 'warm' blocks and the content baseline). "
                             "Families that cannot score cold items say so instead of training")
    parser.add_argument("--checkpoint", default=None,
                        help="evaluate this trained DualGR / RetrievalFormer / GRank checkpoint instead of training "
                             "(same split and protocol; GRank: its ranker over the generator --model.generator names)")
    args, overrides = parser.parse_known_args(argv)
    from genret.data.interactions import DataError
    from genret.data.loaders import check_data_argument
    from genret.decoding.beam_search import check_short_weight

    try:
        check_data_argument(args.data)
    except DataError as err:
        parser.error(f"--data: {err}")

    try:
        check_short_weight(args.short_weight)
    except ValueError as err:
        parser.error(f"--short_weight: {err}")
    if args.checkpoint is not None:
        evaluable = ("dualgr", "tiger", "retrievalformer", "grank")
        if args.model not in evaluable or args.ablations or args.sid_embeddings_from:
            parser.error("--checkpoint evaluates one trained DualGR, TIGER-style, RetrievalFormer or GRank model: "
                         "drop --ablations and --sid_embeddings_from, and use one of those --model values")
        if not Path(args.checkpoint).is_file():
            parser.error(f"--checkpoint {args.checkpoint} is not a file")
    try:
        seeds = seed_list(args.seeds, args.config, overrides)
        pass_seeds = seed_arguments(seeds, args.config, overrides)
    except ValueError as err:
        parser.error(f"--seeds: {err}")
    if args.checkpoint is None:
        print(f"[genret] training with seed(s) {seeds}", file=sys.stderr)
    sweepable = ("dualgr", "tiger", "retrievalformer")
    if len(seeds) > 1 and (args.checkpoint or args.model not in ("dualgr", "tiger")) and not (
            args.sweep is not None and args.model in sweepable):
        parser.error("--seeds trains DualGR / TIGER-style runs (or the runs of a --sweep) once per seed: use "
                     "--model dualgr or tiger, or --sweep, without --checkpoint")
    if args.resume and args.model not in ("dualgr", "tiger"):
        parser.error(f"--resume reuses DualGR / TIGER-style runs; --model {args.model} runs are trained again "
                     "each time: drop --resume")
    sweep = None
    if args.sweep is not None:
        if args.ablations or args.model not in sweepable:
            parser.error("--sweep trains one DualGR / TIGER-style / RetrievalFormer model per value: use --model "
                         "dualgr, tiger or retrievalformer, without --ablations")
        try:
            sweep = parse_sweep(args.sweep)
        except ValueError as err:
            parser.error(f"--sweep: {err}")
        ranking_keys = RANKING_TIME_MODEL_KEYS.get(args.model, ())
        if args.checkpoint and not (sweep[0].startswith("data.") or sweep[0] in ranking_keys):
            # A checkpoint fixes the model and its training; only what the data module does at
            # evaluation (e.g. data.cold_sids) or a model key that acts at ranking only can differ.
            parser.error(f"--sweep {sweep[0]} with --checkpoint: a trained model's model / trainer settings are "
                         "fixed; with --checkpoint sweep a data.* setting that acts at evaluation (e.g. "
                         f"data.cold_sids){' or ' + ', '.join(ranking_keys) if ranking_keys else ''}, or drop "
                         "--checkpoint to train once per value")
        if args.checkpoint and len(seeds) > 1:
            parser.error("--sweep with --checkpoint evaluates one trained model: drop --seeds")
    if args.sid_embeddings_from is not None:
        if args.model not in ("dualgr", "tiger"):
            parser.error(f"--sid_embeddings_from builds SIDs, which --model {args.model} does not use")
        if not Path(args.sid_embeddings_from).is_file():
            parser.error(f"--sid_embeddings_from {args.sid_embeddings_from} is not a file; pass a KuaiFormer / "
                         "SASRec YAML such as configs/sasrec_ml1m.yaml")
        if any(arg.split("=")[0] == "--data.sid.embeddings" for arg in overrides):
            parser.error("--sid_embeddings_from and --data.sid.embeddings both choose the SID embeddings; pass one")
    elif args.sid_embeddings_epochs is not None:
        parser.error("--sid_embeddings_epochs needs --sid_embeddings_from")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from genret.eval import benchmark as runs
    from genret.eval import format_ablation_table, format_metrics_table, write_metrics, write_report
    from genret.eval.ablations import format_ablation_summary, format_group_summary, summarize_ablations
    from genret.eval.distributed import init_from_env, is_main_process
    from genret.eval.looc_seeds import format_looc_seeds, summarize_looc_seeds
    from genret.eval.report import code_version
    from genret.families import get_family, load_class

    init_from_env()  # a torchrun launch: join its process group before anything is evaluated
    family = get_family(args.model)

    code_version()  # recorded in metrics.json: the code this run starts with

    out = Path(args.out)
    try:
        ks = tuple(sorted({int(k) for k in args.ks.split(",")}))
    except ValueError:
        parser.error(f"--ks must be comma-separated integers, got {args.ks!r}")
    started = time.perf_counter()
    if args.protocol == "looc":
        if not family.scores_cold_items:
            return _cannot_score_cold(args, out, ks)
        if family.kind == "generative" and args.ablations:
            parser.error("--protocol looc writes the cold / warm blocks of one model: drop --ablations")
        overrides = [*overrides, "--data.protocol", "looc"]
    if sweep is not None and family.kind != "generative":  # RetrievalFormer: no SID stage to build first
        return _run_sweep(args, sweep, seeds, pass_seeds, overrides, ks, out, started)
    if family.kind != "generative":
        # Every other family runs through the benchmark function its registry entry names.
        run_kwargs = {"checkpoint": args.checkpoint} if args.checkpoint else {}
        res = load_class(family.benchmark)(args.model, args.config, out, data=args.data, overrides=overrides, ks=ks,
                                           **run_kwargs)
        dm = res.pop("datamodule")
        baselines = {} if args.model == "popularity" else {"popularity": runs.popularity_metrics(dm, ks)}
        # Rows the run adds itself (GRank: its generator alone; RetrievalFormer: the content baseline).
        baselines.update(res.pop("baselines", {}))
        baselines.update(res.get("extra", {}).pop("baselines", {}))
        if is_main_process():
            metrics = write_metrics(out / "metrics.json", model=args.model, dataset=res["dataset"],
                                    metrics_val=res["val"], metrics_test=res["test"],
                                    train_seconds=res["train_seconds"], device=runs.device_name(),
                                    extra={"baselines": baselines, "total_seconds": time.perf_counter() - started,
                                           **res.get("extra", {})})
            report = write_report(out, metrics, train_log_csv=_latest_metrics_csv(out))
            print(format_metrics_table({args.model: res, **baselines}))
            print(f"[genret] wrote {out / 'metrics.json'} and {report} in {time.perf_counter() - started:.0f} s")
        return 0

    sid_stage = None
    if args.sid_embeddings_from:
        sid_stage = _train_sid_embedding_model(args, out / "sid_embeddings", ks)
        overrides = [*overrides, "--data.sid.embeddings", sid_stage["checkpoint"]]

    if sweep is not None:
        return _run_sweep(args, sweep, seeds, pass_seeds, overrides, ks, out, started)

    variants = [args.model] if not args.ablations else ["dualgr", "w/o DBR", "w/o S2D", "w/o ENTP", "tiger"]
    runs_by_seed: dict[int, dict] = {}
    for seed in seeds:
        # One seed keeps today's layout (and the config's own seed); several get a folder each.
        seed_out = out if len(seeds) == 1 else out / f"seed_{seed}"
        results = {}
        for variant in variants:
            if variant == "w/o ENTP" and "dualgr" in results and not results["dualgr"]["has_negatives"]:
                # Without exposure negatives ENTP is NTP: the variant would retrain the same model.
                print("[genret] w/o ENTP: this data has no exposure negatives, so ENTP reduces to NTP; "
                      "reporting the DualGR run for it instead of training the same model twice")
                results[variant] = dict(results["dualgr"], note="identical to dualgr: no exposure negatives")
                continue
            sub = seed_out if variant == args.model else seed_out / variant.replace("/", "").replace(" ", "_")
            res = runs.run_generative(args.config, sub, variant, data=args.data, overrides=overrides, ks=ks,
                                       eval_batch_size=args.eval_batch_size, max_eval_users=args.max_eval_users,
                                       kernel=args.kernel, branch_merge=args.branch_merge, checkpoint=args.checkpoint,
                                       short_weight=args.short_weight, seed=pass_seeds[seed],
                                       resume=args.resume)
            dm = res.pop("datamodule")
            res["has_negatives"] = bool((dm.train_log.label == 0).any()) and dm.max_negatives > 0
            results[variant] = res
        runs_by_seed[seed] = results
    groups = _negative_user_groups(dm, args.max_eval_users) if any(
        r.get("has_negatives") for results in runs_by_seed.values() for r in results.values()) else None
    summary = summarize_ablations(runs_by_seed, reference=args.model, groups=groups)
    if len(seeds) == 1:
        results = runs_by_seed[seeds[0]]
        main_res = results[args.model]
        variant_metrics = {name: r for name, r in results.items()}
    else:
        # Several seeds: the headline numbers and every row are means over the seeds.
        variant_metrics = {name: {"val": v["val"]["mean"] | {"n_users": v["val"]["n_users"]},
                                  "test": v["test"]["mean"] | {"n_users": v["test"]["n_users"]},
                                  "train_seconds": float(sum(v["train_seconds"]))} | (
                                      {"note": v["note"]} if "note" in v else {})
                           for name, v in summary["variants"].items()}
        last = runs_by_seed[seeds[-1]][args.model]
        main_res = dict(last, **variant_metrics[args.model])
    baselines = {"popularity": runs.popularity_metrics(dm, ks, max_users=args.max_eval_users)}
    baselines.update({name: {k: r[k] for k in ("val", "test", "train_seconds", "note") if k in r}
                      for name, r in variant_metrics.items() if name != args.model})
    baselines.update(main_res.get("baselines", {}))  # --protocol looc: the content baseline
    looc_extra, looc_summary = {}, None
    if args.protocol == "looc" and len(seeds) > 1:
        # The cold / warm blocks and the paired difference to the content baseline over the seeds.
        looc_summary = summarize_looc_seeds({seed: runs_by_seed[seed][args.model] for seed in seeds})
        looc_extra = {block: looc_summary[block]["mean"] | {"n_users": looc_summary[block]["n_users"]}
                      for block in ("cold", "warm", "cold_val") if block in looc_summary}
        looc_extra.update(vs_content=looc_summary["vs_content"], looc_seeds=looc_summary)
        baselines["content"] = looc_summary["content"]
    if not is_main_process():
        return 0
    metrics = write_metrics(out / "metrics.json", model=args.model, dataset=main_res["dataset"],
                            metrics_val=main_res["val"], metrics_test=main_res["test"],
                            train_seconds=main_res["train_seconds"], device=runs.device_name(),
                            extra={"baselines": baselines, "sid_report": main_res["sid_report"],
                                   "total_seconds": time.perf_counter() - started,
                                   "eval_users": args.max_eval_users or "all", "branch_merge": args.branch_merge,
                                   "seeds": seeds,
                                   ("ablations" if args.ablations else "seed_summary"): summary,
                                   **({"short_weight": main_res["short_weight"]} if "short_weight" in main_res else {}),
                                   **({"sid_embeddings": sid_stage} if sid_stage else {}),
                                   **({"evaluated_checkpoint": str(args.checkpoint)} if args.checkpoint else {}),
                                   **({"training": main_res["training"]} if len(seeds) == 1 and "training" in main_res
                                      else {}),
                                   **main_res.get("extra", {}),  # --protocol looc: cold / warm blocks
                                   **looc_extra})  # ... and over several seeds, their means
    sections = [("Table 2 over seeds" if args.ablations else "Seeds", format_ablation_summary(summary))]
    if looc_summary is not None:
        sections.append(("Cold start over seeds", format_looc_seeds(looc_summary)))
    if groups:
        sections.append(("On the users whose history holds exposure negatives", format_group_summary(summary)))
    report = write_report(out, metrics, train_log_csv=_latest_metrics_csv(out), sections=sections)
    print(format_metrics_table({args.model: main_res, **baselines}))
    print(_sid_line(main_res["sid_report"]))
    if args.ablations and len(seeds) == 1:
        results = runs_by_seed[seeds[0]]
        print(format_ablation_table({name: r for name, r in results.items()},
                                    ranks={name: r["test_ranks"] for name, r in results.items()}))
    if len(seeds) > 1:
        print(format_ablation_summary(summary))
    if looc_summary is not None:
        print(format_looc_seeds(looc_summary))
    if groups:
        print(format_group_summary(summary))
    print(f"[genret] wrote {out / 'metrics.json'} and {report} in {time.perf_counter() - started:.0f} s")
    return 0


def seed_list(spec: str, config: str | Path, overrides: list[str]) -> list[int]:
    """`--seeds`: "N" -> S..S+N-1 with S the seed the run would use anyway (a `--seed_everything`
    override, else the YAML's seed_everything, else 0); "a,b,c" -> those seeds.

    Raises:
        ValueError: not a positive count or a list of integers, repeated seeds, or several seeds
            together with a `--seed_everything` override (which would overrule each of them).
    """
    import yaml

    from genret.training.run import seed_override

    text = str(spec).strip()
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
            if len(set(seeds)) != len(seeds) or not seeds:
                raise ValueError
            explicit = True
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            explicit = False
    except ValueError:
        raise ValueError(f"expected a count >= 1 or a comma list of distinct integer seeds, got {spec!r}") from None
    fixed = [a for a in overrides if a.split("=")[0] == "--seed_everything"]
    if fixed and (explicit or count > 1):
        raise ValueError("several seeds and a --seed_everything override: drop the override (--seeds sets the seed)")
    if explicit:
        return seeds
    base = 0
    if fixed:
        base = seed_override(overrides) or 0
    elif Path(config).is_file():
        seed = (yaml.safe_load(Path(config).read_text()) or {}).get("seed_everything", 0)
        base = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    return list(range(base, base + count))


def seed_arguments(seeds: list[int], config: str | Path, overrides: list[str]) -> dict[int, int | None]:
    """Per seed of `seed_list`, the seed to pass a run: None when there is one seed and it is the
    one the run uses anyway (its config's, or a --seed_everything override: records and folders
    then stay as without --seeds), else the seed itself (`--seeds 5,` trains seed 5, not the config's)."""
    own = seed_list("1", config, overrides)[0]
    return {seed: None if seeds == [own] else seed for seed in seeds}


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """`--sweep KEY=V1,V2,...` -> (KEY, [V1, V2, ...]); KEY is a LightningCLI config key such as
    model.config.short_window (a leading -- is accepted). One value is a validation-only run of
    that setting, to be set beside a run of the config as it is that exists already.

    Raises:
        ValueError: no "=", an empty key, no value, or repeated values.
    """
    key, sep, values = str(spec).partition("=")
    key = key.strip().lstrip("-")
    parts = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or "." not in key:
        raise ValueError(f"expected KEY=V1,V2,... with a dotted config key (model.config.short_window=4,16,64), "
                         f"got {spec!r}")
    if not parts or len(set(parts)) != len(parts):
        raise ValueError(f"give one or more distinct values, got {parts or values!r}")
    return key, parts


def _run_sweep(args, sweep: tuple[str, list[str]], seeds: list[int], pass_seeds: dict[int, int | None],
               overrides: list[str], ks, out: Path, started: float) -> int:
    """Train `args.model` once per (value, seed); validation only; writes metrics.json ("sweep") and report.md."""
    from genret.eval import benchmark as runs
    from genret.eval.ablations import summarize_ablations
    from genret.eval.distributed import is_main_process
    from genret.eval.report import code_version, format_sweep_table
    from genret.io import write_json, write_text

    key, values = sweep
    runs_by_seed: dict[int, dict] = {}
    for seed in seeds:
        runs_by_seed[seed] = {}
        for value in values:
            sub = out / f"{key.rsplit('.', 1)[-1]}_{value}"
            sub = sub if len(seeds) == 1 else sub / f"seed_{seed}"
            seed_arg = pass_seeds[seed]
            if args.model == "retrievalformer":
                from genret.eval.retrievalformer_benchmark import run_retrievalformer

                res = run_retrievalformer(args.model, args.config, sub, data=args.data,
                                          overrides=[*overrides, f"--{key}", value], ks=ks, seed=seed_arg,
                                          stages=("valid",), checkpoint=args.checkpoint)
            else:
                res = runs.run_generative(args.config, sub, args.model, data=args.data,
                                           overrides=[*overrides, f"--{key}", value], ks=ks,
                                           eval_batch_size=args.eval_batch_size, max_eval_users=args.max_eval_users,
                                           kernel=args.kernel, branch_merge=args.branch_merge,
                                           short_weight=args.short_weight, seed=seed_arg,
                                           stages=("valid",), resume=args.resume, checkpoint=args.checkpoint)
            dm = res.pop("datamodule")
            runs_by_seed[seed][value] = res
    summary = summarize_ablations(runs_by_seed, reference=values[0])
    rows = {value: {"val": v["val"], "paired_val": v.get("paired_val"), "train_seconds": v["train_seconds"]}
            for value, v in summary["variants"].items()}
    for value, v in summary["variants"].items():
        if "cold_val" in v:  # --protocol looc with data.cold_valid_users: cold-start choices are made on these
            rows[value].update(cold_val=v["cold_val"], paired_cold_val=v.get("paired_cold_val"))
    if not is_main_process():
        return 0
    # The content baseline ranks the same cold validation users in every run: the first run's is the one.
    first = runs_by_seed[seeds[0]][values[0]]
    content = {**first.get("baselines", {}), **first.get("extra", {}).get("baselines", {})}.get("content", {})
    record = {"model": args.model, "dataset": dm.log_all.name, "commit": code_version(), "device": runs.device_name(),
              "sweep": {"key": key, "values": values, "seeds": seeds, "reference": values[0],
                        "paired_method": summary["paired_method"], "results": rows,
                        **({"content_cold_val": content["cold_val"]} if "cold_val" in content else {})},
              "eval_users": args.max_eval_users or "all", "stages": ["valid"],
              "total_seconds": time.perf_counter() - started}
    write_json(out / "metrics.json", record)
    table = format_sweep_table(record["sweep"])
    write_text(out / "report.md", "\n".join([f"# {args.model} on {dm.log_all.name}: sweep of {key}", "",
                                             "Validation only: test is not read by a sweep.", "", table, ""]))
    print(table)
    print(f"[genret] wrote {out / 'metrics.json'} and {out / 'report.md'} in {time.perf_counter() - started:.0f} s")
    return 0


def _negative_user_groups(dm, max_users: int | None) -> dict[str, dict[str, "np.ndarray"]]:
    """The evaluated users whose history holds at least one exposure negative (the users ENTP can act
    on), per stage, in the order the runs ranked them."""
    import numpy as np

    masks = {}
    for stage, key in (("valid", "val"), ("test", "test")):
        es = dm.eval_sets[stage]  # the users the runs ranked (under --protocol looc, "test" = the warm users)
        m = len(es) if max_users is None else min(len(es), max_users)
        masks[key] = (np.diff(es.history_negatives_offsets) > 0)[:m]
    return {"users with negatives": masks}


def _sid_line(report: dict) -> str:
    overall = report.get("overall", {})
    return (f"[genret] SIDs: unique-path fraction {overall.get('unique_path_fraction', float('nan')):.4f}, "
            f"{overall.get('n_sids', '?')} SIDs for {report.get('n_items', '?')} items, largest collision "
            f"{overall.get('largest_collision', '?')}")


def _cannot_score_cold(args, out: Path, ks) -> int:
    """Under --protocol looc, an ID-only family reports that it cannot score cold items (no training)."""
    from genret.eval import write_metrics
    from genret.eval.benchmark import device_name

    reason = (f"{args.model} scores items by item-id embeddings (ID softmax); a cold item has no trained row, "
              "so it cannot score cold items")
    unsupported = {"supported": False, "reason": reason}
    write_metrics(out / "metrics.json", model=args.model, dataset=str(args.data), metrics_val={}, metrics_test={},
                  train_seconds=0.0, device=device_name(),
                  extra={"protocol": "looc", "cold": unsupported, "warm": unsupported})
    print(f"[genret] --protocol looc: {reason}. Wrote {out / 'metrics.json'}")
    return 0


def _train_sid_embedding_model(args, out: Path, ks) -> dict:
    """Train the embedding model that supplies the SIDs' item vectors; returns what metrics.json keeps of it."""
    from genret.eval.benchmark import run_embedding
    from genret.families import family_for_config

    config = Path(args.sid_embeddings_from)
    overrides = [] if args.sid_embeddings_epochs is None else ["--trainer.max_epochs", str(args.sid_embeddings_epochs)]
    print(f"[genret] training {config} for the SID item vectors (its time counts in the total)")
    res = run_embedding(family_for_config(config).name, str(config), out, data=args.data, overrides=overrides, ks=ks)
    return {"config": str(config), "checkpoint": res["checkpoint"], "train_seconds": res["train_seconds"],
            "max_epochs_override": args.sid_embeddings_epochs, "test": res["test"]}


def _latest_metrics_csv(out: Path) -> Path | None:
    """The newest Lightning CSVLogger file under out/logs (a rerun writes a new version folder)."""
    found = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
