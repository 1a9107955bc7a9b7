"""Objectives of the series: log-likelihoods, KL divergences, the ELBO and the IWAE bound.

Every function here is a pure function of tensors that returns **per-example** values, shape
``[batch]`` (reduce at the call site: the VAE sums over pixels and averages over the batch).
"Per-example" means: summed over every axis but the first, so an image
``x: [batch, height, width, channels]`` gives one number per image.

Notation: ``x`` data, ``z`` latent code, ``q(z|x) = N(z; mu, diag(sigma^2))`` the encoder,
``p(z) = N(0, I)`` the prior, ``p(x|z)`` the decoder. ``log`` is the natural logarithm, so
every value is in nats. ``log_var = log sigma^2`` is used rather than ``sigma`` because it is
unconstrained and its exponential cannot underflow to a zero variance.

GAN losses (discriminator cross-entropy, minimax and non-saturating generator losses, the
Wasserstein critic and generator losses and the WGAN-GP gradient penalty) close the module.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

LOG_2PI = math.log(2.0 * math.pi)


def _cast(value, dtype):
    """``value`` as a tensor of ``dtype``; Python and NumPy numbers are converted directly, not
    through float32 (``tf.cast(0.1, tf.float64)`` would keep only float32's digits)."""
    if isinstance(value, (int, float, list, tuple, np.ndarray, np.generic)):
        value = np.asarray(value, dtype=dtype.as_numpy_dtype)
    return tf.cast(value, dtype)


def _sum_per_example(values):
    """``[batch, ...] -> [batch]``: the sum over every axis but the first."""
    return tf.reduce_sum(tf.reshape(values, (tf.shape(values)[0], -1)), axis=1)


# --------------------------------------------------------------------------- likelihoods


def gaussian_log_likelihood(x, mean, log_var):
    """Log-density of ``x`` under a Gaussian with diagonal covariance, summed per example.

    ``log N(x; mean, diag(sigma^2)) = sum_i -1/2 [log(2 pi) + log sigma_i^2
    + (x_i - mean_i)^2 / sigma_i^2]``, the sum running over every non-batch axis.

    Args:
        x: ``[batch, ...]`` observations.
        mean: ``[batch, ...]`` means, the shape of ``x``.
        log_var: ``log sigma^2``, broadcastable to ``x``: a scalar for one shared variance
            (``2 * log(sigma)``), or one value per pixel, or per example and pixel.

    Returns:
        ``[batch]`` log-likelihoods in nats.
    """
    x = tf.convert_to_tensor(x)
    mean = _cast(mean, x.dtype)
    log_var = _cast(log_var, x.dtype)
    log_density = -0.5 * (LOG_2PI + log_var + tf.square(x - mean) * tf.exp(-log_var))
    return _sum_per_example(log_density + tf.zeros_like(x))


def bernoulli_log_likelihood(x, logits):
    """Log-probability of ``x`` under independent Bernoulli pixels given their logits.

    With ``p = sigmoid(l)``: ``log p(x) = sum_i x_i log p_i + (1 - x_i) log(1 - p_i)
    = sum_i x_i l_i - softplus(l_i)``, computed as minus TensorFlow's sigmoid cross-entropy
    ``max(l, 0) - l x + log(1 + exp(-|l|))``, which neither overflows for large ``|l|`` nor
    takes the log of a probability rounded to 0 (as ``log(sigmoid(l))`` does in float32 for
    ``l < -88``). For ``x`` in (0, 1) (grey levels) this is the continuous cross-entropy, which
    is not a normalised density: binarize data before reading it as a log-likelihood.

    Args:
        x: ``[batch, ...]`` pixels in [0, 1] (0 or 1 for a true log-probability).
        logits: ``[batch, ...]`` decoder outputs ``l``, the shape of ``x``.

    Returns:
        ``[batch]`` log-likelihoods in nats (``<= 0`` for binary ``x``).
    """
    logits = tf.convert_to_tensor(logits)
    x = _cast(x, logits.dtype)
    return -_sum_per_example(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits))


