"""The shipped digits model: its data split, its weights (loaded through the checked reader, a
digest of its outputs), its predictors, and what its samples are (classified, not copied)."""

import json
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffuse_eqx as dx
from diffuse_eqx.models import digits
from diffuse_eqx.models._weights import CheckpointError


# The network's outputs on fixed inputs, for the shipped weights (`python tests/test_digits.py`
# prints them): `velocity[i].sum()` and `velocity[i][2, 5]` for the inputs of `_digest_inputs`.
DIGEST = {
    "sum": [26.528463140130043, 42.254471860826015, 37.30696056038141, 17.873032428324223],
    "pixel": [1.1801893711090088, -0.1983589231967926, 2.4209563732147217, -3.3048603534698486],
}


def _digest_inputs():
    x = jr.normal(jr.key(0), (4, 8, 8), jnp.float32)  # float32 also under x64: the same draws
    t = jnp.array([1.0, 0.7, 0.3, 0.05], jnp.float32)
    labels = jnp.array([0, 3, 7, digits.NULL_LABEL], jnp.int32)
    return x, t, labels


def _digest(model) -> dict[str, list[float]]:
    v = np.asarray(jax.vmap(model)(*_digest_inputs()), np.float64)
    return {"sum": v.sum(axis=(1, 2)).tolist(), "pixel": v[:, 2, 5].tolist()}


@pytest.fixture(scope="module")
def model():
    return digits.pretrained()


def test_split_is_fixed_stratified_and_in_range():
    x_train, y_train = digits.load_data("train")
    x_test, y_test = digits.load_data("test")
    assert x_train.shape == (1500, 8, 8) and x_test.shape == (297, 8, 8)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    # 17 grey levels p/8 - 1, p = 0..16
    levels = np.unique(np.concatenate([x_train.ravel(), x_test.ravel()]))
    np.testing.assert_array_equal(levels, np.arange(17) / 8 - 1)
    # stratified: every class holds 16-17% of its digits in the test split
    counts_test, counts_all = np.bincount(y_test), np.bincount(np.concatenate([y_train, y_test]))
    assert np.all(np.abs(counts_test / counts_all - 297 / 1797) < 0.01)
    with pytest.raises(ValueError, match="split"):
        digits.load_data("validation")
    assert not x_train.flags.writeable


def test_reference_classifier_on_the_test_digits():
    x, y = digits.load_data("test")
    accuracy = np.mean(digits.classify(x) == y)
    assert accuracy >= 0.95, accuracy  # measured: 97.0%


def test_shipped_files_are_small_and_read_through_the_checked_reader(model):
    files = [digits.WEIGHTS / "weights.safetensors", digits.WEIGHTS / "config.json"]
    assert sum(f.stat().st_size for f in files) <= 5 * 2**20
    assert model.x0_shape == (8, 8)
    assert isinstance(model, digits.DigitsModel) and isinstance(model.path, dx.Flow)
    config = json.loads(files[1].read_text())
    assert config["architecture"]["channels"] == list(model.net.config.channels)


