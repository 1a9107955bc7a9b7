"""An exact-likelihood reference for binary images: MADE (Germain et al. 2015).

A VAE reports a bound on ``log p(x)`` (the ELBO) or an estimate of it (importance sampling); a
diffusion model reports a bound; a GAN reports nothing. To say how good those numbers are, the
leaderboard needs a model whose ``log p(x)`` is computed exactly. An autoregressive model is one:
by the chain rule, for pixels ``x_1..x_d`` in a fixed order,

    log p(x) = sum_i log p(x_i | x_1..x_{i-1}),      p(x_i = 1 | x_<i) = sigmoid(l_i(x_<i)),

and the ``d`` conditionals are Bernoulli, so the sum is a normalised log-probability of binary
images with no approximation anywhere. MADE computes all ``d`` logits in one pass of an MLP whose
weights are multiplied by fixed binary masks: each unit gets a degree ``m`` (inputs ``1..d``,
hidden units ``1..d-1``), a hidden unit of degree ``m`` sees only units of degree ``<= m`` below it,
and output ``i`` sees only units of degree ``< i``, so ``l_i`` depends on ``x_<i`` alone. Hidden
degrees cycle through ``1..d-1`` (every degree used about equally; no randomness to seed), and a
masked direct input-to-output layer adds a logistic-regression path, as in the paper.

Training maximises the exact log-likelihood of binary images (pixels in ``{0, 1}``, e.g. from
``fit_resumable(..., binarization="dynamic")``, a fresh draw every step, as notebook 03's VAE).
Sampling draws the ``d`` pixels one after the other: ``d`` passes of the network.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from support import checks, objectives


def made_degrees(dimension: int, widths) -> list[np.ndarray]:
    """The degrees of MADE's units: inputs ``1..d``, then each hidden layer's, cycling through
    ``1..d-1`` (``d = 1``: hidden units of degree 0, which see nothing)."""
    degrees = [np.arange(1, dimension + 1)]
    for width in widths:
        if dimension == 1:
            degrees.append(np.zeros(width, dtype=int))
        else:
            degrees.append(np.arange(width) % (dimension - 1) + 1)
    return degrees


def made_masks(dimension: int, widths) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``(hidden masks, output mask, direct mask)`` as float32 ``[fan_in, fan_out]`` arrays: a
    hidden unit of degree ``m`` sees units of degree ``<= m``; output ``i`` (degree ``i``) sees
    hidden units of degree ``< i``; the direct layer connects input ``j`` to output ``i`` when
    ``j < i`` (strictly lower-triangular)."""
    degrees = made_degrees(dimension, widths)
    hidden = [(below[:, None] <= above[None, :]).astype(np.float32)
              for below, above in zip(degrees[:-1], degrees[1:])]
    outputs = np.arange(1, dimension + 1)
    output = (degrees[-1][:, None] < outputs[None, :]).astype(np.float32)
    direct = (degrees[0][:, None] < outputs[None, :]).astype(np.float32)
    return hidden, output, direct


class _MaskedDense(keras.layers.Layer):
    """``activation(x @ (W * mask) + b)`` with a fixed binary ``mask [fan_in, units]``."""

    def __init__(self, mask: np.ndarray, activation=None, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.mask = np.asarray(mask, dtype=np.float32)
        self.units = self.mask.shape[1]
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias

    def build(self, input_shape):
        fan_in = self.mask.shape[0]
        self.kernel = self.add_weight(shape=(fan_in, self.units), initializer="glorot_uniform", name="kernel")
        self.bias = (self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
                     if self.use_bias else None)

    def call(self, x):
        y = tf.matmul(x, self.kernel * tf.constant(self.mask, dtype=self.kernel.dtype))
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y)


