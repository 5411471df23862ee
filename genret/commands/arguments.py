"""The argument parser of genret's own subcommands: one flag style across them.

Flags are spelled like LightningCLI's keys (`--eval_batch_size`, as `--trainer.max_epochs`), so a
setting reads the same in every command and config; the hyphenated spellings (`--eval-batch-size`)
are still accepted.
"""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse with genret's flag style. `renamed` maps old flag names to their current ones
    (e.g. {"--levels": "--n_levels"}), so scripts written against an older spelling keep working."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = {opt for action in self._actions for opt in action.option_strings}

        def underscored(arg: str) -> str:
            name, eq, value = arg.partition("=")
            if name in self.renamed:
                return self.renamed[name] + eq + value
            if name.startswith("--") and name not in known:
                alias = "--" + name[2:].replace("-", "_")
                if alias in known:
                    return alias + eq + value
            return arg

        return super().parse_known_args([underscored(a) for a in args], namespace)
