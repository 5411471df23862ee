"""The model-family registry: every family resolves to real classes, and checkpoints find their retriever."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from genret.families import FAMILIES, family_for_config, get_family, load_retriever

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_names_classes_with_the_interface(name):
    family = get_family(name)
    retriever = family.retriever_class()
    assert callable(getattr(retriever, "from_checkpoint")) and callable(getattr(retriever, "retrieve"))
    if family.kind != "counts":
        module, datamodule = family.module_class(), family.datamodule_class()
        assert hasattr(module, "on_save_checkpoint") and hasattr(datamodule, "setup")
    else:
        with pytest.raises(ValueError, match="not trained"):
            family.module_class()


def test_unknown_family_and_config_names():
    with pytest.raises(ValueError, match="unknown model family 'bert4rec'; choose from dualgr"):
        get_family("bert4rec")
    assert family_for_config("configs/sasrec_ml1m.yaml").name == "sasrec"
    assert family_for_config("kuaiformer_amazon.yaml").name == "kuaiformer"
    assert family_for_config("configs/quickstart.yaml").name == "dualgr"
    assert family_for_config("tiger.yaml").name == "tiger"


def test_popularity_serves_raw_ids_through_the_family_interface(tmp_path):
    from genret.data import leave_one_out, load_dataset

    log_ = load_dataset("synthetic:200x300")
    pop = get_family("popularity").retriever_class()().fit(leave_one_out(log_).train)
    top = pop.order_[:3]
    history = [log_.item_ids[top[0]]]
    got = pop.retrieve([history, []], k=2)
    assert got.items[1] == log_.item_ids[top[:2]].tolist()  # no history: the two most popular
    assert got.items[0] == log_.item_ids[top[1:3]].tolist()  # the seen item is skipped
    assert got.scores[1] == sorted(got.scores[1], reverse=True)
    pop.save(tmp_path / "pop.json")
    again = type(pop).from_checkpoint(tmp_path / "pop.json")
    assert again.model_version.startswith("sha256:")
    assert again.retrieve([history], k=5).items == pop.retrieve([history], k=5).items
    with pytest.raises(ValueError, match="not in the catalogue"):
        pop.retrieve([["no-such-item"]], k=5)
    (tmp_path / "bad.json").write_text(json.dumps({"family": "dualgr"}))
    with pytest.raises(RuntimeError, match="not a genret popularity artifact"):
        type(pop).from_checkpoint(tmp_path / "bad.json")


def test_load_retriever_refuses_what_is_not_a_genret_checkpoint(tmp_path):
    import torch

    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(RuntimeError, match="not a genret checkpoint"):
        load_retriever(tmp_path / "foreign.ckpt")
    torch.save({"genret": {"version": 1, "family": "dualgr"}}, tmp_path / "old.ckpt")
    with pytest.raises(RuntimeError, match="format version 1; this genret reads version 2"):
        load_retriever(tmp_path / "old.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_retriever(tmp_path / "missing.ckpt")


STAGES = ["data", "tokenizers", "models", "training", "decoding", "eval", "serving", "commands"]
FOLDER = {"tokenizers": ROOT / "tokenizers"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_stages_import_only_the_stages_before_them():
    """data -> tokenizers -> models -> training -> decoding -> eval -> serving -> commands: no arrow
    runs back up, and nothing imports the CLI."""
    for i, stage in enumerate(STAGES):
        folder = FOLDER.get(stage, ROOT / "genret" / stage)
        if not folder.is_dir():
            continue
        later = STAGES[i + 1:]
        for path in folder.rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "genret" and len(parts) > 1 and parts[1] in later:
                    pytest.fail(f"{path.relative_to(ROOT)} ({stage}) imports {name} from a later stage")
    for path in (ROOT / "genret").rglob("*.py"):
        if "commands" not in path.parts and path.name not in ("cli.py", "__main__.py"):  # the entry points
            assert not any(n.startswith("genret.commands") or n == "genret.cli" for n in _imports(path)), path


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.kind != "generative"])
def test_every_other_family_names_its_benchmark_run(name):
    from genret.families import load_class

    assert callable(load_class(get_family(name).benchmark))
