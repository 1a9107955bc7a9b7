"""Tests of the diffusion support code (issue 20): noise schedules, the ELBO's terms, the
samplers, the scores of Gaussian mixtures and the `Diffusion` model.

The checks rest on closed forms: for Gaussian data ``N(mu, diag s^2)`` the optimal noise
predictor is linear, the ELBO of the DDPM that uses it, the model's own ``log p_theta`` and the
moments of every sampler's output are exact, so a sampler or an estimator is judged against a
number, within its sampling error.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # has the undo TF does not export

from support import data, metrics, objectives
from support.models import diffusion as D
from support.models.vae import kl_gaussians
from support.training import InterruptAt, Interrupted, fit_resumable

MU = np.array([1.5, -0.5])  # the Gaussian data of the closed-form checks
S = np.array([0.5, 2.0])
ENTROPY = 0.5 * np.sum(np.log(2 * np.pi * np.e * S**2))  # E[log p(x)] = -ENTROPY


def numpy(t):
    return np.asarray(t, dtype=np.float64)


def gaussian_data(n, seed=0):
    return MU + S * np.random.default_rng(seed).standard_normal((n, 2))


# --------------------------------------------------------------------------- schedules


def test_linear_schedule_is_ho_et_al_at_1000_steps_and_keeps_its_total_noise_for_other_T():
    schedule = D.noise_schedule("linear", 1000)
    np.testing.assert_allclose(schedule.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    np.testing.assert_allclose(schedule.alpha_bars, np.cumprod(1 - schedule.betas), rtol=1e-12)
    assert schedule.timesteps == 1000 and schedule.alpha_bars_prev[0] == 1.0
    assert 3e-5 < schedule.alpha_bars[-1] < 5e-5
    for timesteps in (50, 250):
        other = D.noise_schedule("linear", timesteps)
        np.testing.assert_allclose(other.betas[[0, -1]], np.array([1e-4, 0.02]) * 1000 / timesteps)
        assert 5e-6 < other.alpha_bars[-1] < 5e-5  # about the same total noise as T = 1000
    few = D.noise_schedule("linear", 10)  # 0.02 * 100 = 2 would be no variance: clipped
    assert few.betas.max() == 0.999 and np.all(np.diff(few.alpha_bars) < 0)


def test_cosine_schedule_follows_its_squared_cosine_and_clips_the_last_steps():
    schedule = D.noise_schedule("cosine", 1000)
    t = np.arange(1001)
    f = np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(schedule.alpha_bars[:990], (f / f[0])[1:991], rtol=1e-10)
    assert schedule.betas[-1] == 0.999 and schedule.betas.max() == 0.999
    assert np.all(np.diff(schedule.betas) > 0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_coefficients_are_bayes_rule_for_the_two_gaussian_steps(kind):
    """q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0): its precision is
    alpha_t / beta_t + 1 / (1 - alpha_bar_{t-1}), its mean the precision-weighted sum."""
    schedule = D.noise_schedule(kind, 200)
    b, a, ab_prev = schedule.betas[1:], schedule.alphas[1:], schedule.alpha_bars_prev[1:]
    variance = 1 / (a / b + 1 / (1 - ab_prev))
    np.testing.assert_allclose(schedule.posterior_variance[1:], variance, rtol=1e-10)
    np.testing.assert_allclose(schedule.posterior_mean_coef_xt[1:], variance * np.sqrt(a) / b, rtol=1e-10)
    np.testing.assert_allclose(schedule.posterior_mean_coef_x0[1:],
                               variance * np.sqrt(ab_prev) / (1 - ab_prev), rtol=1e-10)
    assert schedule.posterior_variance[0] == 0 and schedule.posterior_mean_coef_x0[0] == pytest.approx(1.0)


def test_noise_schedule_and_samplers_name_the_bad_argument():
    schedule = D.noise_schedule("linear", 20)
    eps_fn = D.gaussian_data_eps_fn(MU, S, schedule)
    for call, match in [
        (lambda: D.noise_schedule("quadratic", 100), "kind='quadratic'.*linear, cosine"),
        (lambda: D.noise_schedule("linear", 1), r"timesteps=1 must be an integer >= 2"),
        (lambda: D.noise_schedule("linear", 100.0), "timesteps=100.0"),
        (lambda: D.ancestral_sample(eps_fn, "linear", (4, 2)), "schedule='linear' must be a NoiseSchedule"),
        (lambda: D.ancestral_sample(eps_fn, schedule, ()), r"shape=\(\)"),
        (lambda: D.ddim_sample(eps_fn, schedule, (4, 2), steps=21),
         r"steps=21 must be an integer in \[2, 20\]"),
        (lambda: D.ddim_sample(eps_fn, schedule, (4, 2), eta=-1.0), "eta=-1.0"),
        (lambda: D.annealed_langevin(None, [0.1, 1.0], (4, 2)), "strictly decreasing"),
        (lambda: D.annealed_langevin(None, [1.0, -0.1], (4, 2)), "sigmas=-0.1"),
        (lambda: D.elbo_terms(eps_fn, np.zeros((4, 2)), schedule, samples=1), "samples=1"),
        (lambda: D.gaussian_data_elbo(np.zeros((4, 3)), MU, S, schedule), r"expected \[n, 2\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


# --------------------------------------------------------------------------- forward process


def test_q_sample_and_the_means_of_the_reverse_step():
    schedule = D.noise_schedule("cosine", 100)
    rng = np.random.default_rng(0)
    x0, eps, eps_pred = (rng.normal(size=(5, 3, 2)) for _ in range(3))
    t = np.array([1, 2, 50, 99, 100])
    ab = schedule.alpha_bars[t - 1][:, None, None]
    x_t = numpy(D.q_sample(x0, t, eps, schedule))
    np.testing.assert_allclose(x_t, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, rtol=1e-12)
    np.testing.assert_allclose(numpy(D.q_sample(x0, 7, eps, schedule)),
                               numpy(D.q_sample(x0, np.full(5, 7), eps, schedule)), rtol=1e-12)
    # the true noise recovers x_0, and the model's mean is the posterior mean at the predicted x_0
    np.testing.assert_allclose(numpy(D.predict_x0(x_t, eps, t, schedule)), x0, atol=1e-9)
    np.testing.assert_allclose(numpy(D.model_mean(x_t, eps, t, schedule)),
                               numpy(D.posterior_mean(x0, x_t, t, schedule)), atol=1e-9)
    x0_hat = D.predict_x0(x_t, eps_pred, t, schedule)
    np.testing.assert_allclose(numpy(D.model_mean(x_t, eps_pred, t, schedule)),
                               numpy(D.posterior_mean(x0_hat, x_t, t, schedule)), atol=1e-9)


# --------------------------------------------------------------------------- the ELBO's terms


def test_gaussian_kl_matches_the_full_covariance_form_and_monte_carlo():
    rng = np.random.default_rng(1)
    mean_q, mean_p = rng.normal(size=(2, 4, 3))
    var_q, var_p = rng.uniform(0.2, 2.0, size=(2, 4, 3))
    got = numpy(objectives.gaussian_kl(mean_q, var_q, mean_p, var_p))
    expected = np.array([kl_gaussians(mean_q[i:i + 1], var_q[i:i + 1], mean_p[i], np.diag(var_p[i]))[0]
                         for i in range(4)])
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    same = numpy(objectives.gaussian_kl(mean_q, var_q, mean_q, var_q))
    np.testing.assert_allclose(same, np.zeros(4), atol=1e-12)
    # E_q[log q(z) - log p(z)] by Monte Carlo, for the first example
    z = mean_q[0] + np.sqrt(var_q[0]) * rng.standard_normal((200_000, 3))
    log_ratio = (numpy(objectives.log_normal_diag(z, mean_q[0], np.log(var_q[0])))
                 - numpy(objectives.log_normal_diag(z, mean_p[0], np.log(var_p[0]))))
    assert abs(log_ratio.mean() - got[0]) < 4 * log_ratio.std() / math.sqrt(len(z))


@pytest.mark.parametrize("t", [2, 10, 500, 1000])
def test_ddpm_step_term_is_the_kl_between_posterior_and_model_and_matches_monte_carlo(t):
    """Both forms of L_{t-1}: the weighted noise error (plus the variance term for sigma^2 =
    beta_t), and the KL of the two Gaussians; and that KL against a Monte Carlo estimate."""
    schedule = D.noise_schedule("linear", 1000)
    rng = np.random.default_rng(t)
    x0, eps = rng.normal(size=(2, 3, 2))
    eps_pred = eps + 0.3 * rng.normal(size=(3, 2))
    x_t = D.q_sample(x0, t, eps, schedule)
    mean_q = numpy(D.posterior_mean(x0, x_t, t, schedule))
    mean_p = numpy(D.model_mean(x_t, eps_pred, t, schedule))
    b, ab, var_q = schedule.betas[t - 1], schedule.alpha_bars[t - 1], schedule.posterior_variance[t - 1]
    for var_p in (var_q, b):
        kl = numpy(objectives.gaussian_kl(mean_q, var_q, mean_p, var_p))
        term = numpy(objectives.ddpm_step_term(eps, eps_pred, b, ab, var_q,
                                               None if var_p == var_q else var_p))
        np.testing.assert_allclose(term, kl, rtol=1e-7)
        # Monte Carlo: x_{t-1} ~ q, averaged log q - log p, for the first example
        z = mean_q[0] + math.sqrt(var_q) * rng.standard_normal((100_000, 2))
        log_ratio = (numpy(objectives.log_normal_diag(z, mean_q[0], math.log(var_q)))
                     - numpy(objectives.log_normal_diag(z, mean_p[0], math.log(var_p))))
        assert abs(log_ratio.mean() - kl[0]) < 4 * log_ratio.std() / math.sqrt(len(z)) + 1e-9
    scalar = numpy(objectives.ddpm_step_term(eps, eps_pred, b, ab, var_q))
    per_example = numpy(objectives.ddpm_step_term(eps, eps_pred, np.full(3, b), np.full(3, ab),
                                                  np.full(3, var_q)))
    np.testing.assert_allclose(per_example, scalar, rtol=1e-12)


def test_ddpm_prior_term_is_the_kl_of_q_x_T_from_the_standard_normal():
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(4, 2, 2))
    for alpha_bar in (4e-5, 0.3):
        expected = kl_gaussians(np.sqrt(alpha_bar) * x0.reshape(4, -1), np.full((4, 4), 1 - alpha_bar),
                                np.zeros(4), np.eye(4))
        np.testing.assert_allclose(numpy(objectives.ddpm_prior_term(x0, alpha_bar)), expected, rtol=1e-8)
    per_example = numpy(objectives.ddpm_prior_term(x0, np.array([4e-5, 0.3, 0.3, 0.5])))
    assert per_example[1] == pytest.approx(numpy(objectives.ddpm_prior_term(x0, 0.3))[1], rel=1e-12)


def test_ddpm_simple_loss_is_the_per_example_mean_squared_error():
    eps = np.zeros((2, 2, 2))
    eps_pred = np.stack([np.ones((2, 2)), np.arange(4.0).reshape(2, 2)])
    np.testing.assert_allclose(numpy(objectives.ddpm_simple_loss(eps, eps_pred)), [1.0, 14 / 4])


def test_denoising_score_matching_is_explicit_score_matching_plus_a_constant():
    """Vincent (2011) on Gaussian data: for linear scores s(x) = a x + b both losses are estimated
    on one shared sample; their difference is the same for every (a, b), namely
    d/2 (1 / sigma^2 - 1 / (s^2 + sigma^2)) in closed form, within Monte Carlo error."""
    sigma, n = 0.5, 400_000
    rng = np.random.default_rng(103)  # not seed 3: the noise must be independent of the data
    x = gaussian_data(n, seed=3)
    x_noisy = x + sigma * rng.standard_normal(x.shape)
    true_score = -(x_noisy - MU) / (S**2 + sigma**2)
    constant = 0.5 * np.sum(1 / sigma**2 - 1 / (S**2 + sigma**2))
    differences = []
    for a, b in [(0.0, 0.0), (-1.0, 0.5), (-4.0, np.array([6.0, -2.0])), (2.0, -1.0)]:
        score = a * x_noisy + b
        dsm = numpy(objectives.denoising_score_matching_loss(score, x_noisy, x, sigma))
        esm = numpy(objectives.explicit_score_matching_loss(score, true_score))
        difference = dsm - esm
        assert abs(difference.mean() - constant) < 4 * difference.std() / math.sqrt(n)
        differences.append(difference.mean())
        # in closed form: 2 ESM = a^2 v + 2 a + 1 / v + (a mu + b)^2 per value, v = s^2 + sigma^2
        v = S**2 + sigma**2
        closed_form = 0.5 * np.sum(a**2 * v + 2 * a + 1 / v + (a * MU + b) ** 2)
        assert esm.mean() == pytest.approx(closed_form, rel=0.02)
    assert np.ptp(differences) < 0.05 * constant


# --------------------------------------------------------------------------- Gaussian data: closed forms


def test_the_gaussian_eps_predictor_is_the_conditional_mean_of_the_noise():
    """E[eps | x_t] leaves a residual with mean 0 that is uncorrelated with x_t (checked by
    Monte Carlo); any other linear predictor has a larger squared error."""
    schedule = D.noise_schedule("linear", 100)
    eps_fn = D.gaussian_data_eps_fn(MU, S, schedule)
    rng = np.random.default_rng(104)  # independent of gaussian_data(seed=4)
    n = 100_000
    x0, eps = gaussian_data(n, seed=4), rng.standard_normal((n, 2))
    t = rng.integers(1, 101, size=n).astype(np.int32)
    x_t = D.q_sample(x0, t, eps, schedule)
    residual = eps - numpy(eps_fn(x_t, t))
    for moment in (residual, residual * numpy(x_t)):
        assert np.all(np.abs(moment.mean(0)) < 4 * moment.std(0) / math.sqrt(n))
    best = np.mean(residual**2)
    for scale in (0.9, 1.1):
        assert np.mean((eps - scale * numpy(eps_fn(x_t, t))) ** 2) > best


def test_elbo_is_below_log_likelihood_and_its_gap_shrinks_with_T():
    """E[ELBO] <= E[log p_theta] <= E[log p] = -H for every T, the gap E[log p] - E[ELBO] falls as
    T grows, and per example ELBO(x) <= log p_theta(x), the model's own exact density."""
    x0 = np.concatenate([gaussian_data(500, seed=5), [[10.0, 10.0], [-5.0, 8.0]]])  # outliers too
    for kind in ("linear", "cosine"):
        gaps = []
        for timesteps in (10, 50, 200, 1000):
            schedule = D.noise_schedule(kind, timesteps)
            expected = D.gaussian_data_expected_elbo(MU, S, schedule)
            model_log_p = D.gaussian_data_model_log_density(x0, MU, S, schedule)
            assert expected.elbo[0] < -ENTROPY
            assert np.all(D.gaussian_data_elbo(x0, MU, S, schedule).elbo < model_log_p)
            gaps.append(-ENTROPY - expected.elbo[0])
        assert np.all(np.diff(gaps) < 0), (kind, gaps)
        assert gaps[-1] < 1.0  # nats, for d = 2 at T = 1000
    # p_theta approaches p as T grows: KL(p || p_theta) of the two Gaussians, in closed form
    for timesteps, bound in ((50, 0.01), (1000, 1e-4)):
        schedule = D.noise_schedule("cosine", timesteps)
        mean, var = D.gaussian_data_sample_moments(MU, S, schedule)
        var = var + schedule.betas[0]  # p_theta adds the decoder's noise the sampler leaves out
        kl = kl_gaussians(MU[None], S[None] ** 2, mean, np.diag(var))[0]
        assert kl < bound


