"""The deployed model's input contract, on a real tiny Keras model (no MLflow): every raw form of one image gives
the same probability, RGBA and any size are accepted, what is not an image is a DataError, and pyfunc inputs are
read from DataFrames, lists and single arrays."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from sonotune.errors import DataError
from sonotune.serving import as_image_list, to_rgb_image


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_raw_form_of_an_image_gives_the_same_probability(tiny_model, tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, size=(45, 70), dtype=np.uint8)
    path = tmp_path / "scan.png"
    Image.fromarray(grey).save(path)
    forms = [grey, grey[..., None], np.repeat(grey[..., None], 3, axis=-1), str(path), path, _png_bytes(grey),
             base64.b64encode(_png_bytes(grey)).decode(), (grey.astype(np.uint16) * 257)]
    probabilities = tiny_model.predict_images(forms)["probability"].to_numpy()
    np.testing.assert_allclose(probabilities, probabilities[0], rtol=0, atol=1e-6)


def test_rgba_is_composited_on_black_and_sizes_do_not_matter(tiny_model):
    rgb = np.random.default_rng(1).integers(0, 256, size=(20, 90, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 90, 1), 255, np.uint8)], axis=-1)
    frame = tiny_model.predict_images([rgb, rgba])
    assert frame["probability"].iloc[0] == pytest.approx(frame["probability"].iloc[1], abs=1e-6)
    assert set(frame.columns) == {"probability", "predicted_label", "threshold"}
    assert ((frame["probability"] >= 0.5) == (frame["predicted_label"] == "malignant")).all()


@pytest.mark.parametrize("bad", [b"not an image", "bm90IGFuIGltYWdl", np.zeros((4, 4, 2), np.uint8)])
def test_what_is_not_an_image_is_a_data_error(bad):
    with pytest.raises(DataError, match="not an image|H×W"):
        to_rgb_image(bad)


def test_pyfunc_inputs_are_read_from_dataframes_lists_and_single_arrays():
    import pandas as pd

    image = np.zeros((5, 5), np.uint8)
    assert as_image_list(pd.DataFrame({"image": ["a", "b"]})) == ["a", "b"]
    assert as_image_list(pd.DataFrame({"path": ["p"]})) == ["p"]
    assert len(as_image_list(image)) == 1 and len(as_image_list([image, image])) == 2
    assert as_image_list({"image": ["x"]}) == ["x"] and as_image_list("one.png") == ["one.png"]
