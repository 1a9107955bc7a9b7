"""TensorBoard logs (:mod:`support.tensorboard_logs`): every training of ``support`` writes
scalars and images inside a ``logging_to`` block, nothing outside one, and never changes a result."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from support import data, tensorboard_logs, training
from support.models.autoencoders import DenseAutoencoder
from support.models.gan import toy_gan
from support.models.vae import VAE
from support.training import train_vae


@pytest.fixture
def logs(tmp_path):
    """Logging on, into a fresh folder, for the test's block; off again after it."""
    with tensorboard_logs.logging_to(tmp_path / "logs"):
        yield tmp_path / "logs"
    assert tensorboard_logs.active() is None


@pytest.fixture(scope="module")
def digits():
    x_train, _ = data.load("digits", "train")
    x_test, _ = data.load("digits", "test")
    return x_train[:512], x_test[:128]


def runs(folder):
    return sorted(p.name for p in folder.iterdir())


def steps(events, split, tag):
    return [step for step, _ in events[split][tag]]


def test_autoencoder_fit_writes_train_and_validation_curves_and_reconstructions(logs, digits):
    x_train, x_test = digits
    keras.utils.set_random_seed(0)
    model = DenseAutoencoder((8, 8, 1), (32,), 4)
    history = training.train_autoencoder(model, x_train, x_test, epochs=3, batch_size=64)
    assert runs(logs) == ["00-DenseAutoencoder"]
    events = tensorboard_logs.read_events(logs / "00-DenseAutoencoder")
    logged = [value for _, value in events["train"]["loss"]]
    np.testing.assert_allclose(logged, history.history["loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in events["validation"]["loss"]], history.history["val_loss"],
                               rtol=1e-6)
    assert steps(events, "train", "loss") == [0, 1, 2]
    (step, image), *_ = events["train"]["reconstructions"][-1:]
    # 8 originals above their 8 reconstructions, each 8x8 enlarged 4x to 32x32, 1-pixel gaps
    assert step == 2 and image.shape == (2 * 32 + 1, 8 * 32 + 7, 1)
    originals = image[:32, :32, 0].astype(float) / 255
    np.testing.assert_allclose(originals[::4, ::4], x_train[0, :, :, 0], atol=1 / 255)


def test_every_training_function_logs_its_own_numbered_run(logs, digits):
    x_train, x_test = digits
    keras.utils.set_random_seed(0)
    training.train_loop(DenseAutoencoder((8, 8, 1), (16,), 2), x_train, x_test, epochs=2, batch_size=64,
                        progress=False)
    vae = VAE((8, 8, 1), 2, widths=(16,))
    train_vae(vae, x_train, epochs=2, batch_size=64, warmup_epochs=2)
    points, _ = data.mixture("ring8", 1024, seed=0)
    gan = toy_gan(width=16, depth=2, steps=20)
    training.fit_resumable(gan, points, steps=20, batch_size=128, steps_per_epoch=10)
    assert runs(logs) == ["00-DenseAutoencoder", "01-VAE", "02-GAN"]

    loop = tensorboard_logs.read_events(logs / "00-DenseAutoencoder")
    assert steps(loop, "train", "loss") == [0, 1] and steps(loop, "validation", "loss") == [0, 1]
    assert "reconstructions" in loop["train"]

    vae_events = tensorboard_logs.read_events(logs / "01-VAE")
    assert {"loss", "reconstruction", "kl", "beta", "samples", "reconstructions"} <= set(vae_events["train"])
    assert [v for _, v in vae_events["train"]["beta"]] == [0.5, 1.0]  # the KL warm-up, visible
    (_, samples), = vae_events["train"]["samples"][-1:]
    assert samples.shape == (2 * 32 + 1, 8 * 32 + 7, 1)  # 16 samples in 2 rows of 8

    gan_events = tensorboard_logs.read_events(logs / "02-GAN")
    assert steps(gan_events, "train", "d_loss") == [0, 1]
    (_, density), = gan_events["train"]["samples"][-1:]
    assert density.shape == (128, 128, 1)
    assert density.min() < 128 < density.max()  # dark where the samples are, white elsewhere


def test_a_keras_fit_of_your_own_logs_through_callbacks(logs, digits):
    x_train, _ = digits
    model = DenseAutoencoder((8, 8, 1), (16,), 2)
    model.compile(optimizer="adam")
    model.fit(x_train, epochs=2, batch_size=64, verbose=0,
              callbacks=tensorboard_logs.callbacks(model, "mine", x=x_train))
    assert runs(logs) == ["00-DenseAutoencoder-mine"]
    assert steps(tensorboard_logs.read_events(logs / runs(logs)[0]), "train", "loss") == [0, 1]


def test_a_new_block_on_the_same_folder_continues_the_numbering(logs, digits):
    x_train, _ = digits
    training.train_autoencoder(DenseAutoencoder((8, 8, 1), (16,), 2), x_train, epochs=1, batch_size=64)
    with tensorboard_logs.logging_to(logs):  # a rerun of the notebook in a new kernel
        training.train_autoencoder(DenseAutoencoder((8, 8, 1), (16,), 2), x_train, epochs=1, batch_size=64)
    assert runs(logs) == ["00-DenseAutoencoder", "01-DenseAutoencoder"]


def test_blocks_nest_and_logging_stops_when_the_block_ends(tmp_path, digits):
    x_train, _ = digits
    outer, inner = tmp_path / "outer", tmp_path / "inner"

    def train():
        training.train_autoencoder(DenseAutoencoder((8, 8, 1), (16,), 2), x_train, epochs=1, batch_size=64)

    with tensorboard_logs.logging_to(outer):
        with tensorboard_logs.logging_to(inner):
            train()
        assert tensorboard_logs.log_dir() == outer
        train()
    assert tensorboard_logs.active() is None
    train()
    assert runs(inner) == ["00-DenseAutoencoder"] and runs(outer) == ["00-DenseAutoencoder"]


def test_logs_without_a_block_log_only_the_fit_given_their_callbacks(tmp_path, digits):
    x_train, _ = digits
    logs = tensorboard_logs.Logs(tmp_path / "logs")
    model = DenseAutoencoder((8, 8, 1), (16,), 2)
    model.compile(optimizer="adam")
    model.fit(x_train, epochs=1, batch_size=64, verbose=0, callbacks=logs.callbacks(model, x=x_train))
    training.train_autoencoder(DenseAutoencoder((8, 8, 1), (16,), 2), x_train, epochs=1, batch_size=64)
    assert tensorboard_logs.active() is None
    assert runs(tmp_path / "logs") == ["00-DenseAutoencoder"]


def test_a_notebook_start_opens_one_block_and_a_second_start_replaces_it(tmp_path):
    from support import notebook

    params = {p.name: p.default for p in notebook.schema("01_autoencoders")}
    first = notebook.start("01_autoencoders", {**params, "tensorboard_dir": str(tmp_path / "a")})
    assert first.tensorboard is not None and tensorboard_logs.log_dir() == tmp_path / "a"
    second = notebook.start("01_autoencoders", {**params, "tensorboard_dir": str(tmp_path / "b")})
    assert tensorboard_logs.log_dir() == tmp_path / "b" and second.tensorboard is not first.tensorboard
    third = notebook.start("01_autoencoders", params)  # the default "": off
    assert third.tensorboard is None and tensorboard_logs.active() is None


def test_off_by_default_writes_nothing(tmp_path, digits):
    x_train, _ = digits
    assert tensorboard_logs.log_dir() is None
    assert tensorboard_logs.callbacks(DenseAutoencoder((8, 8, 1), (16,), 2)) == []
    training.train_autoencoder(DenseAutoencoder((8, 8, 1), (16,), 2), x_train, epochs=1, batch_size=64)
    assert list(tmp_path.iterdir()) == []


def test_a_file_is_refused_as_log_folder(tmp_path):
    path = tmp_path / "taken"
    path.write_text("")
    with pytest.raises(ValueError, match="tensorboard_dir=.*taken.* is a file"):
        tensorboard_logs.logging_to(path)


def test_logging_does_not_change_the_training(tmp_path, digits):
    """Same seed, deterministic ops: a VAE and a GAN end at the same weights with logging on
    and off (the images use stateless noise, so no training generator is advanced)."""
    x_train, x_test = digits
    points, _ = data.mixture("ring8", 1024, seed=0)
    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        weights = []
        for logging_on in (True, False):
            block = tensorboard_logs.logging_to(tmp_path / "logs") if logging_on else contextlib.nullcontext()
            with block:
                keras.utils.set_random_seed(0)
                vae = VAE((8, 8, 1), 2, widths=(16,))
                train_vae(vae, x_train, x_test, epochs=2, batch_size=64)
                keras.utils.set_random_seed(0)
                gan = toy_gan(width=16, depth=2, steps=20)
                training.fit_resumable(gan, points, steps=20, batch_size=128, steps_per_epoch=5)
            weights.append([np.asarray(v) for v in vae.weights + gan.weights])
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()
    assert runs(tmp_path / "logs") == ["00-VAE", "01-GAN"]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
