import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from support import data, objectives
from support.models import vae as V
from support.models.vae import VAE, KLWarmup


@pytest.fixture(scope="module")
def digits():
    """Statically binarized digits: the 1,437 training and the first 60 test images (8x8)."""
    x_train, _ = data.load("digits", "train")
    x_test, _ = data.load("digits", "test")
    return data.binarize(x_train, seed=1), data.binarize(x_test[:60], seed=2)


@pytest.fixture(scope="module")
def trained(digits):
    """A small dense Bernoulli VAE after 20 quick epochs on the digits (about 2 s)."""
    x_train, _ = digits
    keras.utils.set_random_seed(0)
    model = VAE(latent_dim=4, widths=(64,))
    model.init_output_bias(x_train)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(x_train, batch_size=64, epochs=20, verbose=0)
    return model


def linear_gaussian_vae(d_side=2, latent_dim=2, sigma=0.5, seed=0):
    """A linear-Gaussian VAE on ``d_side x d_side`` images with random W, b and encoder."""
    rng = np.random.default_rng(seed)
    model = VAE(
        input_shape=(d_side, d_side, 1), latent_dim=latent_dim, encoder="linear",
        likelihood="gaussian", sigma=sigma,
    )
    d = d_side * d_side
    W, b = rng.normal(size=(d, latent_dim)), rng.normal(size=d)
    model.decoder.get_layer("pixels").set_weights([W.T.astype(np.float32), b.astype(np.float32)])
    W, b, sigma = model.linear_gaussian_parameters()  # as stored, in float32
    # An imperfect encoder: the exact posterior mean map, perturbed, and too wide a variance.
    M = W.T @ W + sigma**2 * np.eye(latent_dim)
    mean_map = np.linalg.solve(M, W.T) + 0.1 * rng.normal(size=(latent_dim, d))
    log_var = np.log(np.diag(sigma**2 * np.linalg.inv(M))) + 1.0
    encoder_kernel = np.concatenate([mean_map.T, np.zeros((d, latent_dim))], axis=1)
    encoder_bias = np.concatenate([-mean_map @ b, log_var])
    model.encoder.get_layer("posterior").set_weights(
        [encoder_kernel.astype(np.float32), encoder_bias.astype(np.float32)]
    )
    x = (W @ rng.normal(size=(latent_dim, 200)) + b[:, None]).T
    x = x + sigma * rng.normal(size=x.shape)
    return model, x.reshape(-1, d_side, d_side, 1).astype(np.float32)


# --------------------------------------------------------------------------- closed forms


def test_linear_gaussian_log_marginal_matches_scipy():
    rng = np.random.default_rng(0)
    W, b, sigma = rng.normal(size=(6, 2)), rng.normal(size=6), 0.7
    x = rng.normal(size=(10, 6))
    expected = stats.multivariate_normal(b, W @ W.T + sigma**2 * np.eye(6)).logpdf(x)
    np.testing.assert_allclose(V.linear_gaussian_log_marginal(x, W, b, sigma), expected, rtol=1e-10)
    # images are flattened
    got = V.linear_gaussian_log_marginal(x.reshape(10, 3, 2, 1), W, b, sigma)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_linear_gaussian_posterior_is_the_gaussian_conditional():
    """Bayes' rule via the joint Gaussian of (z, x): Cov(z, x) = W^T, Cov(x) = C, so
    p(z|x) = N(W^T C^{-1} (x - b), I - W^T C^{-1} W)."""
    rng = np.random.default_rng(1)
    W, b, sigma = rng.normal(size=(5, 3)), rng.normal(size=5), 0.4
    x = rng.normal(size=(4, 5))
    C = W @ W.T + sigma**2 * np.eye(5)
    mean, cov = V.linear_gaussian_posterior(x, W, b, sigma)
    np.testing.assert_allclose(mean, (W.T @ np.linalg.solve(C, (x - b).T)).T, rtol=1e-9)
    np.testing.assert_allclose(cov, np.eye(3) - W.T @ np.linalg.solve(C, W), atol=1e-12)
    # and p(z|x) p(x) = p(x|z) p(z) at an arbitrary z
    z = rng.normal(size=3)
    for i in range(4):
        left = stats.multivariate_normal(mean[i], cov).logpdf(z) + V.linear_gaussian_log_marginal(
            x[i : i + 1], W, b, sigma
        )[0]
        right = stats.multivariate_normal(W @ z + b, sigma**2 * np.eye(5)).logpdf(x[i]) + (
            stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z)
        )
        np.testing.assert_allclose(left, right, rtol=1e-10)