def test_expected_elbo_is_the_mean_of_the_per_example_elbo():
    schedule = D.noise_schedule("linear", 200)
    elbo = D.gaussian_data_elbo(gaussian_data(20_000, seed=6), MU, S, schedule).elbo
    expected = D.gaussian_data_expected_elbo(MU, S, schedule).elbo[0]
    assert abs(elbo.mean() - expected) < 4 * elbo.std() / math.sqrt(len(elbo))


def test_elbo_terms_by_monte_carlo_match_the_closed_form_with_the_exact_predictor():
    """elbo_terms with the exact predictor: L_T equal, and the Monte Carlo sums of the steps and
    the decoder term within 4 standard errors of the closed form (pooled over 200 examples)."""
    schedule = D.noise_schedule("cosine", 50)
    x0 = gaussian_data(200, seed=7)
    terms = D.elbo_terms(D.gaussian_data_eps_fn(MU, S, schedule), x0, schedule, samples=100, seed=1)
    exact = D.gaussian_data_elbo(x0, MU, S, schedule)
    np.testing.assert_allclose(terms.prior, exact.prior, rtol=1e-10)
    for name in ("steps", "decoder"):
        got, se = getattr(terms, name), getattr(terms, name + "_se")
        pooled_se = math.sqrt(np.sum(se**2)) / len(x0)
        assert abs(got.mean() - getattr(exact, name).mean()) < 4 * pooled_se, name
    assert np.all(terms.steps_se > 0) and np.all(exact.steps_se == 0)


