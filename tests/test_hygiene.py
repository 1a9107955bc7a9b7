"""Project hygiene: lint, and every model of `support` round-trips through `.keras`."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from support import training
from support.models import classifier, gan
from support.models.autoencoders import ConvAutoencoder, DenseAutoencoder
from support.models.vae import VAE

from .conftest import ROOT


def test_ruff_is_clean_on_the_package_the_tests_and_the_notebooks():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "support", "tests", "notebooks"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _trained_a_little(model, x):
    """One short training, so that optimizer slots and batch-norm statistics are non-trivial."""
    model.compile(optimizer="adam") if not isinstance(model, gan.GAN) else model.compile()
    training.fit_resumable(model, x, steps=2, batch_size=16, steps_per_epoch=2)
    return model


MODELS = {
    "dense AE": lambda: DenseAutoencoder((8, 8, 1), (16,), 3),
    "linear AE": lambda: DenseAutoencoder((8, 8, 1), latent_dim=3, linear=True),
    "conv AE": lambda: ConvAutoencoder((8, 8, 1), (4, 8), 3),
    "dense VAE": lambda: VAE((8, 8, 1), 3, widths=(16,)),
    "conv VAE": lambda: VAE((8, 8, 1), 3, encoder="conv", filters=(4, 8)),
    "Gaussian VAE, learned sigma": lambda: VAE((8, 8, 1), 3, widths=(16,), likelihood="gaussian",
                                               learn_sigma=True),
    "MLP GAN, packed": lambda: gan.GAN(gan.mlp_generator(2, 64), gan.mlp_discriminator(64, pack=2),
                                       pack=2),
    "DCGAN": lambda: gan.GAN(gan.dcgan_generator(4, (8, 8, 1), 4), gan.dcgan_discriminator((8, 8, 1), 4)),
    "classifier": lambda: classifier.build_classifier((8, 8, 1), filters=4, feature_dim=8),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_survives_keras_save_and_load(tmp_path, name):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    model = MODELS[name]()
    if name == "classifier":
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, np.arange(32) % 10, epochs=1, verbose=0)
        inputs = x
    else:
        _trained_a_little(model, x.reshape(32, -1)[:, :64] if "MLP" in name else x)
        inputs = np.random.default_rng(1).normal(size=(5, model.latent_dim)).astype("float32") \
            if isinstance(model, gan.GAN) else x[:5]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(inputs, training=False)),
                                  np.asarray(model(inputs, training=False)))
