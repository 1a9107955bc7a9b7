"""The Gaussian-mixture sampler of autoencoder codes: fits a known mixture, draws reproducibly."""

import numpy as np
import pytest

from support.models.code_sampler import GaussianMixtureSampler


def two_clusters(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal([-3.0, 0.0], [0.5, 1.0], size=(n // 4, 2))
    b = rng.normal([2.0, 1.0], [1.0, 0.3], size=(n - n // 4, 2))
    return np.concatenate([a, b])


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_samples_reproduce_the_fitted_mixture(covariance):
    codes = two_clusters()
    sampler = GaussianMixtureSampler(components=2, covariance=covariance, seed=0).fit(codes)
    draws = sampler.sample(20_000, seed=1)
    assert draws.shape == (20_000, 2) and draws.dtype == np.float32
    # weights 1/4 and 3/4: the share of draws left of 0 is 1/4 within 4 binomial s.e.
    left = (draws[:, 0] < -0.5).mean()
    assert abs(left - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 20_000)
    # the draws' mean and covariance match the data's (EM keeps the mean; the clusters here are axis-aligned)
    assert np.allclose(draws.mean(axis=0), codes.mean(axis=0), atol=0.05)
    assert np.allclose(np.cov(draws.T), np.cov(codes.T), atol=0.1)
    assert np.array_equal(draws, sampler.sample(20_000, seed=1))
    assert not np.array_equal(draws, sampler.sample(20_000, seed=2))
    # and the fitted density prefers the clusters to the gap between them
    assert (sampler.log_density([[-3.0, 0.0], [2.0, 1.0]]) > sampler.log_density([[-0.5, 3.0]])).all()


@pytest.mark.parametrize("codes,message", [
    (np.zeros(10), r"expected \[n, k\]"),
    (np.zeros((3, 2)), "at least one code per component"),
    (np.full((20, 2), np.nan), "NaN"),
])
def test_bad_codes_are_named(codes, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixtureSampler(components=5).fit(codes)


def test_sampling_before_fitting_and_bad_settings_are_named():
    with pytest.raises(ValueError, match="not fitted"):
        GaussianMixtureSampler().sample(3)
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixtureSampler(covariance="spherical-ish")
    with pytest.raises(ValueError, match="components"):
        GaussianMixtureSampler(components=0)