def test_step_terms_by_t_match_the_closed_form_step_by_step_with_the_exact_predictor():
    """The stratified sum with the exact predictor: each step's mean within Bonferroni's bar for the 49
    steps at 0.1 % (largest_z) of the closed form, the sum within 4 s.e., its s.e.
    below elbo_terms' with as many draws per example, and the share of the first steps."""
    schedule = D.noise_schedule("cosine", 50)
    x0 = gaussian_data(200, seed=7)
    eps_fn = D.gaussian_data_eps_fn(MU, S, schedule)
    by_t = D.step_terms_by_t(eps_fn, x0, schedule, draws=2, seed=3)
    exact = D.gaussian_data_elbo(x0, MU, S, schedule)
    assert by_t.means.shape == (51,) and by_t.means[0] == by_t.means[1] == 0
    # the closed form of each L_(t-1), t = 2..T, averaged over the examples (gaussian_data_elbo's terms)
    a = D._eps_coefficients(MU, S, schedule)[0][1:, None, :]  # [T - 1, 1, d]
    alpha_bars = schedule.alpha_bars[1:, None, None]
    error = (1 - a * np.sqrt(1 - alpha_bars)) ** 2 + a**2 * alpha_bars * (x0 - MU) ** 2
    weights = schedule.betas[1:] ** 2 / (2 * schedule.posterior_variance[1:] * schedule.alphas[1:]
                                         * (1 - schedule.alpha_bars[1:]))
    exact_by_t = weights * error.sum(-1).mean(-1)
    np.testing.assert_allclose(exact_by_t.sum(), exact.steps.mean(), rtol=1e-10)
    z = (by_t.means[2:] - exact_by_t) / np.sqrt(by_t.variances[2:])
    assert np.max(np.abs(z)) < metrics.largest_z(49, 0.001), z
    assert abs(by_t.total - exact.steps.mean()) < 4 * by_t.total_se
    random_t = D.elbo_terms(eps_fn, x0, schedule, samples=98, seed=3)  # 98 draws of t per example
    assert by_t.total_se < math.sqrt(np.sum(random_t.steps_se**2)) / len(x0)  # measured 0.129 against 0.187
    assert by_t.share(50) == pytest.approx(1.0) and 0 < by_t.share(5) < 1
    with pytest.raises(ValueError, match="draws"):
        D.step_terms_by_t(eps_fn, x0, schedule, draws=0)