def log_normal_diag(z, mean, log_var):
    """Log-density of a diagonal Gaussian, summed over the last axis.

    ``log N(z; mean, diag(exp(log_var))) = sum_j -1/2 [log(2 pi) + log_var_j
    + (z_j - mean_j)^2 exp(-log_var_j)]``.

    Unlike the likelihoods above this reduces only the **last** axis, so that ``z`` may carry
    sample axes in front: ``z: [samples, batch, latent_dim]`` with ``mean, log_var:
    [batch, latent_dim]`` gives ``[samples, batch]``. The prior ``p(z) = N(0, I)`` is
    ``log_normal_diag(z, 0.0, 0.0)``.

    Args:
        z: ``[..., latent_dim]`` points.
        mean, log_var: broadcastable to ``z``.

    Returns:
        ``z.shape[:-1]`` log-densities.
    """
    z = tf.convert_to_tensor(z)
    mean = _cast(mean, z.dtype)
    log_var = _cast(log_var, z.dtype)
    log_density = -0.5 * (LOG_2PI + log_var + tf.square(z - mean) * tf.exp(-log_var))
    return tf.reduce_sum(log_density + tf.zeros_like(z), axis=-1)


# --------------------------------------------------------------------------- KL


def kl_per_dimension(z_mean, z_log_var):
    """KL divergence of each latent coordinate of ``q`` from the standard normal prior.

    ``KL(N(mu_j, sigma_j^2) || N(0, 1)) = 1/2 (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)``,
    zero exactly when ``mu_j = 0`` and ``sigma_j = 1`` (the coordinate carries no information
    about ``x``: an inactive unit).

    Args:
        z_mean: ``[batch, latent_dim]`` ``mu``.
        z_log_var: ``[batch, latent_dim]`` ``log sigma^2``.

    Returns:
        ``[batch, latent_dim]`` non-negative KL values in nats.
    """
    z_mean = tf.convert_to_tensor(z_mean)
    z_log_var = _cast(z_log_var, z_mean.dtype)
    return 0.5 * (tf.square(z_mean) + tf.exp(z_log_var) - 1.0 - z_log_var)


def kl_diagonal_gaussian_standard_normal(z_mean, z_log_var):
    """``KL(N(mu, diag sigma^2) || N(0, I))``, summed over the latent dimensions.

    ``KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)`` (Kingma and Welling 2014,
    appendix B): the analytic form of ``E_q[log q(z|x) - log p(z)]``.

    Args:
        z_mean: ``[batch, latent_dim]`` ``mu``.
        z_log_var: ``[batch, latent_dim]`` ``log sigma^2``.

    Returns:
        ``[batch]`` KL divergences in nats, ``>= 0``.
    """
    return tf.reduce_sum(kl_per_dimension(z_mean, z_log_var), axis=-1)


# --------------------------------------------------------------------------- bounds


def elbo(reconstruction_log_likelihood, kl, beta=1.0):
    """The evidence lower bound, per example.

    ``ELBO(x) = E_{q(z|x)}[log p(x|z)] - beta * KL(q(z|x) || p(z)) <= log p(x)`` for
    ``beta = 1``, with equality iff ``q(z|x)`` is the true posterior ``p(z|x)``: indeed
    ``log p(x) - ELBO(x) = KL(q(z|x) || p(z|x))``. The VAE minimises ``-ELBO``, the
    "reconstruction" ``-E_q[log p(x|z)]`` plus ``beta`` times the "rate" ``KL``; ``beta != 1``
    gives the beta-VAE objective (Higgins et al. 2017), no longer a bound on ``log p(x)`` for
    ``beta < 1``.

    Args:
        reconstruction_log_likelihood: ``[batch]`` ``E_q[log p(x|z)]``, usually a Monte Carlo
            estimate with ``z = mu + sigma * eps`` (one sample during training).
        kl: ``[batch]`` ``KL(q(z|x) || p(z))``, e.g. from
            :func:`kl_diagonal_gaussian_standard_normal`.
        beta: weight of the KL term (a float or a scalar tensor, such as a warm-up variable).

    Returns:
        ``[batch]`` ELBO values in nats.
    """
    reconstruction_log_likelihood = tf.convert_to_tensor(reconstruction_log_likelihood)
    kl = _cast(kl, reconstruction_log_likelihood.dtype)
    return reconstruction_log_likelihood - _cast(beta, kl.dtype) * kl


