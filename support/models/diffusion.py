"""Denoising diffusion (Sohl-Dickstein et al. 2015; Ho et al. 2020) and annealed Langevin sampling
with a learned score (Song and Ermon 2019).

**Steps count from 1.** The forward process adds Gaussian noise in ``T`` steps,
``q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)`` for ``t = 1..T``, with
``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s <= t} alpha_s`` (``alpha_bar_0 = 1``), so that
in one jump

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,    eps ~ N(0, I)        (q_sample)

and ``x_T`` is nearly ``N(0, I)``. Every array of a :class:`NoiseSchedule` holds step ``t`` at
index ``t - 1``; every ``t`` passed to a function here is the step itself, ``1 <= t <= T``.
Given ``x_0`` the reverse step is Gaussian, ``q(x_{t-1} | x_t, x_0) = N(c0_t x_0 + ct_t x_t,
beta~_t I)`` with

    c0_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
    ct_t = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t),
    beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t,

and the model ``p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)`` predicts the noise:
``mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t)``, with
``sigma_t^2 = beta~_t`` for ``t >= 2``. The ELBO is

    log p_theta(x_0) >= -L_T - sum_{t=2..T} L_{t-1} - L_0,
    L_T = KL(q(x_T|x_0) || N(0, I)),  L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)),
    L_0 = -log N(x_0; mu_theta(x_1, 1), sigma_1^2 I)

(:func:`elbo_terms`, from :func:`support.objectives.ddpm_prior_term` and
:func:`~support.objectives.ddpm_step_term`); :class:`Diffusion` trains ``eps_theta`` on
``L_simple``, the unweighted squared error of the noise (:func:`~support.objectives.ddpm_simple_loss`).

Samplers take the network as a callable, so the exact predictor of Gaussian data can stand in for
it: ``eps_fn(x_t, t)`` maps ``x_t: [batch, ...]`` and ``t``, an int32 ``[batch]`` tensor of steps,
to ``eps: [batch, ...]``; ``score_fn(x, sigma)`` maps ``x: [batch, ...]`` and a float ``sigma`` to
``grad_x log p_sigma(x)``. :func:`ancestral_sample` runs the ``T`` steps of ``p_theta``,
:func:`ddim_sample` a sub-sequence of them (Song et al. 2021), :func:`annealed_langevin` Langevin
dynamics down a ladder of noise levels.

For Gaussian data ``x_0 ~ N(mu, diag s^2)`` everything is in closed form and runs in NumPy float64:
the optimal noise predictor :func:`gaussian_data_eps_fn` (``E[eps | x_t]``, linear in ``x_t``),
the exact ELBO of a ``T``-step DDPM that uses it (:func:`gaussian_data_elbo`,
:func:`gaussian_data_expected_elbo`), the exact ``log p_theta`` of that model, and the exact
mean and variance of what the samplers return (:func:`gaussian_data_sample_moments`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from support import checks, objectives

SCHEDULES = ("linear", "cosine")


# --------------------------------------------------------------------------- schedules


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The coefficients of a ``T``-step diffusion, float64 ``[T]`` arrays, step ``t`` at index
    ``t - 1`` (see the module docstring for the formulas).

    Attributes:
        kind: ``"linear"`` or ``"cosine"``.
        betas: ``beta_t``, the variance added at step ``t``.
        alphas: ``alpha_t = 1 - beta_t``.
        alpha_bars: ``alpha_bar_t = prod_{s <= t} alpha_s``, the signal kept after ``t`` steps.
        alpha_bars_prev: ``alpha_bar_{t-1}`` (``alpha_bar_0 = 1``).
        posterior_mean_coef_x0, posterior_mean_coef_xt: ``c0_t`` and ``ct_t``, the mean of
            ``q(x_{t-1} | x_t, x_0)`` being ``c0_t x_0 + ct_t x_t``.
        posterior_variance: ``beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t``
            (0 at ``t = 1``: given ``x_0`` there is nothing left to draw, and ``c0_1 = 1``).
    """

    kind: str
    betas: np.ndarray
    alphas: np.ndarray
    alpha_bars: np.ndarray
    alpha_bars_prev: np.ndarray
    posterior_mean_coef_x0: np.ndarray
    posterior_mean_coef_xt: np.ndarray
    posterior_variance: np.ndarray

    @property
    def timesteps(self) -> int:
        """``T``."""
        return len(self.betas)


def _linear_betas(timesteps: int) -> np.ndarray:
    scale = 1000.0 / timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, timesteps)


def _cosine_betas(timesteps: int, offset: float = 0.008) -> np.ndarray:
    steps = np.arange(timesteps + 1, dtype=np.float64)
    f = np.cos((steps / timesteps + offset) / (1 + offset) * math.pi / 2) ** 2
    return 1.0 - f[1:] / f[:-1]


def noise_schedule(kind: str = "linear", timesteps: int = 1000) -> NoiseSchedule:
    """A :class:`NoiseSchedule` of ``timesteps`` steps.

    * ``"linear"`` (Ho et al. 2020): ``beta_t`` evenly spaced from ``1e-4 * 1000 / T`` to
      ``0.02 * 1000 / T`` (Nichol and Dhariwal 2021's scaling, so that any ``T`` adds about
      the same total noise as the original 1000 steps: ``alpha_bar_T`` is ``4.0e-5`` for
      ``T = 1000``, ``2.0e-5`` for 100 and ``7.7e-6`` for 50);
    * ``"cosine"`` (Nichol and Dhariwal 2021): ``alpha_bar_t = f(t) / f(0)``,
      ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)`` with ``s = 0.008``, i.e.
      ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}``.

    Either way ``beta_t`` is clipped at 0.999 (the cosine's last step, and the linear schedule's
    largest steps for ``T < 20``), so that no step destroys the signal outright, and
    ``alpha_bar_t`` is recomputed as the product of the clipped ``alpha_t``.

    Args:
        kind: ``"linear"`` or ``"cosine"``.
        timesteps: ``T >= 2``.
    """
    checks.choice(kind, SCHEDULES, "kind")
    timesteps = checks.integer(timesteps, "timesteps", minimum=2)
    betas = _linear_betas(timesteps) if kind == "linear" else _cosine_betas(timesteps)
    betas = np.minimum(betas, 0.999)
    alphas = 1.0 - betas
    alpha_bars = np.cumprod(alphas)
    alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
    return NoiseSchedule(
        kind=kind, betas=betas, alphas=alphas, alpha_bars=alpha_bars, alpha_bars_prev=alpha_bars_prev,
        posterior_mean_coef_x0=np.sqrt(alpha_bars_prev) * betas / (1.0 - alpha_bars),
        posterior_mean_coef_xt=np.sqrt(alphas) * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars),
        posterior_variance=(1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas,
    )


def _check_schedule(schedule) -> NoiseSchedule:
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(
            f"schedule={schedule!r} must be a NoiseSchedule; build one with noise_schedule(kind, timesteps)."
        )
    return schedule