# --------------------------------------------------------------------------- samplers


def test_ancestral_sampling_with_the_exact_predictor_reproduces_gaussian_data():
    schedule = D.noise_schedule("cosine", 1000)
    n = 20_000
    x = D.ancestral_sample(D.gaussian_data_eps_fn(MU, S, schedule), schedule, (n, 2), seed=1)
    mean, var = D.gaussian_data_sample_moments(MU, S, schedule)
    # the sampler is its recursion: sample moments within sampling error of the exact ones
    assert np.all(np.abs(x.mean(0) - mean) < 4 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(0) - var) < 4 * var * np.sqrt(2 / n))
    # and the recursion's bias is small: reverse variance beta~_t < the true one, by under 1 %
    np.testing.assert_allclose(mean, MU, atol=1e-4)
    np.testing.assert_allclose(var, S**2, rtol=0.01)
    assert np.all(np.abs(x.var(0) / S**2 - 1) < 0.01 + 4 * np.sqrt(2 / n))


def test_ddim_with_the_exact_predictor_reproduces_gaussian_data_and_its_few_step_bias():
    schedule = D.noise_schedule("cosine", 1000)
    mu, s, n = MU[:1], S[:1], 20_000  # 1-D data
    eps_fn = D.gaussian_data_eps_fn(mu, s, schedule)
    x = D.ddim_sample(eps_fn, schedule, (n, 1), steps=1000, seed=2)
    assert abs(x.mean() - mu[0]) < 4 * s[0] / math.sqrt(n)
    assert abs(x.var() / s[0] ** 2 - 1) < 4 * math.sqrt(2 / n) + 0.005
    for steps in (10, 50):  # fewer steps: a deterministic sampler that shrinks the variance
        x = D.ddim_sample(eps_fn, schedule, (n, 1), steps=steps, seed=2)
        mean, var = D.gaussian_data_sample_moments(mu, s, schedule, steps=steps, eta=0.0)
        assert abs(x.mean() - mean[0]) < 4 * math.sqrt(var[0] / n)
        assert abs(x.var() - var[0]) < 4 * var[0] * math.sqrt(2 / n)
        assert var[0] < 0.95 * s[0] ** 2


