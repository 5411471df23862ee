"""`python -m genret --version` prints the one version genret has (genret.__version__ = the metadata)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import genret
from genret.cli import main


def test_python_m_genret_version(tmp_path):
    out = subprocess.run([sys.executable, "-m", "genret", "--version"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout == f"genret {genret.__version__}\n"


def test_version_is_the_installed_metadata(capsys):
    assert version("genret") == genret.__version__
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"genret {genret.__version__}\n"
    assert main(["--help"]) == 0
    assert "--version" in capsys.readouterr().out


def test_python_m_genret_from_the_checkout_does_not_shadow_hugging_face_packages(monkeypatch):
    import sys
    from pathlib import Path

    from genret.__main__ import drop_checkout_root_from_path

    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setattr(sys, "path", [root, "", *sys.path])
    monkeypatch.chdir(root)
    drop_checkout_root_from_path()
    assert root not in sys.path and "" not in sys.path  # both name the checkout root here
    import importlib.util

    spec = importlib.util.find_spec("tokenizers")  # Hugging Face's when installed, else nothing
    assert spec is None or not str(spec.origin).startswith(root + "/tokenizers")
