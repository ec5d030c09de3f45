import numpy as np
from PIL import Image

from sonotune.data.phantom import simulate_bmode, write_phantom


def test_layout_counts_and_ratio(tmp_path):
    paths = write_phantom(tmp_path, n_benign=10, n_malignant=5, size=64, seed=1)
    assert len(paths) == 15
    assert sorted(p.name for p in (tmp_path / "malignant").iterdir()) == [f"malignant_{i:04d}.png" for i in range(5)]
    assert len(list((tmp_path / "benign").glob("*.png"))) == 10
    with Image.open(paths[0]) as image:
        assert image.size == (64, 64) and image.mode == "L"


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    a = write_phantom(tmp_path / "a", 3, 3, 48, seed=7)
    b = write_phantom(tmp_path / "b", 3, 3, 48, seed=7)
    c = write_phantom(tmp_path / "c", 3, 3, 48, seed=8)
    pixels = lambda p: np.asarray(Image.open(p))  # noqa: E731
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))
    assert not any(np.array_equal(pixels(x), pixels(z)) for x, z in zip(a, c))


def test_image_i_does_not_depend_on_the_class_count(tmp_path):
    small = write_phantom(tmp_path / "s", 2, 1, 48, seed=3)
    large = write_phantom(tmp_path / "l", 5, 4, 48, seed=3)
    assert np.array_equal(np.asarray(Image.open(small[0])), np.asarray(Image.open(large[0])))


def test_images_are_speckled_not_flat():
    image = simulate_bmode(np.random.default_rng(0), 96, malignant=False)
    assert image.dtype == np.uint8 and image.shape == (96, 96)
    assert image.std() > 20 and 30 < image.mean() < 200


def test_a_small_cnn_learns_the_phantom_but_not_perfectly():
    """The phantom is meant to be learnable, not trivial: a 3-conv CNN from scratch lands in between."""
    import keras
    from sklearn.metrics import roc_auc_score

    size, labels = 64, np.array([0] * 200 + [1] * 100)
    images = np.stack([
        simulate_bmode(np.random.default_rng([5, label, i]), size, bool(label)) for i, label in enumerate(labels)
    ]).astype("float32")[..., None] / 255.0
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((size, size, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.GlobalMaxPooling2D(),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    model.fit(images[:225], labels[:225], batch_size=16, epochs=14, verbose=0)
    auc = roc_auc_score(labels[225:], model.predict(images[225:], verbose=0).ravel())
    assert 0.65 < auc < 0.97
    keras.backend.clear_session()
