"""Safe model artifacts: read a training checkpoint without running pickled code, and export it to
a directory of safetensors + JSON that loads with no pickle at all.

An export directory holds:
    config.json           format, version, family, the model config, raw item ids, the side-feature
                          buckets and user-feature names (plain JSON)
    weights.safetensors   the model's state dict
    catalogue.safetensors every item's SID ("codes"), the SID index tables ("sid_index.*") and the
                          new-item encoder's tensors ("new_items.*": tokenizer codebooks, content
                          IDF and SVD basis; its other fields are in config.json) and, with the
                          content term, its IDF and item rows ("content_term.*")

`read_artifact(path)` returns the same `(state_dict, extra)` pair for a `.ckpt` file or an export
directory, where `extra` is the checkpoint's "genret" entry (genret.training.checkpoint): {"version",
"family", "config", "catalogue"}; `Retriever.from_checkpoint` builds from it. Exports hold DualGR
models (their catalogue is the SID index).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from genret.io import current_umask

EXPORT_FORMAT = "genret-export"
CONFIG_FILE, WEIGHTS_FILE, CATALOGUE_FILE = "config.json", "weights.safetensors", "catalogue.safetensors"


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    family: str | None = None) -> tuple[dict, dict]:
    """A `genret train` checkpoint -> (model state dict, its "genret" entry), read without pickled
    code (genret.training.checkpoint.load_checkpoint)."""
    from genret.training.checkpoint import load_checkpoint, model_state

    checkpoint, entry = load_checkpoint(path, device, family)
    return model_state(checkpoint), entry


def _check_version(path: Path, version: Any) -> None:
    from genret.training.checkpoint import CHECKPOINT_VERSION

    if version != CHECKPOINT_VERSION:
        raise RuntimeError(f"{path} has genret format version {version}; this genret reads version {CHECKPOINT_VERSION}")


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `checkpoint` as an export directory (see the module docstring).

    The directory is written beside `out_dir` and renamed into place only when complete; an
    existing export there is replaced, anything else is refused.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    state, extra = read_checkpoint(checkpoint, family="dualgr")
    return write_export(state, extra, out_dir)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file())):
        raise FileExistsError(f"{out_dir} exists and is not a genret export; choose an empty or new --out")


def write_export(state: dict[str, torch.Tensor], extra: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write a DualGR's (state dict, "genret" entry) as an export directory (see the module
    docstring); written beside `out_dir` and renamed into place only when complete, replacing an
    earlier export there (anything else is refused)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    catalogue = extra["catalogue"]
    sid_index = catalogue["sid_index"]
    tables = {"codes": torch.as_tensor(catalogue["codes"])}
    tables.update({f"sid_index.{name}": value for name, value in sid_index.items() if torch.is_tensor(value)})
    for name in ("child_ptr", "child_codes"):
        tables.update({f"sid_index.{name}.{depth}": t for depth, t in enumerate(sid_index[name])})
    config = {
        "format": EXPORT_FORMAT,
        "version": extra["version"],
        "family": extra["family"],
        "config": extra["config"],
        "catalogue": {
            "item_ids": [x.item() if hasattr(x, "item") else x for x in catalogue["item_ids"]],
            "dataset": catalogue.get("dataset"),
            "side_features": catalogue.get("side_features"),
            "user_feature_names": catalogue.get("user_feature_names", []),
            "codebook_size": int(sid_index["codebook_size"]),
            "sid_index_depth": len(sid_index["child_ptr"]),
            # The new-item encoder (genret.tokenizers.new_items): its tensors go to the catalogue file.
            "new_items": _tensors_out(catalogue.get("new_items"), "new_items", tables),
            "content_term": _tensors_out(catalogue.get("content_term"), "content_term", tables),
        },
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        save_file({k: v.cpu().contiguous() for k, v in tables.items()}, str(tmp / CATALOGUE_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        for file in (WEIGHTS_FILE, CATALOGUE_FILE, CONFIG_FILE):
            (tmp / file).chmod(0o666 & ~current_umask())  # safetensors writes its files 0600
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _tensors_out(value: Any, name: str, tables: dict[str, torch.Tensor]) -> Any:
    """A nested state of plain types and tensors -> JSON, each tensor moved into `tables` under a
    dotted name and replaced by {"tensor": name}."""
    if torch.is_tensor(value):
        tables[name] = value
        return {"tensor": name}
    if isinstance(value, dict):
        return {str(k): _tensors_out(v, f"{name}.{k}", tables) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tensors_out(v, f"{name}.{i}", tables) for i, v in enumerate(value)]
    return value


def _tensors_in(value: Any, tables: dict[str, torch.Tensor]) -> Any:
    """The inverse of `_tensors_out`."""
    if isinstance(value, dict):
        if set(value) == {"tensor"}:
            return tables[value["tensor"]]
        return {k: _tensors_in(v, tables) for k, v in value.items()}
    if isinstance(value, list):
        return [_tensors_in(v, tables) for v in value]
    return value


def read_export(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """An export directory -> (model state dict, "genret" entry), with no pickle involved.

    Raises:
        RuntimeError: a missing or foreign config, unreadable weights, another format version.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise RuntimeError(f"{path} is a directory but not a genret export (no {CONFIG_FILE}); "
                           f"write one with `genret export --checkpoint CKPT --out DIR`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RuntimeError(f"{path / CONFIG_FILE} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise RuntimeError(f"{path / CONFIG_FILE} is not a genret export config (format {found!r}, "
                           f"expected {EXPORT_FORMAT!r})")
    _check_version(path, config.get("version"))
    device = str(device)
    try:
        state = load_file(str(path / WEIGHTS_FILE), device=device)
        tables = load_file(str(path / CATALOGUE_FILE), device="cpu")
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise RuntimeError(f"cannot read the weights of export {path}: {err}") from None
    try:
        meta = config["catalogue"]
        depth = int(meta["sid_index_depth"])
        sid_index: dict[str, Any] = {"artifact_kind": "SIDIndex", "codebook_size": int(meta["codebook_size"])}
        for name in ("child_ptr", "child_codes"):
            sid_index[name] = [tables[f"sid_index.{name}.{d}"] for d in range(depth)]
        sid_index.update({k[len("sid_index."):]: v for k, v in tables.items()
                          if k.startswith("sid_index.") and k.count(".") == 1})
        catalogue = {"item_ids": meta["item_ids"], "codes": tables["codes"], "sid_index": sid_index,
                     "dataset": meta.get("dataset"), "side_features": meta.get("side_features"),
                     "user_feature_names": meta.get("user_feature_names", []),
                     "new_items": _tensors_in(meta.get("new_items"), tables),
                     "content_term": _tensors_in(meta.get("content_term"), tables)}
        extra = {"version": config["version"], "family": config["family"], "config": config["config"],
                 "catalogue": catalogue}
    except (KeyError, TypeError, ValueError) as err:
        raise RuntimeError(f"export {path} is incomplete or corrupt: missing {err}") from None
    return state, extra


def read_artifact(path: str | os.PathLike, device: str | torch.device = "cpu",
                  family: str | None = None) -> tuple[dict, dict]:
    """A `.ckpt` file or an export directory -> (model state dict, "genret" entry) of `family` (any if None)."""
    path = Path(path)
    if not path.is_dir():
        return read_checkpoint(path, device, family)
    state, extra = read_export(path, device)
    if family is not None and extra["family"] != family:
        raise RuntimeError(f"{path} holds a {extra['family']!r} model, not a {family!r} one")
    return state, extra


def artifact_version(path: str | os.PathLike) -> str:
    """A content hash naming what was loaded: sha256 of the checkpoint file's bytes, or of an export's
    config.json, weights and catalogue (in that order); the first 16 hex digits. Equal files, equal version."""
    path = Path(path)
    files = [path / name for name in (CONFIG_FILE, WEIGHTS_FILE, CATALOGUE_FILE)] if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def artifact_family(path: str | os.PathLike) -> str:
    """The family name a `.ckpt` (its checked "genret" entry) or an export directory (its config) records."""
    from genret.training.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_dir():
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return read_export(path)[1]["family"]  # raises the export reader's own clear error
        return str(config.get("family"))
    return load_checkpoint(path)[1]["family"]