def _at(values, t, like):
    """``values[t - 1]`` (a schedule array at the 1-based steps ``t``: a number or ``[batch]``),
    as ``like``'s dtype, shaped to broadcast against ``like: [batch, ...]``. A Python step gives
    a Python float (no constant to build: the samplers' loops stay cheap)."""
    if isinstance(t, (int, np.integer)):
        return float(values[int(t) - 1])
    gathered = tf.gather(tf.constant(values, dtype=like.dtype), tf.convert_to_tensor(t) - 1)
    if gathered.shape.rank == 1:
        gathered = tf.reshape(gathered, [-1] + [1] * (like.shape.rank - 1))
    return gathered


# --------------------------------------------------------------------------- the forward process


def q_sample(x0, t, eps, schedule: NoiseSchedule):
    """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``, a draw of ``q(x_t | x_0)``.

    Args:
        x0: ``[batch, ...]`` data.
        t: the step, ``1..T``: an int, or ints ``[batch]``, one per example.
        eps: ``[batch, ...]`` standard normal noise.
        schedule: a :class:`NoiseSchedule`.

    Returns:
        ``[batch, ...]`` ``x_t``, a tensor of ``x0``'s dtype.
    """
    x0 = tf.convert_to_tensor(x0)
    eps = tf.cast(eps, x0.dtype)
    signal = _at(np.sqrt(schedule.alpha_bars), t, x0)
    noise = _at(np.sqrt(1.0 - schedule.alpha_bars), t, x0)
    return signal * x0 + noise * eps


def predict_x0(x_t, eps_pred, t, schedule: NoiseSchedule):
    """``x^_0 = (x_t - sqrt(1 - alpha_bar_t) eps_pred) / sqrt(alpha_bar_t)``: ``q_sample``
    solved for ``x_0``; with the optimal ``eps_pred = E[eps | x_t]`` it is ``E[x_0 | x_t]``."""
    x_t = tf.convert_to_tensor(x_t)
    eps_pred = tf.cast(eps_pred, x_t.dtype)
    return (x_t - _at(np.sqrt(1.0 - schedule.alpha_bars), t, x_t) * eps_pred) / _at(
        np.sqrt(schedule.alpha_bars), t, x_t)


def posterior_mean(x0, x_t, t, schedule: NoiseSchedule):
    """The mean of ``q(x_{t-1} | x_t, x_0)``: ``c0_t x_0 + ct_t x_t`` (its variance is
    ``schedule.posterior_variance[t - 1]``)."""
    x_t = tf.convert_to_tensor(x_t)
    x0 = tf.cast(x0, x_t.dtype)
    return (_at(schedule.posterior_mean_coef_x0, t, x_t) * x0
            + _at(schedule.posterior_mean_coef_xt, t, x_t) * x_t)


def model_mean(x_t, eps_pred, t, schedule: NoiseSchedule):
    """The mean of ``p_theta(x_{t-1} | x_t)``:
    ``mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_pred) / sqrt(alpha_t)``, which is
    :func:`posterior_mean` at ``x_0 = predict_x0(x_t, eps_pred, t)``."""
    x_t = tf.convert_to_tensor(x_t)
    eps_pred = tf.cast(eps_pred, x_t.dtype)
    coefficient = _at(schedule.betas / np.sqrt(1.0 - schedule.alpha_bars), t, x_t)
    return (x_t - coefficient * eps_pred) / _at(np.sqrt(schedule.alphas), t, x_t)


# --------------------------------------------------------------------------- samplers


def _check_shape(shape) -> tuple[int, ...]:
    shape = checks.widths(shape, "shape")
    if not shape:
        raise ValueError("shape=() must be (n, ...): the number of samples, then one example's shape.")
    return shape


def _normal(shape, seed: int, stream: int):
    """Standard normal ``float32`` noise, the stateless stream ``(seed, stream)``."""
    return tf.random.stateless_normal(shape, seed=[seed, stream], dtype=tf.float32)


def _eps(eps_fn, x, t: int):
    """``eps_fn`` at ``x: [n, ...]`` and step ``t`` for every row, as a float32 tensor."""
    steps = tf.fill(tf.shape(x)[:1], tf.constant(t, tf.int32))
    return tf.cast(eps_fn(x, steps), tf.float32)


def ancestral_sample(eps_fn, schedule: NoiseSchedule, shape, seed: int = 0, progress: bool = False):
    """Draw from ``p_theta`` by running its ``T`` reverse steps (Ho et al. 2020, algorithm 2).

    ``x_T ~ N(0, I)``; for ``t = T..1``: ``x_{t-1} = mu_theta(x_t, t) + sigma_t z`` with
    ``sigma_t^2 = beta~_t`` and ``z ~ N(0, I)`` (no noise at ``t = 1``: the result is the
    decoder's mean). ``x_T`` is the stateless stream ``(seed, 0)`` and the noise added at step
    ``t`` the stream ``(seed, t)``, as in :func:`ddim_sample`, which with ``steps = T`` and
    ``eta = 1`` is this sampler.

    Args:
        eps_fn: ``eps_fn(x_t, t) -> eps`` (see the module docstring).
        schedule: a :class:`NoiseSchedule`.
        shape: ``(n, ...)``: the number of samples, then one example's shape.
        seed: an integer.
        progress: show a tqdm bar over the steps.

    Returns:
        NumPy float32 ``shape`` samples.
    """
    _check_schedule(schedule)
    shape = _check_shape(shape)
    seed = checks.integer(seed, "seed")
    x = _normal(shape, seed, 0)
    for t in tqdm(range(schedule.timesteps, 0, -1), desc="ancestral", disable=not progress):
        x = model_mean(x, _eps(eps_fn, x, t), t, schedule)
        if t > 1:
            x = x + math.sqrt(schedule.posterior_variance[t - 1]) * _normal(shape, seed, t)
    return x.numpy()


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """The sub-sequence ``tau_1 < ... < tau_S`` of ``1..T`` that :func:`ddim_sample` visits:
    ``S = steps`` evenly spaced steps, rounded, from 1 to ``T`` both included."""
    timesteps = checks.integer(timesteps, "timesteps", minimum=2)
    steps = checks.integer(steps, "steps", minimum=2, maximum=timesteps)
    return np.round(np.linspace(1, timesteps, steps)).astype(np.int64)


