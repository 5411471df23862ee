"""`genret quickstart` passes LightningCLI overrides on in order, in both spellings."""

from __future__ import annotations

import pytest

from genret.commands import quickstart
from genret.eval import benchmark as runs


class Stop(Exception):
    pass


@pytest.mark.parametrize("given", [["--trainer.max_epochs", "1"], ["--trainer.max_epochs=1"]])
def test_overrides_keep_their_order(monkeypatch, tmp_path, given):
    seen = {}

    def run_generative(config, out, model, overrides, ks):
        seen.update(config=config, overrides=overrides)
        raise Stop

    monkeypatch.setattr(runs, "run_generative", run_generative)
    with pytest.raises(Stop):
        quickstart.main(["--no-baseline-training", *given, "--out", str(tmp_path), "--data.batch_size", "8"])
    assert seen["overrides"] == [*given, "--data.batch_size", "8"]
    assert seen["config"] == str(quickstart.DEFAULT_CONFIG)