def test_kl_gaussians_against_the_diagonal_closed_form_and_zero_at_equality():
    rng = np.random.default_rng(2)
    mean_q, var_q = rng.normal(size=(3, 4)), np.exp(rng.normal(size=(3, 4)))
    mean_p, var_p = rng.normal(size=(3, 4)), np.exp(rng.normal(size=(3, 4)))
    expected = 0.5 * np.sum(
        var_q / var_p + (mean_p - mean_q) ** 2 / var_p - 1 + np.log(var_p / var_q), axis=1
    )
    cov_p = np.stack([np.diag(v) for v in var_p])
    np.testing.assert_allclose(V.kl_gaussians(mean_q, var_q, mean_p, cov_p), expected, rtol=1e-10)
    np.testing.assert_allclose(
        V.kl_gaussians(mean_q, var_q, mean_q, np.stack([np.diag(v) for v in var_q])), 0, atol=1e-12
    )
    # against KL(N(0, I) || N(0, I)) with the standard-normal closed form of objectives
    zeros = np.zeros((2, 4))
    kl = V.kl_gaussians(mean_q[:2], var_q[:2], zeros, np.eye(4))
    closed = objectives.kl_diagonal_gaussian_standard_normal(mean_q[:2], np.log(var_q[:2]))
    np.testing.assert_allclose(kl, closed.numpy(), rtol=1e-10)


def test_elbo_gap_is_the_kl_to_the_true_posterior_for_arbitrary_q():
    rng = np.random.default_rng(3)
    W, b, sigma = rng.normal(size=(8, 3)), rng.normal(size=8), 0.6
    x = rng.normal(size=(20, 8)) * 2
    q_mean, q_log_var = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    elbo = V.linear_gaussian_elbo(x, W, b, sigma, q_mean, q_log_var)
    log_px = V.linear_gaussian_log_marginal(x, W, b, sigma)
    post_mean, post_cov = V.linear_gaussian_posterior(x, W, b, sigma)
    kl = V.kl_gaussians(q_mean, np.exp(q_log_var), post_mean, post_cov)
    assert np.all(elbo <= log_px)
    np.testing.assert_allclose(log_px - elbo, kl, rtol=1e-3)
    np.testing.assert_allclose(log_px - elbo, kl, rtol=1e-8)  # float64: far better than asked
    # with orthogonal columns of W the posterior is diagonal and the best q closes the gap
    W_orthogonal = np.linalg.qr(W)[0] * np.array([2.0, 1.0, 0.5])
    post_mean, post_cov = V.linear_gaussian_posterior(x, W_orthogonal, b, sigma)
    assert np.allclose(post_cov, np.diag(np.diag(post_cov)), atol=1e-12)
    elbo = V.linear_gaussian_elbo(x, W_orthogonal, b, sigma, post_mean, np.log(np.diag(post_cov)))
    np.testing.assert_allclose(elbo, V.linear_gaussian_log_marginal(x, W_orthogonal, b, sigma))