def ddim_sample(eps_fn, schedule: NoiseSchedule, shape, steps: int = 50, seed: int = 0,
                eta: float = 0.0, progress: bool = False):
    """Draw with DDIM (Song et al. 2021) on the sub-sequence :func:`ddim_timesteps`.

    From ``x_T ~ N(0, I)``, for each visited step ``t`` with predecessor ``s`` (``s = 0`` after
    ``tau_1 = 1``, where ``alpha_bar_0 = 1``):

        x^_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t),    eps = eps_fn(x_t, t)
        sigma^2 = eta^2 (1 - alpha_bar_s) / (1 - alpha_bar_t) (1 - alpha_bar_t / alpha_bar_s)
        x_s = sqrt(alpha_bar_s) x^_0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z.

    ``eta = 0`` is deterministic given ``x_T`` (a discretised probability-flow ODE); ``eta = 1``
    with ``steps = T`` is :func:`ancestral_sample`, draw for draw (same noise streams: ``x_T``
    from ``(seed, 0)``, the noise leaving step ``t`` from ``(seed, t)``).

    Args:
        eps_fn, schedule, shape, seed, progress: as for :func:`ancestral_sample`.
        steps: ``S``, the number of network evaluations, ``2..T``.
        eta: ``>= 0``, the scale of the fresh noise.

    Returns:
        NumPy float32 ``shape`` samples.
    """
    _check_schedule(schedule)
    shape = _check_shape(shape)
    seed = checks.integer(seed, "seed")
    eta = checks.number(eta, "eta", non_negative=True)
    visited = ddim_timesteps(schedule.timesteps, steps)
    previous = np.concatenate([[0], visited[:-1]])
    alpha_bars = np.concatenate([[1.0], schedule.alpha_bars])  # alpha_bar at 0..T
    x = _normal(shape, seed, 0)
    pairs = list(zip(visited[::-1], previous[::-1]))
    for t, s in tqdm(pairs, desc="ddim", disable=not progress):
        eps = _eps(eps_fn, x, int(t))
        x0 = predict_x0(x, eps, int(t), schedule)
        a_t, a_s = alpha_bars[t], alpha_bars[s]
        variance = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - variance, 0.0)) * eps
        if variance > 0:
            x = x + math.sqrt(variance) * _normal(shape, seed, int(t))
    return x.numpy()


def _check_sigmas(sigmas) -> np.ndarray:
    values = np.atleast_1d(np.asarray(sigmas, dtype=object))
    values = np.array([checks.number(v, "sigmas", positive=True) for v in values.ravel()])
    if values.ndim != 1 or len(values) == 0 or np.any(np.diff(values) >= 0):
        raise ValueError(f"sigmas={sigmas!r} must be positive numbers in strictly decreasing order.")
    return values


def geometric_sigmas(sigma_max: float, sigma_min: float, levels: int) -> np.ndarray:
    """``levels`` noise levels from ``sigma_max`` down to ``sigma_min`` in geometric
    progression (Song and Ermon 2019), float64 ``[levels]``."""
    sigma_max = checks.positive_float(sigma_max, "sigma_max")
    sigma_min = checks.positive_float(sigma_min, "sigma_min")
    levels = checks.integer(levels, "levels", minimum=2)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min={sigma_min} must be below sigma_max={sigma_max}.")
    return np.geomspace(sigma_max, sigma_min, levels)


def annealed_langevin(score_fn, sigmas, shape, steps_per_level: int = 100, step_size: float = 2e-5,
                      seed: int = 0, denoise: bool = False, progress: bool = False, start=None,
                      sigma_min: float | None = None):
    """Annealed Langevin dynamics (Song and Ermon 2019, algorithm 1).

    From ``x ~ N(0, sigma_1^2 I)``, for each level ``i = 1..L`` of ``sigmas``
    (``sigma_1 > ... > sigma_L``) and ``steps_per_level`` times:
    ``x <- x + alpha_i / 2 * score_fn(x, sigma_i) + sqrt(alpha_i) z``, ``z ~ N(0, I)``, with
    ``alpha_i = step_size * sigma_i^2 / sigma_L^2``, which keeps the signal-to-noise ratio of
    the update the same at every level. ``denoise`` adds a final Tweedie step
    ``x + sigma_L^2 score_fn(x, sigma_L)`` (the posterior mean ``E[x_0 | x]``), which removes
    the last level's noise (Jolicoeur-Martineau et al. 2021). The paper starts from uniform
    noise; a Gaussian as wide as the largest level covers data of any offset.

    Args:
        score_fn: ``score_fn(x, sigma) -> grad_x log p_sigma(x)`` (see the module docstring).
        sigmas: the noise levels, positive and strictly decreasing.
        shape: ``(n, ...)``.
        steps_per_level: ``T``, the updates per level.
        step_size: ``epsilon > 0``, the step at the smallest level.
        seed: an integer; update ``k`` (counted from 1 over all levels) draws the stream
            ``(seed, k)``, the start ``(seed, 0)``.
        denoise: end with the Tweedie step.
        progress: show a tqdm bar over the levels.
        start: ``shape`` points to start from instead of the ``N(0, sigma_1^2 I)`` draw, to go on
            from an earlier call down further levels (give that call another ``seed``: the
            update streams restart at 1).
        sigma_min: the ``sigma_L`` of the step rule (default: the last of ``sigmas``); when a
            ladder runs in segments, give every segment the whole ladder's last level, so that
            each level takes the step it would take in one run.

    Returns:
        NumPy float32 ``shape`` samples.
    """
    sigmas = _check_sigmas(sigmas)
    shape = _check_shape(shape)
    steps_per_level = checks.positive_int(steps_per_level, "steps_per_level")
    step_size = checks.positive_float(step_size, "step_size")
    seed = checks.integer(seed, "seed")
    sigma_min = float(sigmas[-1]) if sigma_min is None else checks.positive_float(sigma_min, "sigma_min")
    x = float(sigmas[0]) * _normal(shape, seed, 0)
    if start is not None:
        x = tf.constant(np.asarray(start, dtype=np.float32))
        if tuple(x.shape) != shape:
            raise ValueError(f"start has shape {tuple(x.shape)}; expected {shape}.")
    update = 0
    for sigma in tqdm(sigmas, desc="langevin", disable=not progress):
        alpha = step_size * (sigma / sigma_min) ** 2
        for _ in range(steps_per_level):
            update += 1
            score = tf.cast(score_fn(x, float(sigma)), tf.float32)
            x = x + 0.5 * alpha * score + math.sqrt(alpha) * _normal(shape, seed, update)
    if denoise:
        x = x + float(sigmas[-1]) ** 2 * tf.cast(score_fn(x, float(sigmas[-1])), tf.float32)
    return x.numpy()


# --------------------------------------------------------------------------- the ELBO


class ElboTerms(NamedTuple):
    """The terms of a DDPM's negative ELBO, per example, NumPy ``[n]`` in nats (see
    :func:`elbo_terms`; the ``_se`` are Monte Carlo standard errors, 0 for closed forms).

    Attributes:
        prior: ``L_T = KL(q(x_T | x_0) || N(0, I))``, exact.
        steps: ``sum_{t=2..T} L_{t-1}``.
        steps_se: its standard error.
        decoder: ``L_0 = -E_q[log p_theta(x_0 | x_1)]``.
        decoder_se: its standard error.
    """

    prior: np.ndarray
    steps: np.ndarray
    steps_se: np.ndarray
    decoder: np.ndarray
    decoder_se: np.ndarray

    @property
    def elbo(self) -> np.ndarray:
        """``-(L_T + sum L_{t-1} + L_0)``, a lower bound on ``log p_theta(x_0)``."""
        return -(self.prior + self.steps + self.decoder)

    @property
    def elbo_se(self) -> np.ndarray:
        """The standard error of :attr:`elbo` (the two estimates use independent draws)."""
        return np.sqrt(self.steps_se**2 + self.decoder_se**2)