def test_ddim_with_eta_one_on_every_step_is_the_ancestral_sampler():
    schedule = D.noise_schedule("linear", 100)
    eps_fn = D.gaussian_data_eps_fn(MU, S, schedule)
    ancestral = D.ancestral_sample(eps_fn, schedule, (256, 2), seed=3)
    np.testing.assert_allclose(D.ddim_sample(eps_fn, schedule, (256, 2), steps=100, seed=3, eta=1.0),
                               ancestral, atol=2e-5)
    assert not np.allclose(D.ancestral_sample(eps_fn, schedule, (256, 2), seed=4), ancestral)
    visited = D.ddim_timesteps(1000, 50)
    assert visited[0] == 1 and visited[-1] == 1000 and len(np.unique(visited)) == 50


def test_annealed_langevin_follows_its_exact_recursion_on_gaussian_data():
    """Each update is affine plus noise for a Gaussian target, so the output's moments are exact:
    the samples match them, and they are near the data noised at the last level."""
    sigmas = D.geometric_sigmas(5.0, 0.05, 8)
    steps, step_size, n = 40, 5e-3, 20_000
    x = D.annealed_langevin(D.gaussian_data_score_fn(MU, S), sigmas, (n, 2), steps, step_size, seed=5)
    mean, var = np.zeros(2), np.full(2, sigmas[0] ** 2)
    for sigma in sigmas:
        alpha, v = step_size * sigma**2 / sigmas[-1] ** 2, S**2 + sigma**2
        for _ in range(steps):  # x <- x + alpha / 2 * (-(x - mu) / v) + sqrt(alpha) z
            k = 1 - alpha / (2 * v)
            mean, var = k * mean + alpha / (2 * v) * MU, k**2 * var + alpha
    assert np.all(np.abs(x.mean(0) - mean) < 4 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(0) - var) < 4 * var * np.sqrt(2 / n))
    np.testing.assert_allclose(mean, MU, atol=0.02)
    np.testing.assert_allclose(var, S**2 + sigmas[-1] ** 2, rtol=0.03)


def test_annealed_langevin_with_the_exact_mixture_score_covers_every_ring8_mode():
    spec = data.mixture_spec("ring8")

    def score_fn(x, sigma):
        return metrics.mixture_score(np.asarray(x), spec.centers, math.hypot(spec.std, sigma))

    sigmas = D.geometric_sigmas(2.0, 0.02, 10)
    x = D.annealed_langevin(score_fn, sigmas, (2000, 2), 30, 1e-4, seed=6, denoise=True)
    coverage = metrics.mode_coverage(x, spec.centers, math.hypot(spec.std, sigmas[-1]))
    assert coverage.modes_covered == 8 and coverage.high_quality > 0.95
    assert coverage.counts.min() > 0.5 * 2000 / 8 * coverage.high_quality


# --------------------------------------------------------------------------- scores


def test_mixture_log_density_is_a_normalised_density_and_one_component_is_a_gaussian():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(6, 3))
    mean, std = rng.normal(size=3), 0.7
    expected = np.sum(-0.5 * np.log(2 * np.pi * std**2) - (x - mean) ** 2 / (2 * std**2), axis=1)
    np.testing.assert_allclose(metrics.mixture_log_density(x, mean[None], std), expected, rtol=1e-12)
    spec = data.mixture_spec("ring8")
    grid = np.stack(np.meshgrid(*[np.linspace(-3.5, 3.5, 351)] * 2), axis=-1).reshape(-1, 2)
    weights = np.arange(1.0, 9.0) / 36
    density = np.exp(metrics.mixture_log_density(grid, spec.centers, 0.3, weights))
    assert density.sum() * 0.02**2 == pytest.approx(1.0, abs=1e-3)
    far = metrics.mixture_log_density(np.array([[200.0, 0.0]]), spec.centers, 0.02)
    assert np.isfinite(far[0]) and far[0] < -1e7  # no underflow to -inf


