"""Every real source on the shared samples (../shared/datasets): counts, exclusions and duplicate groups.

The expected values come from the samples' README (what each sample holds, which images are duplicates) and
from the study's conventions (BUSI normal left out, DDTI TI-RADS 2–3 benign, 4a–5 malignant, empty unlabelled).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sonotune.cli import main
from sonotune.config import (BusiSource, CsvSource, DdtiSource, MendeleySource, merged_params,
                             near_duplicate_distance, parse_params)
from sonotune.data.duplicates import closest_pairs, duplicate_clusters, merged_groups
from sonotune.data.manifest import COLUMNS, build_manifest, check_study_ready, included
from sonotune.data.data_report import data_report
from sonotune.data.sources import collect_records, detect_kind
from tests.workspace import ROOT


def manifest_of(source, tmp_path) -> pd.DataFrame:
    return build_manifest(collect_records(source, tmp_path, 0), source.kind)


def names(paths) -> set[str]:
    return {Path(p).name for p in paths}


def duplicate_sets(report: dict) -> set[frozenset[str]]:
    return {frozenset(Path(m).name for m in group["members"]) for group in report["duplicate_groups"]}


def group_of(manifest: pd.DataFrame, name: str) -> str:
    return manifest.loc[manifest["path"].map(lambda p: Path(p).name) == name, "group"].item()


@pytest.fixture
def busi_root(shared_datasets):
    return shared_datasets / "busi" / "Dataset_BUSI_with_GT"


def test_busi_sample(busi_root, tmp_path):
    manifest = manifest_of(BusiSource(kind="busi", root=str(busi_root)), tmp_path)
    assert list(manifest.columns) == COLUMNS
    assert not manifest["path"].str.contains("_mask").any()  # masks are never images
    assert len(manifest) == 25 + 24 + 6
    report = data_report(manifest)
    # 25 benign and 24 malignant, less the two cross-class duplicate pairs; normal left out
    assert report["per_class"] == {"benign": 23, "malignant": 22}
    assert report["excluded_by_reason"] == {"class left out": 6, "label conflict": 4}
    conflicts = manifest[manifest["excluded_reason"].str.startswith("label conflict")]
    assert names(conflicts["path"]) == {"malignant (145).png", "benign (433).png", "malignant (51).png",
                                        "benign (42).png"}
    excluded_normal = manifest[manifest["excluded_reason"].str.startswith("class left out")]
    assert (excluded_normal["label"] == "normal").all() and len(excluded_normal) == 6
    assert duplicate_sets(report) == {
        frozenset({"malignant (145).png", "benign (433).png"}),
        frozenset({"malignant (51).png", "benign (42).png"}),
        frozenset({"benign (437).png", "normal (34).png"}),
        frozenset({"malignant (118).png", "malignant (119).png"}),
        frozenset({"malignant (4).png", "malignant (5).png"}),
        frozenset({"malignant (6).png", "malignant (7).png", "malignant (8).png", "malignant (9).png"}),
    }
    exact = [g for g in report["duplicate_groups"] if g["kind"] == "exact"]
    assert [names(g["members"]) for g in exact] == [{"malignant (145).png", "benign (433).png"}]
    assert group_of(manifest, "malignant (118).png") == group_of(manifest, "malignant (119).png")
    assert group_of(manifest, "malignant (118).png") != group_of(manifest, "malignant (4).png")
    assert report["n_groups"] == 45 - 1 - 1 - 3
    check_study_ready(manifest, 5, "busi")


def test_busi_sample_keeping_normal(busi_root, tmp_path):
    manifest = manifest_of(BusiSource(kind="busi", root=str(busi_root.parent), normal="benign"), tmp_path)
    report = data_report(manifest)
    assert report["per_class"] == {"benign": 23 + 6, "malignant": 22}
    assert group_of(manifest, "benign (437).png") == group_of(manifest, "normal (34).png")


def test_mendeley(shared_datasets, tmp_path):
    manifest = manifest_of(MendeleySource(kind="mendeley", root=str(shared_datasets / "mendeley")), tmp_path)
    report = data_report(manifest)
    assert report["per_class"] == {"benign": 100, "malignant": 150} and report["n_excluded"] == 0
    assert report["modes"] == {"L": 250}
    # the 250 images are short clips of one lesion (us1–us5, us6–us10, …): near duplicates, one group each
    groups = duplicate_sets(report)
    assert frozenset(f"us{i}.bmp" for i in range(1, 6)) in groups
    assert frozenset(f"us{i}.bmp" for i in [*range(111, 116), *range(221, 226)]) in groups
    assert report["n_groups"] == 46  # 50 clips, 4 of them stored twice
    assert not any(g["cross_class"] for g in report["duplicate_groups"])


# Clips of Mendeley stored twice under two numbers (found by the content hash, checked by eye): the first
# frame numbers of the two copies. us111–us115 = us221–us225 and us116–us120 = us226–us230 are in the README;
# us186–us190 = us236–us240 (a re-crop, 8 rows shorter) and us191–us195 = us241–us245 (other borders) are not.
MENDELEY_TWICE = {221: 111, 226: 116, 236: 186, 241: 191}


def mendeley_lesions() -> set[frozenset[str]]:
    """The true grouping of Mendeley: one group per lesion, a lesion = a clip, or both copies of a clip."""
    lesions: dict[int, set[str]] = {}
    for number in range(1, 251):
        first = (number - 1) // 5 * 5 + 1
        lesions.setdefault(MENDELEY_TWICE.get(first, first), set()).add(f"us{number}.bmp")
    return {frozenset(members) for members in lesions.values()}


def fold_groups(manifest: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(names(rows["path"])) for _, rows in manifest.groupby("group")}


def paper_source(name: str, shared_datasets: Path):
    """A dataset entry of configs/paper.yaml (with its near-duplicate threshold) pointed at the shared sample."""
    params = parse_params(merged_params(ROOT / "params.yaml", [ROOT / "configs" / "paper.yaml"]))
    source = params.datasets[name]
    root = {"busi": "busi", "ddti": "ddti", "mendeley": "mendeley"}[name]
    return source.model_copy(update={"root": str(shared_datasets / root)}), params.prepare


def test_mendeley_groups_are_exactly_its_clips(shared_datasets, tmp_path):
    source, prepare = paper_source("mendeley", shared_datasets)
    records = collect_records(source, tmp_path, 0)
    assert len({r.group for r in records}) == 50  # the loader knows the clips
    threshold = near_duplicate_distance(source, prepare)
    assert fold_groups(build_manifest(records, "mendeley", threshold)) == mendeley_lesions()
    # the threshold has room on both sides: two bits less or more, the same groups
    for nearby in (threshold - 2, threshold + 2):
        assert fold_groups(build_manifest(records, "mendeley", nearby)) == mendeley_lesions()


def test_ddti_merges_two_cases_only_through_identical_pixels(shared_datasets, tmp_path):
    source, prepare = paper_source("ddti", shared_datasets)
    records = collect_records(source, tmp_path, 0)
    for threshold in sorted({near_duplicate_distance(source, prepare), prepare.near_duplicate_distance}):
        manifest = build_manifest(records, "ddti", threshold)
        exact = merged_groups(manifest["source_group"].tolist(),
                              duplicate_clusters(manifest["sha256"].tolist(), manifest["phash"].tolist(), None))
        assert manifest["group"].tolist() == exact, f"a near duplicate joined two cases at {threshold} bits"
        assert manifest["group"].nunique() == 30 - 5  # 30 cases, 5 joined to others by a shared image
        assert check_study_ready(manifest, 5, "ddti") is None
    # margin: the closest images of two different groups are 18 bits apart on the content hash (12 on the
    # hash of the whole screen, docs/datasets.md)
    assert closest_pairs(manifest["phash"].tolist(), manifest["group"].tolist(), 1)[0][0] >= 16


def test_busi_recrops_are_grouped_at_the_busi_threshold(shared_datasets, tmp_path):
    source, prepare = paper_source("busi", shared_datasets)
    threshold = near_duplicate_distance(source, prepare)
    manifest = build_manifest(collect_records(source, tmp_path, 0), "busi", threshold)
    for pair in [("malignant (118).png", "malignant (119).png"), ("malignant (51).png", "benign (42).png"),
                 ("benign (437).png", "normal (34).png"), ("malignant (4).png", "malignant (5).png"),
                 ("malignant (7).png", "malignant (8).png")]:
        assert group_of(manifest, pair[0]) == group_of(manifest, pair[1]), pair
    assert data_report(manifest)["n_groups"] == 40
    # the closest pair left apart is 12 bits away (malignant 4 ~ 6: another view of the lesion, not a re-crop)
    assert closest_pairs(manifest["phash"].tolist(), manifest["group"].tolist(), 1)[0][0] == 12


def test_ddti_sample(shared_datasets, tmp_path):
    manifest = manifest_of(DdtiSource(kind="ddti", root=str(shared_datasets / "ddti")), tmp_path)
    report = data_report(manifest)
    assert len(manifest) == 40
    assert report["per_class"] == {"benign": 11, "malignant": 12}
    unlabelled = manifest[manifest["excluded_reason"].str.startswith("no label")]
    assert report["excluded_by_reason"] == {"no label": 17}
    assert {Path(p).stem.split("_")[0] for p in unlabelled["path"]} == {
        "1", "92", "140", "150", "213", "230", "323", "326", "349", "396"}
    assert duplicate_sets(report) == {
        frozenset({"1_1.jpg", "1_2.jpg"}), frozenset({"213_1.jpg", "213_2.jpg"}),
        frozenset({"230_1.jpg", "230_2.jpg"}), frozenset({"92_3.jpg", "92_4.jpg"}),
        frozenset({"353_2.jpg", "396_1.jpg"}),
        frozenset({"233_2.jpg", "349_1.jpg", "150_1.jpg", "326_1.jpg", "323_1.jpg"}),
    }
    assert all(g["kind"] == "exact" for g in report["duplicate_groups"])
    # group = case, merged with the cases it shares an image with
    assert group_of(manifest, "130_1.jpg") == group_of(manifest, "130_2.jpg") == "130"
    assert group_of(manifest, "233_1.jpg") == "150+233+323+326+349"
    assert group_of(manifest, "353_1.jpg") == "353+396"
    assert report["n_groups"] == 20


def test_csv_source_over_a_shared_set(shared_datasets, tmp_path):
    root = shared_datasets / "mendeley"
    listing = tmp_path / "listing.csv"
    rows = [(f"benign/us{i}.bmp", "B", f"p{(i - 1) // 5}") for i in range(1, 11)]
    rows += [(f"malignant/us{i}.bmp", "M", "") for i in range(101, 106)]
    pd.DataFrame(rows, columns=["path", "label", "group"]).to_csv(listing, index=False)
    source = CsvSource(kind="csv", manifest=str(listing), root=str(root), labels={"B": "benign", "M": "malignant"})
    manifest = manifest_of(source, tmp_path)
    assert included(manifest)["label"].value_counts().to_dict() == {"benign": 10, "malignant": 5}
    assert manifest["group"].iloc[0] == "p0" and manifest["path"].iloc[0] == (root / "benign/us1.bmp").as_posix()
    assert group_of(manifest, "us101.bmp") == "malignant/us101.bmp+malignant/us102.bmp+malignant/us103.bmp+" \
                                              "malignant/us104.bmp+malignant/us105.bmp"


@pytest.mark.parametrize("sample, kind", [("busi", "busi"), ("busi/Dataset_BUSI_with_GT", "busi"),
                                          ("ddti", "ddti"), ("mendeley", "mendeley")])
def test_kinds_are_detected(shared_datasets, sample, kind):
    assert detect_kind(shared_datasets / sample) == kind


def test_inspect_prints_the_report_and_writes_the_manifest(shared_datasets, tmp_path, capsys):
    out_csv = tmp_path / "busi.csv"
    assert main(["inspect", str(shared_datasets / "busi"), "--manifest", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "45 images in the study (benign 23, malignant 22)" in text
    assert "benign/benign (433).png = malignant/malignant (145).png  [exact, cross-class, label conflict, left out]" in text
    assert "malignant/malignant (118).png = malignant/malignant (119).png  [near]" in text
    written = pd.read_csv(out_csv, keep_default_na=False)
    assert len(written) == 55 and list(written.columns) == COLUMNS

    assert main(["inspect", str(shared_datasets / "ddti")]) == 0
    assert "23 images in the study (benign 11, malignant 12)" in capsys.readouterr().out


def test_inspect_lists_the_grouping_audit(shared_datasets, capsys):
    assert main(["inspect", str(shared_datasets / "ddti"), "--closest", "2"]) == 0
    text = capsys.readouterr().out
    assert "grouping audit (near duplicates: ≤ 4 bits of 64):" in text
    assert "  closest pairs in different groups: 2\n    18 bits  127_1.jpg (benign) ~ 230_1.jpg (-)" in text
    assert "  groups spanning several source groups (cases, clips, patients): 2" in text
    assert "    353 + 396: 353_2.jpg ~ 396_1.jpg identical pixels" in text
    assert main(["inspect", str(shared_datasets / "mendeley")]) == 0
    text = capsys.readouterr().out
    assert "    us186-us190 + us236-us240: malignant/us186.bmp ~ malignant/us239.bmp 4 bits" in text
    assert "  closest pairs in different groups: 10\n    10 bits  benign/us26.bmp (benign) ~ benign/us100.bmp" in text