def _decoder_variance(schedule, decoder_variance):
    """``sigma_1^2``: ``beta_1`` (Ho et al. 2020's choice) unless given."""
    if decoder_variance is None:
        return float(schedule.betas[0])
    return checks.positive_float(decoder_variance, "decoder_variance")


DECODERS = ("gaussian", "binary")


def _elbo_draw(eps_fn, x0, schedule, seed, draw, decoder_log_var, decoder):
    """One draw of ``(T - 1) L_{t-1}`` (``t`` uniform on ``2..T``) and of ``-log p(x_0|x_1)``,
    each ``[n]``, from the stateless streams ``(seed, 3 draw + 0..2)``."""
    n, timesteps = tf.shape(x0)[0], schedule.timesteps
    t = tf.random.stateless_uniform([n], [seed, 3 * draw], minval=2, maxval=timesteps + 1,
                                    dtype=tf.int32)
    eps = tf.random.stateless_normal(tf.shape(x0), [seed, 3 * draw + 1], dtype=x0.dtype)
    x_t = q_sample(x0, t, eps, schedule)
    eps_pred = tf.cast(eps_fn(x_t, t), x0.dtype)
    values = {name: tf.gather(tf.constant(getattr(schedule, name), x0.dtype), t - 1)
              for name in ("betas", "alpha_bars", "posterior_variance")}
    step = (timesteps - 1) * objectives.ddpm_step_term(
        eps, eps_pred, values["betas"], values["alpha_bars"], values["posterior_variance"])
    eps_1 = tf.random.stateless_normal(tf.shape(x0), [seed, 3 * draw + 2], dtype=x0.dtype)
    ones = tf.ones([n], tf.int32)
    x_1 = q_sample(x0, ones, eps_1, schedule)
    mean = model_mean(x_1, tf.cast(eps_fn(x_1, ones), x0.dtype), ones, schedule)
    log_likelihood = (objectives.binary_decoder_log_likelihood if decoder == "binary"
                      else objectives.gaussian_log_likelihood)
    decoder = -log_likelihood(x0, mean, decoder_log_var)
    return step.numpy().astype(np.float64), decoder.numpy().astype(np.float64)


def elbo_terms(eps_fn, x0, schedule: NoiseSchedule, samples: int = 100, seed: int = 0,
               decoder_variance: float | None = None, decoder: str = "gaussian") -> ElboTerms:
    """The terms of the negative ELBO of the DDPM with noise predictor ``eps_fn``, per example.

    ``L_T`` exactly (:func:`~support.objectives.ddpm_prior_term`). ``sum_{t=2..T} L_{t-1}``
    by Monte Carlo: each of ``samples`` draws takes one ``t`` uniform on ``2..T`` and one
    ``x_t ~ q(x_t | x_0)`` per example and scores ``(T - 1) L_{t-1}``
    (:func:`~support.objectives.ddpm_step_term` with ``sigma_t^2 = beta~_t``), an unbiased
    estimate of the sum; the estimate is their mean and its standard error their standard
    deviation over ``sqrt(samples)``. ``L_0 = -log N(x_0; mu_theta(x_1, 1), sigma_1^2 I)``
    likewise, averaged over ``samples`` draws of ``x_1``. With ``decoder="gaussian"`` continuous
    data are scored with the density (no discretisation into bins), so the result bounds
    ``log p_theta(x_0)`` as a density, in nats. With ``decoder="binary"``, for binary data in
    ``{-1, +1}``, ``L_0`` is Ho et al.'s discretized decoder with two bins split at 0
    (:func:`~support.objectives.binary_decoder_log_likelihood`), and the result bounds the
    log-*probability* of the binary example, in nats, comparable with a Bernoulli VAE's ELBO.

    The uniform draw of ``t`` is unbiased but heavy-tailed for large ``T``: the first steps,
    where ``L_{t-1}`` is largest, are drawn rarely (with ``T = 1000`` and the optimal predictor
    of 2-D Gaussian data, 200 draws leave some examples 3 to 4 standard errors below the exact
    sum), so judge ``steps_se`` over many draws or pooled over many examples.

    Args:
        eps_fn: ``eps_fn(x_t, t) -> eps`` (see the module docstring).
        x0: ``[n, ...]`` data; float64 data are scored in float64, others in float32.
        schedule: a :class:`NoiseSchedule`.
        samples: draws per example, ``>= 2``.
        seed: an integer; the draws are stateless streams of it.
        decoder_variance: ``sigma_1^2``; ``None`` takes ``beta_1``.
        decoder: ``"gaussian"`` or ``"binary"`` (``x0`` in ``{-1, +1}``).

    Returns:
        An :class:`ElboTerms`.
    """
    _check_schedule(schedule)
    decoder = checks.choice(decoder, DECODERS, "decoder")
    samples = checks.integer(samples, "samples", minimum=2)
    seed = checks.integer(seed, "seed")
    x0 = np.asarray(x0)
    x0 = tf.constant(x0 if x0.dtype == np.float64 else x0.astype(np.float32))
    if x0.shape.rank < 2:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}; expected [n, ...] with at least two axes.")
    if decoder == "binary" and not np.all(np.abs(x0.numpy()) == 1):
        raise ValueError("decoder='binary' scores binary data: x0 must hold only -1 and +1 "
                         "(map pixels x in {0, 1} to 2 x - 1).")
    decoder_log_var = math.log(_decoder_variance(schedule, decoder_variance))
    draws = [_elbo_draw(eps_fn, x0, schedule, seed, i, decoder_log_var, decoder) for i in range(samples)]
    steps, decoder = (np.stack(values) for values in zip(*draws))  # [samples, n] each
    prior = objectives.ddpm_prior_term(x0, schedule.alpha_bars[-1]).numpy().astype(np.float64)
    root = math.sqrt(samples)
    return ElboTerms(prior, steps.mean(0), steps.std(0, ddof=1) / root, decoder.mean(0),
                     decoder.std(0, ddof=1) / root)


