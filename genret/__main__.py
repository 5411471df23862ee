"""`python -m genret ...`: the same as the `genret` console script."""

import sys
from pathlib import Path


def drop_checkout_root_from_path() -> None:
    """Remove a genret source checkout's root from sys.path.

    `python -m` puts the current folder first on sys.path. Run from the checkout's root, that folder
    holds our tokenizers/ and kernels/ (imported as genret.tokenizers and genret.kernels), whose bare
    names then shadow Hugging Face's `tokenizers` and `kernels` packages: with the `text` extra
    installed, torchmetrics (imported by Lightning) imports transformers, which fails on our
    tokenizers/. genret itself is already imported, so nothing else needs that entry.
    """
    def is_checkout(entry: str) -> bool:
        root = Path(entry or ".").resolve()
        return (root / "genret" / "__init__.py").is_file() and (root / "tokenizers" / "__init__.py").is_file()

    sys.path[:] = [entry for entry in sys.path if not is_checkout(entry)]


if __name__ == "__main__":
    drop_checkout_root_from_path()
    from genret.cli import main

    sys.exit(main())
