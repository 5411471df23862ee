"""Versioned tokenizer artifacts (the fitted RQKMeans, the SIDIndex): atomic save, checked load."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from genret.io import ARTIFACT_VERSION, atomic_path

__all__ = [
    "ArtifactError",
    "ArtifactNotFoundError",
    "RQKMEANS_ARTIFACT_VERSION",
    "load_artifact",
    "save_artifact",
]

# The saved RQKMeans layout has its own version (genret.io.ARTIFACT_VERSION, shared by the other
# artifacts, stays as it is). 2: the seed parameter is saved as `random_state`, scikit-learn's name.
RQKMEANS_ARTIFACT_VERSION = 2


class ArtifactError(RuntimeError):
    """A saved tokenizer or SID index is corrupt, of another kind, or of another artifact version."""


class ArtifactNotFoundError(FileNotFoundError, ArtifactError):
    """The artifact file does not exist (catchable as FileNotFoundError or as ArtifactError)."""


def save_artifact(path: str | os.PathLike, kind: str, payload: dict[str, Any], version: int = ARTIFACT_VERSION) -> None:
    """torch.save `payload` tagged with its kind and layout version, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"kind": kind, "artifact_version": version, **payload}, tmp)


def load_artifact(path: str | os.PathLike, kind: str, version: int = ARTIFACT_VERSION) -> dict[str, Any]:
    """Read a file written by `save_artifact` and check its kind and version.

    Raises:
        ArtifactNotFoundError: no file at `path`.
        ArtifactError: unreadable, another kind, or another version.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactNotFoundError(f"{kind} file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable {kind} file (corrupt or truncated?): {err}") from err
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ArtifactError(f"{path} holds a {found!r}, not a {kind}")
    found_version = payload.get("artifact_version")
    if found_version != version:
        raise ArtifactError(
            f"{path} was written with {kind} artifact version {found_version}, but this genret reads version "
            f"{version}; rebuild it with this version (e.g. `genret tokenize`)"
        )
    return payload
