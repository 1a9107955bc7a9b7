"""Dense, convolutional and linear autoencoders.

An autoencoder maps an image ``x: [batch, height, width, channels]`` in [0, 1] to a code
``z = encoder(x): [batch, latent_dim]`` and back to a reconstruction
``x_hat = decoder(z): [batch, height, width, channels]``, trained to minimise the per-pixel
squared error

    reconstruction_loss(x) = mean over pixels of (x - x_hat)^2        # shape [batch]

averaged over the batch. The per-pixel mean (not the sum) is used because it is the number
compared with the PCA optimum (:func:`support.metrics.pca_reconstruction_mse`); for a plain
autoencoder the scale of the loss changes only the effective learning rate of SGD.

``fit(x)`` trains to reconstruct ``x``; ``fit(x_input, x_target)`` trains to map one onto the
other (a denoising autoencoder, for example). Both models save to ``.keras`` and load back
with :func:`keras.models.load_model` to the same outputs.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from support import checks, objectives


def reconstruction_loss(x, x_hat):
    """Per-example squared error averaged over pixels: ``[batch, ...] -> [batch]``."""
    squared = tf.square(tf.cast(x, x_hat.dtype) - x_hat)
    return tf.reduce_mean(tf.reshape(squared, (tf.shape(squared)[0], -1)), axis=1)


def standard_normal(n: int, dim: int, seed: int | None = None):
    """``[n, dim]`` draws of ``N(0, I)``: repeatable (stateless) with a ``seed``, from
    TensorFlow's global generator with ``None``; the prior draws of the GAN and the VAE."""
    shape = (checks.positive_int(n, "n"), dim)
    if seed is None:
        return tf.random.normal(shape)
    return tf.random.stateless_normal(shape, seed=(int(seed), 0))


def dense_encoder(image_shape, widths, outputs: int, *, hidden_activation="relu",
                  output_activation=None, output_name="code") -> keras.Sequential:
    """``x: [batch, *image_shape] -> [batch, outputs]``: flatten, then
    ``Dense(widths[0], hidden_activation) -> ... -> Dense(outputs, output_activation)``.
    ``widths=()`` is one affine map. Shared by the autoencoders and the VAE."""
    return keras.Sequential(
        [keras.Input(image_shape), keras.layers.Flatten()]
        + [keras.layers.Dense(w, activation=hidden_activation) for w in widths]
        + [keras.layers.Dense(outputs, activation=output_activation, name=output_name)],
        name="encoder",
    )


def dense_decoder(image_shape, widths, latent_dim: int, *, hidden_activation="relu",
                  output_activation=None) -> keras.Sequential:
    """``z: [batch, latent_dim] -> [batch, *image_shape]``: the mirror of
    :func:`dense_encoder` (``widths`` given outermost first, used in reverse), ending in
    ``Dense(d, output_activation)`` named ``"pixels"`` and a reshape."""
    return keras.Sequential(
        [keras.Input((latent_dim,))]
        + [keras.layers.Dense(w, activation=hidden_activation) for w in tuple(widths)[::-1]]
        + [
            keras.layers.Dense(math.prod(image_shape), activation=output_activation, name="pixels"),
            keras.layers.Reshape(tuple(image_shape)),
        ],
        name="decoder",
    )


_CONV = dict(kernel_size=3, strides=2, padding="same")


def conv_encoder(image_shape, filters, outputs: int, *, hidden_activation="relu",
                 output_activation=None, output_name="code") -> keras.Sequential:
    """``x -> [batch, outputs]``: one ``Conv2D(f, 3, strides=2, padding="same")`` per entry of
    ``filters`` (each halves height and width), flatten, ``Dense(outputs)``."""
    return keras.Sequential(
        [keras.Input(image_shape)]
        + [keras.layers.Conv2D(f, activation=hidden_activation, **_CONV) for f in filters]
        + [
            keras.layers.Flatten(),
            keras.layers.Dense(outputs, activation=output_activation, name=output_name),
        ],
        name="encoder",
    )


