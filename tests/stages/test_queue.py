"""`sonotune queue`'s plan: one DVC experiment per configuration of the study grid."""

from __future__ import annotations

import yaml

from sonotune.config import load_params
from sonotune.stages.queue import queue_commands
from tests.workspace import tiny_params


def test_grid_experiments_narrow_the_study_to_one_configuration(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(**{"study.backbones": ["vgg16", "resnet50"]})))
    commands = queue_commands(load_params(path), prefix="t-")
    assert [c[c.index("--name") + 1] for c in commands] == [
        "t-phantom-vgg16-0", "t-phantom-vgg16-15", "t-phantom-resnet50-0", "t-phantom-resnet50-15"]
    assert commands[3][-6:] == ["--set-param", "study.datasets=[phantom]", "--set-param",
                                "study.backbones=[resnet50]", "--set-param", "study.strategies=[15]"]
