"""genret.tokenizers is the stage after genret.data: it imports only genret.data, genret.io and itself,
and its files share only public names."""

from __future__ import annotations

import ast
from pathlib import Path

import genret.tokenizers

ALLOWED = ("genret.data", "genret.io", "genret.tokenizers")
FILES = sorted(Path(genret.tokenizers.__file__).parent.glob("*.py"))


def imports(path: Path):
    """(module, imported names) of every import in the file, lazy ones inside functions included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [alias.name for alias in node.names]


def test_the_files_are_found():
    assert {"rq_kmeans.py", "kmeans.py", "semantic_ids.py", "item_vectors.py"} <= {p.name for p in FILES}


def test_imports_only_earlier_stages():
    wrong = [
        f"{path.name}: {module}"
        for path in FILES
        for module, _ in imports(path)
        if (module == "genret" or module.startswith("genret."))
        and not any(module == a or module.startswith(a + ".") for a in ALLOWED)
    ]
    assert not wrong, f"genret.tokenizers may import only {ALLOWED}: {wrong}"


def test_no_private_names_cross_files():
    wrong = [
        f"{path.name}: from {module} import {name}"
        for path in FILES
        for module, names in imports(path)
        if module.startswith("genret.")
        for name in names
        if name.startswith("_")
    ]
    assert not wrong, wrong
