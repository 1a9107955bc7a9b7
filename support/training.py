"""Training: the explicit loop of notebook 02, its guards, and the ``fit`` recipe of notebook 01.

Two ways to run the same optimisation:

* :func:`train_loop` writes the seven steps out (initialise; sample a mini-batch; encode;
  decode; compute the loss; update by gradient descent; repeat until a budget or a convergence
  criterion), with ``tf.GradientTape`` inside a ``tf.function`` step, a tqdm bar, hooks,
  :class:`EarlyStopping` and a NaN guard. :func:`train_step_by_step` is the same loop with
  the seven steps only (no checks, guards or hooks): the code notebook 02 shows, tested to
  give the same weights.
* :func:`train_autoencoder` is the recipe of the autoencoder notebooks. Keras' own ``fit`` runs
  it, so progress bars, callbacks and the returned ``History`` behave as everywhere else; the
  data are fed as an endless ``tf.data`` pipeline (:func:`batches`) with one compiled call per
  epoch, because Keras' per-epoch set-up for NumPy arrays costs more than training a small
  model for an epoch. :class:`StopOnNaN` is its NaN guard.

Both draw their batches from :func:`batches` with the same seed, so from the same initial
weights and optimizer settings they apply the same updates in the same order and end at the
same weights (the tests check this to 1e-5).

For long trainings of any model (GAN, VAE, autoencoders), :func:`fit_resumable` runs ``fit``
for a budget of steps with ``tf.train.CheckpointManager`` checkpoints every N steps; a rerun
with the same ``checkpoint_dir`` resumes at the checkpoint's step, on the batches of
:func:`support.data.step_batches` that the uninterrupted run would have seen.

Inside a ``with support.tensorboard_logs.logging_to(dir):`` block (a notebook's
``tensorboard_dir``), each of these trainings also writes TensorBoard scalars and images, one
run per training.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from . import tensorboard_logs
from .models.autoencoders import reconstruction_loss

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adam", "sgd")


def learning_rate_schedule(learning_rate: float, schedule: str, total_steps: int):
    """The learning rate as a function of the step ``t`` (0 .. ``total_steps``).

    ``"constant"``: ``lr(t) = learning_rate``. ``"cosine"``:
    ``lr(t) = learning_rate * (1 + cos(pi * t / total_steps)) / 2``, decaying to 0 at the
    last step (Loshchilov and Hutter 2017, without restarts). A large rate early moves fast
    along the directions of small curvature; the decay then removes the noise that a large
    rate leaves, which is what lets a linear autoencoder's subspace settle on PCA's.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not allowed; choose one of {SCHEDULES}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate!r} must be positive.")
    if schedule == "constant":
        return float(learning_rate)
    return keras.optimizers.schedules.CosineDecay(float(learning_rate), int(total_steps))


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
            ``True``/``False``. On a 2-core CPU XLA made the notebooks' digits trainings slower
            (its compile time is not repaid in seconds-long trainings; ``benchmarks/xla.py``).

    Returns:
        The ``History`` of ``fit``: ``history.history["loss"]`` (and ``"val_loss"``) per epoch,
        the per-pixel MSE.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive integer.")
    if batch_size is None:
        batch_size = len(x_train)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer or None.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not allowed; choose one of {OPTIMIZERS}.")
    if init_output_bias:
        model.init_output_bias(x_train)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    rate = learning_rate_schedule(learning_rate, schedule, epochs * steps_per_epoch)
    if optimizer == "adam":
        optimizer = keras.optimizers.Adam(rate)
    else:
        optimizer = keras.optimizers.SGD(rate, momentum=momentum)
    # One compiled call runs a whole epoch: with small models the per-step Python overhead,
    # not the arithmetic, would otherwise dominate (over 10x slower on the 8x8 digits).
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


def batches(x, batch_size: int, seed: int | None = 0):
    """An endless ``tf.data.Dataset`` of batches of ``x``: each pass over ``x`` (an epoch of
    ``ceil(n / batch_size)`` batches, the last one possibly smaller) in a fresh random order.

    The order is drawn on indices and the rows gathered a batch at a time, which is much
    cheaper than shuffling ``n`` separate elements. A fixed ``seed`` repeats the order.
    """
    x = tf.constant(x, dtype=keras.config.floatx())
    n = int(x.shape[0])
    indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return (
        indices.batch(batch_size)
        .map(lambda i: tf.gather(x, i), num_parallel_calls=tf.data.AUTOTUNE)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )


class SubspaceTracker(keras.callbacks.Callback):
    """Records, after every epoch, the largest principal angle (degrees) between a linear
    autoencoder's decoder subspace and a reference subspace ``components [k, d]`` (e.g. PCA's),
    in ``self.angles``: the curve that shows the subspace converging after the error has."""

    def __init__(self, components):
        super().__init__()
        self.components = components
        self.angles: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        from .metrics import principal_angles
        from .models.autoencoders import decoder_matrix

        weight, _ = decoder_matrix(self.model)
        self.angles.append(float(principal_angles(weight.T, self.components.T).max()))


# --------------------------------------------------------------------------- the explicit loop

