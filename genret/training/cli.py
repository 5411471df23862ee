"""The one LightningCLI builder: a family's LightningModule and DataModule from a YAML plus overrides."""

from __future__ import annotations

import warnings


def build_cli(family, args: list[str], prog: str = "genret train"):
    """Parse `args` (`--config X.yaml`, dotted overrides) into a LightningCLI for `family` without
    running it: `cli.model`, `cli.datamodule` and `cli.trainer` are instantiated.

    Args:
        family: a `genret.families.Family` or its name; its `model_overrides` (e.g. TIGER-style's
            switches) are applied before `args`, so the command line can still change them.
        args: LightningCLI arguments.
    """
    from pytorch_lightning.cli import LightningCLI

    from genret.families import get_family

    family = get_family(family) if isinstance(family, str) else family
    # We always pass args explicitly (genret's own argv is not LightningCLI's): the warning is noise.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    preset = []
    for key, value in family.model_overrides.items():
        preset += [f"--model.config.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    config_args, rest = _split_config(list(args))
    return LightningCLI(
        family.module_class(), family.datamodule_class(), args=config_args + preset + rest, run=False,
        save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": prog, "default_env": False},
    )


def _split_config(args: list[str]) -> tuple[list[str], list[str]]:
    """`--config` arguments first: the family's presets then override the YAML, and the rest override both."""
    config, rest, i = [], [], 0
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            config += args[i:i + 2]
            i += 2
        elif args[i].startswith("--config="):
            config.append(args[i])
            i += 1
        else:
            rest.append(args[i])
            i += 1
    return config, rest
