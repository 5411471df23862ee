"""The `genret` console script: one subcommand per job, each in genret/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from genret import __version__

# name -> (module, one-line help). Modules are imported only when their subcommand runs.
COMMANDS = {
    "tokenize": ("genret.commands.tokenize", "fit the RQ-KMeans tokenizer on item embeddings"),
    "embed": ("genret.commands.embed", "embed item titles of a data set into a .npy file"),
    "train": ("genret.commands.train", "train a model from a YAML config (LightningCLI)"),
    "decode": ("genret.commands.decode", "retrieve top-k items for histories (JSON lines)"),
    "benchmark": ("genret.commands.benchmark", "tokenize, train and evaluate on a data set"),
    "export-embeddings": ("genret.commands.export_embeddings",
                          "write a KuaiFormer/SASRec checkpoint's item embeddings as .npy (for tokenize)"),
    "quickstart": ("genret.commands.quickstart", "the whole pipeline on the synthetic default"),
    "build-index": ("genret.commands.build_index", "a faiss ANN index beside a RetrievalFormer checkpoint"),
    "serve": ("genret.commands.serve", "serve a checkpoint's retriever over HTTP (needs genret[serve])"),
    "export": ("genret.commands.export", "write a checkpoint as safetensors + JSON, loadable without pickle"),
    "add-items": ("genret.commands.add_items",
                  "add items to a trained DualGR's catalogue without retraining (writes an export)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="genret", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genret {__version__}")  # listed in --help
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] == "--version":
        print(f"genret {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except Exception as err:
        # Bad input (a data set that is not there, a malformed artifact) is the user's to fix: one
        # line naming it reads better than a traceback through Lightning. GENRET_TRACEBACK=1 keeps it.
        if not _is_user_error(err) or os.environ.get("GENRET_TRACEBACK"):
            raise
        print(f"genret {name}: error: {err}", file=sys.stderr)
        return 2


def _is_user_error(err: Exception) -> bool:
    from genret.data.interactions import DataError
    from genret.tokenizers.artifacts import ArtifactError

    return isinstance(err, (DataError, ArtifactError))


if __name__ == "__main__":
    sys.exit(main())