def log_importance_weights(log_px_given_z, log_pz, log_qz):
    """``log w = log p(x|z) + log p(z) - log q(z|x)``, elementwise.

    ``w = p(x, z) / q(z|x)`` is the importance weight of a sample ``z ~ q(z|x)``:
    ``E_q[w] = p(x)`` exactly and ``E_q[log w] = ELBO(x)``.

    Args:
        log_px_given_z, log_pz, log_qz: tensors of one shape, e.g. ``[k, batch]``.
    """
    return log_px_given_z + log_pz - log_qz


def iwae_bound(log_weights, axis=0):
    """The importance-weighted bound (Burda et al. 2016): log-mean-exp over ``k`` samples.

    ``L_k(x) = log (1/k) sum_{i=1..k} w_i = logsumexp_i(log w_i) - log k`` with
    ``z_i ~ q(z|x)`` independent. ``E[L_1] = ELBO``, ``E[L_k] <= E[L_{k+1}] <= log p(x)`` and
    ``L_k -> log p(x)`` as ``k -> infinity``; ``-L_k`` for large ``k`` is the importance-sampled
    estimate of the negative log-likelihood. The log-sum-exp is taken after subtracting the
    maximum, so weights of ``exp(-1000)`` do not underflow.

    Args:
        log_weights: ``[k, batch]`` log importance weights (see
            :func:`log_importance_weights`), the sample axis first by default.
        axis: the sample axis.

    Returns:
        ``[batch]`` (``log_weights`` without ``axis``) bound values in nats.
    """
    log_weights = tf.convert_to_tensor(log_weights)
    k = tf.cast(tf.shape(log_weights)[axis], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=axis) - tf.math.log(k)


def reparameterization_gradients(f, mean, log_var, samples: int, seed: int = 0):
    """Single-sample reparameterization estimates of ``d/d mean E_{z~q}[f(z)]``.

    ``q = N(mean, diag(exp(log_var)))``. Writing ``z = mean + sigma * epsilon`` with
    ``epsilon ~ N(0, I)`` moves the randomness out of the parameters, so
    ``d/d mean E_q[f(z)] = E_epsilon[f'(mean + sigma * epsilon)]`` (Kingma and Welling 2014):
    each sample's gradient is taken by automatic differentiation through ``z``.

    Args:
        f: maps ``z: [samples, dim]`` to ``[samples]`` (one value per sample).
        mean, log_var: ``[dim]`` parameters of ``q``.
        samples: number of independent single-sample estimates.

    Returns:
        ``[samples, dim]``: one unbiased gradient estimate per row.
    """
    mean = tf.convert_to_tensor(mean, tf.float64)
    log_var = tf.convert_to_tensor(log_var, tf.float64)
    epsilon = tf.random.stateless_normal([samples, mean.shape[0]], [seed, 0], dtype=tf.float64)
    means = tf.tile(mean[None], [samples, 1])  # one copy per sample: per-sample gradients
    with tf.GradientTape() as tape:
        tape.watch(means)
        values = f(means + tf.exp(0.5 * log_var) * epsilon)
    return tape.gradient(values, means)


def score_function_gradients(f, mean, log_var, samples: int, seed: int = 0):
    """Single-sample score-function (REINFORCE) estimates of ``d/d mean E_{z~q}[f(z)]``.

    ``d/d mean E_q[f(z)] = E_q[f(z) * d/d mean log q(z)]`` with
    ``d/d mean log q(z) = (z - mean) / sigma^2`` (Williams 1992): it needs only values of
    ``f``, not its gradient, and pays for that with a much larger variance. Same arguments and
    return shape as :func:`reparameterization_gradients`, and the same ``z`` for a given seed.
    """
    mean = tf.convert_to_tensor(mean, tf.float64)
    log_var = tf.convert_to_tensor(log_var, tf.float64)
    epsilon = tf.random.stateless_normal([samples, mean.shape[0]], [seed, 0], dtype=tf.float64)
    z = mean + tf.exp(0.5 * log_var) * epsilon
    score = (z - mean) / tf.exp(log_var)
    return f(z)[:, None] * score


