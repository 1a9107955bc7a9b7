"""Resumable training: :func:`fit_resumable` runs ``fit`` for a budget of steps with
``tf.train.CheckpointManager`` checkpoints, and a rerun with the same folder continues at the
checkpoint's step on the batches the uninterrupted run would have seen.

Its parts, each small: :func:`_plan` (the validated settings), :func:`_signature` (what a
checkpoint must match), :class:`_Checkpointer` (restore and save), and one step counter
(:class:`_StepControl`, or :class:`_EpochControl` when everything falls on epoch boundaries).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from .. import checks, data, tensorboard_logs

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


class _StepCounter(keras.callbacks.Callback):
    """Counts the global step from ``step`` on, saves a checkpoint every ``every`` steps and
    stops ``fit`` at ``total`` steps; :class:`_StepControl` and :class:`_EpochControl` differ
    only in when they count."""

    def __init__(self, step, total, steps_per_epoch, every, save):
        super().__init__()
        self.step, self.total = step, total
        self.steps_per_epoch, self.every, self.save = steps_per_epoch, every, save
        self.saved_step = step
        self.cut_epoch = False

    def _advance(self, steps: int) -> bool:
        """Count ``steps`` more; save on a checkpoint boundary; ``True`` once the budget is spent."""
        self.step += steps
        if self.save is not None and self.step % self.every == 0:
            self.save(self.step)
            self.saved_step = self.step
        if self.step >= self.total:
            self.model.stop_training = True
            return True
        return False


class _StepControl(_StepCounter):
    """Last in the callback list: counts after every batch (after the other callbacks have seen
    it, so a NaN guard that raises comes first), and ends the epoch that a resume entered
    half-way at its global boundary."""

    def __init__(self, step, total, steps_per_epoch, every, save):
        super().__init__(step, total, steps_per_epoch, every, save)
        self._begin = 0
        self._partial = False

    def on_epoch_begin(self, epoch, logs=None):
        self._partial = self.step % self.steps_per_epoch != 0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch

    def on_train_batch_end(self, batch, logs=None):
        # > 1 step per call with steps_per_execution > 1
        spent = self._advance(batch - self._begin + 1)
        boundary = self._partial and self.step % self.steps_per_epoch == 0
        if not spent and boundary and not self.model.stop_training:
            self.model.stop_training = True
            self.cut_epoch = True


class _EpochControl(_StepCounter):
    """The counter for a run whose start, checkpoints and end all fall on epoch boundaries: it
    counts at the end of each epoch only. Having no batch hook matters: Keras waits for every
    step's results (a device-to-host copy of the logs) before the next step whenever some
    callback has ``on_train_batch_end``, and otherwise dispatches batch callbacks
    asynchronously, so that Python can queue the next step while one runs."""

    def on_epoch_end(self, epoch, logs=None):
        self._advance(self.steps_per_epoch)  # no batch hook anywhere: nothing ends an epoch early


def _has_batch_end_hook(callback) -> bool:
    base = keras.callbacks.Callback
    return any(getattr(type(callback), hook) is not getattr(base, hook)
               for hook in ("on_train_batch_end", "on_batch_end"))


@dataclass(frozen=True)
class _Plan:
    """The validated settings of one :func:`fit_resumable` call."""

    x: np.ndarray
    steps: int
    batch_size: int
    seed: int
    steps_per_epoch: int
    checkpoint_every: int
    binarization: str
    max_to_keep: int

    def data_settings(self) -> dict:
        return {"examples": len(self.x), "batch_size": self.batch_size, "seed": self.seed,
                "steps_per_epoch": self.steps_per_epoch, "binarization": self.binarization}

    def on_epoch_boundaries(self, start_step: int) -> bool:
        return all(value % self.steps_per_epoch == 0
                   for value in (start_step, self.steps, self.checkpoint_every))


def _check_model(model) -> None:
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


def _plan(model, x, *, steps, batch_size, checkpoint_every, max_to_keep, seed, steps_per_epoch,
          binarization) -> _Plan:
    """Check every argument of :func:`fit_resumable` before anything is trained or written."""
    steps = checks.positive_int(steps, "steps")
    batch_size = checks.positive_int(batch_size, "batch_size")
    checks.binarization(binarization)
    max_to_keep = checks.positive_int(max_to_keep, "max_to_keep")
    checks.integer(seed, "seed")
    _check_model(model)
    x = np.asarray(x, dtype=keras.config.floatx())
    if x.ndim < 2 or len(x) < batch_size:
        raise ValueError(
            f"x has shape {x.shape}; expected [n, ...] with n >= batch_size={batch_size}."
        )
    steps_per_epoch = checks.positive_int(steps_per_epoch, "steps_per_epoch", allow_none=True)
    steps_per_epoch = steps_per_epoch or len(x) // batch_size
    checkpoint_every = checks.positive_int(checkpoint_every, "checkpoint_every", allow_none=True)
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
    return _Plan(x, steps, batch_size, int(seed), steps_per_epoch, checkpoint_every, binarization,
                 max_to_keep)


def _signature(model, plan: _Plan) -> dict:
    """What a checkpoint must match to be resumed: the architecture and the data settings."""
    return {
        "model": type(model).__name__,
        "weights": [[list(map(int, v.shape)), str(v.dtype)] for v in model.weights],
        "optimizers": {name: type(opt).__name__ for name, opt in _optimizers(model).items()},
        "rng_states": len(_rng_states(model)),
        "data": plan.data_settings(),
    }


class _Checkpointer:
    """A ``tf.train.CheckpointManager`` over the model's variables, its optimizers, its seed
    generators' states, the step and the signature."""

    def __init__(self, model, signature: dict, checkpoint_dir, max_to_keep: int):
        self.checkpoint_dir, self.signature = checkpoint_dir, signature
        with tf.device("/cpu:0"):  # an int64 counter and a string: host variables
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
            stamp = tf.Variable(json.dumps(signature), dtype=tf.string, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=model, step=self.step, signature=stamp, rng=_rng_states(model),
            **{f"optimizer_{name}": opt for name, opt in _optimizers(model).items()},
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(checkpoint_dir),
                                                  max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def restore(self) -> int:
        """Restore the latest checkpoint, once its signature matches; return its step (0: none)."""
        if not self.latest:
            return 0
        _check_signature(self.checkpoint_dir, self.latest, self.signature)
        # Optimizer slots (Adam's moments) not built yet are restored when they are created.
        status = self.checkpoint.restore(self.latest)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as exc:  # same shapes, other structure (e.g. renamed attributes)
            folder = str(self.checkpoint_dir)
            raise ValueError(
                f"checkpoint_dir={folder!r}: its latest checkpoint does not match this model's "
                f"structure ({exc}). Use a new checkpoint_dir for this run, or delete {folder!r} "
                "to train from scratch."
            ) from exc
        return int(self.step.numpy())

    def save(self, step: int) -> None:
        self.step.assign(step)
        self.manager.save(checkpoint_number=step)


def _step_counter(plan: _Plan, start_step: int, callbacks, save) -> _StepCounter:
    # Step by step only where a boundary falls inside an epoch or another callback needs every
    # batch (and so could stop mid-epoch); else no batch hook, so fit need not wait for each step.
    per_epoch = plan.on_epoch_boundaries(start_step) and not any(map(_has_batch_end_hook, callbacks))
    kind = _EpochControl if per_epoch else _StepControl
    return kind(start_step, plan.steps, plan.steps_per_epoch, plan.checkpoint_every, save)


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
    :func:`~support.training.train_vae` do) so that ``fit`` launches many steps per call; ``steps``,
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
    plan = _plan(model, x, steps=steps, batch_size=batch_size, checkpoint_every=checkpoint_every,
                 max_to_keep=max_to_keep, seed=seed, steps_per_epoch=steps_per_epoch,
                 binarization=binarization)
    checkpointer = None
    if checkpoint_dir is not None:
        checkpointer = _Checkpointer(model, _signature(model, plan), checkpoint_dir, plan.max_to_keep)
    start_step = 0 if checkpointer is None else checkpointer.restore()
    if start_step >= plan.steps:
        history = keras.callbacks.History()
        history.set_model(model)
        return ResumableFit(history, start_step, 0, checkpointer.latest)

    others = [*callbacks, *tensorboard_logs.callbacks(model, x=plan.x)]
    control = _step_counter(plan, start_step, others, None if checkpointer is None else checkpointer.save)
    batches = data.step_batches(plan.x, plan.batch_size, seed=plan.seed, start_step=start_step,
                                steps=plan.steps - start_step, binarization=plan.binarization)
    history = model.fit(
        batches,
        epochs=math.ceil(plan.steps / plan.steps_per_epoch),
        initial_epoch=start_step // plan.steps_per_epoch,
        steps_per_epoch=plan.steps_per_epoch,
        validation_data=validation_data,
        validation_freq=validation_freq,
        callbacks=[_EpochCut(control), *others, control],
        shuffle=False,  # step_batches orders the batches
        verbose=verbose,
    )
    if checkpointer is not None and control.saved_step != control.step:
        checkpointer.save(control.step)
    return ResumableFit(history, start_step, control.step - start_step,
                        None if checkpointer is None else checkpointer.latest)
