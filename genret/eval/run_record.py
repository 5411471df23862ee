"""A finished benchmark run's result on disk (out_dir/run_result.json), so that `genret benchmark
--resume` can read it back instead of training the same run again; and the mark of a run that has
started (out_dir/run_started.json), so that `--resume` continues one that stopped half-way from its
last epoch's checkpoint instead of starting it over.

The record holds the run's signature: everything that decides its numbers (the config file's
settings, data, overrides, seed, cut-offs, evaluation options). The config counts by its parsed
settings, not its text, so editing a comment keeps the runs; records written when the text counted
(its bytes' hash) are still read back while the file's bytes are unchanged. A record is reused only when its
signature equals the new run's; the code's commit is kept beside it for provenance but does not
block reuse (a fix elsewhere in the tree should not throw away hours of training).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from genret.io import write_json

log = logging.getLogger(__name__)

RECORD_NAME = "run_result.json"
STARTED_NAME = "run_started.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # genret.training.run.set_checkpointing writes it every epoch
RECORD_VERSION = 1
_RANKS = ("val_ranks", "test_ranks", "cold_ranks", "cold_val_ranks", "content_cold_ranks", "content_cold_val_ranks")


def config_digest(config) -> str:
    """SHA-256 of a config's settings: the parsed YAML as canonical JSON (comments, key order and
    layout do not count). A config that is not a readable YAML mapping counts by its bytes."""
    import yaml

    path = Path(config)
    try:
        settings = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        settings = None
    if not isinstance(settings, dict):
        return _bytes_digest(config)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _bytes_digest(config) -> str:
    path = Path(config)
    return hashlib.sha256(path.read_bytes() if path.is_file() else str(config).encode()).hexdigest()


def earlier_signatures(signature: dict[str, Any], config) -> list[dict[str, Any]]:
    """The forms the same run's signature had in earlier genret versions (the config's bytes hashed)."""
    return [signature | {"config_sha256": _bytes_digest(config)}]


def run_signature(*, config, variant: str, data, overrides, seed, ks, max_eval_users, stages, kernel,
                  branch_merge, short_weight, checkpoint) -> dict[str, Any]:
    """What decides a run's numbers, as plain JSON values (compared with ==)."""
    return {"config_sha256": config_digest(config), "variant": variant,
            "data": None if data is None else str(data), "overrides": [str(a) for a in (overrides or [])],
            "seed": None if seed is None else int(seed), "ks": sorted(int(k) for k in ks),
            "max_eval_users": max_eval_users, "stages": list(stages), "kernel": kernel,
            "branch_merge": branch_merge, "short_weight": short_weight,
            "checkpoint": None if checkpoint is None else str(checkpoint)}


def write_run_record(out_dir: str | Path, signature: dict[str, Any], result: dict[str, Any]) -> None:
    """Write the finished run's result (atomically: a run killed while writing leaves no record)."""
    from genret.eval.report import code_version

    write_json(Path(out_dir) / RECORD_NAME, {"version": RECORD_VERSION, "commit": code_version(),
                                             "signature": signature, "result": result})


def mark_run_started(out_dir: str | Path, signature: dict[str, Any]) -> None:
    """Say which settings the training about to start in out_dir runs with (its checkpoints/ are
    then this run's), so that a stopped run can be continued only by the same settings."""
    from genret.eval.report import code_version

    write_json(Path(out_dir) / STARTED_NAME, {"version": RECORD_VERSION, "commit": code_version(),
                                              "signature": signature})


def unfinished_checkpoint(out_dir: str | Path, signature: dict[str, Any],
                          earlier: list[dict[str, Any]] = ()) -> Path | None:
    """The last epoch's checkpoint of a run with this signature (or one of its `earlier` forms) that
    started in out_dir and did not finish, else None (and a log line saying why a checkpoint that is
    there is not used)."""
    out_dir = Path(out_dir)
    last = out_dir / LAST_CHECKPOINT
    if not last.is_file():
        return None
    try:
        started = json.loads((out_dir / STARTED_NAME).read_text())
    except (OSError, ValueError):
        log.warning("%s has no readable %s to say which settings wrote it; training the run from the start",
                    last, STARTED_NAME)
        return None
    if started.get("version") != RECORD_VERSION or started.get("signature") not in [signature, *earlier]:
        log.warning("%s belongs to a run with other settings; training the run from the start", last)
        return None
    return last


def read_run_record(out_dir: str | Path, signature: dict[str, Any],
                    earlier: list[dict[str, Any]] = ()) -> dict[str, Any] | None:
    """The recorded result when out_dir holds a finished run with this signature (or one of its
    `earlier` forms), else None (and a log line saying why a record that is there is not used)."""
    path = Path(out_dir) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s); training the run again", path, err)
        return None
    if record.get("version") != RECORD_VERSION:
        log.warning("%s has record version %s, this genret writes %s; training the run again", path,
                    record.get("version"), RECORD_VERSION)
        return None
    if record.get("signature") not in [signature, *earlier]:
        changed = sorted(k for k in signature if record.get("signature", {}).get(k) != signature[k])
        log.warning("%s was run with other settings (%s differ); training the run again", path, ", ".join(changed))
        return None
    result = dict(record["result"])
    for key in _RANKS:
        if key in result:
            result[key] = np.asarray(result[key], dtype=np.int64)
    return result