# --------------------------------------------------------------------------- GAN losses
#
# The discriminator outputs a logit ``l`` and ``D(x) = sigmoid(l)``; a Wasserstein critic outputs
# an unbounded score ``f(x)``. Every loss below takes discriminator outputs of shape ``[batch]``
# or ``[batch, 1]`` and returns ``[batch]``. The logs of probabilities are written with
# ``log sigmoid(l) = -softplus(-l)`` and ``log(1 - sigmoid(l)) = -softplus(l)``, which stay finite
# where ``sigmoid`` rounds to 0 or 1 in float32.


def _per_example_outputs(outputs):
    """``[batch]`` or ``[batch, 1]`` discriminator outputs as ``[batch]``."""
    outputs = tf.convert_to_tensor(outputs)
    return tf.reshape(outputs, (tf.shape(outputs)[0],))


def discriminator_loss(real_logits, fake_logits):
    """The discriminator's cross-entropy (Goodfellow et al. 2014), per example.

    ``-log D(x) - log(1 - D(G(z))) = softplus(-l_real) + softplus(l_fake)``, with one real and one
    generated example per row. Minimising its mean over the data and ``z`` gives
    ``2 log 2 - 2 JSD(p_data || p_G)`` at the optimal discriminator.

    Args:
        real_logits: ``[batch]`` or ``[batch, 1]`` logits ``l`` of real data.
        fake_logits: logits of generated data, the shape of ``real_logits``.

    Returns:
        ``[batch]`` losses in nats, ``>= 0``.
    """
    real_logits = _per_example_outputs(real_logits)
    fake_logits = _cast(_per_example_outputs(fake_logits), real_logits.dtype)
    return tf.nn.softplus(-real_logits) + tf.nn.softplus(fake_logits)


def generator_minimax_loss(fake_logits):
    """The generator's side of the original minimax game: ``log(1 - D(G(z))) = -softplus(l)``.

    Its gradient vanishes when the discriminator confidently rejects the samples
    (``l -> -infinity``), which is why :func:`generator_non_saturating_loss` is used in practice.

    Args:
        fake_logits: ``[batch]`` or ``[batch, 1]`` logits of generated data.

    Returns:
        ``[batch]`` values in nats, ``<= 0`` (the generator minimises them).
    """
    return -tf.nn.softplus(_per_example_outputs(fake_logits))


def generator_non_saturating_loss(fake_logits):
    """The non-saturating generator loss: ``-log D(G(z)) = softplus(-l)``.

    Same fixed point as the minimax loss, but a strong gradient where the discriminator rejects
    the samples (Goodfellow et al. 2014, section 3).

    Args:
        fake_logits: ``[batch]`` or ``[batch, 1]`` logits of generated data.

    Returns:
        ``[batch]`` values in nats, ``>= 0``.
    """
    return tf.nn.softplus(-_per_example_outputs(fake_logits))


def wasserstein_critic_loss(real_scores, fake_scores):
    """The critic's loss of a Wasserstein GAN (Arjovsky et al. 2017): ``f(G(z)) - f(x)``.

    Its mean is minus the Kantorovich-Rubinstein estimate of ``W_1(p_data, p_G)`` when ``f`` is
    1-Lipschitz (enforced by :func:`gradient_penalty` in WGAN-GP).

    Args:
        real_scores: ``[batch]`` or ``[batch, 1]`` critic scores ``f(x)``.
        fake_scores: critic scores ``f(G(z))``, the shape of ``real_scores``.

    Returns:
        ``[batch]`` values (unbounded).
    """
    real_scores = _per_example_outputs(real_scores)
    fake_scores = _cast(_per_example_outputs(fake_scores), real_scores.dtype)
    return fake_scores - real_scores


