"""The YAML configs ship inside the package (genret.configs) and are found through it, from any folder."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
import yaml

import genret.configs
from genret.configs import config_names, config_path


def test_configs_are_found_through_the_package_and_parse():
    names = config_names()
    assert "quickstart.yaml" in names and len(names) >= 5
    for name in names:
        resource = files("genret.configs") / name
        config = yaml.safe_load(resource.read_text())
        assert isinstance(config, dict) and {"trainer", "model", "data"} <= set(config), name
        assert config_path(name).read_text() == resource.read_text()


def test_unknown_config_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="ships no config 'nope.yaml'; it ships .*quickstart.yaml"):
        config_path("nope.yaml")


def test_quickstart_default_is_the_packaged_config():
    from genret.commands.quickstart import DEFAULT_CONFIG

    assert DEFAULT_CONFIG == config_path("quickstart.yaml") and DEFAULT_CONFIG.is_file()
    assert DEFAULT_CONFIG.parent.samefile(Path(genret.configs.__file__).parent)


def test_quickstart_needs_no_optional_logger():
    # tensorboard is an optional extra: the default config must run without it.
    loggers = yaml.safe_load(config_path("quickstart.yaml").read_text())["trainer"]["logger"]
    assert [entry["class_path"] for entry in loggers] == ["pytorch_lightning.loggers.CSVLogger"]


def test_each_shipped_config_trains_into_its_own_folder():
    """`genret train` resumes from DIR/checkpoints/last.ckpt: two recipes sharing DIR would resume each
    other's runs, and none may share the quickstart command's own output folder."""
    import yaml

    from genret.configs import config_names, config_path

    roots = {name: yaml.safe_load(config_path(name).read_text())["trainer"]["default_root_dir"]
             for name in config_names()}
    assert len(set(roots.values())) == len(roots), roots
    assert "runs/quickstart" not in roots.values()
