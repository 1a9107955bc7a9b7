import math

import numpy as np
import tensorflow as tf
from scipy import stats
from scipy.special import expit, logsumexp

from support import objectives


def numpy(t):
    return np.asarray(t, dtype=np.float64)


# --------------------------------------------------------------------------- likelihoods


def test_gaussian_log_likelihood_matches_scipy_with_shared_and_per_pixel_variances():
    rng = np.random.default_rng(0)
    x = rng.random((5, 4, 4, 1))
    mean = rng.random((5, 4, 4, 1))
    sigma = 0.3
    got = numpy(objectives.gaussian_log_likelihood(x, mean, 2 * math.log(sigma)))
    expected = stats.norm.logpdf(x, mean, sigma).reshape(5, -1).sum(axis=1)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-10)

    log_var = rng.normal(size=(4, 4, 1))  # one variance per pixel, shared by the batch
    got = numpy(objectives.gaussian_log_likelihood(x, mean, log_var))
    expected = stats.norm.logpdf(x, mean, np.exp(0.5 * log_var)).reshape(5, -1).sum(axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_gaussian_log_likelihood_float32_keeps_the_input_dtype():
    x = tf.zeros((2, 3), tf.float32)
    value = objectives.gaussian_log_likelihood(x, x, 0.0)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(value.numpy(), -1.5 * math.log(2 * math.pi), rtol=1e-6)


def test_bernoulli_log_likelihood_matches_the_direct_formula():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(6, 8, 8, 1))
    x = (rng.random((6, 8, 8, 1)) < 0.4).astype(np.float64)
    p = expit(logits)
    expected = (x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(6, -1).sum(axis=1)
    got = numpy(objectives.bernoulli_log_likelihood(x, logits))
    assert got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # grey levels: the cross-entropy x log p + (1 - x) log(1 - p)
    x_grey = rng.random((6, 8, 8, 1))
    expected = (x_grey * np.log(p) + (1 - x_grey) * np.log(1 - p)).reshape(6, -1).sum(axis=1)
    got = numpy(objectives.bernoulli_log_likelihood(x_grey, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_bernoulli_log_likelihood_is_stable_for_extreme_logits():
    # log(sigmoid(-200)) underflows to log(0) in float32; the logits form gives -200 exactly.
    logits = tf.constant([[200.0, -200.0, 200.0, -200.0]], tf.float32)
    x = tf.constant([[1.0, 0.0, 0.0, 1.0]])
    value = objectives.bernoulli_log_likelihood(x, logits).numpy()
    np.testing.assert_allclose(value, [-400.0], rtol=1e-6)


def test_log_normal_diag_matches_scipy_and_broadcasts_sample_axes():
    rng = np.random.default_rng(2)
    mean = rng.normal(size=(3, 4))
    log_var = rng.normal(size=(3, 4))
    z = rng.normal(size=(7, 3, 4))  # [samples, batch, latent]
    got = numpy(objectives.log_normal_diag(z, mean, log_var))
    assert got.shape == (7, 3)
    for b in range(3):
        expected = stats.multivariate_normal(mean[b], np.diag(np.exp(log_var[b]))).logpdf(z[:, b])
        np.testing.assert_allclose(got[:, b], expected, rtol=1e-10)
    prior = numpy(objectives.log_normal_diag(z, 0.0, 0.0))
    np.testing.assert_allclose(prior, stats.norm.logpdf(z).sum(axis=-1), rtol=1e-10)


# --------------------------------------------------------------------------- KL


def test_kl_is_zero_for_the_prior_and_per_dimension_terms_sum_to_it():
    zeros = tf.zeros((2, 5), tf.float64)
    np.testing.assert_allclose(
        objectives.kl_diagonal_gaussian_standard_normal(zeros, zeros).numpy(), [0.0, 0.0]
    )
    rng = np.random.default_rng(3)
    z_mean, z_log_var = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    per_dim = numpy(objectives.kl_per_dimension(z_mean, z_log_var))
    assert per_dim.shape == (4, 5) and np.all(per_dim >= 0)
    total = numpy(objectives.kl_diagonal_gaussian_standard_normal(z_mean, z_log_var))
    np.testing.assert_allclose(total, per_dim.sum(axis=1), rtol=1e-12)
    # one dimension by hand: mu = 1, sigma^2 = e  ->  (1 + e - 1 - 1) / 2
    one = objectives.kl_per_dimension(np.array([[1.0]]), np.array([[1.0]])).numpy()
    np.testing.assert_allclose(one, [[(math.e - 1) / 2]], rtol=1e-12)


def test_kl_closed_form_agrees_with_monte_carlo_within_three_standard_errors():
    rng = np.random.default_rng(4)
    z_mean = rng.normal(size=(4, 3))
    z_log_var = rng.normal(scale=0.7, size=(4, 3))
    n = 40_000
    z = z_mean + np.exp(0.5 * z_log_var) * rng.standard_normal((n, 4, 3))
    # KL = E_q[log q(z) - log p(z)]
    samples = numpy(objectives.log_normal_diag(z, z_mean, z_log_var)) - numpy(
        objectives.log_normal_diag(z, 0.0, 0.0)
    )
    estimate = samples.mean(axis=0)
    standard_error = samples.std(axis=0, ddof=1) / math.sqrt(n)
    closed_form = numpy(objectives.kl_diagonal_gaussian_standard_normal(z_mean, z_log_var))
    assert np.all(np.abs(estimate - closed_form) < 3 * standard_error), (
        estimate, closed_form, standard_error,
    )


# --------------------------------------------------------------------------- bounds


def test_elbo_is_reconstruction_minus_beta_kl():
    log_likelihood = np.array([-10.0, -20.0])
    kl = np.array([1.0, 3.0])
    np.testing.assert_allclose(objectives.elbo(log_likelihood, kl).numpy(), [-11.0, -23.0])
    np.testing.assert_allclose(
        objectives.elbo(log_likelihood, kl, beta=tf.Variable(0.5, dtype=tf.float64)).numpy(),
        [-10.5, -21.5],
    )


def test_iwae_bound_is_log_mean_exp_over_the_sample_axis_without_underflow():
    rng = np.random.default_rng(5)
    log_weights = rng.normal(size=(10, 3)) - 1000.0  # exp(-1000) is 0 in float64
    got = numpy(objectives.iwae_bound(log_weights))
    np.testing.assert_allclose(got, logsumexp(log_weights, axis=0) - math.log(10), rtol=1e-12)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(numpy(objectives.iwae_bound(log_weights.T, axis=1)), got)
    # one sample: the bound is the log weight itself (the ELBO's single-sample estimate)
    np.testing.assert_allclose(numpy(objectives.iwae_bound(log_weights[:1])), log_weights[0])
    # equal weights: the mean of equal numbers
    np.testing.assert_allclose(numpy(objectives.iwae_bound(np.full((7, 2), -3.0))), [-3.0, -3.0])


def test_iwae_bound_climbs_towards_the_exact_log_likelihood_of_a_conjugate_model():
    """z ~ N(0, 1), x|z ~ N(z, 1): p(x) = N(0, 2), p(z|x) = N(x/2, 1/2). With a proposal
    q = N(x/2 + 0.3, 1) that is not the posterior, E[L_k] rises with k towards log p(x)."""
    rng = np.random.default_rng(6)
    x = np.array([-1.0, 0.5, 2.0])
    log_px = stats.norm.logpdf(x, 0.0, math.sqrt(2.0))
    q_mean, q_log_var = x / 2 + 0.3, np.zeros(3)

    def mean_bound(k, repeats=2000):
        z = q_mean + np.exp(0.5 * q_log_var) * rng.standard_normal((repeats, k, 3))
        log_w = numpy(
            objectives.log_importance_weights(
                stats.norm.logpdf(x, z, 1.0),
                objectives.log_normal_diag(z[..., None], 0.0, 0.0),
                objectives.log_normal_diag(z[..., None], q_mean[:, None], q_log_var[:, None]),
            )
        )
        return numpy(objectives.iwae_bound(log_w, axis=1)).mean(axis=0)  # [repeats, 3] -> [3]

    bounds = [mean_bound(k) for k in (1, 10, 100)]
    # E[L_1] is the ELBO = log p(x) - KL(q || p(z|x)), in closed form for Gaussians
    kl_to_posterior = 0.5 * (1 / 0.5 + 0.3**2 / 0.5 - 1 + math.log(0.5))
    np.testing.assert_allclose(bounds[0], log_px - kl_to_posterior, atol=0.05)
    assert np.all(bounds[0] < bounds[1]) and np.all(bounds[1] < bounds[2])
    assert np.all(bounds[2] <= log_px + 1e-3) and np.all(log_px - bounds[2] < 0.02)


def test_gradient_estimators_are_unbiased_and_reparameterization_has_less_variance():
    from support.objectives import reparameterization_gradients, score_function_gradients

    target = tf.constant([2.0, -1.0], tf.float64)

    def f(z):  # E_q[f] = |mean - target|^2 + sum(sigma^2): gradient 2 (mean - target)
        return tf.reduce_sum((z - target) ** 2, axis=-1)

    mean, log_var = np.array([0.5, 0.0]), np.log([0.5, 2.0])
    truth = 2 * (mean - target.numpy())
    n = 20_000
    for estimator in (reparameterization_gradients, score_function_gradients):
        g = estimator(f, mean, log_var, n, seed=3).numpy()
        standard_error = g.std(axis=0) / np.sqrt(n)
        assert np.all(np.abs(g.mean(axis=0) - truth) < 3 * standard_error + 1e-12)
    ratio = (score_function_gradients(f, mean, log_var, n).numpy().var(axis=0)
             / reparameterization_gradients(f, mean, log_var, n).numpy().var(axis=0))
    assert np.all(ratio > 3)