class StepTerms(NamedTuple):
    """``sum_{t=2..T} L_{t-1}`` of a DDPM's negative ELBO, stratified over the steps (see
    :func:`step_terms_by_t`); NumPy, in nats.

    Attributes:
        means: ``[T + 1]``: at index ``t`` (``2..T``) the mean ``L_{t-1}`` over the examples and
            noise draws; 0 at indices 0 and 1.
        variances: ``[T + 1]``: the variance of each mean (the sample variance of its
            ``n * draws`` values, divided by their number: examples and noise pooled).
    """

    means: np.ndarray
    variances: np.ndarray

    @property
    def total(self) -> float:
        """The estimate of the sum, averaged over the examples."""
        return float(self.means.sum())

    @property
    def total_se(self) -> float:
        """Its standard error from :attr:`variances`, summed over the steps (see
        :func:`step_terms_by_t` for what it holds)."""
        return float(math.sqrt(self.variances.sum()))

    def share(self, last_step: int) -> float:
        """The fraction of :attr:`total` that the steps ``t = 2..last_step`` carry."""
        return float(self.means[: last_step + 1].sum() / self.total)


def step_terms_by_t(eps_fn, x0, schedule: NoiseSchedule, draws: int = 2, seed: int = 0) -> StepTerms:
    """``sum_{t=2..T} L_{t-1}`` of the negative ELBO, stratified: every step ``t = 2..T`` scored
    on every example with ``draws`` noise draws ``x_t ~ q(x_t | x_0)`` each
    (:func:`~support.objectives.ddpm_step_term` with ``sigma_t^2 = beta~_t``). Unlike
    :func:`elbo_terms`' uniform draw of ``t``, no step is left out, so the first steps, where
    ``L_{t-1}`` is largest, cannot make the estimate heavy-tailed. Its standard error pools, at
    each step, the spread over the examples and over the noise draws: for the mean over these
    fixed examples it overstates the Monte Carlo error (a conservative s.e.), and for the mean over
    the data's distribution it leaves out the covariance between steps that scoring the same
    examples at every step brings. It costs ``(T - 1) * draws`` network calls on ``x0``.

    Args:
        eps_fn: ``eps_fn(x_t, t) -> eps`` (see the module docstring).
        x0: ``[n, ...]`` data, in the model's space (binary images as ``{-1, +1}``).
        schedule: a :class:`NoiseSchedule`.
        draws: noise draws per example and step, ``>= 1``; the standard error needs
            ``draws * n >= 2``.
        seed: an integer; draw ``d`` at step ``t`` is the stateless stream
            ``(seed, draws * t + d)``, one stream per step and draw.

    Returns:
        A :class:`StepTerms`.
    """
    _check_schedule(schedule)
    draws = checks.integer(draws, "draws", minimum=1)
    seed = checks.integer(seed, "seed")
    x0 = np.asarray(x0)
    x0 = tf.constant(x0 if x0.dtype == np.float64 else x0.astype(np.float32))
    if x0.shape.rank < 2 or x0.shape[0] * draws < 2:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}; expected [n, ...] with at least two "
                         "axes and n * draws >= 2.")
    timesteps = schedule.timesteps
    means, variances = np.zeros(timesteps + 1), np.zeros(timesteps + 1)
    for t in range(2, timesteps + 1):
        values = []
        for draw in range(draws):
            eps = tf.random.stateless_normal(tf.shape(x0), [seed, draws * t + draw], dtype=x0.dtype)
            eps_pred = tf.cast(eps_fn(q_sample(x0, t, eps, schedule), t), x0.dtype)
            values.append(objectives.ddpm_step_term(
                eps, eps_pred, schedule.betas[t - 1], schedule.alpha_bars[t - 1],
                schedule.posterior_variance[t - 1]).numpy().astype(np.float64))
        values = np.concatenate(values)
        means[t], variances[t] = values.mean(), values.var(ddof=1) / len(values)
    return StepTerms(means, variances)


# --------------------------------------------------------------------------- the model


def timestep_embedding(t, dim: int):
    """The sinusoidal embedding of steps (Vaswani et al. 2017; Ho et al. 2020):
    ``[sin(t w_0), ..., sin(t w_{h-1}), cos(t w_0), ..., cos(t w_{h-1})]`` with ``h = dim / 2``
    and ``w_k = 10000^(-k / (h - 1))``, frequencies from 1 down to 1e-4 per step.

    Args:
        t: ``[batch]`` steps (any numeric dtype).
        dim: an even ``dim >= 4``.

    Returns:
        ``[batch, dim]`` float32.
    """
    dim = checks.integer(dim, "dim", minimum=4)
    if dim % 2:
        raise ValueError(f"dim={dim} must be even (sines and cosines in pairs).")
    half = dim // 2
    frequencies = tf.exp(-math.log(10000.0) * tf.range(half, dtype=tf.float32) / (half - 1))
    angles = tf.cast(tf.reshape(t, [-1, 1]), tf.float32) * frequencies[None, :]
    return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)


def fourier_features(x, frequencies):
    """``x: [batch, d] -> [batch, d (1 + 2 K)]``: ``[x, sin(f_1 x), ..., sin(f_K x), cos(f_1 x),
    ..., cos(f_K x)]`` for the ``K`` angular ``frequencies`` (Tancik et al. 2020). An MLP on raw
    coordinates learns smooth functions first and fine detail slowly (its spectral bias); the
    sines and cosines hand it detail down to a scale of about ``1 / max(frequencies)``."""
    x = tf.convert_to_tensor(x)
    if not frequencies:
        return x
    angles = x[:, :, None] * tf.constant(frequencies, x.dtype)[None, None, :]  # [batch, d, K]
    flat = (tf.shape(x)[0], -1)
    return tf.concat([x, tf.reshape(tf.sin(angles), flat), tf.reshape(tf.cos(angles), flat)], axis=-1)


def _denoiser(values: int, widths, embedding_dim: int, inputs: int | None = None) -> keras.Model:
    """``(features [batch, inputs], embedding [batch, embedding_dim]) -> eps [batch, values]``:
    an MLP whose every hidden layer adds a projection of the (learned, SiLU) step features.
    ``inputs`` is the size of the features of ``x_t`` (``values`` without Fourier features)."""
    x_in = keras.Input((inputs or values,), name="x_t")
    embedding_in = keras.Input((embedding_dim,), name="embedding")
    features = keras.layers.Dense(embedding_dim, activation="silu", name="time")(embedding_in)
    h = x_in
    for i, width in enumerate(widths):
        mixed = keras.layers.Add()([
            keras.layers.Dense(width, name=f"dense_{i}")(h),
            keras.layers.Dense(width, use_bias=False, name=f"time_{i}")(features),
        ])
        h = keras.layers.Activation("silu")(mixed)
    eps = keras.layers.Dense(values, name="eps")(h)
    return keras.Model([x_in, embedding_in], eps, name="denoiser")