MONITORS = ("val_loss", "loss")


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite.

    Raised by :func:`train_loop` and by the :class:`StopOnNaN` callback of ``fit``, after the
    weights have been put back to the last ones known to be finite.

    Attributes:
        epoch: 0-based epoch in which the loss stopped being finite.
        step: 0-based step within that epoch (for ``fit``, the last step of the compiled call
            that reported it, since ``fit`` runs several steps per call).
        loss: the offending value (``nan``, ``inf`` or ``-inf``).
        history: the epochs completed before, as :func:`train_loop` returns them (``None``
            from ``fit``).
    """

    def __init__(self, message: str, *, epoch: int, step: int, loss: float, history=None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.loss = loss
        self.history = history


def _all_finite(weights) -> bool:
    return all(np.isfinite(w).all() for w in weights)


def _diverged(model, optimizer, good_weights, what, epoch, step, steps_per_epoch, loss, history=None,
              exact=True):
    """Put ``good_weights`` back into ``model`` and return the :class:`TrainingDiverged` to raise."""
    model.set_weights(good_weights)
    restored = (
        f"The weights are back to those at the end of epoch {epoch - 1}."
        if epoch else "The weights are back to the initial ones."
    )
    try:
        rate = f"learning_rate={float(optimizer.learning_rate):.3g}"
    except (AttributeError, TypeError, ValueError):
        rate = "the learning rate"
    message = (
        f"Training diverged: {what} in epoch {epoch} {'at' if exact else 'by'} step {step} "
        f"(of {steps_per_epoch} per epoch; both counted from 0). {restored} "
        f"Try a smaller learning rate than {rate} (10x smaller is a good first step), "
        "gradient clipping (e.g. the optimizer's clipnorm=1.0), or check the data for NaN/inf."
    )
    return TrainingDiverged(message, epoch=epoch, step=step, loss=loss, history=history)


@dataclass(frozen=True)
class EarlyStopping:
    """Stop :func:`train_loop` once the monitored loss has not improved for ``patience`` epochs.

    An epoch improves when its loss is below ``best - min_delta``. At the end the weights of
    the best epoch are put back (``restore_best_weights``), so the model returned is the one
    whose loss is reported as ``history["best_loss"]``. This is the convergence criterion of
    step 7: on held-out data (``monitor="val_loss"``) it also stops before overfitting.

    Args:
        patience: epochs without improvement tolerated before stopping, ``>= 1``.
        min_delta: improvement smaller than this does not count, ``>= 0``.
        monitor: ``"val_loss"`` (needs ``x_val``) or ``"loss"`` (the training loss).
        restore_best_weights: put the best epoch's weights back at the end.
    """

    patience: int = 10
    min_delta: float = 0.0
    monitor: str = "val_loss"
    restore_best_weights: bool = True

    def __post_init__(self):
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience={self.patience!r} must be a positive integer.")
        if not (isinstance(self.min_delta, (int, float)) and self.min_delta >= 0):
            raise ValueError(f"min_delta={self.min_delta!r} must be a number >= 0.")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor={self.monitor!r} is not allowed; choose one of {MONITORS}.")


def _check_images(x, name, like=None) -> np.ndarray:
    x = np.asarray(x, dtype=keras.config.floatx())
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{name} has shape {x.shape}; expected a non-empty array [n, ...].")
    if like is not None and x.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"{name} has examples of shape {x.shape[1:]}, x_train has {like.shape[1:]}; "
            "they must match."
        )
    return x


def _mean_example_loss(example_losses, x, batch_size: int = 1024) -> float:
    """The mean of the per-example losses over all of ``x``, computed ``batch_size`` at a time."""
    parts = [example_losses(x[i:i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
    return float(np.mean(np.concatenate(parts)))


def _check_hooks(hooks, model, epochs) -> list:
    hooks = list(hooks)
    for hook in hooks:
        if not (callable(getattr(hook, "on_epoch_end", None)) or callable(hook)):
            raise ValueError(
                f"hooks holds {hook!r}, which is neither callable as hook(epoch, logs) nor has "
                "an on_epoch_end(epoch, logs) method."
            )
        if callable(getattr(hook, "set_model", None)):  # Keras callbacks read self.model
            hook.set_model(model)
        if callable(getattr(hook, "set_params", None)):  # ... and self.params["epochs"]
            hook.set_params({"epochs": epochs})
    return hooks


def train_step_by_step(model, x_train, *, loss_fn=reconstruction_loss, optimizer=None,
                       epochs: int = 1, batch_size: int = 128, seed: int = 0) -> list[float]:
    """The seven steps of mini-batch training and nothing else: the loop notebook 02 shows.

    It makes the same updates as :func:`train_loop` (and so as :func:`train_autoencoder`'s
    ``fit``) from the same model, optimizer settings and ``seed``; use those for real work:
    they add argument checks, validation, early stopping, hooks and the NaN guard.
    Returns the mean training loss of each epoch.
    """
    x_train = np.asarray(x_train, dtype=keras.config.floatx())
    # 1. initialise: the weights were drawn when the model was built; the decoder starts at
    #    the mean image; the optimizer's slots are made before tracing the step.
    model.init_output_bias(x_train)
    optimizer = keras.optimizers.Adam(1e-3) if optimizer is None else optimizer
    optimizer.build(model.trainable_variables)
    keras.utils.set_random_seed(seed)
    data = iter(batches(x_train, batch_size, seed=seed))  # a fresh order every epoch
    steps_per_epoch = math.ceil(len(x_train) / batch_size)

    @tf.function(input_signature=[tf.TensorSpec((None, *x_train.shape[1:]), x_train.dtype)])
    def step(x):
        with tf.GradientTape() as tape:
            z = model.encoder(x, training=True)  # 3. encode
            x_hat = model.decoder(z, training=True)  # 4. decode
            loss = tf.reduce_mean(loss_fn(x, x_hat))  # 5. the loss, averaged over the batch
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))  # 6. update
        return loss

    epoch_losses = []
    for _ in range(epochs):  # 7. repeat until the budget is spent
        losses = [float(step(next(data))) for _ in range(steps_per_epoch)]  # 2. sample a mini-batch
        epoch_losses.append(sum(losses) / len(losses))
    return epoch_losses


def train_loop(
    model: keras.Model,
    x_train,
    x_val=None,
    *,
    loss_fn: Callable = reconstruction_loss,
    optimizer: keras.optimizers.Optimizer | None = None,
    epochs: int = 100,
    batch_size: int = 128,
    seed: int | None = 0,
    init_output_bias: bool = True,
    early_stopping: EarlyStopping | None = None,
    hooks: Sequence = (),
    progress: bool = True,
) -> dict:
    """Train an autoencoder by mini-batch gradient descent, every step written out.

    The objective is ``L(theta) = mean over examples of loss_fn(x, decoder(encoder(x)))``;
    each step estimates it on a mini-batch ``B`` and moves the weights along the gradient
    of ``L_B(theta) = (1/|B|) sum_{x in B} loss_fn(x, x_hat)`` (plain SGD:
    ``theta <- theta - learning_rate * grad L_B``; Adam rescales the step per weight).

    From the same initial weights, the same optimizer settings and the same ``seed`` this
    gives the weights that :func:`train_autoencoder` (``fit`` with the model's own
    ``train_step``) gives: the batches come from :func:`batches` in the same order and the
    loss is the same mean over the batch of per-example values.

    NaN guard: the loss is read after every step (one scalar copied to the host). When it is
    NaN or infinite, the weights are put back to those at the end of the last epoch whose
    loss and weights were all finite (the initial weights in epoch 0) and
    :class:`TrainingDiverged` is raised, naming the epoch and step. The optimizer's state
    (Adam's moments, the step counter) is not restored: continue with a fresh optimizer.
    A bounded output hides divergence from this guard: with a sigmoid output the squared error
    stays below 1, so a far too large learning rate (SGD at 1e4 on the digits) saturates the
    network (loss stuck near 0.45, six times the mean image's) instead of making it NaN.

    Args:
        model: an autoencoder with ``encoder`` and ``decoder`` sub-models
            (:mod:`support.models.autoencoders`); trained in place.
        x_train: ``[n, height, width, channels]`` training images.
        x_val: validation images, scored after every epoch (``val_loss``), or ``None``.
        loss_fn: ``loss_fn(x, x_hat) -> [batch]`` per-example losses; the default is the
            per-pixel squared error of :func:`~support.models.autoencoders.reconstruction_loss`.
        optimizer: a fresh Keras optimizer (its state belongs to this model from now on);
            ``None`` gives ``keras.optimizers.Adam(1e-3)``.
        epochs: the iteration budget, in passes over ``x_train``.
        batch_size: examples per step; an epoch has ``ceil(n / batch_size)`` steps.
        seed: seeds Python, NumPy and TensorFlow (``keras.utils.set_random_seed``) and the
            batch order; ``None`` leaves the seeds alone.
        init_output_bias: start the decoder at the mean image
            (:meth:`~support.models.autoencoders.Autoencoder.init_output_bias`).
        early_stopping: an :class:`EarlyStopping`, or ``None`` to run all ``epochs``.
        hooks: called after every epoch as ``hook.on_epoch_end(epoch, logs)`` (a Keras
            callback works: ``set_model`` is called first) or ``hook(epoch, logs)``, with
            ``logs = {"loss": ..., "val_loss": ...}``. A hook stops training by setting
            ``model.stop_training = True``, as Keras callbacks do.
        progress: show a tqdm bar over epochs with the latest losses.

    Returns:
        ``history``: ``"loss"`` (per epoch, the mean of its batch losses, as ``fit`` reports
        it) and, with ``x_val``, ``"val_loss"`` (the mean per-example loss over ``x_val``);
        ``"epochs"``, the number of epochs run; with ``early_stopping``, ``"best_epoch"``
        (0-based) and ``"best_loss"`` (its monitored value), and ``"stopped_early"``.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (a ``ValueError``).
        ValueError: an argument is out of range.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive integer.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    if not (hasattr(model, "encoder") and hasattr(model, "decoder")):
        raise ValueError(f"model={type(model).__name__} has no encoder and decoder sub-models.")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn={loss_fn!r} must be a function loss_fn(x, x_hat) -> [batch].")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise ValueError(f"early_stopping={early_stopping!r} must be an EarlyStopping or None.")
    if early_stopping is not None and early_stopping.monitor == "val_loss" and x_val is None:
        raise ValueError(
            "early_stopping monitors 'val_loss' but x_val is None: pass x_val, or "
            "EarlyStopping(monitor='loss')."
        )
    x_train = _check_images(x_train, "x_train")
    if x_val is not None:
        x_val = _check_images(x_val, "x_val", like=x_train)
    hooks = _check_hooks([*hooks, *tensorboard_logs.callbacks(model, x=x_train)], model, epochs)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)

    # 1. Initialise: the weights were drawn when the model was built; the decoder starts at the
    #    mean image and the optimizer's slots (Adam's moments) are created before tracing, since
    #    a tf.function may not create variables after its first call.
    if init_output_bias:
        model.init_output_bias(x_train)
    optimizer = keras.optimizers.Adam(1e-3) if optimizer is None else optimizer
    optimizer.build(model.trainable_variables)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    # One signature with an open batch axis: the last, smaller batch reuses the same graph.
    images = tf.TensorSpec((None, *x_train.shape[1:]), x_train.dtype)

    @tf.function(input_signature=[images])
    def train_step(x):
        with tf.GradientTape() as tape:
            z = model.encoder(x, training=True)  # 3. encode
            x_hat = model.decoder(z, training=True)  # 4. decode
            losses = loss_fn(x, x_hat)  # 5. the loss: one value per example ...
            if losses.shape.rank != 1:
                raise ValueError(f"loss_fn returned shape {losses.shape}; expected [batch].")
            loss = tf.reduce_mean(losses)  # ... averaged over the batch
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))  # 6. update
        return loss

    @tf.function(input_signature=[images])
    def example_losses(x):
        return loss_fn(x, model.decoder(model.encoder(x, training=False), training=False))

    history = {"loss": []} if x_val is None else {"loss": [], "val_loss": []}
    good_weights = model.get_weights()  # the NaN guard's restore point
    best_loss, best_epoch, best_weights, waited = math.inf, None, None, 0
    model.stop_training = False
    data = iter(batches(x_train, batch_size, seed=seed))
    bar = tqdm(total=epochs, unit="epoch", desc="train_loop", disable=not progress)
    try:
        for epoch in range(epochs):  # 7. repeat until the budget ...
            batch_losses = []
            for step in range(steps_per_epoch):
                x = next(data)  # 2. sample a mini-batch (a fresh permutation every epoch)
                loss = float(train_step(x))
                if not math.isfinite(loss):  # the NaN guard: one clear error, finite weights
                    raise _diverged(model, optimizer, good_weights, f"the loss became {loss}", epoch, step,
                                    steps_per_epoch, loss, history)
                batch_losses.append(loss)
            logs = {"loss": float(np.mean(batch_losses))}
            if x_val is not None:
                logs["val_loss"] = _mean_example_loss(example_losses, x_val)
            for key, value in logs.items():
                history[key].append(value)
            weights = model.get_weights()
            if not _all_finite(weights):  # a finite loss can still leave inf weights behind
                raise _diverged(model, optimizer, good_weights, "the weights became infinite or NaN", epoch,
                                steps_per_epoch - 1, steps_per_epoch, math.inf, history)
            good_weights = weights
            for hook in hooks:
                (hook.on_epoch_end if hasattr(hook, "on_epoch_end") else hook)(epoch, logs)
            bar.set_postfix({key: f"{value:.4g}" for key, value in logs.items()}, refresh=False)
            bar.update()
            # ... or a convergence criterion: no improvement of the monitored loss for a while.
            if early_stopping is not None:
                current = logs[early_stopping.monitor]
                if current < best_loss - early_stopping.min_delta:
                    best_loss, best_epoch, best_weights, waited = current, epoch, weights, 0
                else:
                    waited += 1
                if waited >= early_stopping.patience:
                    break
            if model.stop_training:
                break
    finally:
        bar.close()
    for hook in hooks:
        if callable(getattr(hook, "on_train_end", None)):
            hook.on_train_end({key: values[-1] for key, values in history.items() if values})
    history["epochs"] = len(history["loss"])
    if early_stopping is not None:
        if early_stopping.restore_best_weights and best_weights is not None:
            model.set_weights(best_weights)
        history.update(
            best_epoch=best_epoch, best_loss=best_loss, stopped_early=waited >= early_stopping.patience
        )
    return history


