"""Learning-rate schedules and the optimizers the recipes build."""

from __future__ import annotations

import keras

from .. import checks

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
    checks.choice(schedule, SCHEDULES, "schedule")
    checks.positive_float(learning_rate, "learning_rate")
    if schedule == "constant":
        return float(learning_rate)
    return keras.optimizers.schedules.CosineDecay(float(learning_rate), int(total_steps))
