"""The YAML configs of `genret train` / `genret benchmark` / `genret quickstart`, shipped as package data.

This folder is installed as `genret.configs`, so the configs are found from any working directory
(an installed wheel has no checkout around it).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["config_path", "config_names"]


def config_names() -> list[str]:
    """File names of the shipped configs, sorted (e.g. "quickstart.yaml")."""
    return sorted(p.name for p in files(__name__).iterdir() if p.name.endswith(".yaml"))


def config_path(name: str) -> Path:
    """The installed path of a shipped config, e.g. config_path("quickstart.yaml").

    Raises:
        FileNotFoundError: no shipped config of that name (the message lists the shipped ones).
    """
    path = files(__name__) / name
    if not path.is_file():
        raise FileNotFoundError(f"genret ships no config {name!r}; it ships {', '.join(config_names())}")
    return Path(str(path))