@keras.saving.register_keras_serializable(package="support")
class Diffusion(keras.Model):
    """A DDPM (Ho et al. 2020) for flat vectors or small images: an MLP ``eps_theta(x_t, t)``.

    The network flattens ``x_t`` to ``d`` values, embeds ``t`` sinusoidally
    (:func:`timestep_embedding`) and through a ``Dense(embedding_dim, silu)`` layer, and runs
    ``Dense(w) + Dense(w)(step features) -> silu`` for each width ``w``, then ``Dense(d)``,
    reshaped to ``input_shape``. Dense layers on the flattened pixels are enough for 8x8
    digits. Training minimises ``L_simple`` (:func:`~support.objectives.ddpm_simple_loss`):

        loss = mean over batch of mean_i (eps_i - eps_theta(x_t, t)_i)^2,
        t ~ Uniform{1..T},  eps ~ N(0, I),  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,

    with ``t`` and ``eps`` drawn from the model's ``keras.random.SeedGenerator`` (checkpointed by
    :func:`support.training.fit_resumable`). ``fit`` and ``evaluate`` report ``loss``. The
    noise is ``N(0, I)``, so the schedules suit data of order-one scale (pixels in [0, 1]:
    ``2 x - 1``); detail much finer than the first steps' noise ``sqrt(beta_1)`` (the 0.02-wide
    modes of ``ring8``) is learned slowly: give such data ``fourier_frequencies``, or scale it
    up, not down. Typical use, on 2-D points::

        model = Diffusion(input_shape=(2,), timesteps=1000, widths=(256, 256, 256))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(x_train, batch_size=256, epochs=200)
        x = model.sample(2000, seed=0)               # ancestral, T steps
        x = model.sample(2000, seed=0, steps=50)     # DDIM, 50 steps
        terms = model.elbo_terms(x_test)             # ElboTerms, per example

    Args:
        input_shape: one example's shape: ``(d,)`` or ``(height, width, channels)``.
        timesteps: ``T``.
        schedule: ``"linear"`` or ``"cosine"`` (see :func:`noise_schedule`).
        widths: hidden widths of the MLP.
        embedding_dim: size of the step embedding, even, ``>= 4``.
        fourier_frequencies: angular frequencies of :func:`fourier_features` of ``x_t`` fed to
            the MLP beside ``x_t`` itself (``()``: none), e.g. ``(1, 2, 4, 8, 16, 32)`` for
            2-D data whose modes are a few hundredths wide.
        binary: the data are binary images, pixels in ``{0, 1}`` (e.g. from
            ``fit_resumable(..., binarization="dynamic")``, a fresh draw every step): the model
            diffuses ``2 x - 1`` and its decoder ``p(x_0 | x_1)`` is Ho et al.'s discretized
            Gaussian with two bins split at 0, so :meth:`elbo_terms` bounds the log-probability
            of binary images (comparable with a Bernoulli VAE's) and :meth:`sample` returns the
            decoder's probability that each pixel is 1, as a Bernoulli VAE's decoder means.
    """

    def __init__(self, input_shape=(2,), timesteps: int = 1000, schedule: str = "linear",
                 widths=(256, 256, 256), embedding_dim: int = 64, fourier_frequencies=(),
                 binary: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.example_shape = _check_shape(input_shape)
        self.timesteps = checks.integer(timesteps, "timesteps", minimum=2)
        self.schedule_kind = checks.choice(schedule, SCHEDULES, "schedule")
        self.widths = checks.widths(widths, "widths")
        self.embedding_dim = checks.integer(embedding_dim, "embedding_dim", minimum=4)
        if self.embedding_dim % 2:
            raise ValueError(f"embedding_dim={embedding_dim} must be even (sines and cosines in pairs).")
        if not isinstance(fourier_frequencies, (tuple, list)):
            raise ValueError(
                f"fourier_frequencies={fourier_frequencies!r} must be a tuple of positive numbers.")
        self.fourier_frequencies = tuple(checks.positive_float(f, "fourier_frequencies")
                                         for f in fourier_frequencies)
        if not isinstance(binary, (bool, np.bool_)):
            raise ValueError(f"binary={binary!r} must be True or False.")
        self.binary = bool(binary)
        self.schedule = noise_schedule(self.schedule_kind, self.timesteps)
        self.dimension = math.prod(self.example_shape)
        features = self.dimension * (1 + 2 * len(self.fourier_frequencies))
        self.denoiser = _denoiser(self.dimension, self.widths, self.embedding_dim, features)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # t and eps of training come from this generator: its state is a variable, so a
        # checkpoint restores it and a resumed training draws the same noise.
        self.seed_generator = keras.random.SeedGenerator()
        self.built = True  # every variable exists (the denoiser starts with Inputs)

    def get_config(self):
        config = super().get_config()
        config.update(input_shape=self.example_shape, timesteps=self.timesteps,
                      schedule=self.schedule_kind, widths=self.widths, embedding_dim=self.embedding_dim,
                      fourier_frequencies=self.fourier_frequencies, binary=self.binary)
        return config

    def _eps(self, x_t, t, training=None):
        """``eps_theta(x_t, t)``: ``x_t [batch, *input_shape]``, ``t [batch]`` ints."""
        batch = tf.shape(x_t)[0]
        embedding = timestep_embedding(t, self.embedding_dim)
        features = fourier_features(tf.reshape(x_t, (batch, self.dimension)), self.fourier_frequencies)
        eps = self.denoiser([features, embedding], training=training)
        return tf.reshape(eps, tf.shape(x_t))

    def call(self, inputs, training=None):
        """``(x_t [batch, *input_shape], t [batch] ints in 1..T) -> eps_theta(x_t, t)``."""
        x_t, t = inputs
        return self._eps(tf.cast(x_t, self.compute_dtype), tf.cast(t, tf.int32), training=training)

    @tf.function(reduce_retracing=True)
    def _predict(self, x_t, t):
        return self._eps(x_t, t, training=False)

    def predict_noise(self, x_t, t):
        """``eps_theta(x_t, t)`` as a tensor, compiled; ``t`` an int or ``[batch]`` ints. This is
        the ``eps_fn`` the samplers and :func:`elbo_terms` take."""
        x_t = tf.cast(x_t, self.compute_dtype)
        return self._predict(x_t, tf.broadcast_to(tf.cast(t, tf.int32), tf.shape(x_t)[:1]))

    # ------------------------------------------------------------------ training

    def example_losses(self, data, training=False):
        """``L_simple`` per example, ``[batch]``, for a fresh ``t`` and ``eps`` per example.
        ``data`` is ``x_0: [batch, *input_shape]`` or a tuple starting with it."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, self.compute_dtype)
        if self.binary:
            x = 2.0 * x - 1.0  # pixels {0, 1} -> {-1, +1}
        t = keras.random.randint(tf.shape(x)[:1], 1, self.timesteps + 1, dtype="int32",
                                 seed=self.seed_generator)
        eps = keras.random.normal(tf.shape(x), dtype=x.dtype, seed=self.seed_generator)
        x_t = q_sample(x, t, eps, self.schedule)
        return objectives.ddpm_simple_loss(eps, self._eps(x_t, t, training=training))

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, report = objectives.replica_mean(self.example_losses(data, training=True))
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        self.loss_tracker.update_state(report)
        return objectives.step_logs(self.metrics)

    def test_step(self, data):
        _, report = objectives.replica_mean(self.example_losses(data, training=False))
        self.loss_tracker.update_state(report)
        return objectives.step_logs(self.metrics)

    # ------------------------------------------------------------------ sampling and evaluation

    def sample(self, n: int, seed: int = 0, steps: int | None = None, eta: float = 0.0,
               progress: bool = False):
        """``n`` samples, NumPy ``[n, *input_shape]``: :func:`ancestral_sample` (all ``T``
        steps) when ``steps`` is ``None``, else :func:`ddim_sample` with ``steps`` and ``eta``.
        A ``binary`` model returns the probability that each pixel is 1, ``Phi(x / sigma_1)`` of
        the sampler's last mean ``x`` (the two-bin decoder; for DDIM, of its last ``x_0``)."""
        shape = (checks.positive_int(n, "n"), *self.example_shape)
        if steps is None:
            x = ancestral_sample(self.predict_noise, self.schedule, shape, seed, progress)
        else:
            x = ddim_sample(self.predict_noise, self.schedule, shape, steps, seed, eta, progress)
        if not self.binary:
            return x
        sigma_1 = math.sqrt(_decoder_variance(self.schedule, None))
        return np.exp(objectives.log_normal_cdf(tf.constant(x / sigma_1)).numpy())

    def elbo_terms(self, x0, samples: int = 100, seed: int = 0,
                   decoder_variance: float | None = None) -> ElboTerms:
        """:func:`elbo_terms` of this model on ``x0: [n, *input_shape]``: ``L_T`` exact, a Monte
        Carlo estimate of ``sum_{t >= 2} L_{t-1}`` and of ``L_0`` with standard errors. A
        ``binary`` model takes binary images, pixels in ``{0, 1}``, and bounds their
        log-probability (the two-bin decoder)."""
        return elbo_terms(self.predict_noise, self._model_space(x0), self.schedule, samples, seed,
                          decoder_variance, decoder="binary" if self.binary else "gaussian")

    def _model_space(self, x0) -> np.ndarray:
        """``x0: [n, *input_shape]`` checked, float32, binary images mapped to ``{-1, +1}``."""
        x0 = np.asarray(x0, dtype=np.float32)
        if x0.shape[1:] != self.example_shape:
            expected = ", ".join(map(str, self.example_shape))
            raise ValueError(f"x0 has shape {x0.shape}; expected [n, {expected}].")
        if not self.binary:
            return x0
        if not np.all((x0 == 0) | (x0 == 1)):
            raise ValueError("this Diffusion model is binary: x0 must hold only 0 and 1 (binarize "
                             "grey levels first, e.g. with support.data.binarize).")
        return 2.0 * x0 - 1.0

    def step_terms_by_t(self, x0, draws: int = 2, seed: int = 0) -> StepTerms:
        """:func:`step_terms_by_t` of this model on ``x0: [n, *input_shape]``: ``sum_{t>=2} L_{t-1}``
        stratified over every step, with its standard error; a ``binary`` model takes binary
        images, pixels in ``{0, 1}``."""
        return step_terms_by_t(self.predict_noise, self._model_space(x0), self.schedule, draws, seed)


# --------------------------------------------------------------------------- Gaussian data


def _gaussian_parameters(mean, std):
    mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), mean.shape)
    if mean.ndim != 1 or not np.all(np.isfinite(mean)) or not np.all(std > 0):
        raise ValueError(f"mean={mean!r} and std={std!r} must be [d] finite means and positive deviations.")
    return mean, std


