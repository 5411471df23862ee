"""`genret quickstart` passes LightningCLI overrides on in order, in both spellings."""

from __future__ import annotations

import pytest

from genret import pipeline
from genret.commands import quickstart


class Stop(Exception):
    pass


@pytest.mark.parametrize("given", [["--trainer.max_epochs", "1"], ["--trainer.max_epochs=1"]])
def test_overrides_keep_their_order(monkeypatch, tmp_path, given):
    seen = {}

    def run_variant(config, out, model, overrides, ks):
        seen.update(config=config, overrides=overrides)
        raise Stop

    monkeypatch.setattr(pipeline, "run_variant", run_variant)
    with pytest.raises(Stop):
        quickstart.main(["--no-baseline-training", *given, "--out", str(tmp_path), "--data.batch_size", "8"])
    assert seen["overrides"] == [*given, "--data.batch_size", "8"]
    assert seen["config"] == str(quickstart.DEFAULT_CONFIG)
