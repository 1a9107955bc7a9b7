"""The variational autoencoder (Kingma and Welling 2014; Rezende et al. 2014).

Model: prior ``p(z) = N(0, I)`` on ``z: [latent_dim]``; decoder ``p(x|z)``, either
independent Bernoulli pixels with logits ``l = decoder(z)`` or a Gaussian
``N(x; decoder(z), sigma^2 I)`` with one scalar ``sigma`` (fixed, or learned). The encoder
outputs the diagonal Gaussian ``q(z|x) = N(z; mu(x), diag sigma^2(x))`` as
``(z_mean, z_log_var)``. Training maximises the ELBO averaged over the data, i.e. minimises

    loss = mean over batch of [ reconstruction + beta * kl ]
    reconstruction = -log p(x | z),  z = mu + sigma * eps,  eps ~ N(0, I)    # one sample
    kl             = KL(q(z|x) || p(z))                                       # closed form

with the log-likelihood **summed** over pixels (averaging it over pixels would silently train
with ``beta = d``). ``beta`` is a non-trainable variable so that :class:`KLWarmup` can ramp it
from near 0 to its target over the first epochs (Sønderby et al. 2016). ``fit`` and
``evaluate`` report three batch means: ``loss`` (``-ELBO`` once ``beta = 1``),
``reconstruction`` and ``kl``. Typical use, on the 8x8 digits with a fresh binarization of
every image each epoch::

    model = VAE(input_shape=(8, 8, 1), latent_dim=8, widths=(128, 64))
    model.init_output_bias(x_train)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(data.dataset(x_train, batch_size=64, binarization="dynamic"), epochs=200,
              shuffle=False, callbacks=[KLWarmup(20)])
    nll = model.importance_sampled_nll(data.binarize(x_test, seed=1), k=5000)  # [n] nats

Evaluation, all per example and in nats: :meth:`VAE.elbo`, :meth:`VAE.iwae_bound` and
:meth:`VAE.importance_sampled_nll` (``-log p(x)`` estimated by importance sampling with the
encoder as proposal, in bounded memory), plus :meth:`VAE.kl_per_dimension` and
:meth:`VAE.active_units` (Burda et al. 2016).

The linear-Gaussian model (probabilistic PCA, Tipping and Bishop 1999),
``p(z) = N(0, I)``, ``p(x|z) = N(W z + b, sigma^2 I)``, has everything in closed form: the
marginal :func:`linear_gaussian_log_marginal`, the posterior :func:`linear_gaussian_posterior`,
the ELBO of any diagonal ``q`` :func:`linear_gaussian_elbo`, and the KL to the true posterior
:func:`kl_gaussians`. ``VAE(..., decoder="linear", likelihood="gaussian")`` is exactly this
model, and :meth:`VAE.linear_gaussian_parameters` reads ``(W, b, sigma)`` off it. These
functions run in NumPy float64, so that identities such as ``log p(x) - ELBO = KL(q || p(z|x))``
hold to rounding error.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from support import checks, objectives
from support.models.autoencoders import (
    check_conv_shape,
    conv_decoder,
    conv_encoder,
    dense_decoder,
    dense_encoder,
    standard_normal,
)

ENCODERS = ("dense", "conv", "linear")
LIKELIHOODS = ("bernoulli", "gaussian")


# --------------------------------------------------------------------------- the model


@keras.saving.register_keras_serializable(package="support")
class VAE(keras.Model):
    """A variational autoencoder with dense, convolutional or linear encoder and decoder.

    Encoder (``x -> (z_mean, z_log_var)``), by ``encoder``:
      * ``"dense"``: flatten, ``Dense(widths[0], relu) -> ... -> Dense(2 * latent_dim)``;
      * ``"conv"``: one ``Conv2D(f, 3, strides=2, padding="same", relu)`` per ``filters``
        entry, flatten, ``Dense(2 * latent_dim)``;
      * ``"linear"``: flatten, ``Dense(2 * latent_dim)`` (an affine map; enough for the
        linear-Gaussian model, whose posterior mean is affine in ``x`` and whose posterior
        variance does not depend on ``x``).
    The last layer (named ``"posterior"``) is split into ``z_mean`` and ``z_log_var``.

    Decoder (``z -> decoder outputs``, the shape of ``x``), by ``decoder``:
      * ``"dense"``: ``Dense(widths[-1], relu) -> ... -> Dense(d)``, reshaped to ``input_shape``;
      * ``"conv"``: ``Dense`` to the smallest feature map, then stride-2 ``Conv2DTranspose``
        layers back to ``input_shape`` (height and width divisible by ``2 ** len(filters)``);
      * ``"linear"``: ``Dense(d)``: ``mean = W z + b`` exactly.
    The outputs have no activation (last layer named ``"pixels"``): they are the **logits**
    of ``p(x|z)`` for ``likelihood="bernoulli"`` and its **mean** for ``"gaussian"``.
    :meth:`decode` returns probabilities (the sigmoid of the logits) or means.

    Gaussian likelihood: ``p(x|z) = N(x; mean(z), sigma^2 I)`` with one scalar ``sigma``
    for all pixels (the probabilistic-PCA noise model), stored as the variable ``log_sigma``,
    trained when ``learn_sigma`` (then ``sigma`` is its initial value). With a fixed ``sigma``
    the reconstruction term is the squared error scaled by ``1 / (2 sigma^2)``: ``sigma`` sets
    how much reconstruction is worth against the KL.

    Args:
        input_shape: ``(height, width, channels)``, e.g. ``(8, 8, 1)`` or ``(28, 28, 1)``.
        latent_dim: size of ``z``.
        encoder: ``"dense"``, ``"conv"`` or ``"linear"``.
        decoder: the same choices; ``None`` takes the encoder's.
        widths: hidden widths of the dense encoder, outermost first (the dense decoder mirrors
            them); ``None`` gives ``(128, 64)``.
        filters: filters of the convolutional encoder (the decoder mirrors them).
        likelihood: ``"bernoulli"`` (pixels in [0, 1], ideally binarized) or ``"gaussian"``.
        sigma: the Gaussian likelihood's standard deviation (initial value if learned).
        learn_sigma: train ``log sigma`` with the rest (Gaussian only).
        beta: target weight of the KL term; the variable ``beta`` starts there and
            :class:`KLWarmup` ramps it.
        samples: ``k``, the importance samples of the training objective. ``1`` trains on
            the ELBO; ``k > 1`` trains on the importance-weighted bound ``L_k`` (an IWAE,
            Burda et al. 2016), ``-log (1/k) sum_i w_i`` with
            ``log w_i = log p(x|z_i) + beta (log p(z_i) - log q(z_i|x))`` (``beta = 1``: the
            bound itself; a warm-up ramps ``beta`` as for the ELBO).
        free_bits: ``lambda >= 0`` nats per code dimension (Kingma et al. 2016): the KL term
            of the loss becomes ``sum_j max(lambda, KL_j)`` with ``KL_j`` the batch mean of
            dimension ``j``'s KL, so a dimension below ``lambda`` costs a constant and the
            optimiser gains nothing by closing it. ``0`` is the plain ELBO. The reported
            ``kl`` stays the true KL. Only with ``samples = 1``.
    """

    def __init__(
        self,
        input_shape=(8, 8, 1),
        latent_dim: int = 8,
        encoder: str = "dense",
        decoder: str | None = None,
        widths=None,
        filters=(32, 64),
        likelihood: str = "bernoulli",
        sigma: float = 0.1,
        learn_sigma: bool = False,
        beta: float = 1.0,
        samples: int = 1,
        free_bits: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = checks.image_shape(input_shape, "input_shape")
        self.latent_dim = checks.positive_int(latent_dim, "latent_dim")
        self.encoder_type = checks.choice(encoder, ENCODERS, "encoder")
        self.decoder_type = checks.choice(encoder if decoder is None else decoder, ENCODERS, "decoder")
        self.widths = checks.widths((128, 64) if widths is None else widths, "widths")
        self.filters = checks.widths(filters, "filters")
        self.likelihood = checks.choice(likelihood, LIKELIHOODS, "likelihood")
        self.initial_sigma = checks.positive_float(sigma, "sigma")
        self.learn_sigma = bool(learn_sigma)
        self.target_beta = checks.positive_float(beta, "beta", allow_zero=True)
        self.samples = checks.positive_int(samples, "samples")
        self.free_bits = checks.positive_float(free_bits, "free_bits", allow_zero=True)
        self._check_combination()
        self.encoder = self._build_encoder()
        self.decoder = self._build_decoder()
        self.beta = self.add_weight(
            name="beta", shape=(), initializer=keras.initializers.Constant(self.target_beta),
            trainable=False,
        )
        if self.likelihood == "gaussian":
            self.log_sigma = self.add_weight(
                name="log_sigma", shape=(),
                initializer=keras.initializers.Constant(math.log(self.initial_sigma)),
                trainable=self.learn_sigma,
            )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        # The reparameterization noise of training comes from this generator: its state is a
        # variable, so a checkpoint restores it and a resumed training draws the same noise.
        self.seed_generator = keras.random.SeedGenerator()
        # Every variable exists now (the Sequentials start with an Input): marking the model
        # built lets `.keras` files restore weights and optimizer state without a first call.
        self.built = True

    def _check_combination(self) -> None:
        """Refuse settings that are each valid but do not go together."""
        if self.learn_sigma and self.likelihood != "gaussian":
            raise ValueError(
                "learn_sigma=True needs likelihood='gaussian'; a Bernoulli likelihood has no sigma."
            )
        if self.free_bits and self.samples > 1:
            raise ValueError(
                f"free_bits={self.free_bits} with samples={self.samples}: free bits change the ELBO's "
                "KL term, which the importance-weighted bound does not have; use one or the other."
            )
        if "conv" in (self.encoder_type, self.decoder_type):
            check_conv_shape(self.image_shape, self.filters)

    # ------------------------------------------------------------------ architecture

    def _build_encoder(self):
        if self.encoder_type == "conv":
            return conv_encoder(self.image_shape, self.filters, 2 * self.latent_dim,
                                output_name="posterior")
        widths = self.widths if self.encoder_type == "dense" else ()
        return dense_encoder(self.image_shape, widths, 2 * self.latent_dim, output_name="posterior")

    def _build_decoder(self):
        if self.decoder_type == "conv":
            return conv_decoder(self.image_shape, self.filters, self.latent_dim)
        widths = self.widths if self.decoder_type == "dense" else ()
        return dense_decoder(self.image_shape, widths, self.latent_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            input_shape=self.image_shape,
            latent_dim=self.latent_dim,
            encoder=self.encoder_type,
            decoder=self.decoder_type,
            widths=self.widths,
            filters=self.filters,
            likelihood=self.likelihood,
            sigma=self.initial_sigma,
            learn_sigma=self.learn_sigma,
            beta=self.target_beta,
            samples=self.samples,
            free_bits=self.free_bits,
        )
        return config

    @property
    def sigma(self) -> float:
        """The Gaussian likelihood's current standard deviation."""
        if self.likelihood != "gaussian":
            raise ValueError("sigma: this VAE has likelihood='bernoulli', which has no sigma.")
        return float(np.exp(self.log_sigma.numpy()))

    def init_output_bias(self, x_train):
        """Start the decoder at the mean training image: the ``"pixels"`` bias is set to
        ``logit(mean)`` (Bernoulli, mean clipped to [1e-3, 1 - 1e-3]) or ``mean`` (Gaussian),
        per pixel (per channel for a convolutional decoder). For the linear-Gaussian model this
        is the maximum-likelihood ``b``; for a Bernoulli VAE it saves the first epochs."""
        x = np.asarray(x_train, dtype=np.float64)
        if x.shape[1:] != self.image_shape:
            raise ValueError(
                f"x_train has examples of shape {x.shape[1:]}, the model expects {self.image_shape}."
            )
        layer = self.decoder.get_layer("pixels")
        mean = x.mean(axis=0).reshape(-1)
        if tuple(layer.bias.shape) != mean.shape:  # a convolution: one bias per channel
            mean = x.reshape(-1, self.image_shape[-1]).mean(axis=0)
        if self.likelihood == "bernoulli":
            mean = np.clip(mean, 1e-3, 1 - 1e-3)
            mean = np.log(mean / (1 - mean))
        layer.bias.assign(mean.astype(layer.bias.dtype))

    # ------------------------------------------------------------------ the probabilistic model

    def _posterior(self, x, training=None):
        """``x: [batch, h, w, c] -> (z_mean, z_log_var)``, each ``[batch, latent_dim]``."""
        z_mean, z_log_var = tf.split(self.encoder(x, training=training), 2, axis=-1)
        return z_mean, z_log_var

    def log_likelihood(self, x, outputs):
        """``log p(x|z)`` per example, ``[batch]``, from the decoder outputs ``decoder(z)``
        (logits or means) and ``x`` of the same shape."""
        if self.likelihood == "bernoulli":
            return objectives.bernoulli_log_likelihood(x, outputs)
        log_var = 2.0 * tf.cast(self.log_sigma, outputs.dtype)
        return objectives.gaussian_log_likelihood(tf.cast(x, outputs.dtype), outputs, log_var)

    def _mean_output(self, outputs):
        return tf.sigmoid(outputs) if self.likelihood == "bernoulli" else outputs

    def call(self, x, training=None):
        """The mean reconstruction ``decode(z_mean(x))``: ``[batch, h, w, c]``."""
        z_mean, _ = self._posterior(x, training=training)
        return self._mean_output(self.decoder(z_mean, training=training))

    def encode(self, x):
        """``x: [batch, h, w, c] -> (z_mean, z_log_var)``, each ``[batch, latent_dim]``."""
        return self._posterior(x, training=False)

    def decode(self, z):
        """``z: [batch, latent_dim] ->`` the mean of ``p(x|z)``, ``[batch, h, w, c]``:
        pixel probabilities (Bernoulli) or means (Gaussian)."""
        return self._mean_output(self.decoder(z, training=False))

    def sample(self, n: int, seed: int | None = None):
        """Decode ``n`` codes ``z ~ p(z) = N(0, I)``: means of ``p(x|z)``, ``[n, h, w, c]``.
        ``seed`` makes the draw repeatable (stateless); ``None`` uses TensorFlow's global
        generator."""
        z = standard_normal(n, self.latent_dim, seed)
        return self.decode(z)

    # ------------------------------------------------------------------ training

    def loss_terms(self, data, training=False):
        """One batch's ``(loss, reconstruction, kl)``, each averaged over the batch: the
        ``-ELBO`` with the KL weighted by ``beta``, from one reparameterized sample per example.

        ``data`` is ``x: [batch, h, w, c]`` or a tuple starting with it (labels are ignored).
        """
        return tuple(tf.reduce_mean(v) for v in self.example_terms(data, training))

    def example_terms(self, data, training=False):
        """Per-example ``(loss, reconstruction, kl)``, each ``[batch]``: ``reconstruction =
        -log p(x|z)`` summed over pixels, ``kl`` the closed-form ``KL(q(z|x) || p(z))`` and
        ``loss`` the training objective, :meth:`_elbo_terms` (``samples = 1``) or
        :meth:`_iwae_terms` (``samples = k > 1``). Reduced by :meth:`loss_terms` (batch means)
        and by ``train_step`` (over the global batch, see :func:`objectives.replica_mean`)."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, self.compute_dtype)
        z_mean, z_log_var = self._posterior(x, training=training)
        if self.samples > 1:
            return self._iwae_terms(x, z_mean, z_log_var, training)
        return self._elbo_terms(x, z_mean, z_log_var, training)

    def _elbo_terms(self, x, z_mean, z_log_var, training):
        """``loss = -ELBO`` with the KL weighted by ``beta``, from one reparameterized sample
        ``z`` per example; with ``free_bits`` the KL term is clamped per dimension."""
        epsilon = keras.random.normal(tf.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        z = z_mean + tf.exp(0.5 * z_log_var) * epsilon  # the reparameterization trick
        reconstruction = -self.log_likelihood(x, self.decoder(z, training=training))
        kl_dims = objectives.kl_per_dimension(z_mean, z_log_var)  # [batch, latent_dim]
        kl = tf.reduce_sum(kl_dims, axis=-1)
        penalty = kl
        if self.free_bits:
            # sum_j max(lambda, batch mean of KL_j), written per example: a dimension whose
            # batch mean is below lambda costs the constant lambda and gets no gradient.
            open_ = tf.cast(tf.reduce_mean(kl_dims, axis=0) > self.free_bits, kl_dims.dtype)
            penalty = tf.reduce_sum(open_ * kl_dims + (1.0 - open_) * self.free_bits, axis=-1)
        return -objectives.elbo(-reconstruction, penalty, beta=self.beta), reconstruction, kl

    def _iwae_terms(self, x, z_mean, z_log_var, training):
        """``loss = -L_k``, the importance-weighted bound of ``k = samples`` reparameterized
        draws per example; ``reconstruction`` is averaged over the draws."""
        shape = tf.concat([[self.samples], tf.shape(z_mean)], 0)  # [k, batch, latent_dim]
        epsilon = keras.random.normal(shape, dtype=z_mean.dtype, seed=self.seed_generator)
        log_px_given_z, log_pz, log_qz = self._sample_terms(x, z_mean, z_log_var, epsilon, training)
        log_w = log_px_given_z + tf.cast(self.beta, log_pz.dtype) * (log_pz - log_qz)  # [k, batch]
        loss = -objectives.iwae_bound(log_w, axis=0)  # -log (1/k) sum_i w_i
        kl = objectives.kl_diagonal_gaussian_standard_normal(z_mean, z_log_var)
        return loss, -tf.reduce_mean(log_px_given_z, axis=0), kl

    def _sample_terms(self, x, z_mean, z_log_var, epsilon, training=False):
        """``(log p(x|z), log p(z), log q(z|x))``, each ``[samples, batch]``, for
        ``z = mu + sigma * eps`` with ``x: [batch, h, w, c]`` and ``epsilon: [samples, batch,
        latent_dim]``."""
        samples, batch = tf.shape(epsilon)[0], tf.shape(epsilon)[1]
        z = z_mean + tf.exp(0.5 * z_log_var) * epsilon
        outputs = self.decoder(tf.reshape(z, (-1, self.latent_dim)), training=training)
        x_repeated = tf.reshape(
            tf.broadcast_to(x[None], tf.concat([[samples], tf.shape(x)], 0)), tf.shape(outputs)
        )
        log_px_given_z = tf.reshape(self.log_likelihood(x_repeated, outputs), (samples, batch))
        log_pz = objectives.log_normal_diag(z, 0.0, 0.0)
        # log q(z|x) from eps itself: z - mu would lose digits when sigma << |mu|.
        log_qz = -0.5 * tf.reduce_sum(objectives.LOG_2PI + z_log_var + tf.square(epsilon), -1)
        return log_px_given_z, log_pz, log_qz

    def _replica_terms(self, data, training):
        """``(loss share, (loss, reconstruction, kl) to report)``: the batch means reduced over
        the global batch when a distribution strategy splits it (:func:`objectives.replica_mean`)."""
        shares, reports = zip(*(objectives.replica_mean(v) for v in self.example_terms(data, training)))
        return shares[0], reports

    def _update(self, loss, reconstruction, kl):
        self.loss_tracker.update_state(loss)
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        return objectives.step_logs(self.metrics)

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, reports = self._replica_terms(data, training=True)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self._update(*reports)

    def test_step(self, data):
        return self._update(*self._replica_terms(data, training=False)[1])

    # ------------------------------------------------------------------ evaluation

    def _batches(self, x, batch_size):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.image_shape:
            raise ValueError(
                f"x has shape {x.shape}; expected [n, {', '.join(map(str, self.image_shape))}]."
            )
        batch_size = checks.positive_int(batch_size, "batch_size")
        for start in range(0, len(x), batch_size):
            yield start, tf.constant(x[start : start + batch_size])

    @tf.function(reduce_retracing=True)
    def _noise(self, indices, samples, seed):
        """``eps: [batch, samples, latent_dim]``; example ``i`` gets the stateless stream
        ``(seed, i)``, so that an estimate does not depend on how the work is chunked."""
        return tf.map_fn(
            lambda i: tf.random.stateless_normal(
                (samples, self.latent_dim), seed=tf.stack([seed, i])
            ),
            indices,
            fn_output_signature=tf.float32,
        )

    @tf.function(reduce_retracing=True)
    def _log_terms(self, x, z_mean, z_log_var, epsilon):
        """``(log p(x|z), log w)`` with ``z = mu + sigma * eps`` and
        ``log w = log p(x|z) + log p(z) - log q(z|x)``: ``x: [batch, h, w, c]``,
        ``epsilon: [samples, batch, latent_dim] -> ([samples, batch], [samples, batch])``."""
        log_px_given_z, log_pz, log_qz = self._sample_terms(x, z_mean, z_log_var, epsilon)
        return log_px_given_z, objectives.log_importance_weights(log_px_given_z, log_pz, log_qz)

    def _chunk_sizes(self, n, k, batch_size, max_elements):
        """Examples per chunk ``b`` and samples per chunk ``s``, so that neither the noise
        ``[b, k, latent_dim]`` nor the decoder outputs ``[s * b, d]`` exceed ``max_elements``
        (one example at a time when one example alone exceeds it)."""
        d = math.prod(self.image_shape)
        b = max(1, min(batch_size, n, max_elements // (k * self.latent_dim)))
        s = max(1, min(k, max_elements // (b * d)))
        return b, s

    def _over_samples(self, x, k, batch_size, max_elements, seed, statistic):
        """Per-example statistic of ``k`` draws ``z_i ~ q(z|x)``, NumPy ``[n]``, in chunks:
        ``"log_mean_weight"``, ``log (1/k) sum_i w_i`` (a running log-sum-exp), or
        ``"mean_log_likelihood"``, ``(1/k) sum_i log p(x|z_i)`` (a running sum)."""
        k = checks.positive_int(k, "k")
        max_elements = checks.positive_int(max_elements, "max_elements")
        x = np.asarray(x, dtype=np.float32)
        b, s = self._chunk_sizes(len(x), k, checks.positive_int(batch_size, "batch_size"), max_elements)
        seed = tf.constant(int(seed), tf.int32)
        result = np.empty(len(x), dtype=np.float32)
        for start, x_batch in self._batches(x, b):
            n_batch = int(x_batch.shape[0])
            z_mean, z_log_var = self.encode(x_batch)
            noise = self._noise(tf.range(start, start + n_batch), tf.constant(k), seed)
            total = tf.fill((n_batch,), -np.inf if statistic == "log_mean_weight" else 0.0)
            for first in range(0, k, s):
                epsilon = tf.transpose(noise[:, first : first + s], (1, 0, 2))
                log_px_given_z, log_w = self._log_terms(x_batch, z_mean, z_log_var, epsilon)
                if statistic == "log_mean_weight":
                    chunk = tf.reduce_logsumexp(log_w, axis=0)
                    total = tf.reduce_logsumexp(tf.stack([total, chunk]), axis=0)
                else:
                    total += tf.reduce_sum(log_px_given_z, axis=0)
            if statistic == "log_mean_weight":
                total = total - math.log(k)
            else:
                total = total / k
            result[start : start + n_batch] = total.numpy()
        return result

    def elbo(
        self, x, samples: int = 1, batch_size: int = 100, max_elements: int = 2**22, seed: int = 0
    ):
        """The ELBO per example (``beta = 1``), NumPy ``[n]`` in nats.

        ``ELBO(x) = (1/S) sum_s log p(x|z_s) - KL(q(z|x) || p(z))``, ``z_s ~ q(z|x)``: Monte
        Carlo over ``S = samples`` draws for the reconstruction term, the KL in closed form.
        ``seed`` fixes the draws: example ``i`` uses the same ``z_s`` as in :meth:`iwae_bound`
        with the same seed. Chunked like :meth:`importance_sampled_nll`.
        """
        expected_log_likelihood = self._over_samples(
            x, samples, batch_size, max_elements, seed, "mean_log_likelihood"
        )
        kl = self._kl_per_dimension(x, max(checks.positive_int(batch_size, "batch_size"), 1024))
        return expected_log_likelihood - kl.sum(axis=1)

    def iwae_bound(
        self, x, k: int, batch_size: int = 100, max_elements: int = 2**22, seed: int = 0
    ):
        """The importance-weighted bound ``L_k(x) = log (1/k) sum_i p(x, z_i) / q(z_i|x)``,
        ``z_i ~ q(z|x)``, per example: NumPy ``[n]`` in nats (Burda et al. 2016).

        ``E[L_1] = ELBO <= E[L_k] <= E[L_{k+1}] <= log p(x)``. Computed in chunks (see
        :meth:`importance_sampled_nll`); the result does not depend on the chunking, only on
        ``seed``.
        """
        return self._over_samples(x, k, batch_size, max_elements, seed, "log_mean_weight")

    def importance_sampled_nll(
        self, x, k: int = 5000, batch_size: int = 100, max_elements: int = 2**22, seed: int = 0
    ):
        """Negative log-likelihood ``-log p(x)`` estimated by importance sampling, per example:
        NumPy ``[n]`` in nats.

        ``NLL(x) ~= -log (1/k) sum_{i=1..k} p(x|z_i) p(z_i) / q(z_i|x)``, ``z_i ~ q(z|x)``:
        the encoder is the proposal (Rezende et al. 2014; Burda et al. 2016). It is
        ``-L_k`` of :meth:`iwae_bound`, an upper bound on ``-log p(x)`` in expectation that
        tightens as ``k`` grows; ``k = 5000`` is the customary test setting on MNIST.

        Memory stays bounded for any ``k`` and ``n``: examples go ``batch_size`` at a time
        (fewer if the noise ``[batch, k, latent_dim]`` would exceed ``max_elements``), and their
        ``k`` samples in chunks of ``s`` with ``s * batch * d <= max_elements`` decoder outputs
        (``d`` pixels; hidden layers no wider than ``d`` stay within the same bound), combined
        with a running log-sum-exp. The noise of example ``i`` is the stateless stream
        ``(seed, i)``, so the estimate is the same whatever the chunk sizes.
        """
        return -self._over_samples(x, k, batch_size, max_elements, seed, "log_mean_weight")

    def _kl_per_dimension(self, x, batch_size):
        """``[n, latent_dim]`` float64 per-example, per-dimension KL to the prior."""
        kl = [
            objectives.kl_per_dimension(*self.encode(x_batch)).numpy()
            for _, x_batch in self._batches(x, batch_size)
        ]
        return np.concatenate(kl).astype(np.float64)

    def kl_per_dimension(self, x, batch_size: int = 1024):
        """``KL(q(z_j|x) || N(0, 1))`` averaged over the examples of ``x``: NumPy
        ``[latent_dim]`` in nats. Dimensions near 0 are unused ("collapsed") by the encoder;
        the entries sum to the average KL term of the ELBO."""
        return self._kl_per_dimension(x, batch_size).mean(axis=0)

    def unit_activity(self, x, batch_size: int = 1024):
        """``A_u = Cov_x(E_{q(z|x)}[z_u])``, the variance over the examples of ``x`` of each
        posterior mean: NumPy ``[latent_dim]`` (Burda et al. 2016, section 5.2)."""
        z_means = [self.encode(x_batch)[0].numpy() for _, x_batch in self._batches(x, batch_size)]
        return np.var(np.concatenate(z_means).astype(np.float64), axis=0)

    def active_units(self, x, threshold: float = 0.01, batch_size: int = 1024) -> int:
        """The number of active units, those with ``A_u = Cov_x(E_q[z_u]) > threshold``
        (Burda et al. 2016 use ``threshold = 0.01``)."""
        return int(np.sum(self.unit_activity(x, batch_size) > threshold))

    def gradient_snr(self, x, k: int, draws: int = 100, seed: int = 0) -> dict:
        """Signal-to-noise ratio of the gradient of ``-L_k`` (the batch mean over ``x``) with
        respect to each weight: ``|mean| / std`` over ``draws`` independent draws of the
        ``k`` samples per example, summarised by the median over the weights of the encoder
        and of the decoder (Rainforth et al. 2018: as ``k`` grows the decoder's ratio grows
        like ``sqrt(k)`` and the encoder's falls like ``1 / sqrt(k)``). ``k = 1`` is the ELBO's
        gradient. Returns ``{"encoder": float, "decoder": float}``."""
        k = checks.positive_int(k, "k")
        draws = checks.positive_int(draws, "draws")
        if draws < 2:
            raise ValueError(f"draws={draws}: a standard deviation needs at least 2 draws.")
        x = tf.constant(np.asarray(x, dtype=np.float32))
        if tuple(x.shape[1:]) != self.image_shape:
            expected = ", ".join(map(str, self.image_shape))
            raise ValueError(f"x has shape {tuple(x.shape)}; expected [n, {expected}].")
        encoder_weights = self.encoder.trainable_weights
        decoder_weights = self.decoder.trainable_weights

        @tf.function
        def one_draw(draw):
            with tf.GradientTape() as tape:
                z_mean, z_log_var = self._posterior(x, training=False)
                epsilon = tf.random.stateless_normal(
                    (k, tf.shape(x)[0], self.latent_dim), seed=tf.stack([int(seed), draw])
                )
                log_px_given_z, log_pz, log_qz = self._sample_terms(x, z_mean, z_log_var, epsilon)
                log_w = objectives.log_importance_weights(log_px_given_z, log_pz, log_qz)
                loss = -tf.reduce_mean(objectives.iwae_bound(log_w, axis=0))
            gradients = tape.gradient(loss, [*encoder_weights, *decoder_weights])
            flat = [tf.reshape(g, [-1]) for g in gradients]
            return tf.concat(flat[: len(encoder_weights)], 0), tf.concat(flat[len(encoder_weights):], 0)

        # Under a distribution strategy the weights are distributed variables, whose gradients
        # exist only in a replica context: each draw runs on the replicas (every replica sees
        # the whole of ``x``) and the first replica's gradients are kept.
        strategy = self.distribute_strategy

        def first_replica(draw):
            return strategy.experimental_local_results(strategy.run(one_draw, args=(draw,)))[0]

        samples = [first_replica(tf.constant(i)) for i in range(draws)]
        result = {}
        for name, part in (("encoder", 0), ("decoder", 1)):
            g = np.stack([s[part].numpy() for s in samples]).astype(np.float64)
            spread = g.std(axis=0, ddof=1)
            keep = spread > 0
            result[name] = float(np.median(np.abs(g.mean(axis=0)[keep]) / spread[keep]))
        return result

    # ------------------------------------------------------------------ linear-Gaussian case

    def linear_gaussian_parameters(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(W [d, latent_dim], b [d], sigma)`` of ``p(x|z) = N(W z + b, sigma^2 I)`` as
        float64, for a VAE built with ``decoder="linear", likelihood="gaussian"``."""
        if self.decoder_type != "linear" or self.likelihood != "gaussian":
            raise ValueError(
                f"decoder={self.decoder_type!r}, likelihood={self.likelihood!r}: only a VAE with "
                "decoder='linear' and likelihood='gaussian' is a linear-Gaussian model."
            )
        layer = self.decoder.get_layer("pixels")
        kernel, bias = (np.asarray(v, dtype=np.float64) for v in layer.get_weights())
        return kernel.T, bias, float(np.exp(np.float64(self.log_sigma.numpy())))


class KLWarmup(keras.callbacks.Callback):
    """Ramp the VAE's KL weight linearly over the first ``epochs`` epochs (Sønderby et al. 2016).

    At the start of epoch ``e`` (counted from 0): ``beta_e = target * min(1, (e + 1) / epochs)``,
    so the first epoch already uses ``target / epochs`` (never 0, which would let the encoder
    variances shrink without bound) and epochs ``epochs - 1`` onwards use ``target``. The
    value used is added to the epoch logs as ``"beta"`` (so ``History`` records it). If
    training stops before the ramp ends, ``beta`` stays where the ramp was.

    Args:
        epochs: length of the ramp in epochs.
        target: final ``beta``; ``None`` takes the model's ``beta`` argument.
    """

    def __init__(self, epochs: int, target: float | None = None):
        super().__init__()
        self.epochs = checks.positive_int(epochs, "epochs")
        self.target = None if target is None else checks.positive_float(target, "target", allow_zero=True)

    def beta_at(self, epoch: int, target: float) -> float:
        return target * min(1.0, (epoch + 1) / self.epochs)

    def on_epoch_begin(self, epoch, logs=None):
        target = self.model.target_beta if self.target is None else self.target
        self.model.beta.assign(self.beta_at(epoch, target))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["beta"] = float(self.model.beta.numpy())


# --------------------------------------------------------------------------- closed forms


def _flat(x, name="x") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name} has shape {x.shape}; expected [n, ...] with at least two axes.")
    return x.reshape(len(x), -1)


