"""MADE, the exact-likelihood reference: autoregressive by construction, normalised over every
binary image, and trained it beats pixels drawn independently."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import data
from support.models.autoregressive import MADE, made_masks
from support.training import fit_resumable


def all_binary_images(d):
    return np.array(list(itertools.product([0.0, 1.0], repeat=d)), dtype=np.float32)


def test_masks_make_each_logit_depend_on_earlier_pixels_only():
    keras.utils.set_random_seed(0)
    model = MADE(input_shape=(10,), widths=(16, 16))
    x = tf.constant(np.random.default_rng(0).random((3, 10), dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x)
    jacobian = tape.batch_jacobian(logits, x).numpy()  # [batch, output i, input j]
    upper = np.triu(np.ones((10, 10), dtype=bool))  # j >= i
    assert np.all(jacobian[:, upper] == 0)
    # ... and every earlier pixel can reach the logit (the masks do not cut more than they must)
    assert np.all(np.abs(jacobian[:, ~upper]).max(axis=0) > 0)


def test_mask_degrees_follow_the_paper():
    hidden, output, direct = made_masks(4, (5,))
    # hidden degrees cycle 1, 2, 3, 1, 2; a hidden unit of degree m sees inputs 1..m
    assert hidden[0].T.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    # output i sees hidden units of degree < i; output 1 sees nothing but its bias
    assert output.sum(axis=0).tolist() == [0, 2, 4, 5]
    assert np.array_equal(direct, np.triu(np.ones((4, 4)), k=1))


@pytest.mark.parametrize("direct", [True, False])
def test_log_probabilities_of_every_binary_image_sum_to_one(direct):
    keras.utils.set_random_seed(1)
    model = MADE(input_shape=(3, 4), widths=(20, 12), direct=direct)
    # random weights far from zero, so that the check is not of a near-uniform model
    for weight in model.trainable_weights:
        weight.assign(np.random.default_rng(2).normal(0, 1.5, weight.shape).astype(np.float32))
    images = all_binary_images(12).reshape(-1, 3, 4)
    log_p = model.log_prob(images, batch_size=1000)
    assert log_p.shape == (4096,) and log_p.dtype == np.float64
    assert np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-5)
    assert log_p.std() > 1  # far from uniform


def test_trained_on_digits_it_beats_independent_pixels_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    x_train, _ = data.load("digits", "train")
    x_test, _ = data.load("digits", "test", size=200)
    test = data.binarize(x_test, seed=1)
    model = MADE(input_shape=x_train.shape[1:], widths=(200,))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=11)
    fit_resumable(model, x_train, steps=11 * 60, batch_size=128, steps_per_epoch=11, binarization="dynamic")
    nll = -model.log_prob(test)
    # the independent-pixel model fitted to the same training pixels (a Bernoulli per pixel)
    p = np.clip(x_train.reshape(len(x_train), -1).mean(axis=0), 1e-3, 1 - 1e-3)
    flat = test.reshape(len(test), -1)
    independent = -(flat * np.log(p) + (1 - flat) * np.log(1 - p)).sum(axis=1)
    difference = independent - nll
    # measured on all 360 test images: MADE 24.4 nats, independent pixels 27.2
    assert difference.mean() > 3 * difference.std(ddof=1) / np.sqrt(len(difference))
    assert nll.mean() < 26

    path = tmp_path / "made.keras"
    model.save(path)
    again = keras.models.load_model(path)
    assert np.array_equal(again.log_prob(test), model.log_prob(test))


def test_samples_are_binary_reproducible_and_start_from_the_first_pixels_marginal():
    keras.utils.set_random_seed(3)
    model = MADE(input_shape=(6,), widths=(8,))
    model.output_layer.bias.assign(np.full(6, 1.0, dtype=np.float32))  # p(x_1 = 1) = sigmoid(1)
    x = model.sample(4000, seed=5)
    assert x.shape == (4000, 6) and set(np.unique(x)) <= {0.0, 1.0}
    assert np.array_equal(x, model.sample(4000, seed=5))
    p1 = 1 / (1 + np.exp(-1.0))
    assert abs(x[:, 0].mean() - p1) < 4 * np.sqrt(p1 * (1 - p1) / 4000)
    # the samples follow the model: their mean log p equals E[log p] over all 64 images
    images = all_binary_images(6)
    log_p = model.log_prob(images)
    entropy = -(np.exp(log_p) * log_p).sum()
    sample_log_p = model.log_prob(x)
    assert abs(-sample_log_p.mean() - entropy) < 4 * sample_log_p.std() / np.sqrt(4000)
    probabilities = model.sample(10, seed=5, probabilities=True)
    assert probabilities.min() > 0 and probabilities.max() < 1


@pytest.mark.parametrize("call,message", [
    (lambda m: m.log_prob(np.full((2, 6), 0.5, dtype=np.float32)), "binary images"),
    (lambda m: m.log_prob(np.zeros((2, 5), dtype=np.float32)), r"expected \[n, 6\]"),
    (lambda m: m.sample(0), "n"),
])
def test_bad_input_is_named(call, message):
    model = MADE(input_shape=(6,), widths=(8,))
    with pytest.raises(ValueError, match=message):
        call(model)


@pytest.mark.parametrize("kwargs,message", [
    (dict(input_shape=(0, 3)), "input_shape"),
    (dict(input_shape=(6,), widths=(8, 0)), "widths"),
    (dict(input_shape=(6,), direct="yes"), "direct"),
])
def test_bad_construction_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MADE(**kwargs)