class StopOnNaN(keras.callbacks.Callback):
    """``fit``'s NaN guard: raise :class:`TrainingDiverged` as soon as the loss is not finite.

    Keras' own ``TerminateOnNaN`` only stops, leaving NaN weights and a history that ends in
    NaN; this callback puts back the weights of the last epoch that ended with a finite loss
    and finite weights (the initial ones in epoch 0) and raises one error that says what to
    try. ``fit`` reports the running mean of the epoch's loss, which turns NaN at the first
    bad step; with ``steps_per_execution > 1`` (as in :func:`train_autoencoder`) it is read
    once per compiled call, so the step named is the last one of that call.
    """

    def on_train_begin(self, logs=None):
        self._good_weights = self.model.get_weights()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, step, loss, weights=None):
        bad_loss = loss is not None and not math.isfinite(float(loss))
        if not bad_loss and (weights is None or _all_finite(weights)):
            return
        what = f"the loss became {float(loss)}" if bad_loss else "the weights became infinite or NaN"
        raise _diverged(self.model, self.model.optimizer, self._good_weights, what, self._epoch, step,
                        self.params.get("steps") or "?", float(loss) if bad_loss else math.inf,
                        exact=False)

    def on_train_batch_end(self, batch, logs=None):
        self._check(batch, (logs or {}).get("loss"))

    def on_epoch_end(self, epoch, logs=None):
        weights = self.model.get_weights()
        steps = self.params.get("steps") or 1
        self._check(steps - 1, (logs or {}).get("loss"), weights)
        self._good_weights = weights