def _check_linear_gaussian(x, W, b, sigma):
    x = _flat(x)
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if W.ndim != 2 or W.shape[0] != x.shape[1] or b.shape != (x.shape[1],):
        raise ValueError(
            f"W {W.shape} and b {b.shape} do not fit x with d = {x.shape[1]} values per "
            "example: expected W [d, latent_dim] and b [d]."
        )
    return x, W, b, checks.positive_float(float(sigma), "sigma")


def linear_gaussian_log_marginal(x, W, b, sigma) -> np.ndarray:
    """Exact ``log p(x)`` of the linear-Gaussian model, float64 ``[n]``.

    ``p(z) = N(0, I)``, ``p(x|z) = N(W z + b, sigma^2 I)`` integrate to
    ``p(x) = N(x; b, C)`` with ``C = W W^T + sigma^2 I`` (Tipping and Bishop 1999):
    ``log p(x) = -1/2 [d log(2 pi) + log det C + (x - b)^T C^{-1} (x - b)]``, computed through
    the Cholesky factor of ``C``.

    Args:
        x: ``[n, ...]`` examples, flattened to ``[n, d]``.
        W: ``[d, latent_dim]``; b: ``[d]``; sigma: noise standard deviation.
    """
    x, W, b, sigma = _check_linear_gaussian(x, W, b, sigma)
    d = x.shape[1]
    cholesky = np.linalg.cholesky(W @ W.T + sigma**2 * np.eye(d))
    whitened = np.linalg.solve(cholesky, (x - b).T)  # L^{-1} (x - b): [d, n]
    log_det = 2.0 * np.sum(np.log(np.diag(cholesky)))
    return -0.5 * (d * math.log(2 * math.pi) + log_det + np.sum(whitened**2, axis=0))


