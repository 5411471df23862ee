"""`genret export`: safetensors + JSON that load without pickle and retrieve exactly as the checkpoint;
checkpoints load with weights_only=True; foreign or corrupt artifacts are clear errors."""

import json
import os
import stat

import pytest
import torch

from genret.cli import main
from genret.decoding.export import CONFIG_FILE, WEIGHTS_FILE, export_checkpoint
from genret.decoding.retriever import Retriever


def test_export_round_trips_to_identical_retrieval(tmp_path, tiny_ckpt):
    out = tmp_path / "export"
    old = os.umask(0o022)
    try:
        assert main(["export", "--checkpoint", str(tiny_ckpt), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["catalogue.safetensors", "config.json", "weights.safetensors"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755 and stat.S_IMODE((out / WEIGHTS_FILE).stat().st_mode) == 0o644
    from_ckpt = Retriever.from_checkpoint(tiny_ckpt, device="cpu", kernel="torch")
    from_dir = Retriever.from_checkpoint(out, device="cpu", kernel="torch")
    histories = [[100, 105, 130], [], [139]]
    a = from_ckpt.retrieve(histories, k=8, user_features={"segment": [1, 0, 2]})
    b = from_dir.retrieve(histories, k=8, user_features={"segment": [1, 0, 2]})
    assert a == b
    assert from_dir.short_weight == from_ckpt.short_weight == pytest.approx(0.3)
    assert from_dir.user_feature_names == ["segment"] and from_dir.item_ids.tolist() == from_ckpt.item_ids.tolist()
    assert from_dir.model_version != from_ckpt.model_version and from_dir.model_version.startswith("sha256:")
    # A second export over the first replaces it; the same content gives the same version.
    export_checkpoint(tiny_ckpt, out)
    assert Retriever.from_checkpoint(out, device="cpu").model_version == from_dir.model_version


def test_side_features_travel_in_the_export(tmp_path, make_tiny_ckpt):
    ckpt = make_tiny_ckpt("side.ckpt", side=True)
    export_checkpoint(ckpt, tmp_path / "side")
    side = {"rating": [[5, 1, None]]}
    a = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch").retrieve([[100, 101, 102]], k=5, side=side)
    r = Retriever.from_checkpoint(tmp_path / "side", device="cpu", kernel="torch")
    assert r.side_features == ["rating"] and r.retrieve([[100, 101, 102]], k=5, side=side) == a


def test_checkpoints_load_without_pickled_code(tmp_path, tiny_ckpt):
    from genret.models.dualgr import DualGRConfig

    # A module built in Python pickles its DualGRConfig in the hyper-parameters: allowlisted.
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["hyper_parameters"] = {"config": DualGRConfig(d_model=32), "lr": 1e-3}
    torch.save(ckpt, tmp_path / "with_config.ckpt")
    Retriever.from_checkpoint(tmp_path / "with_config.ckpt", device="cpu")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["hyper_parameters"] = {"evil": Payload()}
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(RuntimeError, match=r"refuses to unpickle .* \(weights_only=True: .*posix.system"):
        Retriever.from_checkpoint(tmp_path / "evil.ckpt", device="cpu")


def test_foreign_and_corrupt_exports_are_clear_errors(tmp_path, tiny_ckpt):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="not a genret export"):
        Retriever.from_checkpoint(empty, device="cpu")
    out = export_checkpoint(tiny_ckpt, tmp_path / "export")
    (out / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="cannot read the weights"):
        Retriever.from_checkpoint(out, device="cpu")
    out = export_checkpoint(tiny_ckpt, tmp_path / "export2")
    config = json.loads((out / CONFIG_FILE).read_text())
    config["format"] = "something-else"
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="not a genret export config"):
        Retriever.from_checkpoint(out, device="cpu")
    config["format"], config["version"] = "genret-export", 99
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="format version 99"):
        Retriever.from_checkpoint(out, device="cpu")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a genret export"):
        export_checkpoint(tiny_ckpt, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