def hinge_discriminator_loss(real_scores, fake_scores):
    """The discriminator's hinge loss (Lim and Ye 2017; Miyato et al. 2018), per example:
    ``relu(1 - l(x)) + relu(1 + l(G(z)))``. A point already on its side of the margin of 1
    contributes nothing; the generator then minimises ``-l(G(z))``
    (:func:`wasserstein_generator_loss`).

    Args:
        real_scores: ``[batch]`` or ``[batch, 1]`` raw outputs ``l`` of real data.
        fake_scores: raw outputs of generated data, the shape of ``real_scores``.

    Returns:
        ``[batch]`` values, ``>= 0``.
    """
    real_scores = _per_example_outputs(real_scores)
    fake_scores = _cast(_per_example_outputs(fake_scores), real_scores.dtype)
    return tf.nn.relu(1.0 - real_scores) + tf.nn.relu(1.0 + fake_scores)


def wasserstein_generator_loss(fake_scores):
    """The generator's loss of a Wasserstein GAN: ``-f(G(z))``.

    Args:
        fake_scores: ``[batch]`` or ``[batch, 1]`` critic scores of generated data.

    Returns:
        ``[batch]`` values (unbounded).
    """
    return -_per_example_outputs(fake_scores)


def gradient_penalty(critic, real, fake, seed=None):
    """The WGAN-GP penalty (Gulrajani et al. 2017): ``(||grad_x_hat f(x_hat)||_2 - 1)^2``.

    ``x_hat = alpha x + (1 - alpha) x_fake`` with ``alpha ~ Uniform(0, 1)``, one draw per example
    (not a normal draw, a bug of a widely copied example). The norm runs over every non-batch
    axis of the example.

    Args:
        critic: maps ``[batch, ...]`` to ``[batch]`` or ``[batch, 1]`` scores.
        real: ``[batch, ...]`` real examples.
        fake: ``[batch, ...]`` generated examples, the shape of ``real``.
        seed: an int or a ``[2]`` int tensor for a repeatable (stateless) draw of ``alpha``;
            ``None`` draws from TensorFlow's global generator (use this inside a training step).

    Returns:
        ``[batch]`` penalties, ``>= 0``.
    """
    real = tf.convert_to_tensor(real)
    fake = _cast(fake, real.dtype)
    shape = tf.concat([tf.shape(real)[:1], tf.ones([tf.rank(real) - 1], tf.int32)], axis=0)
    if seed is None:
        alpha = tf.random.uniform(shape, dtype=real.dtype)
    else:
        if isinstance(seed, (int, np.integer)):
            seed = (int(seed), 0)
        alpha = tf.random.stateless_uniform(shape, seed=seed, dtype=real.dtype)
    interpolated = alpha * real + (1.0 - alpha) * fake
    with tf.GradientTape() as tape:
        tape.watch(interpolated)
        scores = critic(interpolated)
    gradients = tape.gradient(scores, interpolated)
    norms = tf.sqrt(_sum_per_example(tf.square(gradients)) + 1e-12)
    return tf.square(norms - 1.0)


# --------------------------------------------------------------------------- distribution


def replica_mean(values):
    """Reduce per-example ``values: [batch]`` to the mean over the *global* batch, from inside a
    training step that ``tf.distribute`` runs once per replica.

    Under ``MirroredStrategy`` or ``MultiWorkerMirroredStrategy`` each of the ``R`` replicas
    sees ``n_r`` of the ``N = sum_r n_r`` examples of a step, and the optimizer **sums** the
    replicas' gradients. The loss to differentiate is therefore this replica's share

        share = sum(values) / N,        sum over replicas of share = global batch mean

    (``N`` is all-reduced, so an uneven or empty last batch is exact too). A metric tracker
    (``keras.metrics.Mean``, whose total and count are summed over replicas when read) gets
    ``report = R * share``: its average over the replicas is again the global batch mean. With
    one replica, or outside a strategy, both are ``tf.reduce_mean(values)``.

    Returns:
        ``(share, report)``, scalars: differentiate ``share``, track ``report``.
    """
    values = tf.convert_to_tensor(values)
    context = tf.distribute.get_replica_context()
    replicas = 1 if context is None else context.num_replicas_in_sync
    if replicas == 1:
        mean = tf.reduce_mean(values)
        return mean, mean
    count = tf.cast(tf.shape(values)[0], values.dtype)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    share = tf.reduce_sum(values) / total
    return share, share * replicas


