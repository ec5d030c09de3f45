"""`predict`'s file handling, on a real tiny Keras model (no MLflow): folders are searched recursively,
unreadable files are reported and skipped, bad paths fail with one line."""

import pytest
from PIL import Image

from sonotune.data.phantom import write_phantom
from sonotune.errors import DataError
from sonotune.stages.predict import collect_images, predict_files


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, 3, 3, 64, seed=1)
    return root


def test_folders_are_searched_recursively_and_bad_paths_fail(phantom_dir, tmp_path):
    found = collect_images([str(phantom_dir)])
    assert len(found) == 6 and found == sorted(found)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files in this folder"):
        collect_images([str(tmp_path / "empty")])
    with pytest.raises(DataError, match="no such file or folder"):
        collect_images([str(tmp_path / "missing.png")])


def test_unreadable_files_are_skipped_and_the_rest_scored_with_overlays(tiny_model, phantom_dir, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but truncated")
    paths = collect_images([str(phantom_dir), str(broken)])
    frame, skipped = predict_files(tiny_model, paths, gradcam_dir=tmp_path / "cams", batch=4)
    assert [p for p, _ in skipped] == [broken]
    assert "not an image" in skipped[0][1]
    assert frame["path"].tolist() == [str(p) for p in paths if p != broken]
    assert len({*frame["gradcam"]}) == 6  # unique names although benign/ and malignant/ could share stems
    for overlay, path in zip(frame["gradcam"], frame["path"]):
        assert Image.open(overlay).size == Image.open(path).size
