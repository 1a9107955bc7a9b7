"""Callbacks for ``fit`` that are not guards: a subspace tracker for the linear autoencoder,
sample snapshots of a generative model, and a deliberate interruption to show resuming."""

from __future__ import annotations

import keras
import numpy as np

from .. import checks
from ..metrics import principal_angles
from ..models.autoencoders import decoder_matrix


class SubspaceTracker(keras.callbacks.Callback):
    """Records, after every epoch, the largest principal angle (degrees) between a linear
    autoencoder's decoder subspace and a reference subspace ``components [k, d]`` (e.g. PCA's),
    in ``self.angles``: the curve that shows the subspace converging after the error has."""

    def __init__(self, components):
        super().__init__()
        self.components = components
        self.angles: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        weight, _ = decoder_matrix(self.model)
        self.angles.append(float(principal_angles(weight.T, self.components.T).max()))


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
        checks.positive_int(step, "step")
        self.step, self.seen, self._begin = step, 0, 0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch

    def on_train_batch_end(self, batch, logs=None):
        was = self.seen
        self.seen += batch - self._begin + 1  # > 1 step per call with steps_per_execution > 1
        if was < self.step <= self.seen:
            raise Interrupted(f"training interrupted on purpose after {self.seen} steps")


