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

The package has one concept per module: :mod:`.schedules`, :mod:`.loop` (the explicit loop),
:mod:`.guards` (the NaN guard, early stopping), :mod:`.resumable` (``fit_resumable`` and its
checkpoints), :mod:`.recipes` (``train_autoencoder``, ``train_vae``), :mod:`.callbacks`,
:mod:`.distribute` and :mod:`.graph` (Grappler options for a block). Its dependencies point one
way: training -> models -> objectives and data.
"""

from .callbacks import InterruptAt, Interrupted, SampleSnapshots, SubspaceTracker
from .distribute import STRATEGIES, strategy
from .graph import graph_options
from .guards import MONITORS, EarlyStopping, StopOnNaN, TrainingDiverged
from .loop import batches, train_loop, train_step_by_step
from .recipes import train_autoencoder, train_vae
from .resumable import ResumableFit, fit_resumable
from .schedules import OPTIMIZERS, SCHEDULES, learning_rate_schedule

__all__ = [
    "MONITORS", "OPTIMIZERS", "SCHEDULES", "STRATEGIES", "EarlyStopping", "InterruptAt", "Interrupted",
    "ResumableFit", "SampleSnapshots", "StopOnNaN", "SubspaceTracker", "TrainingDiverged", "batches",
    "fit_resumable", "graph_options", "learning_rate_schedule", "strategy", "train_autoencoder", "train_loop",
    "train_step_by_step", "train_vae",
]