def test_linear_gaussian_closed_forms_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="W"):
        V.linear_gaussian_log_marginal(np.zeros((3, 5)), np.zeros((4, 2)), np.zeros(4), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        V.linear_gaussian_posterior(np.zeros((3, 4)), np.zeros((4, 2)), np.zeros(4), 0.0)


# --------------------------------------------------------------------------- the linear VAE


def test_linear_vae_is_the_linear_gaussian_model(digits):
    model, x = linear_gaussian_vae()
    W, b, sigma = model.linear_gaussian_parameters()
    assert W.shape == (4, 2) and b.shape == (4,) and sigma == pytest.approx(0.5)
    z = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    np.testing.assert_allclose(
        model.decode(z).numpy().reshape(5, -1), z @ W.T + b, rtol=1e-5, atol=1e-5
    )
    # the Monte Carlo ELBO of the model agrees with the closed form
    z_mean, z_log_var = (t.numpy() for t in model.encode(x))
    exact = V.linear_gaussian_elbo(x, W, b, sigma, z_mean, z_log_var)
    estimate = model.elbo(x, samples=4000)
    assert abs(estimate.mean() - exact.mean()) < 0.02 * abs(exact.mean()) + 0.02
    with pytest.raises(ValueError, match="linear"):
        VAE().linear_gaussian_parameters()


def test_iwae_climbs_towards_the_exact_log_marginal_on_a_linear_vae():
    model, x = linear_gaussian_vae()
    W, b, sigma = model.linear_gaussian_parameters()
    log_px = V.linear_gaussian_log_marginal(x, W, b, sigma).mean()
    z_mean, z_log_var = (t.numpy() for t in model.encode(x))
    elbo = V.linear_gaussian_elbo(x, W, b, sigma, z_mean, z_log_var).mean()
    bounds = {k: model.iwae_bound(x, k).mean() for k in (1, 10, 100, 1000)}
    assert log_px - elbo > 0.3  # an imperfect encoder: something for k to recover
    # E[L_1] = ELBO: 10 seeds x 200 examples of L_1 average to the closed form
    l1 = np.mean([model.iwae_bound(x, 1, seed=s).mean() for s in range(10)])
    assert abs(l1 - elbo) < 0.1 * (log_px - elbo)
    assert bounds[1] < bounds[10] < bounds[100] < bounds[1000] <= log_px + 1e-3
    assert log_px - bounds[1000] < 0.01 * abs(log_px)


# --------------------------------------------------------------------------- the Bernoulli VAE


def test_reconstruction_is_summed_over_pixels_and_loss_is_reconstruction_plus_beta_kl(digits):
    x_train, _ = digits
    model = VAE(latent_dim=3, widths=(16,))
    model.init_output_bias(x_train)
    pixels = model.decoder.get_layer("pixels")
    pixels.kernel.assign(tf.zeros_like(pixels.kernel))  # the decoder ignores z: outputs the bias
    model.beta.assign(0.25)
    model.compile()
    result = model.evaluate(x_train, batch_size=len(x_train), verbose=0, return_dict=True)
    logits = np.broadcast_to(pixels.bias.numpy().reshape(8, 8, 1), x_train.shape)
    expected = -objectives.bernoulli_log_likelihood(x_train, logits).numpy().mean()
    assert expected > 15  # 64 pixels summed, not averaged (that would be about 0.4)
    np.testing.assert_allclose(result["reconstruction"], expected, rtol=1e-5)
    np.testing.assert_allclose(result["loss"], result["reconstruction"] + 0.25 * result["kl"], rtol=1e-5)


def test_training_learns_and_bounds_are_ordered(trained, digits):
    _, x_test = digits
    elbo = trained.elbo(x_test, samples=1000)
    nll = trained.importance_sampled_nll(x_test, k=500)
    assert elbo.shape == nll.shape == (60,)
    # these test images cost 26.8 nats under the mean image; training reaches about 23.9
    assert -elbo.mean() < 25.5
    assert np.mean(nll) <= -np.mean(elbo)
    assert np.mean(nll <= -elbo) >= 0.95  # per example too, up to Monte Carlo noise
    bounds = [trained.iwae_bound(x_test, k, seed=s).mean() for k in (1, 10, 100) for s in (0, 1)]
    means = np.array(bounds).reshape(3, 2).mean(axis=1)
    assert means[0] < means[1] < means[2]


def test_chunked_importance_sampling_equals_unchunked(trained, digits):
    _, x_test = digits
    whole = trained.importance_sampled_nll(x_test, k=300, batch_size=1000, max_elements=10**9)
    chunked = trained.importance_sampled_nll(x_test, k=300, batch_size=7, max_elements=3000)
    assert trained._chunk_sizes(60, 300, 7, 3000) == (2, 23)  # many chunks of both kinds
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)
    other_seed = trained.importance_sampled_nll(x_test, k=300, seed=1)
    assert not np.allclose(other_seed, whole) and abs(other_seed.mean() - whole.mean()) < 0.1