# --------------------------------------------------------------------------- checkpoints and resume

_SIGNATURE_KEY = "signature/.ATTRIBUTES/VARIABLE_VALUE"


@dataclass(frozen=True)
class ResumableFit:
    """What :func:`fit_resumable` did.

    Attributes:
        history: ``fit``'s ``History`` of this call, epochs numbered from the start of the whole
            training; earlier runs' epochs are not in it (empty when nothing was left to train).
        start_step: the step this call started from: 0 for a fresh start, the checkpoint's step
            after a resume.
        steps_run: training steps (batches) run by this call; 0 when the checkpoint had already
            reached ``steps``.
        checkpoint: path of the latest checkpoint after this call, or ``None`` without
            ``checkpoint_dir``.
    """

    history: keras.callbacks.History
    start_step: int
    steps_run: int
    checkpoint: str | None

    @property
    def step(self) -> int:
        """The step reached: ``start_step + steps_run``."""
        return self.start_step + self.steps_run

    @property
    def resumed(self) -> bool:
        return self.start_step > 0


def _optimizers(model) -> dict:
    """The model's optimizers by attribute name: ``optimizer``, and any other (a GAN's
    ``d_optimizer`` and ``g_optimizer``)."""
    found = {name: value for name, value in vars(model).items()
             if isinstance(value, keras.optimizers.Optimizer)}
    return dict(sorted(found.items()))


