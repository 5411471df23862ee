"""GRank's external generator given as a training config: `model.generator: configs/dualgr_amazon.yaml`
makes "generate with DualGR's beams (or SASRec's top-K), then rank" one command. Before GRank trains,
the generator's YAML is trained on the same data set into DIR/generator (any family's config;
`genret train` would train it the same way), and GRank continues with that checkpoint as its
generator, exactly as with `model.generator: <checkpoint>`.

A finished generator run is reused when its config text and data set are the same (a GRank run
that stopped later need not train its generator again); anything else trains it anew.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from genret.io import atomic_path

log = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml")
RECORD = "generator_run.json"


def is_generator_config(generator: str | None) -> bool:
    return generator is not None and Path(str(generator)).suffix in CONFIG_SUFFIXES


def resolve_config(generator: str, config_dir: Path | None = None) -> Path:
    """The generator's YAML: as given (relative to the working directory), else beside GRank's own config."""
    path = Path(generator)
    if path.is_file():
        return path
    if config_dir is not None and (Path(config_dir) / path.name).is_file():
        return Path(config_dir) / path.name
    raise FileNotFoundError(f"model.generator {generator} names a config that does not exist (looked in the working "
                            f"directory{' and ' + str(config_dir) if config_dir else ''}); give a training YAML "
                            "(e.g. configs/dualgr_amazon.yaml), a trained checkpoint, or 'grank'")


def train_generator(module, dm, out_dir: str | Path, config_dir: Path | None = None) -> str | None:
    """When `module.generator` is a YAML: train it on `dm`'s data set into out_dir/generator (or reuse
    a finished run of the same config and data there), point `module.generator` at its checkpoint
    and return that path; otherwise do nothing and return None."""
    if not is_generator_config(module.generator):
        return None
    from genret.families import family_for_config
    from genret.training.run import build, fit

    config = resolve_config(module.generator, config_dir)
    out = Path(out_dir) / "generator"
    signature = {"config": config.name, "config_text": config.read_text(), "data": str(dm.data)}
    record, ckpt = out / RECORD, out / "model.ckpt"
    if record.is_file() and ckpt.is_file() and json.loads(record.read_text()) == signature:
        log.info("generator: reusing %s (trained from %s on %s)", ckpt, config, dm.data)
    else:
        family = family_for_config(config)
        if family.name == "grank":
            raise ValueError(f"model.generator {config} is a GRank config; a generator is another family's model "
                             "(DualGR, SASRec, KuaiFormer): use 'grank' for GRank's own generator")
        log.info("generator: training %s (%s) on %s into %s", config, family.name, dm.data, out)
        record.unlink(missing_ok=True)  # a stale record must not vouch for a half-trained run
        g_module, g_dm, g_trainer = build(family, config, out, data=str(dm.data))
        ckpt, seconds = fit(g_module, g_dm, g_trainer, out)
        with atomic_path(out / RECORD) as tmp:
            Path(tmp).write_text(json.dumps(signature))
        log.info("generator: trained in %.0f s; %s", seconds, ckpt)
    module.generator = str(Path(ckpt).resolve())  # absolute: the GRank checkpoint serves from it anywhere
    return module.generator
