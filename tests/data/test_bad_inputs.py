"""Bad input, generated here: each stops with one line naming the file (exit 2), or — for a single bad
image — is excluded with its reason, and `--strict` stops on it instead."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonotune.cli import main
from tests.data.helpers import class_folders, write_image


def inspect(capsys, *args) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(capsys, args, *fragments) -> str:
    code, _, err = inspect(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def folder_set(tmp_path) -> Path:
    return class_folders(tmp_path / "set", {"benign": 6, "malignant": 6})


def excluded_reasons(out: str) -> list[str]:
    report = out.split("grouping audit")[0]  # the data report, without the audit that follows it
    return [line.strip() for line in report.splitlines() if line.startswith("  ") and ": " in line]


def test_a_clean_generated_set_passes(folder_set, capsys):
    code, out, _ = inspect(capsys, folder_set)
    assert code == 0 and "12 images in the study (benign 6, malignant 6), 12 independent groups" in out
    assert "excluded: 0" in out and "duplicate groups: 0" in out


def test_missing_root(tmp_path, capsys):
    assert_one_line_error(capsys, [tmp_path / "nowhere", "--kind", "folder"], str(tmp_path / "nowhere"), "not found")
    assert_one_line_error(capsys, [tmp_path / "nowhere"], str(tmp_path / "nowhere"), "not found")


def test_empty_class_folder(folder_set, capsys):
    shutil.rmtree(folder_set / "malignant")
    (folder_set / "malignant").mkdir()
    assert_one_line_error(capsys, [folder_set], str(folder_set / "malignant"), "holds no images")


def test_only_one_class(tmp_path, capsys):
    root = class_folders(tmp_path / "set", {"benign": 6, "malignant": 6})
    for path in (root / "malignant").iterdir():  # every malignant image unusable → one class left
        path.write_bytes(b"not a png")
    assert_one_line_error(capsys, [root], str(root), "only the class(es) ['benign']")


def test_fewer_images_in_a_class_than_folds(tmp_path, capsys):
    root = class_folders(tmp_path / "set", {"benign": 6, "malignant": 3})
    assert_one_line_error(capsys, [root, "--folds", "5"], str(root), "class malignant has 3 images", "5 folds")
    assert inspect(capsys, root, "--folds", "3")[0] == 0


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt image: cannot decode"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "corrupt image: cannot decode"),
])
def test_corrupt_or_truncated_image_is_excluded_and_strict_stops(folder_set, capsys, damage, expected):
    bad = folder_set / "benign" / "benign_2.png"
    damage(bad)
    code, out, _ = inspect(capsys, folder_set)
    assert code == 0 and "benign 5, malignant 6" in out
    assert any(line.startswith("benign/benign_2.png: " + expected) for line in excluded_reasons(out))
    assert_one_line_error(capsys, [folder_set, "--strict"], str(bad), expected, "--strict")


def test_truncated_jpeg(tmp_path, capsys):
    root = class_folders(tmp_path / "set", {"benign": 6, "malignant": 6}, suffix=".jpg")
    bad = root / "malignant" / "malignant_0.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    assert_one_line_error(capsys, [root, "--strict"], str(bad), "corrupt image")


def test_non_image_file(folder_set, capsys):
    (folder_set / "benign" / "notes.txt").write_text("scan protocol")
    (folder_set / "benign" / ".DS_Store").write_bytes(b"\0")  # hidden files are not data
    code, out, _ = inspect(capsys, folder_set)
    assert code == 0 and "benign 6, malignant 6" in out
    assert excluded_reasons(out) == ["benign/notes.txt: not an image: suffix '.txt' is not one of "
                                     ".bmp, .jpeg, .jpg, .png, .tif, .tiff"]
    assert_one_line_error(capsys, [folder_set, "--strict"], "notes.txt", "not an image")


def test_a_mask_where_an_image_should_be(folder_set, capsys):
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[10:20, 12:30] = 255
    Image.fromarray(mask).save(folder_set / "malignant" / "lesion.png")  # a mask by its pixels
    Image.fromarray(mask).save(folder_set / "benign" / "benign_0_mask.png")  # a mask by its name
    code, out, _ = inspect(capsys, folder_set)
    assert code == 0 and "benign 6, malignant 6" in out
    reasons = excluded_reasons(out)
    assert "benign/benign_0_mask.png: mask: a segmentation mask where an image should be" in reasons
    assert any(r.startswith("malignant/lesion.png: mask: only black and white pixels") for r in reasons)
    assert_one_line_error(capsys, [folder_set, "--strict"], "benign_0_mask.png", "mask")


def test_a_mask_saved_as_jpeg_or_smoothed_is_still_a_mask(folder_set, capsys):
    """JPEG artefacts and the grey edge of a blurred or downscaled mask are not speckle: still excluded."""
    from PIL import ImageFilter

    mask = np.zeros((120, 144), dtype=np.uint8)
    mask[30:80, 40:100] = 255
    Image.fromarray(mask).save(folder_set / "malignant" / "lesion_scan.jpg", quality=70)
    Image.fromarray(mask).filter(ImageFilter.GaussianBlur(2)).save(folder_set / "malignant" / "blurred.png")
    Image.fromarray(mask).resize((48, 40), Image.BILINEAR).save(folder_set / "benign" / "small.png")
    code, out, _ = inspect(capsys, folder_set)
    reasons = excluded_reasons(out)
    for name in ("malignant/lesion_scan.jpg", "malignant/blurred.png", "benign/small.png"):
        assert any(r.startswith(f"{name}: mask: only black and white pixels") for r in reasons), (name, reasons)
    assert code == 0 and "benign 6, malignant 6" in out  # the real images all stay


def test_real_images_are_never_taken_for_masks_and_real_masks_always_are(shared_datasets):
    """Every image of the shared samples (BUSI, DDTI, Mendeley) passes; every BUSI mask, even as JPEG, fails."""
    import io

    from sonotune.data.manifest import looks_like_mask

    files = [p for p in shared_datasets.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".bmp")]
    masks = [p for p in files if "_mask" in p.name]
    assert masks and len(files) > len(masks)
    for path in files:
        grey = Image.open(path).convert("L")
        assert looks_like_mask(grey) == (path in masks), path
        if path in masks:
            buffer = io.BytesIO()
            grey.save(buffer, "JPEG", quality=75)
            assert looks_like_mask(Image.open(io.BytesIO(buffer.getvalue()))), path


def test_busi_mask_without_its_image(tmp_path, capsys):
    root = tmp_path / "Dataset_BUSI_with_GT"
    for cls in ("benign", "malignant"):
        for i in range(1, 6):
            write_image(root / cls / f"{cls} ({i}).png", hash((cls, i)) % 1000, "RGB")
            Image.new("L", (48, 40)).save(root / cls / f"{cls} ({i})_mask.png")
        Image.new("L", (48, 40)).save(root / cls / f"{cls} (1)_mask_1.png")
    Image.new("L", (48, 40)).save(root / "benign" / "benign (9)_mask.png")  # its image is missing
    code, out, _ = inspect(capsys, tmp_path, "--kind", "busi")
    assert code == 0 and "10 images in the study (benign 5, malignant 5)" in out
    assert excluded_reasons(out) == ["benign/benign (9)_mask.png: mask: mask of 'benign (9)', whose image is missing"]


def ddti_set(root: Path, scores: dict[int, str]) -> Path:
    for case, score in scores.items():
        write_image(root / f"{case}_1.jpg", case, "RGB")
        (root / f"{case}.xml").write_text(f"<case><number>{case}</number><tirads>{score}</tirads></case>")
    return root


def test_ddti_unknown_tirads_and_unreadable_xml(tmp_path, capsys):
    root = ddti_set(tmp_path / "ddti", {1: "2", 2: "3", 3: "2", 4: "4a", 5: "4b", 6: "5", 7: "6", 8: "", 9: "4c"})
    (root / "9.xml").write_text("<case><tirads>4c</tirads>")  # truncated XML
    write_image(root / "10_1.jpg", 10, "RGB")  # no 10.xml
    code, out, _ = inspect(capsys, root, "--folds", "3")
    assert code == 0 and "6 images in the study (benign 3, malignant 3)" in out
    reasons = excluded_reasons(out)
    assert "7_1.jpg: unknown label: TI-RADS '6' in 7.xml is not one of 2, 3, 4a, 4b, 4c, 5 (the tirads mapping)" in reasons
    assert "8_1.jpg: no label: empty <tirads> in 8.xml" in reasons
    assert any(r.startswith("9_1.jpg: unreadable annotation: 9.xml is not readable XML") for r in reasons)
    assert "10_1.jpg: missing annotation: no 10.xml beside the image" in reasons
    assert_one_line_error(capsys, [root, "--strict"], str(root / "7_1.jpg"), "unknown label", "and 2 more")


def test_label_conflict_is_excluded_by_default(folder_set, capsys):
    shutil.copy(folder_set / "benign" / "benign_0.png", folder_set / "malignant" / "copy.png")
    code, out, _ = inspect(capsys, folder_set)
    assert code == 0 and "benign 5, malignant 6" in out
    assert "benign/benign_0.png = malignant/copy.png  [exact, cross-class, label conflict, left out]" in out
    assert_one_line_error(capsys, [folder_set, "--strict"], "benign_0.png", "label conflict")


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_missing_columns(folder_set, capsys):
    listing = write_csv(folder_set / "list.csv", "file,label\nbenign/benign_0.png,benign\n")
    assert_one_line_error(capsys, [listing], str(listing), "missing column(s) path")


def test_csv_path_outside_its_root(folder_set, tmp_path, capsys):
    write_image(tmp_path / "elsewhere.png", 99)
    listing = write_csv(folder_set / "list.csv", "path,label\nbenign/benign_0.png,benign\n../elsewhere.png,malignant\n")
    assert_one_line_error(capsys, [listing], f"{listing}: line 3", "'../elsewhere.png' is outside the root")
    listing.write_text(f"path,label\n{tmp_path / 'elsewhere.png'},benign\n")
    assert_one_line_error(capsys, [listing], f"{listing}: line 2", "outside the root")


def test_csv_rows(folder_set, capsys):
    rows = [f"benign/benign_{i},benign".replace(",", ".png,") for i in range(6)]
    rows += [f"malignant/malignant_{i}.png,malignant" for i in range(6)]
    listing = write_csv(folder_set / "list.csv", "path,label\n" + "\n".join(rows) + "\nbenign/gone.png,benign\n"
                        "malignant/malignant_0.png,benign\n")
    assert_one_line_error(capsys, [listing], f"{listing}: line 15", "listed again (first on line 8)")
    listing.write_text("path,label\n" + "\n".join(rows) + "\nbenign/gone.png,benign\nbenign/benign_0.png,maybe\n")
    assert_one_line_error(capsys, [listing], f"{listing}: line 15", "listed again")
    listing.write_text("path,label\n" + "\n".join(rows) + "\nbenign/gone.png,benign\n")
    code, out, _ = inspect(capsys, listing)
    assert code == 0 and "benign 6, malignant 6" in out
    assert excluded_reasons(out) == ["benign/gone.png: missing file: listed on line 14 of list.csv"]


def test_unreadable_params_of_inspect(folder_set, capsys):
    assert_one_line_error(capsys, [folder_set, "--classes", "benign"], "--classes")
    assert_one_line_error(capsys, [folder_set, "--classes", "benign=bening,malignant=malignant"], "classes.benign")


def test_detected_layouts(tmp_path, capsys):
    bmp = class_folders(tmp_path / "bmp", {"benign": 5, "malignant": 5}, suffix=".bmp")
    assert "(mendeley)" in inspect(capsys, bmp)[1]
    unknown = tmp_path / "flat"
    write_image(unknown / "a.png", 1)
    assert_one_line_error(capsys, [unknown], str(unknown), "cannot tell the dataset kind")


def test_inspect_names_the_images_a_folder_source_does_not_read(folder_set, capsys):
    (folder_set / "benign" / "patient7").mkdir()
    Image.new("L", (48, 40), 90).save(folder_set / "benign" / "patient7" / "frame1.png")
    (folder_set / "atypical").mkdir()
    Image.new("L", (48, 40), 60).save(folder_set / "atypical" / "a.png")
    code, out, _ = inspect(capsys, folder_set)
    line = next(line for line in out.splitlines() if line.startswith("not read: "))
    assert code == 0 and "2 images under" in line and "benign/patient7/ (1)" in line and "atypical/ (1)" in line