def test_kl_per_dimension_and_active_units_on_a_known_encoder():
    model = VAE(input_shape=(2, 2, 1), latent_dim=3, encoder="linear")
    kernel = np.zeros((4, 6), np.float32)
    kernel[0, 0] = 2.0  # z_mean_0 = 2 x_0 varies with x, z_mean_1 = 0.05 x_1 barely, z_mean_2 = 0
    kernel[1, 1] = 0.05
    model.encoder.get_layer("posterior").set_weights([kernel, np.zeros(6, np.float32)])
    x = np.random.default_rng(0).random((500, 2, 2, 1)).astype(np.float32)
    activity = model.unit_activity(x)
    np.testing.assert_allclose(activity, [4 * x[:, 0, 0, 0].var(), 0.0025 * x[:, 0, 1, 0].var(), 0],
                               rtol=1e-4, atol=1e-9)
    assert model.active_units(x) == 1 and model.active_units(x, threshold=1e-5) == 2
    # log sigma^2 = 0: KL_j = mu_j^2 / 2
    expected = [0.5 * np.mean((2 * x[:, 0, 0, 0]) ** 2), 0.5 * np.mean((0.05 * x[:, 0, 1, 0]) ** 2), 0]
    np.testing.assert_allclose(model.kl_per_dimension(x), expected, rtol=1e-4, atol=1e-9)


def test_sample_decodes_prior_draws_repeatably(trained):
    images = trained.sample(5, seed=3).numpy()
    assert images.shape == (5, 8, 8, 1) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, trained.sample(5, seed=3).numpy())
    z = tf.random.stateless_normal((5, 4), seed=(3, 0))
    np.testing.assert_allclose(images, trained.decode(z).numpy())


# --------------------------------------------------------------------------- KL warm-up


