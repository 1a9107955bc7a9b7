"""support.models.autoencoders: shapes, linearity, the PCA solution, saving, validation."""

import keras
import numpy as np
import pytest

from support.metrics import pca, pca_reconstruction_mse, reconstruction_mse
from support.models.autoencoders import ConvAutoencoder, DenseAutoencoder, decoder_matrix

SHAPES = [(8, 8, 1), (28, 28, 1)]


def images(shape, n=6, seed=0):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def build(kind, shape, **kwargs):
    keras.utils.set_random_seed(0)
    if kind == "dense":
        return DenseAutoencoder(shape, widths=(32, 16), latent_dim=4, **kwargs)
    if kind == "linear":
        return DenseAutoencoder(shape, latent_dim=4, linear=True, **kwargs)
    return ConvAutoencoder(shape, filters=(8, 16), latent_dim=4, **kwargs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["dense", "linear", "conv"])
def test_shapes_of_call_encode_decode(kind, shape):
    model = build(kind, shape)
    x = images(shape)
    assert model(x).shape == (6, *shape)
    z = model.encode(x)
    assert z.shape == (6, 4)
    np.testing.assert_allclose(model.decode(z), model(x), atol=1e-6)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_sigmoid_output_and_code_stay_in_the_unit_interval(kind):
    model = build(kind, (8, 8, 1), code_activation="sigmoid")
    x = 10 * images((8, 8, 1))
    for values in (model(x), model.encode(x)):
        values = np.asarray(values)
        assert values.min() >= 0 and values.max() <= 1


def test_linear_autoencoder_is_affine_and_decoder_matrix_is_its_decoder():
    model = build("linear", (8, 8, 1))
    assert model.widths == () and model.get_config()["output_activation"] is None
    x1, x2 = images((8, 8, 1), seed=1), images((8, 8, 1), seed=2)
    mix = np.asarray(model(0.3 * x1 + 0.7 * x2))
    np.testing.assert_allclose(mix, 0.3 * np.asarray(model(x1)) + 0.7 * np.asarray(model(x2)),
                               atol=1e-5)
    weight, bias = decoder_matrix(model)
    assert weight.shape == (4, 64) and bias.shape == (64,)
    z = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.decode(z)).reshape(5, 64), z @ weight + bias,
                               atol=1e-5)


def test_decoder_matrix_composes_a_deep_linear_decoder():
    model = DenseAutoencoder((8, 8, 1), widths=(16,), latent_dim=3, linear=True)
    weight, bias = decoder_matrix(model)
    z = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.decode(z)).reshape(5, 64), z @ weight + bias,
                               atol=1e-5)


def test_decoder_matrix_rejects_a_nonlinear_model():
    with pytest.raises(ValueError, match="linear"):
        decoder_matrix(build("dense", (8, 8, 1)))


def test_linear_autoencoder_with_pca_weights_reaches_the_pca_optimum():
    # Encoder z = (x - mu) V^T, decoder x_hat = z V + mu: the projection onto the PCA subspace.
    rng = np.random.default_rng(5)
    x_train, x_test = rng.random((300, 8, 8, 1)), rng.random((100, 8, 8, 1))
    fitted = pca(x_train, 4)
    model = build("linear", (8, 8, 1))
    v, mu = fitted.components, fitted.mean
    model.encoder.get_layer("code").set_weights([v.T, -mu @ v.T])
    model.decoder.get_layer("pixels").set_weights([v, mu])
    assert reconstruction_mse(model, x_test.astype(np.float32)) == pytest.approx(
        pca_reconstruction_mse(x_train, x_test, 4), rel=1e-5
    )


@pytest.mark.parametrize(
    "kind, shape", [("dense", (8, 8, 1)), ("linear", (8, 8, 1)), ("linear", (28, 28, 1)),
                    ("dense", (28, 28, 1)), ("conv", (8, 8, 1)), ("conv", (28, 28, 1))]
)
def test_keras_file_round_trip_gives_identical_outputs(kind, shape, tmp_path):
    model = build(kind, shape, code_activation="sigmoid" if kind == "conv" else None)
    x = images(shape, n=16)
    model.compile(optimizer="adam")
    model.fit(x, epochs=1, batch_size=8, verbose=0)  # weights no longer at their initial values
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    np.testing.assert_array_equal(np.asarray(loaded.encode(x)), np.asarray(model.encode(x)))