def _eps_coefficients(mean, std, schedule):
    """``(a [T, d], b [T, d])`` of ``E[eps | x_t] = a_t x_t + b_t`` for ``x_0 ~ N(mean, diag std^2)``."""
    alpha_bars = schedule.alpha_bars[:, None]
    marginal_variance = alpha_bars * std**2 + 1.0 - alpha_bars  # Var x_t
    a = np.sqrt(1.0 - alpha_bars) / marginal_variance
    return a, -a * np.sqrt(alpha_bars) * mean


def gaussian_data_eps_fn(mean, std, schedule: NoiseSchedule):
    """The optimal noise predictor for data ``x_0 ~ N(mean, diag std^2)``, as an ``eps_fn``.

    ``x_t`` and ``eps`` are jointly Gaussian, with ``Var x_t = alpha_bar_t s^2 + 1 - alpha_bar_t``
    and ``Cov(eps, x_t) = sqrt(1 - alpha_bar_t)`` per value, so the minimiser of
    ``E||eps - eps_theta(x_t, t)||^2`` (and of every ``L_{t-1}``) is linear:

        E[eps | x_t] = sqrt(1 - alpha_bar_t) / (alpha_bar_t s^2 + 1 - alpha_bar_t)
                       * (x_t - sqrt(alpha_bar_t) mu).

    Args:
        mean, std: ``[d]`` (or numbers) ``mu`` and ``s``.
        schedule: a :class:`NoiseSchedule`.

    Returns:
        ``eps_fn(x_t [batch, d], t [batch]) -> [batch, d]`` in ``x_t``'s dtype.
    """
    mean, std = _gaussian_parameters(mean, std)
    a, b = _eps_coefficients(mean, std, _check_schedule(schedule))
    constants = {}  # per dtype, built once: samplers call eps_fn at every step

    def eps_fn(x_t, t):
        x_t = tf.convert_to_tensor(x_t)
        if x_t.dtype not in constants:
            constants[x_t.dtype] = (tf.constant(a, x_t.dtype), tf.constant(b, x_t.dtype))
        slope, offset = constants[x_t.dtype]
        index = tf.convert_to_tensor(t) - 1
        return tf.gather(slope, index) * x_t + tf.gather(offset, index)

    return eps_fn


def gaussian_data_score_fn(mean, std):
    """The score of Gaussian data ``N(mean, diag std^2)`` noised by ``sigma``, as a ``score_fn``:
    ``grad log p_sigma(x) = -(x - mu) / (s^2 + sigma^2)``."""
    mean, std = _gaussian_parameters(mean, std)

    def score_fn(x, sigma):
        x = tf.convert_to_tensor(x)
        return -(x - tf.constant(mean, x.dtype)) / tf.constant(std**2 + sigma**2, x.dtype)

    return score_fn