def test_mixture_score_is_the_gradient_of_the_log_density():
    rng = np.random.default_rng(9)
    spec = data.mixture_spec("ring8")
    x = np.concatenate([rng.normal(size=(20, 2)) * 2, spec.centers[:2] + 0.05, [[6.0, -5.0]]])
    weights = rng.dirichlet(np.ones(8))
    h = 1e-5
    for std in (0.3, 1.0):
        score = metrics.mixture_score(x, spec.centers, std, weights)
        for i in range(2):
            step = np.zeros(2)
            step[i] = h
            numeric = (metrics.mixture_log_density(x + step, spec.centers, std, weights)
                       - metrics.mixture_log_density(x - step, spec.centers, std, weights)) / (2 * h)
            np.testing.assert_allclose(score[:, i], numeric, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(metrics.mixture_score(np.array([[300.0, 0.0]]), spec.centers, 0.02)))


def test_tweedie_posterior_mean_of_noised_gaussian_data():
    """E[x | x~] = x~ + sigma^2 grad log p_sigma(x~) against the closed-form posterior mean
    mu + s^2 / (s^2 + sigma^2) (x~ - mu), and against a least-squares fit of x on x~."""
    mu, s, sigma = np.array([1.0, -2.0]), 0.8, 0.6
    rng = np.random.default_rng(10)
    x = mu + s * rng.standard_normal((200_000, 2))
    x_noisy = x + sigma * rng.standard_normal(x.shape)
    tweedie = x_noisy + sigma**2 * metrics.mixture_score(x_noisy, mu[None], math.hypot(s, sigma))
    posterior_mean = mu + s**2 / (s**2 + sigma**2) * (x_noisy - mu)
    np.testing.assert_allclose(tweedie, posterior_mean, rtol=1e-10, atol=1e-12)
    for i in range(2):  # E[x | x~] is the best predictor: the regression finds the same line
        slope, intercept = np.polyfit(x_noisy[:, i], x[:, i], 1)
        assert slope == pytest.approx(s**2 / (s**2 + sigma**2), abs=0.005)
        assert intercept == pytest.approx(mu[i] * sigma**2 / (s**2 + sigma**2), abs=0.01)


