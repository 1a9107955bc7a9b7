"""Training recipes: one call that compiles a model with a fresh optimizer and trains it as the
notebooks do: :func:`train_autoencoder` (notebooks 01-02, 05) and :func:`train_vae`
(notebooks 03, 05). The classifier that scores samples has its own recipe,
:func:`support.models.classifier.train_classifier`; the toy GANs are built compiled by
:func:`support.models.gan.toy_gan` and trained with :func:`~support.training.fit_resumable`."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from .. import checks, data, tensorboard_logs
from ..models.vae import VAE, KLWarmup
from .loop import batches
from .resumable import fit_resumable
from .schedules import OPTIMIZERS, learning_rate_schedule


def train_autoencoder(
    model: keras.Model,
    x_train,
    x_val=None,
    *,
    epochs: int = 100,
    batch_size: int | None = 128,
    learning_rate: float = 1e-3,
    schedule: str = "cosine",
    optimizer: str = "adam",
    momentum: float = 0.9,
    seed: int | None = 0,
    init_output_bias: bool = True,
    validation_freq: int = 1,
    verbose: int = 0,
    callbacks=None,
    jit_compile="auto",
) -> keras.callbacks.History:
    """Compile ``model`` with a fresh optimizer and train it to reconstruct ``x_train``.

    Args:
        model: an autoencoder whose ``train_step`` needs no targets (see
            :mod:`support.models.autoencoders`).
        x_train: ``[n, height, width, channels]`` training images.
        x_val: validation images, evaluated every ``validation_freq`` epochs (``val_loss``),
            or ``None``.
        epochs: passes over ``x_train``.
        batch_size: examples per step; ``None`` trains full-batch (one step per epoch).
        learning_rate: peak learning rate.
        schedule: ``"cosine"`` (decay to 0 over all ``epochs``) or ``"constant"``.
        optimizer: ``"adam"`` or ``"sgd"`` (heavy-ball ``momentum``).
        momentum: momentum of ``"sgd"`` (ignored by Adam).
        seed: seeds Python, NumPy and TensorFlow (``keras.utils.set_random_seed``) before
            training, so the shuffling repeats; the weights were drawn when the model was
            built, so seed before building it too. ``None`` leaves the seeds alone.
        init_output_bias: start the decoder at the mean image
            (:meth:`~support.models.autoencoders.Autoencoder.init_output_bias`); this assumes
            a fresh model, so pass ``False`` to continue training one.
        validation_freq: evaluate ``x_val`` every this many epochs (each evaluation has a fixed
            set-up cost that, for small models, is comparable to an epoch of training).
        verbose: Keras' progress display (0 silent, 1 progress bar, 2 one line per epoch).
            An epoch runs as one compiled call, so the bar and batch-level callbacks advance
            once per epoch.
        callbacks: extra Keras callbacks.
        jit_compile: passed to ``compile``: ``"auto"`` (Keras' default: XLA only on a GPU) or
            ``True``/``False``. Measure before choosing ``True`` on a CPU: its compile time is
            paid inside the training (``benchmarks/xla.py``; figures in benchmarks/README.md).

    Returns:
        The ``History`` of ``fit``: ``history.history["loss"]`` (and ``"val_loss"``) per epoch,
        the per-pixel MSE.
    """
    epochs = checks.positive_int(epochs, "epochs")
    batch_size = checks.positive_int(batch_size, "batch_size", allow_none=True) or len(x_train)
    checks.choice(optimizer, OPTIMIZERS, "optimizer")
    if init_output_bias:
        model.init_output_bias(x_train)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    rate = learning_rate_schedule(learning_rate, schedule, epochs * steps_per_epoch)
    if optimizer == "adam":
        optimizer = keras.optimizers.Adam(rate)
    else:
        optimizer = keras.optimizers.SGD(rate, momentum=momentum)
    # One compiled call runs a whole epoch: with small models the per-step Python round trip,
    # not the arithmetic, would otherwise dominate (``benchmarks/throughput.py`` compares both).
    model.compile(optimizer=optimizer, steps_per_execution=steps_per_epoch, jit_compile=jit_compile)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    validation = None
    if x_val is not None:
        validation = tf.data.Dataset.from_tensor_slices(x_val).batch(max(batch_size, 1024))
    return model.fit(
        batches(x_train, batch_size, seed=seed),
        validation_data=validation,
        validation_freq=validation_freq,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # batches() shuffles
        verbose=verbose,
        callbacks=[*(callbacks or []), *tensorboard_logs.callbacks(model, x=x_train)],
    )


def train_vae(
    model: VAE,
    x_train,
    x_val=None,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    binarization: str = "dynamic",
    warmup_epochs: int = 0,
    validation_freq: int = 1,
    seed: int = 0,
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
    verbose: int = 0,
    callbacks=(),
    jit_compile="auto",
) -> keras.callbacks.History:
    """Train a VAE with Adam on ``x_train`` for ``epochs`` passes; return Keras' ``History``.

    The decoder starts at the mean training image (:meth:`VAE.init_output_bias`). Training runs
    through :func:`support.training.fit_resumable`: an epoch is ``len(x_train) // batch_size``
    batches of :func:`support.data.step_batches` (the remainder is dropped), binarized by
    ``binarization`` (``"dynamic"``: fresh Bernoulli draws for every batch, ``"static"``: one
    fixed draw, ``"none"``: the grey levels, for a Gaussian likelihood). With ``checkpoint_dir``
    a checkpoint is written every ``checkpoint_every`` steps (default: every epoch) and a rerun
    with the same folder resumes from the latest one, on the same batches and the same
    reparameterization noise. ``warmup_epochs > 0`` ramps the KL weight with :class:`KLWarmup`.
    ``x_val`` (already in the form the model should score, e.g. statically binarized) is
    evaluated every ``validation_freq`` epochs. The history has ``loss`` (``-ELBO`` with the
    KL weighted by ``beta``), ``reconstruction`` and ``kl`` per epoch, and ``val_`` versions
    (after a resume, for the epochs run in this call only). Each compiled call runs a whole
    epoch (with ``checkpoint_dir``: the greatest common divisor of the epoch's steps and
    ``checkpoint_every``), so batch-level ``callbacks`` see one batch end per call. ``jit_compile`` goes to
    ``compile`` (``"auto"``: XLA only on a GPU; on a 2-core CPU XLA slowed the notebooks' VAEs
    down, see ``benchmarks/xla.py``).
    """
    epochs = checks.positive_int(epochs, "epochs")
    batch_size = checks.positive_int(batch_size, "batch_size")
    checks.integer(warmup_epochs, "warmup_epochs", minimum=0)
    if len(x_train) < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {len(x_train)} training examples; "
            "use a smaller batch_size or more data."
        )
    keras.utils.set_random_seed(seed)
    model.init_output_bias(x_train)
    steps_per_epoch = len(x_train) // batch_size
    # Several steps per compiled call, the same updates with fewer Python round trips (a quarter
    # of the time of these small models): a whole epoch, or, with checkpoints, the largest count
    # that divides both the epoch and the checkpoint interval (fit_resumable needs both).
    per_call = steps_per_epoch
    valid_every = checks.is_int(checkpoint_every)
    if checkpoint_dir is not None and valid_every and checkpoint_every > 0:
        per_call = math.gcd(steps_per_epoch, checkpoint_every)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile,
                  steps_per_execution=per_call)
    validation = None
    if x_val is not None:
        validation = data.dataset(x_val, batch_size=1024, shuffle=False)
    extra = [KLWarmup(warmup_epochs)] if warmup_epochs else []
    fit = fit_resumable(
        model, x_train, steps=epochs * steps_per_epoch, batch_size=batch_size, seed=seed,
        binarization=binarization, checkpoint_dir=checkpoint_dir,
        checkpoint_every=None if checkpoint_dir is None else checkpoint_every,
        validation_data=validation, validation_freq=validation_freq, callbacks=[*extra, *callbacks],
        verbose=verbose,
    )
    return fit.history