def test_kl_warmup_ramps_beta_linearly_to_the_target(digits):
    x_train, _ = digits
    model = VAE(latent_dim=2, widths=(8,), beta=0.6)
    model.compile(optimizer="adam")
    history = model.fit(x_train[:50], batch_size=50, epochs=5, verbose=0, callbacks=[KLWarmup(3)])
    np.testing.assert_allclose(history.history["beta"], [0.2, 0.4, 0.6, 0.6, 0.6], rtol=1e-6)
    assert float(model.beta.numpy()) == pytest.approx(0.6)
    # an explicit target overrides the model's, and the weight enters the loss
    history = model.fit(x_train[:50], batch_size=50, epochs=2, verbose=0,
                        callbacks=[KLWarmup(4, target=2.0)])
    np.testing.assert_allclose(history.history["beta"], [0.5, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="epochs"):
        KLWarmup(0)


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("kwargs", [
    dict(latent_dim=4, widths=(32,)),
    dict(latent_dim=3, encoder="conv", filters=(4, 8)),
    dict(latent_dim=2, encoder="conv", decoder="dense", widths=(16,), filters=(4,)),
    dict(latent_dim=2, encoder="linear", likelihood="gaussian", sigma=0.3, learn_sigma=True),
])
def test_keras_round_trip_restores_identical_outputs(tmp_path, digits, kwargs):
    x_train, x_test = digits
    keras.utils.set_random_seed(0)
    model = VAE(**kwargs, beta=0.5)
    model.init_output_bias(x_train)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x_train[:100], batch_size=50, epochs=2, verbose=0, callbacks=[KLWarmup(4)])
    path = tmp_path / "vae.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, VAE) and loaded.get_config() == model.get_config()
    for a, b in zip(model.encode(x_test), loaded.encode(x_test)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    z = tf.random.stateless_normal((6, model.latent_dim), seed=(1, 2))
    np.testing.assert_array_equal(model.decode(z).numpy(), loaded.decode(z).numpy())
    assert float(loaded.beta.numpy()) == float(model.beta.numpy()) == pytest.approx(0.25)
    if model.likelihood == "gaussian":
        assert loaded.sigma == model.sigma != pytest.approx(0.3)  # learned, and restored
    np.testing.assert_allclose(
        loaded.importance_sampled_nll(x_test, k=20), model.importance_sampled_nll(x_test, k=20),
        rtol=1e-6,
    )
    # training goes on from the restored optimizer state
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 4


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs,match", [
    (dict(encoder="mlp"), "encoder"),
    (dict(decoder="deconv"), "decoder"),
    (dict(likelihood="poisson"), "likelihood"),
    (dict(learn_sigma=True), "learn_sigma"),
    (dict(sigma=0.0, likelihood="gaussian"), "sigma"),
    (dict(beta=-1.0), "beta"),
    (dict(latent_dim=0), "latent_dim"),
    (dict(encoder="conv", filters=(8, 8, 8, 8)), "divisible"),
    (dict(input_shape=(8, 8)), "input_shape"),
])
def test_bad_arguments_raise_value_errors_naming_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAE(**kwargs)


def test_evaluation_rejects_data_of_the_wrong_shape(trained):
    with pytest.raises(ValueError, match="shape"):
        trained.importance_sampled_nll(np.zeros((3, 28, 28, 1)), k=2)
    with pytest.raises(ValueError, match="k="):
        trained.iwae_bound(np.zeros((3, 8, 8, 1)), k=0)


# --------------------------------------------------------------------------- MNIST budget


@pytest.mark.slow
def test_mnist_dense_vae_reaches_a_likelihood_bound_in_three_epochs(data_dir):
    """Three epochs of the 784-512-256-32 Bernoulli VAE (about 15-30 s on two CPU cores)
    reach an importance-sampled NLL (k = 100, 1,000 test images) of about 103.3-104.0 nats
    over seeds 0-2; the mean image alone costs about 206."""
    x_train, _ = data.load("mnist", "train", data_dir=data_dir)
    x_test, _ = data.load("mnist", "test", data_dir=data_dir, size=1000)
    keras.utils.set_random_seed(0)
    model = VAE(input_shape=(28, 28, 1), latent_dim=32, widths=(512, 256))
    model.init_output_bias(x_train)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(data.dataset(x_train, batch_size=128, binarization="dynamic"), epochs=3, verbose=0,
              shuffle=False)
    nll = model.importance_sampled_nll(data.binarize(x_test, seed=1), k=100)
    assert math.isfinite(nll.mean()) and nll.mean() < 110.0


# --------------------------------------------------------------------------- IWAE training, free bits


def test_free_bits_clamp_each_dimension_of_the_batch_mean_kl(digits):
    x = data.binarize(digits[0][:128], seed=0)
    model = VAE((8, 8, 1), latent_dim=6, free_bits=0.3)
    loss, reconstruction, kl = (t.numpy() for t in model.example_terms(x))
    kl_dims = objectives.kl_per_dimension(*model.encode(x)).numpy().mean(axis=0)
    assert np.mean(loss - reconstruction) == pytest.approx(np.sum(np.maximum(0.3, kl_dims)), rel=1e-5)
    assert np.mean(kl) == pytest.approx(kl_dims.sum(), rel=1e-5)  # the reported KL is the true one
    with pytest.raises(ValueError, match="free_bits"):
        VAE((8, 8, 1), samples=5, free_bits=0.1)


