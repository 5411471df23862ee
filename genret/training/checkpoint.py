"""genret's one checkpoint format: Lightning's checkpoint plus a "genret" entry.

Every family's LightningModule writes the entry in `on_save_checkpoint` and reads it back in
`on_load_checkpoint`; every retriever's `from_checkpoint` reads it through `load_checkpoint`. The
entry holds what serving needs besides the weights: the family, the resolved model config and
the catalogue (raw item ids, and per family: SIDs, the SID index, feature buckets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import contextlib

import torch

# Bump when the entry's layout or a family's state dict changes; readers refuse other versions.
# 2: the entry names its "family"; DualGR's routing prior is always stored; KuaiFormer's attention
#    uses the shared layer (query / key_value instead of qkv).
CHECKPOINT_VERSION = 2


def genret_entry(family: str, config: dict[str, Any], catalogue: dict[str, Any] | None,
                 **extra: Any) -> dict[str, Any]:
    """The "genret" entry a LightningModule adds to its checkpoint."""
    return {"version": CHECKPOINT_VERSION, "family": family, "config": config, "catalogue": catalogue, **extra}


def read_entry(checkpoint: Any, where: str, family: str | None = None) -> dict[str, Any]:
    """The checked "genret" entry of a loaded checkpoint dict.

    Args:
        checkpoint: what torch.load returned. where: the file, for messages.
        family: the family the caller can load (None: any).

    Raises:
        RuntimeError naming the file and what is wrong (not genret's, other version, other family).
    """
    entry = checkpoint.get("genret") if isinstance(checkpoint, dict) else None
    if not isinstance(entry, dict):
        raise RuntimeError(f"{where} is not a genret checkpoint (no 'genret' entry); train one with "
                           "`genret train --config ...` or `genret benchmark`")
    if entry.get("version") != CHECKPOINT_VERSION:
        raise RuntimeError(f"{where} has genret checkpoint format version {entry.get('version')}; this genret "
                           f"reads version {CHECKPOINT_VERSION}: retrain it, or use the genret release it came from")
    if family is not None and entry.get("family") != family:
        raise RuntimeError(f"{where} holds a {entry.get('family')!r} model, not a {family!r} one")
    return entry


def _safe_globals() -> list:
    # A checkpoint from DualGRModule(config=DualGRConfig(...)) built in Python pickles the config
    # dataclass in its hyper-parameters (LightningCLI writes a plain dict instead); allowlisting that
    # one plain dataclass keeps torch.load(weights_only=True), which refuses any other class.
    from genret.models.dualgr import DualGRConfig
    from genret.models.kuaiformer import KuaiFormerConfig

    return [DualGRConfig, KuaiFormerConfig]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    family: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint file: (the whole checkpoint dict, its checked "genret" entry).

    Loaded with `torch.load(weights_only=True)`: tensors, plain containers and the allowlisted
    config dataclasses only, so a checkpoint from elsewhere cannot run code.

    Raises:
        FileNotFoundError: no such file. RuntimeError: unreadable, foreign, of another version or family.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with `genret train --config ...`")
    try:
        # safe_globals arrived in torch 2.5; before it the allowlist is empty (plain-dict checkpoints load).
        allow = getattr(torch.serialization, "safe_globals", None)
        with allow(_safe_globals()) if allow else contextlib.nullcontext():
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to a user
        # torch's own message suggests weights_only=False; keep only its diagnosis.
        boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
        parts = [p.strip() for p in str(err).split("\n\n") if p.strip() and not p.strip().startswith(boilerplate)]
        detail = " ".join(parts).replace("WeightsUnpickler error: ", "") or str(err).strip().splitlines()[0]
        raise RuntimeError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, or one holding objects other "
                           f"than tensors and plain containers, which genret refuses to unpickle because that "
                           f"could run code (weights_only=True: {detail})") from None
    return checkpoint, read_entry(checkpoint, str(path), family)


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights: the LightningModule's `model.` entries without the prefix."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def load_network(path: str | Path, family: str, build, device: str | torch.device = "cpu"):
    """A family's network from its checkpoint, in eval mode on `device`, and the checked "genret" entry.

    Args:
        build: the entry's config dict -> the untrained network (e.g. `lambda c: KuaiFormer(KuaiFormerConfig(**c))`).
    """
    checkpoint, entry = load_checkpoint(path, device, family)
    model = build(entry["config"])
    model.load_state_dict(model_state(checkpoint))
    return model.to(device).eval(), entry