@keras.saving.register_keras_serializable(package="support")
class MADE(keras.Model):
    """MADE (Germain et al. 2015) for binary images: exact ``log p(x)`` in one pass.

    ``call(x)`` maps images ``[batch, *input_shape]`` (pixels in ``{0, 1}``, flattened in
    row-major order) to the ``d`` logits ``l_i(x_<i)``; :meth:`log_prob` sums the Bernoulli
    log-probabilities, exactly ``log p(x)``; :meth:`sample` draws pixel by pixel. Training
    minimises ``-log p(x)`` averaged over the batch (``loss``, nats per image). Typical use::

        model = MADE(input_shape=(8, 8, 1), widths=(500,))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        fit_resumable(model, x_train, steps=2000, binarization="dynamic")
        nll = -model.log_prob(data.binarize(x_test, seed=1))   # nats per image, exact
        x = model.sample(100, seed=0)                          # binary images

    Args:
        input_shape: one image's shape (any shape; ``d`` is its number of values).
        widths: hidden widths (ReLU), each ``>= 1``.
        direct: add the masked direct input-to-output connections.
    """

    def __init__(self, input_shape=(8, 8, 1), widths=(500,), direct: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(input_shape, (tuple, list)) or not all(checks.is_int(s) and s >= 1
                                                                  for s in input_shape):
            raise ValueError(f"input_shape={input_shape!r} must be a tuple of positive ints, e.g. (8, 8, 1).")
        self.example_shape = tuple(int(s) for s in input_shape)
        self.widths = checks.widths(widths, "widths")
        if not isinstance(direct, (bool, np.bool_)):
            raise ValueError(f"direct={direct!r} must be True or False.")
        self.direct = bool(direct)
        self.dimension = math.prod(self.example_shape)
        hidden, output, direct_mask = made_masks(self.dimension, self.widths)
        self.hidden_layers = [_MaskedDense(mask, activation="relu", name=f"masked_{i}")
                              for i, mask in enumerate(hidden)]
        self.output_layer = _MaskedDense(output, name="logits")
        self.direct_layer = _MaskedDense(direct_mask, use_bias=False, name="direct") if self.direct else None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.build((None, *self.example_shape))

    def build(self, input_shape):
        features = self.dimension
        for layer in self.hidden_layers:
            layer.build((None, features))
            features = layer.units
        self.output_layer.build((None, features))
        if self.direct_layer is not None:
            self.direct_layer.build((None, self.dimension))
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(input_shape=self.example_shape, widths=self.widths, direct=self.direct)
        return config

    def _logits(self, x):
        """``[batch, d]`` logits of flat ``x [batch, d]``."""
        h = x
        for layer in self.hidden_layers:
            h = layer(h)
        logits = self.output_layer(h)
        if self.direct_layer is not None:
            logits = logits + self.direct_layer(x)
        return logits

    def call(self, x, training=None):
        x = tf.cast(x, self.compute_dtype)
        flat = tf.reshape(x, (tf.shape(x)[0], self.dimension))
        return tf.reshape(self._logits(flat), tf.shape(x))

    def example_log_prob(self, x):
        """``log p(x)`` per image, a ``[batch]`` tensor (nats)."""
        x = tf.cast(x, self.compute_dtype)
        flat = tf.reshape(x, (tf.shape(x)[0], self.dimension))
        return objectives.bernoulli_log_likelihood(flat, self._logits(flat))

    # ------------------------------------------------------------------ training

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _nll(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return -self.example_log_prob(x)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, report = objectives.replica_mean(self._nll(data))
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        self.loss_tracker.update_state(report)
        return objectives.step_logs(self.metrics)

    def test_step(self, data):
        _, report = objectives.replica_mean(self._nll(data))
        self.loss_tracker.update_state(report)
        return objectives.step_logs(self.metrics)

    # ------------------------------------------------------------------ evaluation and sampling

    @tf.function(reduce_retracing=True)
    def _log_prob_batch(self, x):
        return self.example_log_prob(x)

    def log_prob(self, x, batch_size: int = 1000) -> np.ndarray:
        """Exact ``log p(x)`` (nats) of binary images ``x [n, *input_shape]``, NumPy ``[n]``
        float64. Grey levels are refused: binarize first (e.g. ``support.data.binarize``)."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.example_shape:
            expected = ", ".join(map(str, self.example_shape))
            raise ValueError(f"x has shape {x.shape}; expected [n, {expected}].")
        if not np.all((x == 0) | (x == 1)):
            raise ValueError("MADE.log_prob needs binary images (pixels 0 or 1): binarize grey levels "
                             "first, e.g. with support.data.binarize.")
        batch_size = checks.positive_int(batch_size, "batch_size")
        parts = [self._log_prob_batch(tf.constant(x[i:i + batch_size])).numpy()
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    @tf.function(reduce_retracing=True)
    def _flat_logits(self, flat):
        return self._logits(flat)

    def sample(self, n: int, seed: int = 0, probabilities: bool = False) -> np.ndarray:
        """``n`` binary images ``[n, *input_shape]``, drawn pixel by pixel (``d`` passes).
        With ``probabilities=True``, each pixel's probability of being 1 given the pixels drawn
        before it (the last pass's ``sigmoid(l_i)``), instead of the draws."""
        n = checks.positive_int(n, "n")
        rng = np.random.default_rng(checks.integer(seed, "seed", minimum=0))
        uniforms = rng.random((n, self.dimension), dtype=np.float32)
        x = np.zeros((n, self.dimension), dtype=np.float32)
        p = np.zeros_like(x)
        for i in range(self.dimension):
            logits = self._flat_logits(tf.constant(x)).numpy()
            p[:, i] = 1.0 / (1.0 + np.exp(-logits[:, i]))
            x[:, i] = (uniforms[:, i] < p[:, i]).astype(np.float32)
        return (p if probabilities else x).reshape(n, *self.example_shape)
