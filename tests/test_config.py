import pytest
import yaml

from sonotune.config import Prepare, default, flatten, load_params, merge, merged_params, parse_params, write_merged
from sonotune.errors import ConfigError
from tests.workspace import ROOT, tiny_params


def test_shipped_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.protocol == "leakage_free"
    assert params.finetune.learning_rate > 0
    assert set(params.study.datasets) <= set(params.datasets)


def test_paper_config_is_the_full_study():
    params = parse_params(merged_params(ROOT / "params.yaml", [ROOT / "configs" / "paper.yaml"]))
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


def test_paper_config_holds_only_overrides():
    """configs/paper.yaml cannot drift from params.yaml: every key it sets exists there or is a new dataset,
    and it repeats no value params.yaml already has."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())

    def repeated(over: dict, under: dict, prefix: str = "") -> list[str]:
        found = []
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(under.get(key), dict):
                found += repeated(value, under[key], f"{prefix}{key}.")
            elif key in under and under[key] == value:
                found.append(prefix + key)
        return found

    assert repeated(paper, base) == []
    unknown = [key for key in paper if key not in base]
    assert unknown == []


def test_merge_replaces_values_and_merges_mappings():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert merge(base, {"a": {"y": [3]}, "c": 4}) == {"a": {"x": 1, "y": [3]}, "b": 2, "c": 4}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}  # not modified


def test_write_merged_keeps_comments_and_validates_first(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    write_merged(params, [ROOT / "configs" / "paper.yaml"])
    text = params.read_text()
    assert "# one seed for data generation" in text and "# the paper: 30" in text  # params.yaml's comments
    loaded = load_params(params)
    assert loaded.finetune.epochs == 30 and loaded.study.strategies == [0, 15, 25, 50, 75, 85, 100]
    assert yaml.safe_load(text) == merged_params(ROOT / "params.yaml", [ROOT / "configs" / "paper.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  epochs: 0\n")
    before = params.read_text()
    with pytest.raises(ConfigError, match="bad.yaml \\(merged over .*params.yaml\\): finetune.epochs"):
        write_merged(params, [bad])
    assert params.read_text() == before and not list(tmp_path.glob(".*.tmp"))


def test_cli_defaults_come_from_the_params_schema():
    from sonotune.cli import build_parser

    from sonotune.data.inspection import default_near_distance

    inspect = build_parser().parse_args(["inspect", "somewhere"])
    assert inspect.near_distance is None  # the kind's threshold, prepare's for a kind without its own
    assert default_near_distance("folder") == default(Prepare, "near_duplicate_distance")