def step_logs(metrics) -> dict:
    """What a ``train_step`` / ``test_step`` returns: each tracker's ``result()`` by name.

    Under ``MultiWorkerMirroredStrategy``, Keras 3 (3.15 here) reduces every returned value with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on a scalar ("Invalid reduction
    dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388). There each value gets
    a leading axis of length 1, so that this reduce yields the scalar mean over the workers;
    everywhere else the scalars are returned as they are.
    """
    logs = {metric.name: metric.result() for metric in metrics}
    strategy = tf.distribute.get_strategy()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode())
    return {name: tf.reshape(value, (1,)) for name, value in logs.items()} if multi_worker else logs


# --------------------------------------------------------------------------- diffusion and scores
#
# The terms of a DDPM's ELBO (Sohl-Dickstein et al. 2015; Ho et al. 2020) and the score-matching
# losses (Hyvärinen 2005; Vincent 2011). Steps ``t`` count from 1: ``beta_t``, ``alpha_t =
# 1 - beta_t`` and ``alpha_bar_t = prod_{s <= t} alpha_s`` are passed in as numbers or per-example
# ``[batch]`` tensors (see :func:`support.models.diffusion.noise_schedule`), so nothing here
# depends on how a schedule is stored.


def _per_example_factor(value, x):
    """``value`` (a scalar, or ``[batch]``: one per example) cast to ``x.dtype`` and shaped to
    broadcast against ``x: [batch, ...]``."""
    value = _cast(value, x.dtype)
    if value.shape.rank == 1:
        value = tf.reshape(value, [-1] + [1] * (x.shape.rank - 1))
    return value


def gaussian_kl(mean_q, var_q, mean_p, var_p):
    """``KL(N(mean_q, diag var_q) || N(mean_p, diag var_p))``, summed per example.

    ``KL = 1/2 sum_i [var_q,i / var_p,i - 1 - log(var_q,i / var_p,i)
    + (mean_q,i - mean_p,i)^2 / var_p,i]``, the sum running over every non-batch axis: the
    first bracket is the price of the wrong variance, the last that of the wrong mean.

    Args:
        mean_q: ``[batch, ...]`` mean of ``q``.
        var_q, var_p: variances, positive, broadcastable to ``mean_q`` (a scalar, one per value,
            or ``[batch, 1, ...]`` for one per example).
        mean_p: mean of ``p``, broadcastable to ``mean_q``.

    Returns:
        ``[batch]`` KL divergences in nats, ``>= 0``.
    """
    mean_q = tf.convert_to_tensor(mean_q)
    var_q, mean_p, var_p = (_cast(v, mean_q.dtype) for v in (var_q, mean_p, var_p))
    ratio = var_q / var_p
    kl = 0.5 * (ratio - 1.0 - tf.math.log(ratio) + tf.square(mean_q - mean_p) / var_p)
    return _sum_per_example(kl + tf.zeros_like(mean_q))


def ddpm_prior_term(x0, alpha_bar):
    """The prior term of a DDPM's ELBO: ``L_T = KL(q(x_T | x_0) || N(0, I))``, per example.

    ``q(x_T | x_0) = N(sqrt(alpha_bar_T) x_0, (1 - alpha_bar_T) I)``, so
    ``L_T = 1/2 sum_i [alpha_bar_T x_0,i^2 - alpha_bar_T - log(1 - alpha_bar_T)]``: no
    parameter enters it, and it is small when ``alpha_bar_T`` is (``~ 2e-5`` nats per value for
    the linear schedule of 1000 steps and data of unit scale).

    Args:
        x0: ``[batch, ...]`` data.
        alpha_bar: ``alpha_bar_T`` in ``[0, 1)``, a number or ``[batch]``.

    Returns:
        ``[batch]`` values in nats, ``>= 0``.
    """
    x0 = tf.convert_to_tensor(x0)
    alpha_bar = _per_example_factor(alpha_bar, x0)
    return gaussian_kl(tf.sqrt(alpha_bar) * x0, 1.0 - alpha_bar, 0.0, 1.0)