def test_fit_without_targets_minimises_the_per_pixel_mse():
    x = images((8, 8, 1), n=32)
    model = build("dense", (8, 8, 1))
    model.compile(optimizer="adam")
    history = model.fit(x, epochs=2, batch_size=32, verbose=0)
    assert set(history.history) == {"loss"}
    assert model.evaluate(x, verbose=0) == pytest.approx(reconstruction_mse(model, x), rel=1e-5)


def test_fit_with_targets_reconstructs_the_targets():
    # A denoising pair: the loss is measured against the clean target, not the input.
    x_clean = images((8, 8, 1), n=32)
    x_noisy = np.clip(x_clean + 0.3, 0, 1)
    model = build("dense", (8, 8, 1))
    model.compile(optimizer="adam")
    expected = reconstruction_mse(lambda v: model.predict(x_noisy, verbose=0), x_clean)
    assert model.evaluate(x_noisy, x_clean, verbose=0) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["linear", "dense", "conv"])
def test_init_output_bias_starts_the_decoder_at_the_mean_image(kind):
    x = images((8, 8, 1), n=50)
    model = build(kind, (8, 8, 1))
    model.init_output_bias(x)
    layer = model.decoder.get_layer("pixels")
    layer.kernel.assign(np.zeros(layer.kernel.shape))  # the output is now its bias alone
    expected = x.mean(axis=0) if kind != "conv" else np.full(x.shape[1:], x.mean())
    np.testing.assert_allclose(np.asarray(model(x[:2])), np.stack([expected] * 2), atol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DenseAutoencoder((8, 8), latent_dim=2), "input_shape"),
        (lambda: DenseAutoencoder((8, 8, 1), latent_dim=0), "latent_dim=0"),
        (lambda: DenseAutoencoder((8, 8, 1), widths=(16, -1)), "widths=-1"),
        (lambda: ConvAutoencoder((28, 28, 1), filters=(8, 16, 32)), "divisible by"),
        (lambda: ConvAutoencoder((8, 8, 1), filters=()), "filters"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_init_output_bias_rejects_data_of_another_shape():
    with pytest.raises(ValueError, match="shape"):
        build("dense", (8, 8, 1)).init_output_bias(images((28, 28, 1)))


def test_code_l1_adds_the_penalty_of_the_code_to_the_loss():
    import tensorflow as tf

    from support.models.autoencoders import DenseAutoencoder, reconstruction_loss

    x = np.random.default_rng(0).random((6, 8, 8, 1)).astype("float32")
    plain = DenseAutoencoder((8, 8, 1), latent_dim=4, code_activation="relu")
    sparse = DenseAutoencoder.from_config({**plain.get_config(), "code_l1": 0.5})
    sparse.set_weights(plain.get_weights())
    z = plain.encode(x)
    expected = reconstruction_loss(x, plain(x)) + 0.5 * tf.reduce_sum(tf.abs(z), axis=-1)
    penalised = float(sparse._loss(x, training=False)[1])
    assert penalised == pytest.approx(float(tf.reduce_mean(expected)), rel=1e-5)
    assert float(plain._loss(x, training=False)[1]) == pytest.approx(
        float(tf.reduce_mean(reconstruction_loss(x, plain(x)))), rel=1e-5)
    with pytest.raises(ValueError, match="code_l1"):
        DenseAutoencoder((8, 8, 1), code_l1=-1.0)


@pytest.mark.parametrize("code_l1", [0.0, 0.1])
def test_a_trained_autoencoder_is_built_and_counts_its_parameters(code_l1):
    from support.training import train_autoencoder

    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    model = DenseAutoencoder((8, 8, 1), widths=(16,), latent_dim=4, code_l1=code_l1)
    train_autoencoder(model, x, epochs=1, batch_size=16)
    assert model.built and model.count_params() == sum(int(np.prod(w.shape)) for w in model.weights)
