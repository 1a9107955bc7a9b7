"""Distribution: a ``tf.distribute`` strategy chosen by name."""

from __future__ import annotations

import os

import tensorflow as tf

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