def ddpm_step_term(eps, eps_pred, beta, alpha_bar, posterior_variance, variance=None):
    """The step term ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))`` of a
    DDPM's ELBO for a step ``t >= 2``, per example, written with the noise ``eps`` that made
    ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` and its prediction ``eps_pred``.

    Both distributions are Gaussian. ``q`` has mean ``mu~ = (x_t - beta_t / sqrt(1 -
    alpha_bar_t) eps) / sqrt(alpha_t)`` and variance ``beta~_t = (1 - alpha_bar_{t-1}) / (1 -
    alpha_bar_t) beta_t`` (``posterior_variance``); ``p_theta`` has mean ``mu_theta``, the same
    expression with ``eps_pred``, and a fixed variance ``sigma_t^2``. Their KL is (Ho et al.
    2020, eq. 12)

        L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) ||eps - eps_pred||^2
                  + d/2 [r - 1 - log r],    r = beta~_t / sigma_t^2,

    ``d`` the number of values per example; the second term vanishes for ``sigma_t^2 =
    beta~_t`` (``variance=None``), the choice that makes ``L_{t-1}`` a weighted squared error
    of the noise prediction alone.

    Args:
        eps, eps_pred: ``[batch, ...]`` the noise and its prediction ``eps_theta(x_t, t)``.
        beta, alpha_bar, posterior_variance: ``beta_t``, ``alpha_bar_t`` and ``beta~_t``,
            numbers or ``[batch]`` (``beta~_t > 0``, so ``t >= 2``).
        variance: ``sigma_t^2``, a number or ``[batch]``; ``None`` takes ``beta~_t``.

    Returns:
        ``[batch]`` values in nats, ``>= 0``.
    """
    eps = tf.convert_to_tensor(eps)
    eps_pred = _cast(eps_pred, eps.dtype)
    beta, alpha_bar, posterior_variance = (
        _cast(v, eps.dtype) for v in (beta, alpha_bar, posterior_variance))
    variance = posterior_variance if variance is None else _cast(variance, eps.dtype)
    weight = tf.square(beta) / (2.0 * variance * (1.0 - beta) * (1.0 - alpha_bar))
    squared_error = _sum_per_example(tf.square(eps - eps_pred))
    ratio = posterior_variance / variance
    values = tf.cast(tf.size(eps) // tf.shape(eps)[0], eps.dtype)
    return weight * squared_error + 0.5 * values * (ratio - 1.0 - tf.math.log(ratio))


def log_normal_cdf(z):
    """``log Phi(z)``, the log of the standard normal distribution function, elementwise and
    accurate in the far left tail: ``log(erfc(-z / sqrt 2) / 2)`` for ``z >= -8``, and below it
    the asymptotic series ``-z^2/2 - log(-z) - log(2 pi)/2 + log(1 - 1/z^2 + 3/z^4 - 15/z^6 +
    105/z^8)`` (relative error of the series under 1e-6 there), where ``erfc`` would underflow."""
    z = tf.convert_to_tensor(z)
    tail = z < -8.0
    z_direct = tf.where(tail, tf.zeros_like(z), z)  # keeps erfc's argument where it is accurate
    z_tail = tf.where(tail, z, -8.0 * tf.ones_like(z))
    direct = tf.math.log(0.5 * tf.math.erfc(-z_direct / math.sqrt(2.0)))
    w = 1.0 / tf.square(z_tail)
    series = 1.0 - w + 3.0 * w**2 - 15.0 * w**3 + 105.0 * w**4
    asymptotic = -0.5 * tf.square(z_tail) - tf.math.log(-z_tail) - 0.5 * LOG_2PI + tf.math.log(series)
    return tf.where(tail, asymptotic, direct)


def binary_decoder_log_likelihood(x0, mean, log_var):
    """``log p(x_0 | x_1)`` of binary pixels ``x_0`` in ``{-1, +1}`` under Ho et al. (2020)'s
    discretized decoder with two bins, per example: the Gaussian ``N(mean, sigma^2)`` integrated
    over ``(-inf, 0]`` for ``-1`` and ``(0, inf)`` for ``+1``, so

        p(x_0 = +1) = Phi(mean / sigma),  p(x_0 = -1) = Phi(-mean / sigma),
        log p(x_0 | x_1) = sum_i log Phi(x_0,i mean_i / sigma),

    a probability (the two sum to 1), so the ELBO it enters bounds the log-probability of the
    binary image, in nats, comparable with a Bernoulli VAE's.

    Args:
        x0: ``[batch, ...]`` values in ``{-1, +1}``.
        mean: ``[batch, ...]`` the reverse model's mean ``mu_theta(x_1, 1)``.
        log_var: ``log sigma^2``, broadcastable to ``x0``.

    Returns:
        ``[batch]`` log-probabilities in nats, ``<= 0``.
    """
    x0 = tf.convert_to_tensor(x0)
    mean = _cast(mean, x0.dtype)
    std = tf.exp(0.5 * _cast(log_var, x0.dtype))
    return _sum_per_example(log_normal_cdf(x0 * mean / std) + tf.zeros_like(x0))


def ddpm_simple_loss(eps, eps_pred):
    """Ho et al. (2020)'s ``L_simple`` per example: ``mean_i (eps_i - eps_pred_i)^2``, the
    squared error of the noise prediction **averaged** over the values of an example.

    It is :func:`ddpm_step_term` without its weight ``beta_t^2 / (2 sigma_t^2 alpha_t (1 -
    alpha_bar_t))`` (and divided by ``d``): the weight grows without bound as ``t -> 1``, and
    dropping it trains better samplers than the ELBO does. The mean over values, not the sum,
    keeps the loss near 1 at the start of training whatever the data's size.

    Args:
        eps, eps_pred: ``[batch, ...]`` the noise and its prediction.

    Returns:
        ``[batch]`` mean squared errors, ``>= 0``.
    """
    eps = tf.convert_to_tensor(eps)
    eps_pred = _cast(eps_pred, eps.dtype)
    values = tf.cast(tf.size(eps) // tf.shape(eps)[0], eps.dtype)
    return _sum_per_example(tf.square(eps - eps_pred)) / values


def explicit_score_matching_loss(score, true_score):
    """Explicit score matching (Hyvärinen 2005), per example:
    ``1/2 ||s_theta(x) - grad_x log p(x)||^2``, summed over the values of an example.

    It needs the true score, which is known only for toy data; :func:`denoising_score_matching_loss`
    has the same minimiser without it.

    Args:
        score: ``[batch, ...]`` the model's score ``s_theta(x)``.
        true_score: ``[batch, ...]`` ``grad_x log p(x)`` at the same points.

    Returns:
        ``[batch]`` values, ``>= 0``.
    """
    score = tf.convert_to_tensor(score)
    return 0.5 * _sum_per_example(tf.square(score - _cast(true_score, score.dtype)))


def denoising_score_matching_loss(score, x_noisy, x, sigma):
    """Denoising score matching (Vincent 2011), per example:
    ``1/2 ||s_theta(x~) + (x~ - x) / sigma^2||^2`` for ``x~ = x + sigma * n``, ``n ~ N(0, I)``.

    ``-(x~ - x) / sigma^2 = grad_x~ log q_sigma(x~ | x)`` is the score of the noising kernel.
    Vincent showed that its expectation over ``x ~ p`` and ``x~`` equals the explicit
    score-matching loss of the noised density ``q_sigma(x~) = int q_sigma(x~|x) p(x) dx`` plus
    a constant independent of ``theta``, so both have the same minimiser
    ``s_theta = grad log q_sigma``. Weighting by ``sigma^2`` (Song and Ermon 2019) makes the
    losses of several noise levels comparable: ``sigma^2 * loss = 1/2 ||sigma s_theta + n||^2``.

    Args:
        score: ``[batch, ...]`` ``s_theta(x~)``.
        x_noisy: ``[batch, ...]`` ``x~``.
        x: ``[batch, ...]`` the clean data.
        sigma: the noise's standard deviation, a number or ``[batch]``.

    Returns:
        ``[batch]`` values, ``>= 0``.
    """
    score = tf.convert_to_tensor(score)
    x_noisy, x = _cast(x_noisy, score.dtype), _cast(x, score.dtype)
    sigma = _per_example_factor(sigma, score)
    return 0.5 * _sum_per_example(tf.square(score + (x_noisy - x) / tf.square(sigma)))
