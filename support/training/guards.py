"""The guards of a training: the NaN guard (:class:`TrainingDiverged`, :class:`StopOnNaN` for
``fit``) and the convergence criterion of the explicit loop (:class:`EarlyStopping`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from .. import checks

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
        checks.positive_int(self.patience, "patience")
        checks.positive_float(self.min_delta, "min_delta", allow_zero=True)
        checks.choice(self.monitor, MONITORS, "monitor")


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


