"""The explicit training loop of notebook 02: :func:`train_step_by_step` (the seven steps and
nothing else) and :func:`train_loop` (the same steps with checks, validation, early stopping,
hooks and the NaN guard), both drawing their batches from :func:`batches`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from .. import checks, tensorboard_logs
from ..models.autoencoders import reconstruction_loss
from .guards import EarlyStopping, _all_finite, _diverged


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


def _check_loop_arguments(model, loss_fn, epochs, batch_size, early_stopping, x_train, x_val):
    """Refuse a bad argument of :func:`train_loop`; return ``(x_train, x_val)`` as arrays."""
    checks.positive_int(epochs, "epochs")
    checks.positive_int(batch_size, "batch_size")
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
    return x_train, None if x_val is None else _check_images(x_val, "x_val", like=x_train)


def _compiled_steps(model, loss_fn, optimizer, x_train):
    """Steps 3-6 as one ``tf.function`` (encode, decode, the loss, the update), and the
    per-example losses of a batch for validation."""
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

    return train_step, example_losses


class _NanGuard:
    """The NaN guard's restore point: the weights at the end of the last epoch whose loss and
    weights were all finite (the initial weights before the first epoch)."""

    def __init__(self, model, optimizer, steps_per_epoch, history):
        self.model, self.optimizer = model, optimizer
        self.steps_per_epoch, self.history = steps_per_epoch, history
        self.good_weights = model.get_weights()

    def check_loss(self, loss: float, epoch: int, step: int) -> float:
        if not math.isfinite(loss):
            raise _diverged(self.model, self.optimizer, self.good_weights, f"the loss became {loss}",
                            epoch, step, self.steps_per_epoch, loss, self.history)
        return loss

    def check_weights(self, epoch: int) -> list:
        """The weights after ``epoch``, kept as the new restore point once they are finite (a
        finite loss can still leave inf weights behind)."""
        weights = self.model.get_weights()
        if not _all_finite(weights):
            raise _diverged(self.model, self.optimizer, self.good_weights,
                            "the weights became infinite or NaN", epoch, self.steps_per_epoch - 1,
                            self.steps_per_epoch, math.inf, self.history)
        self.good_weights = weights
        return weights


class _Best:
    """Early stopping's bookkeeping: the best epoch so far and the epochs waited since."""

    def __init__(self, rule: EarlyStopping | None):
        self.rule = rule
        self.loss, self.epoch, self.weights, self.waited = math.inf, None, None, 0

    def should_stop(self, epoch: int, logs: dict, weights) -> bool:
        if self.rule is None:
            return False
        current = logs[self.rule.monitor]
        if current < self.loss - self.rule.min_delta:
            self.loss, self.epoch, self.weights, self.waited = current, epoch, weights, 0
        else:
            self.waited += 1
        return self.waited >= self.rule.patience

    def finish(self, model, history: dict) -> None:
        if self.rule is None:
            return
        if self.rule.restore_best_weights and self.weights is not None:
            model.set_weights(self.weights)
        history.update(best_epoch=self.epoch, best_loss=self.loss,
                       stopped_early=self.waited >= self.rule.patience)


def _end_hooks(hooks, history: dict) -> None:
    for hook in hooks:
        if callable(getattr(hook, "on_train_end", None)):
            hook.on_train_end({key: values[-1] for key, values in history.items() if values})


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
    x_train, x_val = _check_loop_arguments(model, loss_fn, epochs, batch_size, early_stopping,
                                           x_train, x_val)
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
    train_step, example_losses = _compiled_steps(model, loss_fn, optimizer, x_train)  # 3.-6.

    history = {"loss": []} if x_val is None else {"loss": [], "val_loss": []}
    guard, best = _NanGuard(model, optimizer, steps_per_epoch, history), _Best(early_stopping)
    model.stop_training = False
    data = iter(batches(x_train, batch_size, seed=seed))
    bar = tqdm(total=epochs, unit="epoch", desc="train_loop", disable=not progress)
    try:
        for epoch in range(epochs):  # 7. repeat until the budget ...
            # 2. sample a mini-batch (a fresh permutation every epoch), take a step, guard it
            losses = [guard.check_loss(float(train_step(next(data))), epoch, step)
                      for step in range(steps_per_epoch)]
            logs = {"loss": float(np.mean(losses))}
            if x_val is not None:
                logs["val_loss"] = _mean_example_loss(example_losses, x_val)
            for key, value in logs.items():
                history[key].append(value)
            weights = guard.check_weights(epoch)
            for hook in hooks:
                (hook.on_epoch_end if hasattr(hook, "on_epoch_end") else hook)(epoch, logs)
            bar.set_postfix({key: f"{value:.4g}" for key, value in logs.items()}, refresh=False)
            bar.update()
            # ... or a convergence criterion: no improvement of the monitored loss for a while.
            if best.should_stop(epoch, logs, weights) or model.stop_training:
                break
    finally:
        bar.close()
    _end_hooks(hooks, history)
    history["epochs"] = len(history["loss"])
    best.finish(model, history)
    return history