def test_iwae_training_loss_is_the_k_sample_bound(digits):
    x = data.binarize(digits[0][:400], seed=0)
    model = VAE((8, 8, 1), latent_dim=4, samples=5)
    losses = np.concatenate([model.example_terms(x)[0].numpy() for _ in range(5)])
    reference = -model.iwae_bound(x, 5, seed=3)
    elbo_loss = -model.elbo(x, samples=1, seed=3)
    # the same estimator of -L_5 with other noise: equal means within 4 standard errors
    se = np.hypot(losses.std() / np.sqrt(len(losses)), reference.std() / np.sqrt(len(reference)))
    assert abs(losses.mean() - reference.mean()) < 4 * se
    assert reference.mean() < elbo_loss.mean()  # L_5 is the tighter bound
    assert VAE.from_config(model.get_config()).samples == 5


def test_gradient_snr_reports_the_median_ratio_of_encoder_and_decoder(digits):
    x = data.binarize(digits[0][:32], seed=0)
    model = VAE((8, 8, 1), latent_dim=4, widths=(16,))
    snr = model.gradient_snr(x, k=3, draws=20)
    assert set(snr) == {"encoder", "decoder"} and all(np.isfinite(v) and v > 0 for v in snr.values())
    assert model.gradient_snr(x, k=3, draws=20) == snr  # stateless draws: repeatable
    with pytest.raises(ValueError, match="draws"):
        model.gradient_snr(x, k=3, draws=1)


def test_ppca_maximum_likelihood_beats_perturbations_and_has_a_diagonal_posterior():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 10)) + 0.3 * rng.normal(size=(500, 10)) + 2.0
    W, b, sigma = V.ppca_maximum_likelihood(x, 3)
    best = V.linear_gaussian_log_marginal(x, W, b, sigma).mean()
    for _ in range(10):
        moved = V.linear_gaussian_log_marginal(x, W + 0.05 * rng.normal(size=W.shape), b, sigma * 1.05).mean()
        assert moved < best
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]  # the likelihood does not see a rotation
    assert V.linear_gaussian_log_marginal(x, W @ rotation, b, sigma).mean() == pytest.approx(best, rel=1e-10)
    _, cov = V.linear_gaussian_posterior(x, W, b, sigma)
    assert np.max(np.abs(cov - np.diag(np.diag(cov)))) < 1e-12
    with pytest.raises(ValueError, match="latent_dim"):
        V.ppca_maximum_likelihood(x, 10)


def test_best_diagonal_q_splits_the_gap_into_approximation_and_amortisation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6))
    W, b, sigma = rng.normal(size=(6, 3)), rng.normal(size=6), 0.7  # a posterior that is not diagonal
    mean, log_var = V.linear_gaussian_best_diagonal(x, W, b, sigma)
    best = V.linear_gaussian_elbo(x, W, b, sigma, mean, log_var)
    log_px = V.linear_gaussian_log_marginal(x, W, b, sigma)
    post_mean, post_cov = V.linear_gaussian_posterior(x, W, b, sigma)
    kl_best = V.kl_gaussians(mean, np.exp(log_var), post_mean, post_cov)
    np.testing.assert_allclose(log_px - best, kl_best, rtol=1e-9)
    assert np.all(log_px - best > 1e-3)  # a diagonal q cannot reach a correlated posterior
    for _ in range(20):  # and no other diagonal q does better
        other = V.linear_gaussian_elbo(x, W, b, sigma, mean + 0.01 * rng.normal(size=mean.shape),
                                       log_var + 0.01 * rng.normal(size=log_var.shape))
        assert np.all(other < best)