def test_outputs_match_the_stored_digest(model):
    got = _digest(model)
    np.testing.assert_allclose(got["sum"], DIGEST["sum"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["pixel"], DIGEST["pixel"], rtol=1e-4, atol=1e-5)


def test_corrupt_weights_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "w"
    shutil.copytree(digits.WEIGHTS, folder)
    tensors = load_file(str(folder / "weights.safetensors"))
    name = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != name}, str(folder / "weights.safetensors"))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        digits.DigitsModel.load(folder)
    save_file({**tensors, name: np.zeros((7, 3), np.float32)}, str(folder / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="shape"):
        digits.DigitsModel.load(folder)
    save_file({**tensors, "extra.weight": np.zeros(3, np.float32)}, str(folder / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="extra.weight"):
        digits.DigitsModel.load(folder)
    config = json.loads((digits.WEIGHTS / "config.json").read_text())
    config["architecture"]["channels"] = [32, "64", 96]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="channels"):
        digits.DigitsModel.load(folder)


def test_convolutions_as_matrix_products_are_equinox_convolutions():
    """The network's 3x3 (stride 1 and 2) and 1x1 convolutions, written as products with the patches
    (fast inside `lax.scan` on CPU), against `eqx.nn.Conv2d` itself."""
    from diffuse_eqx.models.digits.model import _conv

    x = jr.normal(jr.key(0), (8, 8, 8))
    for layer, stride in (
        (eqx.nn.Conv2d(8, 16, 3, padding=1, key=jr.key(1)), 1),
        (eqx.nn.Conv2d(8, 16, 3, stride=2, padding=1, key=jr.key(2)), 2),
        (eqx.nn.Conv2d(8, 4, 1, key=jr.key(3)), 1),
    ):
        np.testing.assert_allclose(_conv(layer, x, stride), layer(x), rtol=1e-5, atol=1e-5)


def test_predictors(model):
    x, t = jnp.zeros((8, 8)), jnp.asarray(0.5)
    plain = model.predictor(label=3)
    assert isinstance(plain, dx.Predictor)
    np.testing.assert_allclose(plain.velocity(x, t), model(x, t, jnp.int32(3)), rtol=1e-6, atol=1e-6)
    guided = model.predictor(label=3, guidance=2.0)
    assert isinstance(guided, dx.CFG)
    # CFG with w = 2: v_u + 2 (v_c - v_u)
    v_c, v_u = model(x, t, jnp.int32(3)), model(x, t, jnp.int32(digits.NULL_LABEL))
    np.testing.assert_allclose(guided.velocity(x, t), v_u + 2 * (v_c - v_u), rtol=1e-5, atol=1e-5)
    unconditional = model.predictor()
    np.testing.assert_allclose(unconditional.velocity(x, t), v_u, rtol=1e-6, atol=1e-6)
    # the label is data: predictors of two labels have one structure (one compilation)
    assert eqx.tree_equal(jax.tree.structure(model.predictor(1)), jax.tree.structure(model.predictor(2)))
    for bad in (10, -1):
        with pytest.raises(ValueError, match="label"):
            model.predictor(label=bad)
    for bad in (2.0, True, "3"):  # a TypeError from the annotation where a type checker runs (tests)
        with pytest.raises((ValueError, TypeError), match="label"):
            model.predictor(label=bad)
    with pytest.raises(ValueError, match="needs a label"):
        model.predictor(guidance=2.0)
    with pytest.raises(ValueError, match="guidance"):
        model.predictor(label=1, guidance=-1.0)


def test_to_uint8_and_to_pixels():
    x = np.zeros((1, 8, 8))
    x[0, 0, :4] = [-1.0, 0.0, 1.0, 3.0]
    np.testing.assert_array_equal(digits.DigitsModel.to_uint8(x)[0, 0, :4], [0, 128, 255, 255])
    np.testing.assert_allclose(digits.DigitsModel.to_pixels(x)[0, 0, :4], [0.0, 8.0, 16.0, 32.0])
    assert digits.DigitsModel.to_uint8(x).dtype == np.uint8


def _heun(predictor, key, n):
    den = dx.Denoiser(predictor, dx.Heun(), dx.FluxTimer(16, shift=1.0), digits.IMAGE_SHAPE)
    return np.asarray(den.generate(key, n).samples)


def _nearest_training_distance(images) -> np.ndarray:
    train, _ = digits.load_data("train")
    a, b = (
        images.reshape(len(images), -1).astype(np.float64),
        train.reshape(len(train), -1).astype(np.float64),
    )
    return np.sqrt(np.maximum(((a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T).min(1), 0))


@pytest.mark.slow
def test_conditional_samples_are_the_digits_asked_for(model):
    """200 samples, 20 per class, Heun on FluxTimer(16, shift 1), guidance 2: the reference
    classifier labels >= 90% as asked (a loose bound; measured on 1 000 by
    `benchmarks/digits_quality.py`: 99.3% at guidance 1, 100% at 2 and 4)."""
    samples = np.concatenate([_heun(model.predictor(c, guidance=2.0), jr.key(c), 20) for c in range(10)])
    labels = np.repeat(np.arange(digits.N_CLASSES), 20)
    assert np.all(np.isfinite(samples))
    accuracy = np.mean(digits.classify(samples) == labels)
    assert accuracy >= 0.90, accuracy


@pytest.mark.slow
def test_unconditional_samples_are_not_copies_and_cover_every_class(model):
    """200 unconditional samples: the median distance to the nearest training digit is >= 0.9x that
    of the test digits (unseen real digits; a model that copies its training set fails; measured on
    1 000: 0.94), and every class is drawn (at most 10 points from 10% each; measured: 2.3)."""
    samples = _heun(model.predictor(), jr.key(10), 200)
    test, _ = digits.load_data("test")
    ratio = np.median(_nearest_training_distance(samples)) / np.median(_nearest_training_distance(test))
    assert ratio >= 0.9, ratio
    shares = np.bincount(digits.classify(samples), minlength=10) / len(samples)
    assert np.max(np.abs(shares - 0.1)) <= 0.1, shares


if __name__ == "__main__":
    print(json.dumps(_digest(digits.pretrained()), indent=2))
