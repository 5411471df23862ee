"""`genret train [fit|validate|test] --config configs/<name>.yaml [--family NAME] [overrides]`

LightningCLI over a model family: the YAML, then dotted overrides (`--trainer.max_epochs 3`,
`--data.data /path/to/ml-1m`). The family comes from `--family` or the config's file name
(`sasrec_ml1m.yaml` -> sasrec; DualGR otherwise). The run writes into the config's
`trainer.default_root_dir` (DIR): `fit` keeps the best epoch (the config's selection metric) in
DIR/model.ckpt and rewrites DIR/checkpoints/last.ckpt after every epoch; resume with
`--ckpt_path DIR/checkpoints/last.ckpt`. `validate` / `test` score `--ckpt_path` (default
DIR/model.ckpt) on the validation / test loader.
"""

from __future__ import annotations

from pathlib import Path

from genret.commands.arguments import Parser

SUBCOMMANDS = ("fit", "validate", "test")


def main(argv: list[str]) -> int:
    import logging

    argv = list(argv)
    subcommand = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "fit"
    parser = Parser(prog=f"genret train {subcommand}", description=__doc__, add_help=False)
    parser.add_argument("--family", default=None, help="model family (default: from the config's file name)")
    parser.add_argument("--config", default=None, help="YAML recipe, e.g. configs/dualgr_ml1m.yaml")
    parser.add_argument("--ckpt_path", default=None, help="fit: resume from it; validate / test: score it")
    args, rest = parser.parse_known_args(argv)
    if args.config is None or any(a in ("-h", "--help") for a in rest):
        print(__doc__)
        if args.config is None and not rest:
            return 2
    from genret.families import family_for_config, get_family
    from genret.training.run import build, fit, why_stopped

    # genret's own progress lines (the data summary, per-epoch validation metrics) go to the console.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    family = get_family(args.family) if args.family else family_for_config(args.config or "")
    if args.config is None:  # `--help`: LightningCLI prints the family's options
        from genret.training.cli import build_cli

        build_cli(family, rest)
        return 0
    module, dm, trainer = build(family, args.config, _root_dir(args.config, rest), rest, log_to_out_dir=False)
    out = Path(trainer.default_root_dir)
    if subcommand == "fit":
        if family.name == "grank":  # model.init_from / generator given as YAMLs: train them first (out/init, ...)
            from genret.training.grank_generator import train_first
            from genret.training.run import seed_override

            train_first(module, dm, out, Path(args.config).parent, seed_override(rest))
        ckpt, seconds = fit(module, dm, trainer, out, ckpt_path=args.ckpt_path)
        if trainer.is_global_zero:
            stop = why_stopped(trainer)
            print(f"[genret] {family.name}: trained {stop['epochs']} epochs in {seconds:.0f} s (stopped by "
                  f"{stop['stopped_by']}); kept weights in {ckpt}; resume point {out / 'checkpoints' / 'last.ckpt'}")
        return 0
    ckpt = args.ckpt_path or out / "model.ckpt"
    if not Path(ckpt).is_file():
        raise SystemExit(f"genret train {subcommand}: checkpoint {ckpt} does not exist; pass --ckpt_path or run "
                         f"`genret train fit --config {args.config}` first")
    run = trainer.validate if subcommand == "validate" else trainer.test
    run(module, datamodule=dm, ckpt_path=str(ckpt))
    return 0


def _root_dir(config: str, overrides: list[str]) -> str:
    """The run's folder: `--trainer.default_root_dir` if given, else the config's, else runs/<config name>."""
    import yaml

    for i, arg in enumerate(overrides):
        if arg.startswith("--trainer.default_root_dir="):
            return arg.split("=", 1)[1]
        if arg == "--trainer.default_root_dir" and i + 1 < len(overrides):
            return overrides[i + 1]
    path = Path(config)
    if not path.is_file():
        raise SystemExit(f"genret train: config {config} does not exist")
    settings = yaml.safe_load(path.read_text()) or {}
    return (settings.get("trainer") or {}).get("default_root_dir") or f"runs/{path.stem}"