def conv_decoder(image_shape, filters, latent_dim: int, *, hidden_activation="relu",
                 output_activation=None) -> keras.Sequential:
    """``z -> [batch, *image_shape]``: ``Dense`` to the smallest feature map
    ``[h / 2^L, w / 2^L, filters[-1]]``, then stride-2 ``Conv2DTranspose`` layers that double it
    back, the last with ``channels`` filters named ``"pixels"``. Height and width must be
    divisible by ``2 ** len(filters)`` (checked by the models)."""
    height, width, channels = image_shape
    factor = 2 ** len(filters)
    small = (height // factor, width // factor, filters[-1])
    return keras.Sequential(
        [
            keras.Input((latent_dim,)),
            keras.layers.Dense(math.prod(small), activation=hidden_activation),
            keras.layers.Reshape(small),
        ]
        + [
            keras.layers.Conv2DTranspose(f, activation=hidden_activation, **_CONV)
            for f in tuple(filters)[-2::-1]
        ]
        + [keras.layers.Conv2DTranspose(channels, activation=output_activation, name="pixels", **_CONV)],
        name="decoder",
    )


def check_conv_shape(image_shape, filters):
    """Raise unless ``filters`` is non-empty and height and width divide by ``2 ** len(filters)``."""
    if not filters:
        raise ValueError("filters=() must name at least one convolution, e.g. (32, 64).")
    factor = 2 ** len(filters)
    if image_shape[0] % factor or image_shape[1] % factor:
        raise ValueError(
            f"input_shape={tuple(image_shape)!r}: height and width must be divisible by "
            f"2 ** len(filters) = {factor} so that the decoder restores them exactly; "
            f"use fewer filters (filters={tuple(filters)!r})."
        )


class Autoencoder(keras.Model):
    """Shared behaviour: ``call``, ``encode``, ``decode`` and the reconstruction-loss
    ``train_step``/``test_step``. Subclasses set ``self.encoder`` and ``self.decoder``."""

    def __init__(self, code_l1: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        code_l1 = float(code_l1)
        if not math.isfinite(code_l1) or code_l1 < 0:
            raise ValueError(f"code_l1={code_l1!r} must be a finite number >= 0.")
        self.code_l1 = code_l1
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, x, training=None):
        """``x: [batch, height, width, channels] -> x_hat`` of the same shape."""
        return self.decoder(self.encoder(x, training=training), training=training)

    def encode(self, x):
        """``x: [batch, height, width, channels] -> z: [batch, latent_dim]``."""
        return self.encoder(x, training=False)

    def decode(self, z):
        """``z: [batch, latent_dim] -> x_hat: [batch, height, width, channels]``."""
        return self.decoder(z, training=False)

    def init_output_bias(self, x_train):
        """Set the output layer's bias so that the untrained decoder outputs the mean image.

        ``bias = mean(x_train)`` per pixel (per channel for a convolutional output), passed
        through the inverse of the output activation: ``logit(mean)`` for ``"sigmoid"``. The
        mean is then in place from the first step. Without it the code spends a dimension on
        the mean early on and hands it over to the bias only slowly; for a linear autoencoder
        this can leave the decoder's subspace far from PCA's long after the MSE is close to
        its optimum.
        """
        layer = self.decoder.get_layer("pixels")
        activation = self.output_activation
        if activation not in (None, "linear", "sigmoid"):
            raise ValueError(
                f"output_activation={activation!r}: init_output_bias knows the inverse of "
                "None, 'linear' and 'sigmoid' only."
            )
        x = np.asarray(x_train, dtype=np.float64)
        if x.shape[1:] != self.image_shape:
            raise ValueError(
                f"x_train has examples of shape {x.shape[1:]}, the model expects "
                f"{self.image_shape}."
            )
        mean = x.mean(axis=0).reshape(-1)
        if tuple(layer.bias.shape) != mean.shape:  # a convolution: one bias per channel
            mean = x.reshape(-1, self.image_shape[-1]).mean(axis=0)
        if activation == "sigmoid":
            mean = np.clip(mean, 1e-3, 1 - 1e-3)
            mean = np.log(mean / (1 - mean))
        layer.bias.assign(mean.astype(layer.bias.dtype))

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _loss(self, data, training):
        """``(share, report)`` of the batch-mean loss (see :func:`objectives.replica_mean`:
        under a distribution strategy the batch is split across replicas)."""
        x, target, _ = keras.utils.unpack_x_y_sample_weight(data)
        target = x if target is None else target
        # Called whole (not encoder then decoder), so that the model is built as Keras expects.
        losses = reconstruction_loss(target, self(x, training=training))
        if self.code_l1:  # a sparse autoencoder: lambda * sum_j |z_j| per example
            z = self.encoder(x, training=training)
            losses += self.code_l1 * tf.reduce_sum(tf.abs(z), axis=-1)
        return objectives.replica_mean(losses)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, report = self._loss(data, training=True)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        self.loss_tracker.update_state(report)
        return objectives.step_logs([self.loss_tracker])

    def test_step(self, data):
        self.loss_tracker.update_state(self._loss(data, training=False)[1])
        return objectives.step_logs([self.loss_tracker])

    def _build_parts(self, encoder_fn, decoder_fn, sizes, code_activation, hidden_activation,
                     output_activation) -> None:
        """Keep the activations and build ``encoder_fn``/``decoder_fn`` over ``sizes`` (the
        dense widths or the convolutional filters)."""
        self.code_activation = code_activation
        self.hidden_activation = hidden_activation
        self.output_activation = output_activation
        self.encoder = encoder_fn(self.image_shape, sizes, self.latent_dim,
                                  hidden_activation=hidden_activation, output_activation=code_activation)
        self.decoder = decoder_fn(self.image_shape, sizes, self.latent_dim,
                                  hidden_activation=hidden_activation, output_activation=output_activation)

    def _shared_config(self) -> dict:
        """The constructor arguments every autoencoder here has, for ``get_config``."""
        return {"code_l1": self.code_l1, "input_shape": self.image_shape, "latent_dim": self.latent_dim,
                "code_activation": self.code_activation, "hidden_activation": self.hidden_activation,
                "output_activation": self.output_activation}


@keras.saving.register_keras_serializable(package="support")
class DenseAutoencoder(Autoencoder):
    """A multilayer-perceptron autoencoder; with ``linear=True``, the linear autoencoder.

    Encoder: flatten ``x`` to ``d = height * width * channels`` values, then
    ``Dense(widths[0], hidden_activation) -> ... -> Dense(latent_dim, code_activation)``.
    Decoder: the mirror image, ``Dense(widths[-1], hidden_activation) -> ... ->
    Dense(d, output_activation)``, reshaped back to ``input_shape``.

    ``linear=True`` removes every activation (the three activation arguments are then ignored
    and recorded as ``None``) and defaults ``widths`` to ``()``: ``z = W_e (x) + b_e``,
    ``x_hat = W_d z + b_d`` with ``W_d: [latent_dim, d]`` as Keras stores it. At its optimum
    the rows of ``W_d`` span the top-``latent_dim`` principal subspace of the training data
    (Baldi and Hornik 1989); read them with :func:`decoder_matrix`.

    Args:
        input_shape: ``(height, width, channels)``, e.g. ``(8, 8, 1)`` or ``(28, 28, 1)``.
        widths: hidden widths of the encoder, outermost first, e.g. ``(128, 64)``; ``None``
            gives ``(128, 64)``, or ``()`` when ``linear``.
        latent_dim: size ``k`` of the code.
        code_activation: activation of the code layer (``None``: identity; ``"sigmoid"``
            bounds the code in (0, 1)).
        hidden_activation: activation of the hidden layers.
        output_activation: activation of the output (``"sigmoid"`` for pixels in [0, 1],
            ``None`` for identity).
        linear: build the linear autoencoder.
        code_l1: weight ``lambda`` of an L1 penalty on the code added to each example's loss,
            ``lambda * sum_j |z_j|`` (a sparse autoencoder; with ``code_activation="relu"``
            most units are then exactly 0 for a given image). ``0``: none.
    """

    def __init__(
        self,
        input_shape=(8, 8, 1),
        widths=None,
        latent_dim: int = 8,
        code_activation: str | None = None,
        hidden_activation: str | None = "relu",
        output_activation: str | None = "sigmoid",
        linear: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = checks.image_shape(input_shape, "input_shape")
        self.linear = bool(linear)
        if widths is None:
            widths = () if self.linear else (128, 64)
        self.widths = checks.widths(widths, "widths")
        self.latent_dim = checks.positive_int(latent_dim, "latent_dim")
        if self.linear:
            code_activation = hidden_activation = output_activation = None
        self._build_parts(dense_encoder, dense_decoder, self.widths, code_activation,
                          hidden_activation, output_activation)

    def get_config(self):
        return {**super().get_config(), **self._shared_config(), "widths": self.widths,
                "linear": self.linear}


@keras.saving.register_keras_serializable(package="support")
class ConvAutoencoder(Autoencoder):
    """A convolutional autoencoder for 8x8 and 28x28 images (any size divisible by
    ``2 ** len(filters)``).

    Encoder: one ``Conv2D(f, 3, strides=2, padding="same", hidden_activation)`` per entry of
    ``filters``, each halving height and width (28 -> 14 -> 7, or 8 -> 4 -> 2), then flatten
    and ``Dense(latent_dim, code_activation)``.
    Decoder: ``Dense(h * w * filters[-1], hidden_activation)`` reshaped to the smallest feature
    map ``[h, w, filters[-1]]``, then ``Conv2DTranspose`` layers with stride 2 that double it
    back (the last one has ``channels`` filters and ``output_activation``).

    Args:
        input_shape: ``(height, width, channels)``.
        filters: filters of the strided convolutions, e.g. ``(32, 64)``.
        latent_dim: size ``k`` of the code.
        code_activation, hidden_activation, output_activation: as in :class:`DenseAutoencoder`.
    """

    def __init__(
        self,
        input_shape=(28, 28, 1),
        filters=(32, 64),
        latent_dim: int = 8,
        code_activation: str | None = None,
        hidden_activation: str | None = "relu",
        output_activation: str | None = "sigmoid",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = checks.image_shape(input_shape, "input_shape")
        self.filters = checks.widths(filters, "filters")
        self.latent_dim = checks.positive_int(latent_dim, "latent_dim")
        check_conv_shape(self.image_shape, self.filters)
        self._build_parts(conv_encoder, conv_decoder, self.filters, code_activation,
                          hidden_activation, output_activation)

    def get_config(self):
        return {**super().get_config(), **self._shared_config(), "filters": self.filters}


def decoder_matrix(model: DenseAutoencoder) -> tuple[np.ndarray, np.ndarray]:
    """The affine map of a linear autoencoder's decoder, ``x_hat = z @ weight + bias``.

    Returns ``(weight [latent_dim, d], bias [d])`` as float64. With hidden widths (a deep
    linear network) the layers' maps are composed: ``weight = W_1 @ W_2 @ ...``. The row space
    of ``weight`` is the subspace that the decoder spans, to be compared with PCA components
    ``[k, d]`` by ``principal_angles(weight.T, components.T)``.
    """
    if not isinstance(model, DenseAutoencoder) or not model.linear:
        raise ValueError(
            f"model={type(model).__name__} is not a linear DenseAutoencoder "
            "(DenseAutoencoder(..., linear=True)); only a linear decoder is a matrix."
        )
    weight = np.eye(model.latent_dim)
    bias = np.zeros(model.latent_dim)
    for layer in model.decoder.layers:
        if isinstance(layer, keras.layers.Dense):
            kernel, layer_bias = (np.asarray(v, dtype=np.float64) for v in layer.get_weights())
            weight, bias = weight @ kernel, bias @ kernel + layer_bias
    return weight, bias
