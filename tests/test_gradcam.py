"""Grad-CAM: every registry entry names a real convolutional layer; maps have the image's size, lie in [0, 1] and
are not constant; the SVM target is the pipeline's decision value; the finetune stage logs overlays per fold."""

import keras
import numpy as np
import pytest
from PIL import Image

from sonotune.data.phantom import write_phantom
from sonotune.gradcam import gradcam_maps, layer_for, overlay, svm_target
from sonotune.models.backbones import BACKBONES, create_backbone, get_spec
from sonotune.models.head import HeadConfig, build_classifier, feature_model
from sonotune.serving import ImageModel, ModelConfig
from tests.workspace import copy_repo, run, tiny_params


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_gradcam_layer_is_the_last_spatial_block(name):
    spec = get_spec(name)
    classifier = build_classifier(create_backbone(name, max(spec.min_size, 75), None), HeadConfig(dense_units=4))
    layer = classifier.get_layer(spec.gradcam_layer)
    assert len(layer.output.shape) == 4
    names = [lay.name for lay in classifier.layers]
    later = classifier.layers[names.index(spec.gradcam_layer) + 1:]
    assert not [lay.name for lay in later if isinstance(lay, keras.layers.Conv2D)]  # no convolution after it
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def phantom_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    paths = write_phantom(root, 2, 2, 96, seed=3)
    return [np.asarray(Image.open(p).convert("L"))[:, :80] for p in paths]  # greyscale, not square


@pytest.fixture(scope="module")
def trained_model(phantom_images):
    """vgg16 at 64 px trained for a few steps, so its gradients carry signal."""
    keras.utils.set_random_seed(0)
    classifier = build_classifier(create_backbone("vgg16", 64, None), HeadConfig(dense_units=16, learning_rate=1e-3))
    config = ModelConfig("phantom", "vgg16", 100, "mlp", input_size=64, resize="stretch", threshold=0.5)
    model = ImageModel(classifier, config)
    x = model.inputs(phantom_images)
    classifier.fit(x, keras.utils.to_categorical([0, 0, 1, 1], 2), epochs=3, batch_size=4, verbose=0)
    yield model
    keras.backend.clear_session()


def test_maps_have_the_image_size_and_are_not_constant(trained_model, phantom_images):
    maps = trained_model.gradcam(phantom_images)
    for image, cam in zip(phantom_images, maps):
        assert cam.shape == image.shape[:2] == (96, 80)
        assert 0.0 <= cam.min() and cam.max() <= 1.0
    assert any(cam.std() > 0.01 for cam in maps), [cam.std() for cam in maps]


def test_map_is_zero_when_the_target_does_not_depend_on_the_image(trained_model, phantom_images):
    x = trained_model.inputs(phantom_images[:1])
    cam = gradcam_maps(trained_model.keras_model, "block5_conv3", x, target=lambda out: out["probabilities"][:, 0] * 0)
    assert cam.shape[1:] == (4, 4) and not cam.any()  # 64 px / 16


def test_svm_target_is_the_pipelines_decision_value(trained_model, phantom_images):
    from sonotune.svm.search import svm_pipeline

    x = trained_model.inputs(phantom_images)
    features = feature_model(trained_model.keras_model).predict(x, verbose=0)
    pipeline = svm_pipeline().fit(features["pooled"], [0, 0, 1, 1])
    value = svm_target(pipeline, "pooled")({"pooled": features["pooled"]})
    np.testing.assert_allclose(np.asarray(value), pipeline.decision_function(features["pooled"]), rtol=1e-4, atol=1e-4)


