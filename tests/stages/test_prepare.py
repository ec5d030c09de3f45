"""Stage `prepare` on generated datasets: manifest, data report, keyed image cache, failures leave no output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sonotune.config import parse_params
from sonotune.data.images import load_square
from sonotune.data.manifest import COLUMNS, read_manifest
from sonotune.errors import ConfigError, DataError
from sonotune.data.prepared import dataset_info, load_prepared
from sonotune.stages.prepare import prepare_dataset
from tests.workspace import ROOT
from tests.data.helpers import class_folders, write_image


def params_for(datasets: dict, **prepare) -> object:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"] = datasets
    raw["study"] = {"datasets": list(datasets), "backbones": ["vgg16"], "strategies": [0]}
    raw["finetune"]["input_size"] = 32
    raw["cv"]["n_splits"] = 3
    raw["prepare"].update(prepare)
    return parse_params(raw)


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = class_folders(tmp_path / "data" / "set", {"benign": 5, "malignant": 4, "unused": 2})
    Image.fromarray(np.array(Image.open(root / "benign" / "benign_1.png")).astype(np.uint16) * 200).save(
        root / "benign" / "wide16.png")  # 16-bit greyscale
    Image.open(root / "malignant" / "malignant_1.png").convert("RGBA").save(root / "malignant" / "alpha.png")
    return root


def test_prepare_writes_manifest_report_and_keyed_cache(dataset, tmp_path):
    params = params_for({"set": {"kind": "folder", "root": str(dataset)}})
    out = tmp_path / "prepared"
    report = prepare_dataset(params, "set", root=out)

    assert report["per_class"] == {"benign": 6, "malignant": 5} and report["n_excluded"] == 0
    assert json.loads((out / "set.json").read_text()) == report
    manifest = read_manifest(out / "set" / "manifest.csv")
    assert list(manifest.columns) == COLUMNS
    assert not manifest["path"].str.contains("unused").any()
    assert set(manifest["mode"]) == {"L", "I;16", "RGBA"}
    assert manifest["phash"].str.fullmatch(r"[0-9a-f]{16}").all()

    rows, images = load_prepared("set", 32, root=out)
    assert images.shape == (11, 32, 32, 3) and images.dtype == np.uint8
    for index in (0, len(rows) - 1):  # arrays in manifest order
        assert np.array_equal(images[index], load_square(Path(rows["path"][index]), 32))
    assert json.loads((out / "set" / "cache.json").read_text()) == {
        "dataset": "set", "sizes": [32], "resize": "stretch", "digest": report["digest"]}
    # the 16-bit and RGBA files are re-saves of benign_1 and malignant_1: found as duplicates, grouped with them
    groups = {g["id"]: (g["kind"], sorted(g["members"])) for g in report["duplicate_groups"]}
    assert sorted(groups.values()) == [("exact", ["malignant/alpha.png", "malignant/malignant_1.png"]),
                                       ("near", ["benign/benign_1.png", "benign/wide16.png"])]
    info = dataset_info("set", root=out)
    assert info == {"dataset": "set", "source": "folder", "digest": report["digest"], "n_images": 11,
                    "n_benign": 6, "n_malignant": 5, "n_groups": 9, "n_excluded": 0, "n_duplicate_groups": 2}
    with pytest.raises(DataError, match="no 64 px arrays"):
        load_prepared("set", 64, root=out)

    # a manifest that no longer matches its arrays is refused
    edited = (out / "set" / "manifest.csv").read_text().replace(",benign,", ",malignant,", 1)
    (out / "set" / "manifest.csv").write_text(edited)
    with pytest.raises(DataError, match="image cache does not match the manifest"):
        load_prepared("set", 32, root=out)


def test_image_conversion_to_rgb_uint8(tmp_path):
    grey16 = np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # half-transparent red over black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    g16 = load_square(tmp_path / "g16.png", 20)
    assert g16.dtype == np.uint8 and g16.shape == (20, 20, 3) and g16.min() < 10 and g16.max() > 245
    red = load_square(tmp_path / "rgba.png", 20, "pad")
    assert abs(int(red[10, 10, 0]) - 100) <= 2 and red[10, 10, 1] == 0


def test_a_bad_image_is_excluded_unless_strict(dataset, tmp_path):
    (dataset / "benign" / "benign_0.png").write_bytes(b"broken")
    out = tmp_path / "prepared"
    params = params_for({"set": {"kind": "folder", "root": str(dataset)}})
    report = prepare_dataset(params, "set", root=out)
    assert report["per_class"]["benign"] == 5 and report["excluded_by_reason"] == {"corrupt image": 1}

    strict = params_for({"set": {"kind": "folder", "root": str(dataset)}}, strict=True)
    with pytest.raises(DataError, match=r"benign_0\.png: corrupt image.*--strict"):
        prepare_dataset(strict, "set", root=out)
    assert load_prepared("set", 32, root=out)[1].shape[0] == 10  # the previous output is intact
    assert sorted(p.name for p in out.iterdir()) == ["set", "set.json"]  # no staging folder left
    with pytest.raises(DataError, match="--strict"):
        prepare_dataset(params, "set", root=out, strict=True)


def test_fewer_groups_than_folds_stops_naming_the_dataset(tmp_path):
    root = class_folders(tmp_path / "set", {"benign": 5, "malignant": 2})
    with pytest.raises(DataError, match=r"datasets\.set: class malignant has 2 images in 2 independent groups, "
                                        r"fewer than the 3 folds"):
        prepare_dataset(params_for({"set": {"kind": "folder", "root": str(root)}}), "set", root=tmp_path / "p")
    assert not (tmp_path / "p" / "set").exists()


def test_cli_prepare_reports_bad_data_in_one_line(tmp_path, monkeypatch, capsys):
    from sonotune.cli import main

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["busi"] = {"kind": "busi", "root": "data/busi/Dataset_BUSI_with_GT"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "--dataset", "busi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("sonotune prepare: error: data/busi/Dataset_BUSI_with_GT: dataset root not found "
                   "(expected Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (N).png)")
    assert not (tmp_path / "prepared" / "busi").exists()


@pytest.mark.parametrize("source, key", [
    ({"kind": "busi", "normal": "keep"}, "datasets.d.busi.normal"),
    ({"kind": "ddti", "tirads": {"4a": "suspicious"}}, "datasets.d.ddti.tirads.4a"),
    ({"kind": "csv"}, "datasets.d.csv.manifest"),
    ({"kind": "mendeley", "root": "data/mendeley", "colour": True}, "datasets.d.mendeley.colour"),
])
def test_source_keys_are_validated(source, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        params_for({"d": source})


def test_near_duplicate_distance_is_validated():
    with pytest.raises(ConfigError, match=r"prepare\.near_duplicate_distance"):
        params_for({"d": {"kind": "mendeley"}}, near_duplicate_distance=70)
    assert params_for({"d": {"kind": "mendeley"}}, near_duplicate_distance=None).prepare.near_duplicate_distance is None


def _group_of(out: Path, name: str) -> str:
    manifest = read_manifest(out / "set" / "manifest.csv")
    return manifest.loc[manifest["path"].str.endswith(name), "group"].item()


@pytest.mark.parametrize("prepare_distance, entry, grouped", [
    (None, {}, False),  # prepare's exact-only threshold
    (None, {"near_duplicate_distance": 6}, True),  # the dataset's own threshold wins
    (6, {}, True),
    (6, {"near_duplicate_distance": None}, False),  # ... null included: exact duplicates only for this dataset
])
def test_a_dataset_entry_overrides_the_near_duplicate_distance(dataset, tmp_path, prepare_distance, entry, grouped):
    """wide16.png is a 16-bit re-save of benign_1.png: a near duplicate, not a pixel-identical one."""
    params = params_for({"set": {"kind": "folder", "root": str(dataset), **entry}},
                        near_duplicate_distance=prepare_distance)
    prepare_dataset(params, "set", root=tmp_path / "p")
    assert (_group_of(tmp_path / "p", "wide16.png") == _group_of(tmp_path / "p", "benign_1.png")) is grouped


def test_the_paper_protocol_keeps_label_conflicts_and_counts_images_per_fold(tmp_path):
    import shutil

    root = class_folders(tmp_path / "set", {"benign": 5, "malignant": 3})
    for i in (1, 2):  # malignant_1, malignant_2 := copies of malignant_0: one group of three
        shutil.copy(root / "malignant" / "malignant_0.png", root / "malignant" / f"malignant_{i}.png")
    shutil.copy(root / "benign" / "benign_0.png", root / "malignant" / "copy.png")  # one image, two labels
    leakage_free = params_for({"set": {"kind": "folder", "root": str(root)}})
    with pytest.raises(DataError, match="class malignant has 3 images in 1 independent groups"):
        prepare_dataset(leakage_free, "set", root=tmp_path / "p")  # the conflict left out; groups per fold

    paper = params_for({"set": {"kind": "folder", "root": str(root)}}).model_copy(update={"protocol": "paper"})
    report = prepare_dataset(paper, "set", root=tmp_path / "p")
    assert report["per_class"] == {"benign": 5, "malignant": 4} and report["n_excluded"] == 0
    conflict = [g for g in report["duplicate_groups"] if g["cross_class"]]
    assert len(conflict) == 1 and conflict[0]["label_conflict"] and conflict[0]["conflict_kept"]
    rows, images = load_prepared("set", 32, root=tmp_path / "p")
    assert len(rows) == len(images) == 9 and sorted(rows["label"]) == ["benign"] * 5 + ["malignant"] * 4


def test_mendeley_frames_are_grouped_by_clip(tmp_path):
    root = tmp_path / "mendeley"
    for number in range(1, 31):
        label = "benign" if number <= 15 else "malignant"
        write_image(root / label / f"us{number}.bmp", number)
    write_image(root / "benign" / "extra.bmp", 99)
    params = params_for({"set": {"kind": "mendeley", "root": str(root)}})
    report = prepare_dataset(params, "set", root=tmp_path / "p")
    manifest = read_manifest(tmp_path / "p" / "set" / "manifest.csv")
    groups = dict(zip(manifest["path"].map(lambda p: Path(p).stem), manifest["group"]))
    assert groups["us1"] == groups["us5"] == "us1-us5" and groups["us6"] == "us6-us10"
    assert groups["us16"] == groups["us20"] == "us16-us20" and groups["extra"] == "benign/extra"
    assert report["n_groups"] == 7
    single = params_for({"set": {"kind": "mendeley", "root": str(root), "clip_frames": 1}})
    assert prepare_dataset(single, "set", root=tmp_path / "q")["n_groups"] == 31


def test_the_phantom_set_is_read_from_its_folder_as_the_one_prepare_would_render(tmp_path):
    """data.dvc's layout: `sonotune phantom --dataset` writes data/phantom; prepare reads it as a folder dataset,
    with the manifest and image arrays of the set it renders itself when the entry has no root."""
    from sonotune.data.phantom import STAMP, write_phantom_dataset

    entry = {"kind": "phantom", "n_benign": 6, "n_malignant": 4, "image_size": 48}
    folder = params_for({"phantom": {**entry, "root": str(tmp_path / "data" / "phantom")}})
    written = write_phantom_dataset(tmp_path / "data" / "phantom", folder.datasets["phantom"], folder.seed)
    assert len(written) == 10 and json.loads((tmp_path / "data/phantom" / STAMP).read_text())["seed"] == folder.seed

    from_folder = prepare_dataset(folder, "phantom", root=tmp_path / "a")
    rendered = prepare_dataset(params_for({"phantom": entry}), "phantom", root=tmp_path / "b")
    assert from_folder["per_class"] == {"benign": 6, "malignant": 4} and from_folder["n_excluded"] == 0
    paths = read_manifest(tmp_path / "a/phantom/manifest.csv")["path"]
    assert paths.str.startswith(str(tmp_path / "data" / "phantom")).all()  # read where it lies, not copied
    assert np.array_equal(load_prepared("phantom", 32, root=tmp_path / "a")[1],
                          load_prepared("phantom", 32, root=tmp_path / "b")[1])


@pytest.mark.parametrize("change, message", [
    ({"n_benign": 7}, r"generated with other settings than params\.yaml's seed and datasets\.phantom: n_benign 6 \(params: 7\)"),
    ({"root": "elsewhere"}, r"elsewhere: holds no phantom set \(phantom\.json not found\)"),
])
def test_a_phantom_folder_that_is_not_params_set_stops_prepare_saying_how_to_get_it(tmp_path, monkeypatch, change,
                                                                                      message):
    from sonotune.data.phantom import write_phantom_dataset

    monkeypatch.chdir(tmp_path)
    entry = {"kind": "phantom", "root": "data/phantom", "n_benign": 6, "n_malignant": 4, "image_size": 48}
    params = params_for({"phantom": entry})
    write_phantom_dataset(Path("data/phantom"), params.datasets["phantom"], params.seed)
    with pytest.raises(DataError, match=message + r".*`sonotune phantom --dataset phantom` regenerates it \(then "
                                                   r"`dvc commit data.dvc`\), or `dvc pull data.dvc`"):
        prepare_dataset(params_for({"phantom": {**entry, **change}}), "phantom", root=tmp_path / "p")
    assert not (tmp_path / "p" / "phantom").exists()


def test_cli_phantom_dataset_writes_the_entry_or_names_the_ones_it_can(tmp_path, monkeypatch, capsys):
    from sonotune.cli import main

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["phantom"].update(n_benign=3, n_malignant=2, image_size=32)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert main(["phantom", "--dataset", "phantom"]) == 0
    assert sorted(p.name for p in Path("data/phantom").rglob("*.png"))[:2] == ["benign_0000.png", "benign_0001.png"]
    assert main(["phantom", "--dataset", "mendeley"]) == 2
    assert capsys.readouterr().err.strip() == ("sonotune phantom: error: datasets.mendeley: not a phantom entry with "
                                               "a `root` folder (those with one: phantom)")


def test_the_disk_estimate_covers_the_image_cache_prepare_writes(dataset, tmp_path):
    """output_bytes (the disk preflight) is at least the image cache prepare then writes, plus the reserve."""
    from sonotune.layout import OUTPUT_RESERVE_BYTES
    from sonotune.stages.prepare import output_bytes

    params = params_for({"set": {"kind": "folder", "root": str(dataset)}})
    estimate = output_bytes(params, ["set"])
    prepare_dataset(params, "set", root=tmp_path / "prepared")
    cache = sum(p.stat().st_size for p in (tmp_path / "prepared" / "set").glob("images_*.npy"))
    assert OUTPUT_RESERVE_BYTES + cache <= estimate <= OUTPUT_RESERVE_BYTES + 2 * cache


def test_too_little_free_disk_stops_prepare_before_it_writes(dataset, tmp_path, monkeypatch):
    from sonotune.errors import FREE_BYTES_ENV, SonotuneError

    monkeypatch.setenv(FREE_BYTES_ENV, "1000")
    with pytest.raises(SonotuneError, match=r"need about 1\.00 GB of disk, 0\.00 GB is free"):
        prepare_dataset(params_for({"set": {"kind": "folder", "root": str(dataset)}}), "set", root=tmp_path / "p")
    assert not (tmp_path / "p").exists()
