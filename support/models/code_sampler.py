"""A sampler fitted to an autoencoder's codes: the "ex-post density estimation" that turns any
autoencoder into a generator (Ghosh et al. 2020, "From variational to deterministic
autoencoders"; pythae's ``GaussianMixtureSampler``).

A plain autoencoder has no prior: decoding Gaussian noise lands far from the data (notebook 01),
because its codes fill an irregular region, not ``N(0, I)``. Fit a density to the codes of the
training images instead, draw codes from it and decode them. With a VAE the same sampler separates
the objective from the sampler: prior draws against draws from the fitted mixture, same decoder.
"""

from __future__ import annotations

import numpy as np

from support import checks

COVARIANCES = ("full", "diag")


class GaussianMixtureSampler:
    """A Gaussian mixture (scikit-learn's ``GaussianMixture``, EM) on codes ``[n, k]``.

    Typical use, with any encoder and decoder::

        sampler = GaussianMixtureSampler(components=10, seed=0).fit(encode(x_train))
        images = decode(sampler.sample(1000, seed=1))

    Args:
        components: number of mixture components (10 for ten digit classes, as Ghosh et al.).
        covariance: ``"full"`` or ``"diag"`` covariance per component.
        seed: seeds EM's initialisation (k-means).
    """

    def __init__(self, components: int = 10, covariance: str = "full", seed: int = 0):
        self.components = checks.positive_int(components, "components")
        self.covariance = checks.choice(covariance, COVARIANCES, "covariance")
        self.seed = checks.integer(seed, "seed", minimum=0)
        self.mixture = None

    def fit(self, codes) -> GaussianMixtureSampler:
        """Fit the mixture to ``codes [n, k]`` (finite, ``n >= components``); returns ``self``."""
        from sklearn.mixture import GaussianMixture

        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2:
            raise ValueError(f"codes has shape {codes.shape}; expected [n, k] (one code per row).")
        if len(codes) < self.components:
            raise ValueError(f"{len(codes)} codes cannot fit components={self.components}: "
                             "give at least one code per component.")
        if not np.all(np.isfinite(codes)):
            raise ValueError("codes contain NaN or infinity: check the encoder's training.")
        self.mixture = GaussianMixture(self.components, covariance_type=self.covariance,
                                       random_state=self.seed, reg_covar=1e-6).fit(codes)
        return self

    def _fitted(self):
        if self.mixture is None:
            raise ValueError("this GaussianMixtureSampler is not fitted yet: call .fit(codes) first.")
        return self.mixture

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` codes ``[n, k]`` float32, drawn from the fitted mixture (the same ``seed``, the
        same draws)."""
        mixture = self._fitted()
        n = checks.positive_int(n, "n")
        rng = np.random.default_rng(checks.integer(seed, "seed", minimum=0))
        counts = rng.multinomial(n, mixture.weights_)
        parts = []
        for component, count in enumerate(counts):
            mean = mixture.means_[component]
            if self.covariance == "full":
                cholesky = np.linalg.cholesky(mixture.covariances_[component])
            else:
                cholesky = np.diag(np.sqrt(mixture.covariances_[component]))
            parts.append(mean + rng.standard_normal((count, len(mean))) @ cholesky.T)
        codes = np.concatenate(parts)
        return codes[rng.permutation(n)].astype(np.float32)

    def log_density(self, codes) -> np.ndarray:
        """The fitted mixture's log-density at ``codes [n, k]`` (nats per code)."""
        return self._fitted().score_samples(np.asarray(codes, dtype=np.float64))
