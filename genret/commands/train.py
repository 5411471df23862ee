"""`genret train --config configs/<name>.yaml [--trainer.max_epochs 3 ...]`: LightningCLI over DualGR.

Everything on the command line after `train` is LightningCLI's: the YAML, dotted overrides,
`--ckpt_path last` to resume. The subcommand is always `fit`.
"""

from __future__ import annotations


def build_cli(args: list[str], run: bool = True):
    import warnings

    from pytorch_lightning.cli import LightningCLI

    # We always pass args explicitly (genret's own argv is not LightningCLI's): the warning is noise.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

    from genret.training.datamodule import SequenceDataModule
    from genret.training.module import DualGRModule

    return LightningCLI(
        DualGRModule,
        SequenceDataModule,
        args=(["fit"] + args) if run else args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "genret train", "fit": {"default_env": False}},
    )


def main(argv: list[str]) -> int:
    import logging

    # genret's own progress lines (the data summary, RetrievalValidation's per-epoch HR@K) go to the console.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_cli(argv)
    return 0
