"""cli.py: every command parses and documents itself, user errors are one line and exit 2, and the commands that
need no model run in-process."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

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
    assert (inspect.folds, inspect.near_distance) == (default(CV, "n_splits"), None)  # None: the kind's own


def test_inspect_uses_the_near_duplicate_threshold_the_study_sets_for_the_kind():
    """configs/paper.yaml's BUSI and DDTI entries set their own thresholds; inspect --kind uses the same."""
    from sonotune.data.inspection import default_near_distance

    entries = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())["datasets"]
    for entry in entries.values():
        if isinstance(entry, dict) and "near_duplicate_distance" in entry:
            assert default_near_distance(entry["kind"]) == entry["near_duplicate_distance"], entry["kind"]
    assert {default_near_distance("busi"), default_near_distance("ddti")} == {8, 4}
    assert default_near_distance("folder") == default(Prepare, "near_duplicate_distance")


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


def _python(code: str, cwd, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TF_")} | env
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True,
                          check=True)


def test_commands_without_a_model_never_import_tensorflow(tmp_path):
    """`--help`, `phantom`, `prepare` and `params` stay fast: no TensorFlow (seconds of import, and its startup lines)."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    done = _python("import sys\nfrom sonotune.cli import main\n"
                   "for argv in (['--help'], ['prepare', '--help'], ['phantom', '--dataset', 'phantom'],\n"
                   "             ['prepare', '--dataset', 'phantom'],\n"
                   "             ['params', '--out', 'merged.yaml', 'params.yaml']):\n"
                   "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
                   "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))", tmp_path)
    assert done.stdout.splitlines()[-1] == "[]" and (tmp_path / "prepared" / "phantom.json").is_file()


def test_tensorflow_imports_silently_under_the_cli(tmp_path):
    """TF 2.21 prints absl/oneDNN/cudart lines to fd 2 on import whatever TF_CPP_MIN_LOG_LEVEL says: under the
    CLI's import hook nothing reaches stderr (and without it something does, so the check can fail)."""
    loud = _python("import keras", tmp_path)
    quiet = _python("from sonotune.cli import _quiet_tensorflow\n_quiet_tensorflow()\nimport keras\n"
                    "import logging\nprint(logging.getLogger('tensorflow').level)", tmp_path)
    assert "absl::InitializeLog" in loud.stderr or "oneDNN" in loud.stderr or "cudart" in loud.stderr
    assert quiet.stderr == "" and quiet.stdout.strip() == str(__import__("logging").ERROR)


def test_inspect_kinds_are_the_inspection_modules():
    from sonotune.data.inspection import KINDS

    kind = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices[
        "inspect"]._option_string_actions["--kind"]
    assert tuple(kind.choices) == KINDS
