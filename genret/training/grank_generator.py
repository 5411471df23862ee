"""The models a GRank run starts from, given as training configs and trained first on the same data:

* `model.generator: configs/dualgr_amazon.yaml` makes "generate with DualGR's beams (or SASRec's
  top-K), then rank" one command: the generator's YAML (any other family's config; `genret train`
  would train it the same way) is trained into DIR/generator, and GRank continues with that
  checkpoint as its generator, exactly as with `model.generator: <checkpoint>`.
* `model.scorer: configs/dualgr_amazon.yaml` likewise trains the DualGR that scores GRank's own
  candidates into DIR/scorer.
* `model.init_from: configs/grank_amazon_generator.yaml` makes "train GRank's generator to
  convergence, then the ranker on it" one command: that GRank YAML is trained into DIR/init, and
  this run starts from its weights, exactly as with `model.init_from: <checkpoint>` (with
  `freeze_generator` only the ranker then trains).

A `--seed_everything S` given to the GRank run is given to these stages too (seed S of each
model, as a multi-seed comparison wants); without one they use their YAML's seed. A finished run is
reused when its config text, data set and seed are the same (a GRank run that stopped later need
not train its first stages again); anything else trains it anew.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from genret.io import atomic_path

log = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml")
RECORD = "generator_run.json"


def is_training_config(value: str | None) -> bool:
    """Whether a model.generator / model.init_from value names a training YAML (not a checkpoint)."""
    return value is not None and Path(str(value)).suffix in CONFIG_SUFFIXES


def resolve_config(value: str, config_dir: Path | None = None, key: str = "model.generator") -> Path:
    """The YAML `key` names: as given (relative to the working directory), else beside GRank's own config."""
    path = Path(value)
    if path.is_file():
        return path
    if config_dir is not None and (Path(config_dir) / path.name).is_file():
        return Path(config_dir) / path.name
    raise FileNotFoundError(f"{key} {value} names a config that does not exist (looked in the working "
                            f"directory{' and ' + str(config_dir) if config_dir else ''}); give a training YAML "
                            "(e.g. configs/dualgr_amazon.yaml), a trained checkpoint"
                            f"{', or grank' if key == 'model.generator' else ''}")


def train_generator(module, dm, out_dir: str | Path, config_dir: Path | None = None,
                    seed: int | None = None) -> str | None:
    """When `module.generator` is a YAML: train it on `dm`'s data set into out_dir/generator (or reuse
    a finished run of the same config, data and seed there), point `module.generator` at its checkpoint
    and return that path; otherwise do nothing and return None."""
    if not is_training_config(module.generator):
        return None
    config = resolve_config(module.generator, config_dir)
    module.generator = _train_or_reuse(config, dm, Path(out_dir) / "generator", "model.generator", grank=False, seed=seed)
    return module.generator


def train_scorer(module, dm, out_dir: str | Path, config_dir: Path | None = None, seed: int | None = None) -> str | None:
    """When `module.scorer` is a YAML (a DualGR config): train it on `dm`'s data set into
    out_dir/scorer (or reuse a finished run of the same config, data and seed there), point
    `module.scorer` at its checkpoint and return that path; otherwise do nothing and return None."""
    if not is_training_config(getattr(module, "scorer", None)):
        return None
    config = resolve_config(module.scorer, config_dir, "model.scorer")
    module.scorer = _train_or_reuse(config, dm, Path(out_dir) / "scorer", "model.scorer", grank=False, seed=seed)
    return module.scorer


def train_init(module, dm, out_dir: str | Path, config_dir: Path | None = None, seed: int | None = None) -> str | None:
    """When `module.init_from` is a YAML (a GRank config): train it on `dm`'s data set into
    out_dir/init (or reuse a finished run of the same config, data and seed there), point
    `module.init_from` at its checkpoint and return that path; otherwise do nothing and return None.
    Call before fitting: the weights are loaded when the network is built."""
    if not is_training_config(module.init_from):
        return None
    config = resolve_config(module.init_from, config_dir, "model.init_from")
    module.init_from = _train_or_reuse(config, dm, Path(out_dir) / "init", "model.init_from", grank=True, seed=seed)
    return module.init_from


def train_first(module, dm, out_dir: str | Path, config_dir: Path | None = None, seed: int | None = None) -> None:
    """All of the above: the stages a GRank run names as training configs, trained (or reused) first."""
    train_init(module, dm, out_dir, config_dir, seed)
    train_generator(module, dm, out_dir, config_dir, seed)
    train_scorer(module, dm, out_dir, config_dir, seed)


def _train_or_reuse(config: Path, dm, out: Path, key: str, *, grank: bool, seed: int | None) -> str:
    """Train `config` on dm's data set into `out` (with `seed`, if given) unless a finished run of the
    same config text, data and seed is there; the absolute path of its checkpoint (a GRank checkpoint
    serves from anywhere). `grank`: whether the config must be a GRank one (init_from) or must not be
    (a generator)."""
    from genret.families import family_for_config
    from genret.training.run import build, fit

    signature = {"config": config.name, "config_text": config.read_text(), "data": str(dm.data)}
    if seed is not None:
        signature["seed"] = seed
    record, ckpt = out / RECORD, out / "model.ckpt"
    what = key.removeprefix("model.")
    if record.is_file() and ckpt.is_file() and json.loads(record.read_text()) == signature:
        log.info("%s: reusing %s (trained from %s on %s)", what, ckpt, config, dm.data)
    else:
        family = family_for_config(config)
        if grank and family.name != "grank":
            raise ValueError(f"{key} {config} is a {family.name} config; GRank starts from a GRank model's weights: "
                             "give a GRank training YAML (e.g. configs/grank_amazon_generator.yaml) or checkpoint")
        if not grank and family.name == "grank":
            raise ValueError(f"{key} {config} is a GRank config; a generator is another family's model "
                             "(DualGR, SASRec, KuaiFormer): use 'grank' for GRank's own generator")
        log.info("%s: training %s (%s) on %s into %s", what, config, family.name, dm.data, out)
        record.unlink(missing_ok=True)  # a stale record must not vouch for a half-trained run
        overrides = [] if seed is None else ["--seed_everything", str(seed)]
        stage_module, stage_dm, stage_trainer = build(family, config, out, overrides, data=str(dm.data))
        if grank:  # a GRank first stage may itself name stages (its own generator YAML, ...)
            train_first(stage_module, stage_dm, out, config.parent, seed)
        ckpt, seconds = fit(stage_module, stage_dm, stage_trainer, out)
        with atomic_path(out / RECORD) as tmp:
            Path(tmp).write_text(json.dumps(signature))
        log.info("%s: trained in %.0f s; %s", what, seconds, ckpt)
    return str(Path(ckpt).resolve())