def test_score_error_reports_cosine_and_relative_error_per_point():
    exact = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    estimated = np.array([[2.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    error = metrics.score_error(estimated, exact)
    np.testing.assert_allclose(error.cosine[:3], [1.0, -1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(error.relative[:3], [1.0, 2.0, math.sqrt(2)], rtol=1e-12)
    assert np.isnan(error.cosine[3]) and np.isnan(error.relative[3])


def test_mixture_functions_name_the_bad_argument():
    centers = data.mixture_spec("ring8").centers
    for call, match in [
        (lambda: metrics.mixture_score(np.zeros((3, 3)), centers, 0.1), r"x \(3, 3\) and means \(8, 2\)"),
        (lambda: metrics.mixture_log_density(np.zeros((3, 2)), centers, 0.0), "std=0.0"),
        (lambda: metrics.mixture_log_density(np.zeros((3, 2)), centers, 0.1, np.ones(8)),
         "weights=.*sum to 1"),
        (lambda: metrics.score_error(np.zeros((3, 2)), np.zeros((2, 2))), "same shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


# --------------------------------------------------------------------------- the model


def ring_model(**kwargs):
    keras.utils.set_random_seed(0)
    settings = dict(input_shape=(2,), timesteps=200, widths=(64, 64), embedding_dim=16)
    model = D.Diffusion(**{**settings, **kwargs})
    model.compile(optimizer=keras.optimizers.Adam(2e-3), steps_per_execution=16)
    return model


def test_the_train_step_lowers_l_simple_on_ring8_and_samples_land_on_the_ring():
    x, _ = data.mixture("ring8", 4096, seed=0)
    model = ring_model()
    before = model.evaluate(x, batch_size=1024, verbose=0)
    model.fit(x, batch_size=256, epochs=16, verbose=0)  # 256 steps
    after = model.evaluate(x, batch_size=1024, verbose=0)
    assert before == pytest.approx(1.0, abs=0.15)  # an untrained predictor: E||eps||^2 / d
    assert after < 0.5 * before
    radius = np.linalg.norm(model.sample(1000, seed=0, steps=50), axis=1)
    assert abs(np.median(radius) - 2.0) < 0.2


def test_model_eps_fn_elbo_terms_and_validation():
    model = ring_model(schedule="cosine", timesteps=50)
    rng = np.random.default_rng(11)
    x_t = rng.normal(size=(5, 2)).astype(np.float32)
    t = np.array([1, 2, 3, 49, 50])
    np.testing.assert_allclose(numpy(model.predict_noise(x_t, t)), numpy(model((x_t, t))), atol=1e-6)
    np.testing.assert_allclose(numpy(model.predict_noise(x_t, 7)), numpy(model((x_t, np.full(5, 7)))),
                               atol=1e-6)
    x0, _ = data.mixture("ring8", 64, seed=1)
    terms = model.elbo_terms(x0, samples=4, seed=2)
    again = D.elbo_terms(model.predict_noise, x0, model.schedule, samples=4, seed=2)
    for got, expected in zip(terms, again):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    prior = numpy(objectives.ddpm_prior_term(x0, model.schedule.alpha_bars[-1]))
    np.testing.assert_allclose(terms.prior, prior, rtol=1e-5)
    assert terms.elbo.shape == (64,) and np.all(np.isfinite(terms.elbo)) and np.all(terms.steps_se > 0)
    for kwargs, match in [(dict(embedding_dim=15), "embedding_dim=15"),
                          (dict(schedule="sigmoid"), "schedule="),
                          (dict(input_shape=()), r"shape=\(\)"), (dict(widths=(0,)), "widths=")]:
        with pytest.raises(ValueError, match=match):
            D.Diffusion(**kwargs)
    with pytest.raises(ValueError, match=r"x0 has shape \(4, 3\)"):
        model.elbo_terms(np.zeros((4, 3)))


def test_keras_round_trip_of_an_image_model_reproduces_its_predictions(tmp_path):
    keras.utils.set_random_seed(0)
    model = D.Diffusion(input_shape=(8, 8, 1), timesteps=100, widths=(32,), embedding_dim=8)
    model.compile(optimizer="adam")
    x = np.random.default_rng(12).random((64, 8, 8, 1)).astype(np.float32) * 2 - 1
    model.fit(x, batch_size=32, epochs=1, verbose=0)
    path = tmp_path / "diffusion.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, D.Diffusion) and loaded.get_config() == model.get_config()
    t = np.arange(1, 65) % 100 + 1
    np.testing.assert_array_equal(numpy(loaded((x, t))), numpy(model((x, t))))
    np.testing.assert_array_equal(loaded.sample(3, seed=1, steps=5), model.sample(3, seed=1, steps=5))
    assert loaded.sample(3, seed=1, steps=5).shape == (3, 8, 8, 1)
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 2


def test_fourier_features_are_x_then_sines_then_cosines_and_survive_a_keras_round_trip(tmp_path):
    x = np.array([[0.5, -1.0], [2.0, 0.0]], dtype=np.float32)
    features = numpy(D.fourier_features(x, (1.0, 3.0)))
    expected = np.concatenate([x, np.sin(x[:, :, None] * [1.0, 3.0]).reshape(2, -1),
                               np.cos(x[:, :, None] * [1.0, 3.0]).reshape(2, -1)], axis=1)
    np.testing.assert_allclose(features, expected, atol=1e-6)
    np.testing.assert_array_equal(numpy(D.fourier_features(x, ())), x)
    keras.utils.set_random_seed(0)
    model = D.Diffusion(input_shape=(2,), timesteps=20, widths=(16,), embedding_dim=8,
                        fourier_frequencies=(1, 2, 4))
    assert model.denoiser.inputs[0].shape[-1] == 2 * (1 + 2 * 3)
    path = tmp_path / "ff.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.fourier_frequencies == (1.0, 2.0, 4.0)
    t = np.array([3, 17])
    np.testing.assert_array_equal(numpy(loaded((x, t))), numpy(model((x, t))))
    for bad in [(0,), (1, -2), 4, ("a",)]:
        with pytest.raises(ValueError, match="fourier_frequencies="):
            D.Diffusion(fourier_frequencies=bad)


@pytest.fixture
def deterministic_ops():
    """Deterministic TensorFlow ops for one test (the switch is process-wide)."""
    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was_enabled:
        tf_config.disable_op_determinism()


def test_fit_resumable_resumes_an_interrupted_training_to_the_same_weights(deterministic_ops, tmp_path):
    x, _ = data.mixture("ring8", 1024, seed=2)
    settings = dict(steps=48, batch_size=64, checkpoint_every=16, seed=1)
    whole = ring_model()
    fit_resumable(whole, x, **settings)
    with pytest.raises(Interrupted):
        fit_resumable(ring_model(), x, checkpoint_dir=tmp_path, callbacks=[InterruptAt(24)], **settings)
    resumed = ring_model()
    result = fit_resumable(resumed, x, checkpoint_dir=tmp_path, **settings)
    assert (result.start_step, result.steps_run) == (16, 32)
    for a, b in zip(whole.variables, resumed.variables):  # weights, optimizer and noise state
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_annealed_langevin_in_segments_takes_the_steps_of_one_run():
    mean, std = np.array([1.0, -1.0]), np.array([0.3, 0.3])
    score = D.gaussian_data_score_fn(mean, std)
    sigmas = D.geometric_sigmas(1.0, 0.1, 4)
    calls = []

    def recording(x, sigma):
        calls.append(sigma)
        return score(x, sigma)

    whole = D.annealed_langevin(recording, sigmas, (4000, 2), steps_per_level=50, step_size=0.01, seed=1)
    first = D.annealed_langevin(score, sigmas[:2], (4000, 2), steps_per_level=50, step_size=0.01, seed=1,
                                sigma_min=sigmas[-1])
    rest = D.annealed_langevin(score, sigmas[2:], (4000, 2), steps_per_level=50, step_size=0.01, seed=2,
                               start=first, sigma_min=sigmas[-1])
    assert calls == [float(s) for s in sigmas for _ in range(50)]
    def stationary_variance(sigma):
        """Langevin with step alpha on N(mean, v) settles at v / (1 - alpha / (4 v)), not v."""
        v, alpha = std**2 + sigma**2, 0.01 * (sigma / sigmas[-1]) ** 2
        return v / (1 - alpha / (4 * v))

    # after the first two levels the chain is at level 2's noised data (alpha_2 = 0.22: a visible bias)
    np.testing.assert_allclose(first.var(0), stationary_variance(sigmas[1]), rtol=0.1)
    # and both ways end at level 4's
    for end in (whole, rest):
        np.testing.assert_allclose(end.mean(0), mean, atol=0.03)
        np.testing.assert_allclose(end.var(0), stationary_variance(sigmas[-1]), rtol=0.1)
    with pytest.raises(ValueError, match=r"start has shape \(3, 2\)"):
        D.annealed_langevin(score, sigmas, (2000, 2), start=np.zeros((3, 2)))


# --------------------------------------------------------------------------- binary images


def test_log_normal_cdf_matches_scipy_from_the_far_left_tail_to_the_right():
    from scipy.special import log_ndtr

    z = np.concatenate([np.linspace(-60, -8.5, 200), np.linspace(-8.5, 9, 400)])
    got64 = numpy(objectives.log_normal_cdf(tf.constant(z)))
    np.testing.assert_allclose(got64, log_ndtr(z), rtol=1e-6, atol=1e-9)
    # float32 keeps the far tail finite, where log(erfc) alone would give -inf
    got32 = numpy(objectives.log_normal_cdf(tf.constant(z, tf.float32)))
    assert np.all(np.isfinite(got32))
    np.testing.assert_allclose(got32, log_ndtr(z), rtol=1e-5, atol=1e-6)


def test_binary_decoder_is_the_gaussian_integrated_over_two_bins():
    from scipy.special import ndtr

    rng = np.random.default_rng(21)
    mean = rng.normal(scale=2.0, size=(6, 1))
    log_var = math.log(0.3**2)
    plus = numpy(objectives.binary_decoder_log_likelihood(np.ones((6, 1)), mean, log_var))
    minus = numpy(objectives.binary_decoder_log_likelihood(-np.ones((6, 1)), mean, log_var))
    # p(+1) is the Gaussian's mass above 0, p(-1) below it: the two sum to 1
    np.testing.assert_allclose(np.exp(plus), 1 - ndtr(-mean[:, 0] / 0.3), rtol=1e-8, atol=1e-15)
    np.testing.assert_allclose(np.exp(plus) + np.exp(minus), 1.0, rtol=1e-12)
    # per example, the sum over pixels
    x = np.where(rng.random((3, 4)) < 0.5, -1.0, 1.0)
    means = rng.normal(size=(3, 4))
    expected = np.log(ndtr(x * means / 0.3)).sum(axis=1)
    got = numpy(objectives.binary_decoder_log_likelihood(x, means, log_var))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_a_binary_model_trains_on_binary_pixels_bounds_their_probability_and_samples_probabilities(tmp_path):
    keras.utils.set_random_seed(0)
    model = D.Diffusion(input_shape=(4, 4, 1), timesteps=20, widths=(16,), embedding_dim=8, binary=True)
    model.compile(optimizer="adam")
    x = (np.random.default_rng(22).random((64, 4, 4, 1)) < 0.3).astype(np.float32)
    model.fit(x, batch_size=32, epochs=1, verbose=0)
    terms = model.elbo_terms(x[:8], samples=3, seed=1)
    again = D.elbo_terms(model.predict_noise, 2 * x[:8] - 1, model.schedule, samples=3, seed=1,
                         decoder="binary")
    for got, expected in zip(terms, again):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.all(terms.decoder >= 0) and np.all(np.isfinite(terms.elbo))  # a probability's -log
    by_t = model.step_terms_by_t(x[:8], draws=2, seed=4)  # the same images mapped to {-1, +1}
    again_by_t = D.step_terms_by_t(model.predict_noise, 2 * x[:8] - 1, model.schedule, draws=2, seed=4)
    np.testing.assert_allclose(by_t.means, again_by_t.means, rtol=1e-6)
    assert by_t.total > 0 and np.all(by_t.variances[2:] > 0)
    samples = model.sample(5, seed=2)
    assert samples.shape == (5, 4, 4, 1) and samples.min() >= 0 and samples.max() <= 1
    with pytest.raises(ValueError, match="this Diffusion model is binary: x0 must hold only 0 and 1"):
        model.elbo_terms(np.full((2, 4, 4, 1), 0.5))
    with pytest.raises(ValueError, match="decoder='binary' scores binary data"):
        D.elbo_terms(model.predict_noise, x[:2], model.schedule, samples=2, decoder="binary")
    with pytest.raises(ValueError, match="decoder="):
        D.elbo_terms(model.predict_noise, 2 * x[:2] - 1, model.schedule, samples=2, decoder="bernoulli")
    with pytest.raises(ValueError, match="binary='yes' must be True or False"):
        D.Diffusion(binary="yes")
    path = tmp_path / "binary.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.binary and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.sample(3, seed=1, steps=5), model.sample(3, seed=1, steps=5))