def linear_gaussian_posterior(x, W, b, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior ``p(z|x) = N(mean(x), cov)`` of the linear-Gaussian model, float64.

    By Bayes' rule for Gaussians, with ``M = W^T W + sigma^2 I`` (``[latent_dim, latent_dim]``):
    ``cov = sigma^2 M^{-1}`` (the same for every ``x``) and ``mean = M^{-1} W^T (x - b)``.

    Returns:
        ``(mean [n, latent_dim], cov [latent_dim, latent_dim])``.
    """
    x, W, b, sigma = _check_linear_gaussian(x, W, b, sigma)
    M = W.T @ W + sigma**2 * np.eye(W.shape[1])
    mean = np.linalg.solve(M, W.T @ (x - b).T).T
    cov = sigma**2 * np.linalg.inv(M)
    return mean, 0.5 * (cov + cov.T)


def ppca_maximum_likelihood(x, latent_dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The closed-form maximum-likelihood linear-Gaussian model of ``x`` (probabilistic PCA,
    Tipping and Bishop 1999): ``(W [d, latent_dim], b [d], sigma)``, float64.

    With ``S`` the sample covariance (divided by ``n``) and ``lambda_1 >= ... >= lambda_d`` its
    eigenvalues with eigenvectors ``U``: ``b`` is the mean, ``sigma^2`` the mean of the
    ``d - latent_dim`` discarded eigenvalues and ``W = U_k (Lambda_k - sigma^2 I)^{1/2}``
    (the rotation ``R`` of the paper set to ``I``, so the columns of ``W`` are orthogonal and
    the posterior covariance ``sigma^2 (W^T W + sigma^2 I)^{-1}`` is diagonal)."""
    x = _flat(x)
    latent_dim = checks.positive_int(latent_dim, "latent_dim")
    n, d = x.shape
    if latent_dim >= d:
        raise ValueError(f"latent_dim={latent_dim} must be below the {d} values per example.")
    b = x.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh((x - b).T @ (x - b) / n)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.maximum(eigenvalues[order], 0.0), eigenvectors[:, order]
    sigma2 = float(eigenvalues[latent_dim:].mean())
    if sigma2 <= 0:
        raise ValueError("x lies in a subspace of dimension <= latent_dim: sigma would be 0.")
    W = eigenvectors[:, :latent_dim] * np.sqrt(np.maximum(eigenvalues[:latent_dim] - sigma2, 0.0))
    return W, b, math.sqrt(sigma2)


def linear_gaussian_best_diagonal(x, W, b, sigma) -> tuple[np.ndarray, np.ndarray]:
    """The diagonal Gaussian ``q*(z|x)`` with the highest ELBO for each ``x`` under the
    linear-Gaussian model: ``(mean [n, latent_dim], log_var [n, latent_dim])``, float64.

    ``ELBO(q) = log p(x) - KL(q || p(z|x))``, and the KL from a diagonal Gaussian to
    ``N(m, Lambda^{-1})`` is smallest at mean ``m`` and variances ``1 / diag(Lambda)`` (the
    reciprocal of the posterior precision's diagonal, not the covariance's diagonal). With it
    the gap of any encoder splits (Cremer et al. 2018) into an **approximation** gap
    ``log p(x) - ELBO(q*) = KL(q* || p(z|x))``, zero only when the posterior is diagonal, and
    an **amortisation** gap ``ELBO(q*) - ELBO(q)``, the price of one encoder for all ``x``."""
    mean, cov = linear_gaussian_posterior(x, W, b, sigma)
    precision = np.linalg.inv(cov)
    log_var = -np.log(np.diag(precision))
    return mean, np.broadcast_to(log_var, mean.shape).copy()


def linear_gaussian_elbo(x, W, b, sigma, q_mean, q_log_var) -> np.ndarray:
    """Exact ELBO of a diagonal ``q(z|x) = N(q_mean, diag exp(q_log_var))`` under the
    linear-Gaussian model, float64 ``[n]``; no sampling.

    With ``s_j^2 = exp(q_log_var_j)`` and ``w_j`` the ``j``-th column of ``W``:
    ``E_q[log p(x|z)] = -d/2 log(2 pi sigma^2)
    - [||x - b - W q_mean||^2 + sum_j s_j^2 ||w_j||^2] / (2 sigma^2)``, and
    ``ELBO = E_q[log p(x|z)] - KL(q || N(0, I))``. It equals
    ``log p(x) - KL(q || p(z|x))`` exactly.

    Args:
        x: ``[n, ...]``; W: ``[d, latent_dim]``; b: ``[d]``; sigma: scalar;
        q_mean, q_log_var: ``[n, latent_dim]``.
    """
    x, W, b, sigma = _check_linear_gaussian(x, W, b, sigma)
    q_mean = np.asarray(q_mean, dtype=np.float64)
    q_var = np.exp(np.asarray(q_log_var, dtype=np.float64))
    d = x.shape[1]
    residual = np.sum((x - b - q_mean @ W.T) ** 2, axis=1)
    spread = q_var @ np.sum(W**2, axis=0)
    expected_log_likelihood = (
        -0.5 * d * math.log(2 * math.pi * sigma**2) - (residual + spread) / (2 * sigma**2)
    )
    kl = 0.5 * np.sum(q_mean**2 + q_var - 1.0 - np.log(q_var), axis=1)
    return expected_log_likelihood - kl


def kl_gaussians(mean_q, var_q, mean_p, cov_p) -> np.ndarray:
    """Exact ``KL(q || p)`` for ``q = N(mean_q, diag var_q)`` and ``p = N(mean_p, cov_p)`` with
    a full covariance, float64 ``[n]``.

    ``KL = 1/2 [tr(S_p^{-1} S_q) + (m_p - m_q)^T S_p^{-1} (m_p - m_q) - k
    + log det S_p - log det S_q]``.

    Args:
        mean_q, var_q: ``[n, k]`` mean and diagonal variances of ``q``.
        mean_p: ``[n, k]`` (or ``[k]``); cov_p: ``[k, k]`` shared, or ``[n, k, k]``.
    """
    mean_q = np.atleast_2d(np.asarray(mean_q, dtype=np.float64))
    var_q = np.atleast_2d(np.asarray(var_q, dtype=np.float64))
    mean_p = np.broadcast_to(np.asarray(mean_p, dtype=np.float64), mean_q.shape)
    cov_p = np.asarray(cov_p, dtype=np.float64)
    n, k = mean_q.shape
    if var_q.shape != (n, k) or cov_p.shape[-2:] != (k, k):
        raise ValueError(
            f"mean_q {mean_q.shape}, var_q {var_q.shape} and cov_p {cov_p.shape} do not fit: "
            "expected [n, k], [n, k] and [k, k] or [n, k, k]."
        )
    cov_p = np.broadcast_to(cov_p, (n, k, k))
    cholesky = np.linalg.cholesky(cov_p)
    log_det_p = 2.0 * np.sum(np.log(np.diagonal(cholesky, axis1=1, axis2=2)), axis=1)
    inverse = np.linalg.inv(cov_p)
    trace = np.einsum("nii,ni->n", inverse, var_q)
    difference = mean_p - mean_q
    mahalanobis = np.einsum("ni,nij,nj->n", difference, inverse, difference)
    return 0.5 * (trace + mahalanobis - k + log_det_p - np.sum(np.log(var_q), axis=1))