def test_overlay_keeps_cold_pixels_and_colours_hot_ones():
    image = np.full((4, 4), 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    blended = overlay(image, heat, alpha=0.5)
    assert blended.shape == (4, 4, 3)
    assert (blended[1:, 1:] == 100).all() and not (blended[0, 0] == 100).all()


def test_layer_for_falls_back_to_the_last_convolution_for_unregistered_backbones():
    classifier = build_classifier(create_backbone("resnet50", 32, None), HeadConfig(dense_units=4))
    assert layer_for("my-cnn", classifier) == "conv5_block3_3_conv"
    assert layer_for("resnet50", classifier) == "conv5_block3_out"
    keras.backend.clear_session()
    classifier = build_classifier(create_backbone("vgg16", 32, None), HeadConfig(dense_units=4))
    assert layer_for("vgg16", classifier) == "block5_conv3"
    keras.backend.clear_session()


def test_finetune_stage_logs_only_informative_overlays_of_the_first_test_images(tmp_path):
    """At 64 px VGG16's last block is 4×4: each fold logs the overlays of its first test images whose map shows
    something, and tags the run with how many it left out."""
    from mlflow.tracking import MlflowClient

    params = tiny_params(**{"cv.n_splits": 2, "finetune.epochs": 1, "study.strategies": [0],
                            "gradcam.study_images": 2, "finetune.input_size": 64})
    repo = copy_repo(tmp_path / "repo", params)
    run(["sonotune", "prepare", "--dataset", "phantom"], repo)
    run(["sonotune", "finetune", "--dataset", "phantom", "--backbone", "vgg16", "--strategy", "0"], repo)
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sonotune-phantom")
    folds = client.search_runs([experiment.experiment_id], "tags.fold != 'all'")
    assert len(folds) == 2
    for fold in folds:
        overlays = [a.path for a in client.list_artifacts(fold.info.run_id, "gradcam")]
        assert all(p.endswith(".png") for p in overlays), overlays
        left_out = int(fold.data.tags["gradcam"].split()[0]) if "gradcam" in fold.data.tags else 0
        assert len(overlays) + left_out == 2, (overlays, fold.data.tags.get("gradcam"))


def test_a_map_too_coarse_to_locate_anything_is_skipped_with_one_reason(tmp_path, monkeypatch, capsys):
    """At 32 px VGG16's last block is 2×2 and ResNet50's 1×1: nothing is logged, the run is tagged with the reason,
    printed once for all folds."""
    import mlflow

    from sonotune.gradcam import too_small
    from sonotune.stages.finetune import log_study_overlays, say_once

    vgg = build_classifier(create_backbone("vgg16", 32, None), HeadConfig(dense_units=8))
    reason = too_small(vgg, "block5_conv3")
    assert reason == ("Grad-CAM skipped: layer block5_conv3 is 2×2 at 32 px input (a map that locates anything "
                      "needs 3×3 or more: finetune.input_size ≥ about 48)")
    assert too_small(build_classifier(create_backbone("vgg16", 48, None), HeadConfig(dense_units=8)),
                     "block5_conv3") is None
    resnet = build_classifier(create_backbone("resnet50", 32, None), HeadConfig(dense_units=8))
    assert "is 1×1 at 32 px" in too_small(resnet, "conv5_block3_out") and "about 96" in too_small(
        resnet, "conv5_block3_out")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    say_once.cache_clear()
    x = np.zeros((3, 32, 32, 3), np.float32)
    images = np.zeros((3, 32, 32), np.uint8)
    try:
        for _ in range(2):  # two folds
            with mlflow.start_run() as fold_run:
                log_study_overlays(vgg, "vgg16", x, images, np.arange(2), np.array([0, 1, 0]))
            client = mlflow.MlflowClient()
            assert client.list_artifacts(fold_run.info.run_id) == []
            assert client.get_run(fold_run.info.run_id).data.tags["gradcam"] == reason
    finally:
        mlflow.set_tracking_uri(None)
    assert capsys.readouterr().out.count("Grad-CAM skipped") == 1
    keras.backend.clear_session()


def test_an_empty_or_flat_map_is_said_and_a_figure_shows_the_image_beside_it(tmp_path):
    from sonotune.gradcam import map_verdict, save_figure

    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    assert map_verdict(ramp) is None
    assert map_verdict(np.zeros((32, 32), np.float32)).startswith("empty")
    assert map_verdict(np.full((32, 32), 0.98, np.float32)).startswith("flat")
    image = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    path = save_figure(tmp_path / "g" / "x.png", image, ramp, 0.4, "phantom · vgg16 · 0 % trainable · MLP head")
    with Image.open(path) as figure:
        assert figure.size[0] >= 2 * 300 and figure.size[1] >= 300  # two panels, each well above 32 px