def _rng_states(model) -> list:
    """The state variables of the model's ``keras.random.SeedGenerator``s (its own noise, dropout
    layers): ``model.variables`` holds them, ``model.weights`` does not."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _count_parameters(shapes) -> int:
    return sum(int(np.prod(shape)) for shape, _ in shapes)


def _describe(signature: dict) -> str:
    optimizers = ", ".join(f"{name}={kind}" for name, kind in signature["optimizers"].items())
    return (
        f"a {signature['model']} with {len(signature['weights'])} weight tensors "
        f"({_count_parameters(signature['weights']):,} parameters; optimizers {optimizers})"
    )


def _check_signature(checkpoint_dir, path, expected: dict):
    """Raise a ValueError naming ``checkpoint_dir`` unless the checkpoint at ``path`` was written
    by :func:`fit_resumable` for this model and these data settings. Nothing is restored yet."""
    fix = (f"Use a new checkpoint_dir for this run, or delete {str(checkpoint_dir)!r} to train "
           "from scratch.")
    try:
        stored = json.loads(tf.train.load_checkpoint(path).get_tensor(_SIGNATURE_KEY))
    except Exception as exc:  # a foreign or damaged checkpoint: TF raises various types
        raise ValueError(
            f"checkpoint_dir={str(checkpoint_dir)!r} holds a checkpoint ({path}) that fit_resumable "
            f"cannot read or did not write ({type(exc).__name__}). {fix}"
        ) from exc
    for part in ("model", "weights", "optimizers", "rng_states"):
        if stored.get(part) != expected[part]:
            raise ValueError(
                f"checkpoint_dir={str(checkpoint_dir)!r} holds a checkpoint of a different model: "
                f"{_describe(stored)}, while this one is {_describe(expected)}. {fix}"
            )
    if stored.get("data") != expected["data"]:
        was = ", ".join(f"{key}={value!r}" for key, value in stored.get("data", {}).items())
        now = ", ".join(f"{key}={value!r}" for key, value in expected["data"].items())
        raise ValueError(
            f"checkpoint_dir={str(checkpoint_dir)!r} holds a training run with other data "
            f"settings ({was}) than this one ({now}); resuming it would not continue the same "
            f"sequence of batches. {fix}"
        )


class _EpochCut(keras.callbacks.Callback):
    """First in the callback list: lets ``fit`` go on after :class:`_StepControl` ended a
    partial epoch, before any other callback's ``on_epoch_end`` (which may stop for real)."""

    def __init__(self, control):
        super().__init__()
        self.control = control

    def on_epoch_end(self, epoch, logs=None):
        if self.control.cut_epoch:
            self.control.cut_epoch = False
            self.model.stop_training = False


