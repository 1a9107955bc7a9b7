"""Training: the explicit loop of notebook 02, its guards, and the ``fit`` recipe of notebook 01.

Two ways to run the same optimisation:

* :func:`train_loop` writes the seven steps out (initialise; sample a mini-batch; encode;
  decode; compute the loss; update by gradient descent; repeat until a budget or a convergence
  criterion), with ``tf.GradientTape`` inside a ``tf.function`` step, a tqdm bar, hooks,
  :class:`EarlyStopping` and a NaN guard. It is the code the notebook shows.
* :func:`train_autoencoder` is the recipe of the autoencoder notebooks. Keras' own ``fit`` runs
  it, so progress bars, callbacks and the returned ``History`` behave as everywhere else; the
  data are fed as an endless ``tf.data`` pipeline (:func:`batches`) with one compiled call per
  epoch, because Keras' per-epoch set-up for NumPy arrays costs more than training a small
  model for an epoch. :class:`StopOnNaN` is its NaN guard.

Both draw their batches from :func:`batches` with the same seed, so from the same initial
weights and optimizer settings they apply the same updates in the same order and end at the
same weights (the tests check this to 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

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
    model.compile(optimizer=optimizer, steps_per_execution=steps_per_epoch)
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
        callbacks=callbacks,
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


def _check_hooks(hooks, model) -> list:
    hooks = list(hooks)
    for hook in hooks:
        if not (callable(getattr(hook, "on_epoch_end", None)) or callable(hook)):
            raise ValueError(
                f"hooks holds {hook!r}, which is neither callable as hook(epoch, logs) nor has "
                "an on_epoch_end(epoch, logs) method."
            )
        if callable(getattr(hook, "set_model", None)):  # Keras callbacks read self.model
            hook.set_model(model)
    return hooks


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
    hooks = _check_hooks(hooks, model)
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
