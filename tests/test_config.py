import pytest
import yaml

from sonotune.config import flatten, load_params, parse_params
from sonotune.errors import ConfigError
from tests.conftest import ROOT, tiny_params


def test_shipped_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.protocol == "leakage_free"
    assert params.finetune.learning_rate > 0
    assert set(params.study.datasets) <= set(params.datasets)


def test_paper_config_is_the_full_study():
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    params = parse_params(paper, "configs/paper.yaml")
    assert params.study.backbones == ["vgg16", "vgg19", "resnet50", "resnet101", "inceptionv3"]
    assert params.study.strategies == [0, 15, 25, 50, 75, 85, 100]
    assert (params.finetune.epochs, params.finetune.batch_size, params.cv.n_splits) == (30, 4, 5)
    assert params.finetune.input_size is None and params.finetune.weights == "imagenet"
    assert params.svm.c_grid == [0.1, 1.0, 10.0, 100.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"finetune.epochs": 0}, "finetune.epochs: Input should be greater than or equal to 1 (got 0)"),
        ({"finetune.epochs": "ten"}, "finetune.epochs: Input should be a valid integer (got 'ten')"),
        ({"finetune.learning_rate": "1e-4"}, "finetune.learning_rate: Input should be a valid number"),
        ({"finetune.epoch": 3}, "finetune.epoch: unknown key"),
        ({"protocol": "sloppy"}, "protocol: Input should be 'leakage_free' or 'paper' (got 'sloppy')"),
        ({"study.strategies": [10]}, "study.strategies.0: Input should be 0, 15, 25, 50, 75, 85 or 100"),
        ({"study.datasets": ["busi"]}, "study.datasets: 'busi' is not defined under datasets"),
        ({"study.backbones": ["alexnet"]}, "study.backbones: unknown backbone 'alexnet' (valid: inceptionv3,"),
        ({"cv.val_fraction": 1.5}, "cv.val_fraction: Input should be less than 1 (got 1.5)"),
        ({"svm.c_grid": [0.1, -1.0]}, "svm.c_grid.1: Input should be greater than 0 (got -1.0)"),
        ({"svm.c_grid": []}, "svm.c_grid: List should have at least 1 item"),
        ({"datasets.phantom.kind": "webcam"}, "datasets.phantom: Input tag 'webcam' found using 'kind' does not match"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        parse_params(tiny_params(**override), "params.yaml")
    text = str(error.value)
    assert text.startswith("params.yaml: ") and message in text
    assert "\n" not in text


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_flatten_gives_dotted_keys():
    params = parse_params(tiny_params())
    flat = flatten(params.finetune, "finetune.")
    assert flat["finetune.epochs"] == 2 and flat["finetune.weights"] is None