class _StepControl(keras.callbacks.Callback):
    """Last in the callback list: counts the global step, saves a checkpoint every ``every``
    steps (after the other callbacks have seen the batch, so a NaN guard that raises comes
    first), ends the epoch that a resume entered half-way at its global boundary, and stops at
    ``total`` steps."""

    def __init__(self, step, total, steps_per_epoch, every, save):
        super().__init__()
        self.step, self.total = step, total
        self.steps_per_epoch, self.every, self.save = steps_per_epoch, every, save
        self.saved_step = step
        self.cut_epoch = False
        self._begin = 0
        self._partial = False

    def on_epoch_begin(self, epoch, logs=None):
        self._partial = self.step % self.steps_per_epoch != 0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch

    def on_train_batch_end(self, batch, logs=None):
        self.step += batch - self._begin + 1  # > 1 step per call with steps_per_execution > 1
        if self.save is not None and self.step % self.every == 0:
            self.save(self.step)
            self.saved_step = self.step
        if self.step >= self.total:
            self.model.stop_training = True
        elif self._partial and self.step % self.steps_per_epoch == 0 and not self.model.stop_training:
            self.model.stop_training = True
            self.cut_epoch = True


class _EpochControl(keras.callbacks.Callback):
    """:class:`_StepControl` for a run whose start, checkpoints and end all fall on epoch
    boundaries: it counts steps and saves at the end of each epoch only. Having no batch hook
    matters: Keras waits for every step's results (a device-to-host copy of the logs) before
    the next step whenever some callback has ``on_train_batch_end``, and otherwise dispatches
    batch callbacks asynchronously, so that Python can queue the next step while one runs."""

    def __init__(self, step, total, steps_per_epoch, every, save):
        super().__init__()
        self.step, self.total = step, total
        self.steps_per_epoch, self.every, self.save = steps_per_epoch, every, save
        self.saved_step = step
        self.cut_epoch = False

    def on_epoch_end(self, epoch, logs=None):
        self.step += self.steps_per_epoch  # no batch hook anywhere: nothing ends an epoch early
        if self.save is not None and self.step % self.every == 0:
            self.save(self.step)
            self.saved_step = self.step
        if self.step >= self.total:
            self.model.stop_training = True


def _has_batch_end_hook(callback) -> bool:
    base = keras.callbacks.Callback
    return any(getattr(type(callback), hook) is not getattr(base, hook)
               for hook in ("on_train_batch_end", "on_batch_end"))