def _gaussian_elbo(moment_1, moment_2, mean, std, schedule, decoder_variance) -> ElboTerms:
    """The exact terms from the data's first and second moments per value, ``[n, d]`` each
    (``x_0`` and ``x_0^2`` for one example; ``mu`` and ``mu^2 + s^2`` for the expectation)."""
    sigma_1 = _decoder_variance(schedule, decoder_variance)
    a, _ = _eps_coefficients(mean, std, schedule)
    betas, alphas, alpha_bars = (v[:, None, None] for v in (
        schedule.betas, schedule.alphas, schedule.alpha_bars))
    a = a[:, None, :]  # [T, 1, d]
    squared_deviation = moment_2 - 2 * mean * moment_1 + mean**2  # E[(x_0 - mu)^2]
    # E[(eps - E[eps | x_t])^2 | x_0] per value, [T, n, d]
    error = (1 - a * np.sqrt(1 - alpha_bars)) ** 2 + a**2 * alpha_bars * squared_deviation
    weights = betas[1:] ** 2 / (2 * schedule.posterior_variance[1:, None, None] * alphas[1:]
                                * (1 - alpha_bars[1:]))
    steps = np.sum(weights * error[1:], axis=(0, 2))
    # x_0 - mu_theta(x_1) = -sqrt(beta_1 / alpha_1) (eps - eps*), so L_0 is Gaussian in closed form
    decoder = np.sum(0.5 * math.log(2 * math.pi * sigma_1)
                     + betas[0] / alphas[0] * error[0] / (2 * sigma_1), axis=-1)
    a_T = schedule.alpha_bars[-1]
    prior = 0.5 * np.sum(a_T * moment_2 - a_T - np.log1p(-a_T), axis=-1)
    zeros = np.zeros_like(prior)
    return ElboTerms(prior, steps, zeros, decoder, zeros)


def gaussian_data_elbo(x0, mean, std, schedule: NoiseSchedule,
                       decoder_variance: float | None = None) -> ElboTerms:
    """The exact terms of the negative ELBO of each ``x0``, float64 ``[n]``, for data
    ``N(mean, diag std^2)`` and the DDPM whose noise predictor is the optimal
    :func:`gaussian_data_eps_fn`, with ``sigma_t^2 = beta~_t`` and the decoder variance
    ``sigma_1^2`` (``beta_1`` by default).

    With ``e_t(x_0) = E[(eps - E[eps | x_t])^2 | x_0] = (1 - a_t sqrt(1 - alpha_bar_t))^2 +
    a_t^2 alpha_bar_t (x_0 - mu)^2`` per value (``a_t`` the slope of the predictor):
    ``L_{t-1} = beta_t^2 / (2 beta~_t alpha_t (1 - alpha_bar_t)) sum_i e_t``,
    ``L_0 = sum_i [1/2 log(2 pi sigma_1^2) + beta_1 / alpha_1 e_1 / (2 sigma_1^2)]`` and
    ``L_T = 1/2 sum_i [alpha_bar_T x_0,i^2 - alpha_bar_T - log(1 - alpha_bar_T)]``. The ELBO
    is below :func:`gaussian_data_model_log_density` (``log p_theta``) for every ``x0``; it is
    below the data's own ``log p(x_0)`` on average over the data only.

    Args:
        x0: ``[n, d]``; mean, std: ``[d]``; schedule: a :class:`NoiseSchedule`.
    """
    mean, std = _gaussian_parameters(mean, std)
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.ndim != 2 or x0.shape[1] != len(mean):
        raise ValueError(f"x0 has shape {x0.shape}; expected [n, {len(mean)}].")
    return _gaussian_elbo(x0, x0**2, mean, std, _check_schedule(schedule), decoder_variance)


def gaussian_data_expected_elbo(mean, std, schedule: NoiseSchedule,
                                decoder_variance: float | None = None) -> ElboTerms:
    """:func:`gaussian_data_elbo` averaged over ``x_0 ~ N(mean, diag std^2)``, exactly: an
    :class:`ElboTerms` of ``[1]`` arrays. Compare its ``elbo`` with the data's expected
    log-density ``-1/2 sum_i log(2 pi e s_i^2)`` (minus the entropy)."""
    mean, std = _gaussian_parameters(mean, std)
    return _gaussian_elbo(mean[None], (mean**2 + std**2)[None], mean, std,
                          _check_schedule(schedule), decoder_variance)


def gaussian_data_log_density(x0, mean, std) -> np.ndarray:
    """``log N(x0; mean, diag std^2)``, float64 ``[n]``, for ``x0: [n, d]``."""
    mean, std = _gaussian_parameters(mean, std)
    x0 = np.asarray(x0, dtype=np.float64)
    return -0.5 * np.sum(np.log(2 * np.pi * std**2) + ((x0 - mean) / std) ** 2, axis=-1)


def gaussian_data_sample_moments(mean, std, schedule: NoiseSchedule, steps: int | None = None,
                                 eta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The exact mean and variance, ``[d]`` each, of what :func:`ddim_sample` returns with the
    optimal predictor of ``N(mean, diag std^2)`` data; ``steps=None, eta=1`` is
    :func:`ancestral_sample`.

    Every update is affine in ``x_t`` plus independent Gaussian noise,
    ``x_s = k x_t + c + sigma z``, so from ``x_T ~ N(0, 1)`` the mean and variance follow
    ``m <- k m + c`` and ``v <- k^2 v + sigma^2``. The difference from ``(mean, std^2)`` is the
    sampler's bias alone: the finite number of steps, ``x_T``'s small mismatch with ``q(x_T)``,
    and (for ``eta > 0``) the reverse variance ``beta~_t`` below the true one.
    """
    mean, std = _gaussian_parameters(mean, std)
    _check_schedule(schedule)
    eta = checks.number(eta, "eta", non_negative=True)
    visited = ddim_timesteps(schedule.timesteps, schedule.timesteps if steps is None else steps)
    a, b = _eps_coefficients(mean, std, schedule)
    alpha_bars = np.concatenate([[1.0], schedule.alpha_bars])
    m, v = np.zeros_like(mean), np.ones_like(mean)
    for t, s in zip(visited[::-1], np.concatenate([[0], visited[:-1]])[::-1]):
        a_t, a_s = alpha_bars[t], alpha_bars[s]
        variance = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        root = math.sqrt(max(1 - a_s - variance, 0.0))
        # x0^ = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), eps = a x_t + b
        slope = math.sqrt(a_s) * (1 - math.sqrt(1 - a_t) * a[t - 1]) / math.sqrt(a_t) + root * a[t - 1]
        offset = (-math.sqrt(a_s) * math.sqrt(1 - a_t) / math.sqrt(a_t) + root) * b[t - 1]
        m, v = slope * m + offset, slope**2 * v + variance
    return m, v


def gaussian_data_model_log_density(x0, mean, std, schedule: NoiseSchedule,
                                    decoder_variance: float | None = None) -> np.ndarray:
    """The exact ``log p_theta(x0)``, float64 ``[n]``, of the DDPM that
    :func:`gaussian_data_elbo` scores: ``p_theta(x_0) = N(m, v + sigma_1^2)`` with ``(m, v)`` the
    moments of :func:`ancestral_sample`'s output (:func:`gaussian_data_sample_moments`) and
    ``sigma_1^2`` the decoder's variance, which the sampler leaves out."""
    m, v = gaussian_data_sample_moments(mean, std, schedule)
    return gaussian_data_log_density(x0, m, np.sqrt(v + _decoder_variance(schedule, decoder_variance)))
