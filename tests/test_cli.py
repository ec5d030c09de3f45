"""cli.py: every command parses and documents itself, user errors are one line and exit 2, and the commands that
need no model run in-process."""

from __future__ import annotations

import argparse

import pytest
import yaml

from sonotune.cli import build_parser, main
from sonotune.config import CV, Params, PhantomSource, Prepare, default
from tests.workspace import ROOT


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_the_docstring_lists_every_command():
    import sonotune.cli

    listed = sonotune.cli.__doc__.split("Commands:")[1]
    assert all(command in listed for command in _commands())


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage: sonotune " + command in capsys.readouterr().out


def test_option_defaults_are_the_params_defaults():
    parser = build_parser()
    phantom = parser.parse_args(["phantom", "out"])
    assert (phantom.n_benign, phantom.n_malignant, phantom.size, phantom.seed) == (
        default(PhantomSource, "n_benign"), default(PhantomSource, "n_malignant"),
        default(PhantomSource, "image_size"), default(Params, "seed"))
    inspect = parser.parse_args(["inspect", "somewhere"])
    assert (inspect.folds, inspect.near_distance) == (default(CV, "n_splits"),
                                                      default(Prepare, "near_duplicate_distance"))


def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["prepare", "--dataset", "phantom", "--params", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == f"sonotune prepare: error: {tmp_path / 'missing.yaml'}: file not found\n"


def test_strategies_prints_the_frozen_layer_table(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "vgg16" in out and "inceptionv3" in out and "85" in out


def test_params_lays_the_paper_config_over_params_yaml(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    assert main(["params", str(ROOT / "configs" / "paper.yaml"), "--params", str(params)]) == 0
    assert "configs/paper.yaml laid over it" in capsys.readouterr().out
    assert yaml.safe_load(params.read_text())["finetune"]["epochs"] == 30
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune: {epochs: 0}\n")
    assert main(["params", str(bad), "--params", str(params)]) == 2
    assert "finetune.epochs: Input should be greater than or equal to 1" in capsys.readouterr().err