def _check_count(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer{' or None' if allow_none else ''}.")
    return int(value)


def fit_resumable(
    model: keras.Model,
    x,
    *,
    steps: int,
    batch_size: int = 128,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    max_to_keep: int = 2,
    seed: int = 0,
    steps_per_epoch: int | None = None,
    binarization: str = "none",
    validation_data=None,
    validation_freq: int = 1,
    callbacks=(),
    verbose=0,
) -> ResumableFit:
    """Train a compiled ``model`` on ``x`` for ``steps`` batches with ``fit``, checkpointing, so
    that a rerun with the same ``checkpoint_dir`` continues where the last one stopped.

    A checkpoint (``tf.train.CheckpointManager`` in ``checkpoint_dir``, the last
    ``max_to_keep`` kept) holds the model's variables, its optimizers' states (``optimizer``,
    and a GAN's ``d_optimizer`` and ``g_optimizer``), the state of its
    ``keras.random.SeedGenerator``s, and the step. It is written every ``checkpoint_every``
    steps and at the end. On a rerun the latest checkpoint is restored and training goes on at
    its step. Nothing else needs saving: batch ``s`` comes from
    :func:`support.data.step_batches`, a pure function of ``(x, seed, s)``, so the resumed run
    sees exactly the batches the uninterrupted one would have. A model whose training noise
    comes from a seed generator (``keras.random.normal(..., seed=self.seed_generator)``, as
    in :class:`~support.models.gan.GAN` and :class:`~support.models.vae.VAE`) also draws the
    same noise, so with deterministic ops (``tf.config.experimental.enable_op_determinism()``)
    an interrupted and resumed run ends at the same weights as an uninterrupted one. Noise
    from TensorFlow's global generator (``tf.random.normal``) cannot be checkpointed: such a
    model resumes at the right step and batch, with other noise draws. The steps run after the
    last checkpoint of an interrupted run are run again, from the same state. Before the first
    checkpoint there is nothing to restore and the model is trained as it is, so after an
    interruption that early, rebuild the model (rerun the notebook from the top) before rerunning.

    ``fit`` runs "epochs" of ``steps_per_epoch`` steps counted from step 0 of the whole
    training (epoch ``e`` is steps ``e * steps_per_epoch`` onwards), so epoch-based callbacks
    such as :class:`~support.models.vae.KLWarmup` and ``validation_freq`` see the same epochs
    after a resume; an epoch entered half-way runs only its remaining steps (its logged means
    cover those), and the last epoch stops at ``steps``.

    A checkpoint also stores the model's architecture (weight shapes, optimizer types) and the
    data settings (``len(x)``, ``batch_size``, ``seed``, ``steps_per_epoch``,
    ``binarization``): when they differ from this call's, nothing is restored and a
    ``ValueError`` names ``checkpoint_dir``. ``steps`` may change between runs (to train
    longer); restored optimizers keep their checkpointed learning rate.

    Speed: for small models Python's round trips, not the arithmetic, set the pace. Compile
    with ``steps_per_execution`` (e.g. the steps of an epoch, as :func:`train_autoencoder` and
    :func:`train_vae` do) so that ``fit`` launches many steps per call; ``steps``,
    ``steps_per_epoch`` and ``checkpoint_every`` must then be multiples of it. When the start,
    the checkpoints and the end fall on epoch boundaries and no callback has a batch hook,
    steps are counted at epoch ends, so ``fit`` need not wait for each call's results before
    launching the next (``benchmarks/throughput.py`` measures both against a hand-written loop).

    Args:
        model: a compiled Keras model whose ``train_step`` takes batches of ``x`` alone (the
            GAN, the VAE, the autoencoders). Its weights must exist (built).
        x: ``[n, ...]`` training examples.
        steps: total training steps (batches) of the whole training, resumes included.
        batch_size: examples per step; the remainder of each epoch is dropped
            (see :func:`support.data.step_batches`).
        checkpoint_dir: folder of the checkpoints (created if missing), or ``None`` to train
            without checkpoints.
        checkpoint_every: steps between checkpoints; ``None`` gives ``steps_per_epoch``.
        max_to_keep: checkpoints kept in ``checkpoint_dir``.
        seed: seed of the batch order and of dynamic binarization.
        steps_per_epoch: steps per ``fit`` epoch; ``None`` gives ``len(x) // batch_size``, one
            pass over the data.
        binarization: ``"none"``, ``"static"`` or ``"dynamic"`` (see
            :func:`support.data.step_batches`).
        validation_data, validation_freq: passed to ``fit``.
        callbacks: extra Keras callbacks.
        verbose: Keras' progress display.

    Returns:
        A :class:`ResumableFit`: ``history``, ``start_step``, ``steps_run``, ``checkpoint``
        and ``step``. With a checkpoint already at or past ``steps``, nothing is trained:
        ``steps_run == 0`` and the model holds the checkpoint's state.

    Raises:
        ValueError: an argument is out of range, the model is not compiled, or
            ``checkpoint_dir`` holds a checkpoint of another model or other data settings.
    """
    from . import data

    steps = _check_count(steps, "steps")
    batch_size = _check_count(batch_size, "batch_size")
    if binarization not in ("none", "static", "dynamic"):
        raise ValueError(
            f"binarization={binarization!r} is not allowed; choose none, static or dynamic."
        )
    max_to_keep = _check_count(max_to_keep, "max_to_keep")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r} must be an integer.")
    if not getattr(model, "compiled", False):
        raise ValueError(
            f"model={type(model).__name__} is not compiled: call model.compile(...) before "
            "fit_resumable (its optimizers are part of the checkpoint)."
        )
    if not model.weights:
        raise ValueError(
            f"model={type(model).__name__} has no weights yet: build it (e.g. call it on a batch) "
            "before fit_resumable, so that a checkpoint can be matched to its weights."
        )
    x = np.asarray(x, dtype=keras.config.floatx())
    if x.ndim < 2 or len(x) < batch_size:
        raise ValueError(
            f"x has shape {x.shape}; expected [n, ...] with n >= batch_size={batch_size}."
        )
    steps_per_epoch = _check_count(steps_per_epoch, "steps_per_epoch", allow_none=True)
    steps_per_epoch = steps_per_epoch or len(x) // batch_size
    checkpoint_every = _check_count(checkpoint_every, "checkpoint_every", allow_none=True)
    checkpoint_every = checkpoint_every or steps_per_epoch
    per_call = int(getattr(model, "steps_per_execution", 1) or 1)
    for value, name in ((steps_per_epoch, "steps_per_epoch"), (checkpoint_every, "checkpoint_every"),
                        (steps, "steps")):
        if value % per_call:
            raise ValueError(
                f"{name}={value} is not a multiple of the model's steps_per_execution={per_call}; "
                "fit runs that many steps per call, so checkpoints and epochs must fall on "
                "multiples of it."
            )

    optimizers = _optimizers(model)
    rng_states = _rng_states(model)
    signature = {
        "model": type(model).__name__,
        "weights": [[list(map(int, v.shape)), str(v.dtype)] for v in model.weights],
        "optimizers": {name: type(opt).__name__ for name, opt in optimizers.items()},
        "rng_states": len(rng_states),
        "data": {"examples": len(x), "batch_size": batch_size, "seed": int(seed),
                 "steps_per_epoch": steps_per_epoch, "binarization": binarization},
    }

    start_step, manager, save = 0, None, None
    if checkpoint_dir is not None:
        with tf.device("/cpu:0"):  # an int64 counter and a string: host variables
            step_variable = tf.Variable(0, dtype=tf.int64, trainable=False)
            signature_variable = tf.Variable(json.dumps(signature), dtype=tf.string, trainable=False)
        checkpoint = tf.train.Checkpoint(
            model=model, step=step_variable, signature=signature_variable, rng=rng_states,
            **{f"optimizer_{name}": opt for name, opt in optimizers.items()},
        )
        manager = tf.train.CheckpointManager(checkpoint, str(checkpoint_dir), max_to_keep=max_to_keep)
        if manager.latest_checkpoint:
            _check_signature(checkpoint_dir, manager.latest_checkpoint, signature)
            # Optimizer slots (Adam's moments) not built yet are restored when they are created.
            status = checkpoint.restore(manager.latest_checkpoint)
            try:
                status.assert_existing_objects_matched()
            except AssertionError as exc:  # same shapes, other structure (e.g. renamed attributes)
                raise ValueError(
                    f"checkpoint_dir={str(checkpoint_dir)!r}: its latest checkpoint does not match "
                    f"this model's structure ({exc}). Use a new checkpoint_dir for this run, or "
                    f"delete {str(checkpoint_dir)!r} to train from scratch."
                ) from exc
            start_step = int(step_variable.numpy())

        def save(step):
            step_variable.assign(step)
            manager.save(checkpoint_number=step)

    if start_step >= steps:
        history = keras.callbacks.History()
        history.set_model(model)
        return ResumableFit(history, start_step, 0, manager.latest_checkpoint)

    others = [*callbacks, *tensorboard_logs.callbacks(model, x=x)]
    on_epochs = (start_step % steps_per_epoch == 0 and steps % steps_per_epoch == 0
                 and checkpoint_every % steps_per_epoch == 0)
    # Step by step only where a boundary falls inside an epoch or another callback needs every
    # batch (and so could stop mid-epoch); else no batch hook, so fit need not wait for each step.
    control = (_EpochControl if on_epochs and not any(map(_has_batch_end_hook, others)) else _StepControl)(
        start_step, steps, steps_per_epoch, checkpoint_every, save)
    batches = data.step_batches(x, batch_size, seed=seed, start_step=start_step,
                                steps=steps - start_step, binarization=binarization)
    history = model.fit(
        batches,
        epochs=math.ceil(steps / steps_per_epoch),
        initial_epoch=start_step // steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation_data,
        validation_freq=validation_freq,
        callbacks=[_EpochCut(control), *others, control],
        shuffle=False,  # step_batches orders the batches
        verbose=verbose,
    )
    if save is not None and control.saved_step != control.step:
        save(control.step)
    return ResumableFit(history, start_step, control.step - start_step,
                        None if manager is None else manager.latest_checkpoint)


