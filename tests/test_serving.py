"""The deployed model's input contract, on a real tiny Keras model (no MLflow): every raw form of one image gives
the same probability, RGBA and any size are accepted, what is not an image (a path among them: the model never
opens one) is a DataError, and pyfunc inputs are read from DataFrames, lists and single arrays. The HTTP server
(`sonotune serve`) is tested for real in tests/test_faults.py; here, the one line it answers an error with."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from sonotune.errors import DataError
from sonotune.serving import MAX_IMAGE_BYTES, as_image_list, read_image_file, to_rgb_image
from sonotune.stages.serve import short_error


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_raw_form_of_an_image_gives_the_same_probability(tiny_model, tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, size=(45, 70), dtype=np.uint8)
    path = tmp_path / "scan.png"
    Image.fromarray(grey).save(path)
    forms = [grey, grey[..., None], np.repeat(grey[..., None], 3, axis=-1), read_image_file(path),
             _png_bytes(grey), base64.b64encode(_png_bytes(grey)).decode(), (grey.astype(np.uint16) * 257)]
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
    assert len(as_image_list(image)) == 1 and len(as_image_list([image, image])) == 2
    assert as_image_list({"image": ["x"]}) == ["x"] and as_image_list("one.png") == ["one.png"]


def test_a_path_is_never_opened_whether_it_exists_or_not(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "real.png")
    for item in (str(tmp_path / "real.png"), str(tmp_path / "none.png"), tmp_path / "real.png", "/etc/passwd"):
        with pytest.raises(DataError, match="paths are never opened|a path is not an image"):
            to_rgb_image(item)


def test_images_over_the_bounds_are_refused_before_decoding(tmp_path):
    from sonotune.data.images import MAX_PIXELS

    with pytest.raises(DataError, match="decode limit"):
        to_rgb_image(_png_bytes(np.zeros((1, MAX_PIXELS // 1000 + 1), np.uint8).repeat(1000, axis=0)))
    with pytest.raises(DataError, match="MiB limit"):
        to_rgb_image(b"x" * (MAX_IMAGE_BYTES + 1))
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * (MAX_IMAGE_BYTES + 1))
    with pytest.raises(DataError, match="big.png.*MiB image limit"):
        read_image_file(big)


def test_an_error_answer_is_one_line_without_the_stack_trace():
    import json

    body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": "Failed to predict data '  image\\n0  x'. "
                       "\nError: not an image (cannot identify image file)", "stack_trace": "Traceback (most recent"})
    assert short_error(400, body.encode()) == {"error_code": "INVALID_PARAMETER_VALUE",
                                                "message": "not an image (cannot identify image file)"}
    assert short_error(500, b"Internal Server Error") == {"error_code": "INTERNAL_ERROR",
                                                           "message": "Internal Server Error"}


def test_an_unexpected_failure_answers_one_line_and_logs_the_trace(caplog):
    """GuardedApp around an app that crashes, served by uvicorn on 127.0.0.1: the caller gets a short JSON
    answer, the traceback goes to the log."""
    import threading
    import time

    import requests
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    from sonotune.stages.serve import GuardedApp
    from tests.servers import free_port

    def crash(request):
        raise RuntimeError("secret /srv/models/internal path")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(GuardedApp(Starlette(routes=[Route("/invocations", crash,
                                                                              methods=["POST"])])),
                                           host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with caplog.at_level("ERROR", logger="sonotune.serve"):
            answer = requests.post(f"http://127.0.0.1:{port}/invocations", data=b"{}", timeout=30)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert answer.status_code == 500 and set(answer.json()) == {"error_code", "message"}
    assert "secret" not in answer.text and "Traceback" not in answer.text
    assert "secret /srv/models/internal path" in caplog.text and "Traceback" in caplog.text


def test_the_manual_states_the_served_limits():
    from sonotune.data.images import MAX_PIXELS
    from sonotune.serving import MAX_REQUEST_BYTES
    from tests.workspace import ROOT

    manual = (ROOT / "docs" / "manual.md").read_text()
    limits = (f"{MAX_IMAGE_BYTES // 2**20} MiB", f"{MAX_REQUEST_BYTES // 2**20} MiB", f"{MAX_PIXELS // 10**6} Mpx")
    for stated in limits:
        assert stated in manual, f"docs/manual.md does not state {stated}"


def test_a_bad_image_in_a_batch_is_named_by_its_place(tiny_model):
    good = np.zeros((10, 10), np.uint8)
    with pytest.raises(DataError, match="image 2 of 3: .*paths are never opened"):
        tiny_model.predict_images([good, "/etc/passwd", good])
