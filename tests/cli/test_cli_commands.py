"""The `genret` console script: every subcommand is reachable and answers --help."""

import pytest

from genret.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "train"])  # train's help: tests/training
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: genret" in capsys.readouterr().out


def test_unknown_command_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["tokenise"])
    assert "unknown command 'tokenise'" in capsys.readouterr().err