class SampleSnapshots(keras.callbacks.Callback):
    """Samples of a generative model (anything with ``sample(n, seed)``: the GAN, the VAE) at
    the end of every ``every``-th epoch, always from the same noise, so that a sequence of
    snapshots shows how the model's output for fixed ``z`` changes during training.

    Attributes:
        snapshots: ``[(epoch, samples), ...]`` with ``epoch`` counted from 1 and ``samples`` a
            NumPy array ``[n, ...]``.
    """

    def __init__(self, n: int, seed: int = 0, every: int = 1):
        super().__init__()
        if not isinstance(n, int) or n < 1 or not isinstance(every, int) or every < 1:
            raise ValueError(f"n={n!r} and every={every!r} must be positive integers.")
        self.n, self.seed, self.every = n, seed, every
        self.snapshots: list[tuple[int, np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self.snapshots.append((epoch + 1, np.asarray(self.model.sample(self.n, seed=self.seed))))


class Interrupted(RuntimeError):
    """Raised by :class:`InterruptAt`: training stopped on purpose, as by a crash."""


class InterruptAt(keras.callbacks.Callback):
    """Stop ``fit`` by raising :class:`Interrupted` after the ``step``-th training batch of
    this call, as a crashed or stopped kernel would: a way to show (and test) that a run
    resumed from its checkpoints loses no step. With ``steps_per_execution > 1`` it raises at
    the end of the compiled call that reaches ``step``."""

    def __init__(self, step: int):
        super().__init__()
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"step={step!r} must be a positive integer.")
        self.step, self.seen, self._begin = step, 0, 0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch

    def on_train_batch_end(self, batch, logs=None):
        was = self.seen
        self.seen += batch - self._begin + 1  # > 1 step per call with steps_per_execution > 1
        if was < self.step <= self.seen:
            raise Interrupted(f"training interrupted on purpose after {self.seen} steps")


# --------------------------------------------------------------------------- distribution

STRATEGIES = ("auto", "mirrored", "multi_worker", "default")


def strategy(kind: str = "auto", devices=None) -> tf.distribute.Strategy:
    """A ``tf.distribute`` strategy for data-parallel training of the ``support`` models.

    Create the model and call ``compile`` inside ``strategy.scope()``; ``fit`` then splits each
    batch of ``batch_size`` examples (the *global* batch) across the replicas, and the models'
    training steps reduce their losses over the global batch (:func:`objectives.replica_mean`),
    so one step is the same update as on one device.

    Args:
        kind: ``"mirrored"``: ``MirroredStrategy``, one replica per local GPU (or ``devices``);
            ``"multi_worker"``: ``MultiWorkerMirroredStrategy``, the cluster read from the
            ``TF_CONFIG`` environment variable (create it at the start of the program, on every
            worker); ``"default"``: TensorFlow's default strategy, one device;
            ``"auto"``: ``"multi_worker"`` when ``TF_CONFIG`` is set, ``"mirrored"`` with two
            or more GPUs, else ``"default"``.
        devices: device names for ``"mirrored"``, e.g. ``["/cpu:0", "/cpu:1"]`` (``None``: all
            GPUs).
    """
    if kind not in STRATEGIES:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of {', '.join(STRATEGIES)}.")
    if kind == "auto":
        if os.environ.get("TF_CONFIG"):
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if devices is not None and kind != "mirrored":
        raise ValueError(f"devices={devices!r} is only used with kind='mirrored', not {kind!r}.")
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
