"""TensorBoard logs of the trainings that ``support`` runs: scalars per epoch and sample images.

Off unless switched on explicitly, for a block of code::

    from support import tensorboard_logs

    with tensorboard_logs.logging_to("logs"):   # every training inside writes under logs/
        ...
    # then, in a shell:  tensorboard --logdir logs

A notebook switches it on with its ``tensorboard_dir`` parameter: :func:`support.notebook.start`
opens the block for the rest of the notebook's kernel (and closes the one an earlier ``start``
in that kernel opened). Nothing else turns logging on, and importing this module changes nothing.

Inside the block, :func:`support.training.train_autoencoder`, :func:`~support.training.train_loop`,
:func:`~support.training.fit_resumable` and :func:`support.training.train_vae` each add a
:class:`TensorBoardLog` for the model they train, in a new run folder
``<log_dir>/<NN>-<ModelClass>[-<name>]`` (numbered in the order trainings start), so that each
training is one run in TensorBoard's run selector. For a Keras ``fit`` of your own, pass
``callbacks=tensorboard_logs.callbacks(model)`` (an empty list outside a block), or, with no
block at all, ``callbacks=logs.callbacks(model)`` of a ``logs = tensorboard_logs.Logs("logs")``.

What a run holds:

* **scalars**, once per epoch: every value of the epoch's logs (``loss``, ``kl``,
  ``d_loss``, ...) in ``train/``, and the ``val_`` values under the same names in
  ``validation/``, so that TensorBoard draws a training and a validation curve in one chart;
* **images**, about 20 times per training and at its end: for a model with ``sample(n, seed)``
  (the VAE, the GAN) 16 samples from fixed noise, so the sequence shows one set of codes
  evolving; for a model with ``encode``/``decode`` (autoencoders, the VAE) 8 fixed training
  images above their reconstructions; for a 2-D generator (the mixtures of notebook 04) a
  density image of 2,500 samples. Pixels are enlarged to at least 28 × 28 per image.

Logging never changes a result: the images come from stateless noise and deterministic
reconstructions, so no random generator that training uses is advanced.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

IMAGES_PER_TRAINING = 20  # image summaries per training, at most (plus one at the end)
SAMPLES = 16
RECONSTRUCTIONS = 8
POINTS = 2500  # 2-D samples per density image, as in the VEEGAN protocol

# The open ``with`` blocks, innermost last. A plain list rather than a ``ContextVar``: a
# notebook's block must outlive the cell that opened it, and the trainings of notebook 04 run
# in worker threads, neither of which a context variable survives in every Jupyter kernel.
_open: list[Logs] = []
_lock = threading.Lock()


class Logs:
    """One folder of TensorBoard runs; a context manager that logs every training inside it.

    ``Logs(log_dir).callbacks(model)`` gives the callbacks of one new run without any block.
    The folder is created when the first run starts; runs already there keep their numbers
    and new ones continue after them, so a rerun adds runs and never mixes its events into an
    old run's files.
    """

    def __init__(self, log_dir: str | os.PathLike):
        if log_dir is None or str(log_dir) == "":
            raise ValueError("tensorboard log_dir is empty; give a folder path (e.g. 'logs').")
        path = Path(log_dir).expanduser()
        if path.is_file():
            raise ValueError(f"tensorboard_dir={str(log_dir)!r} is a file; give a folder path.")
        self.log_dir = path
        self._next = _next_run_number(path)
        self._lock = threading.Lock()

    def __repr__(self):
        return f"Logs({str(self.log_dir)!r})"

    def callbacks(self, model: keras.Model, name: str | None = None,
                  x=None) -> list[keras.callbacks.Callback]:
        """``[TensorBoardLog(...)]`` writing to a new numbered run folder for ``model``.

        ``x``: training examples; the first 8 become the fixed reconstruction images of a model
        with ``encode``/``decode``, and for 2-D data they fix the extent of the density image.
        """
        with self._lock:
            number = self._next
            self._next += 1
        label = type(model).__name__ + (f"-{name}" if name else "")
        return [TensorBoardLog(self.log_dir / f"{number:02d}-{label}", x=x)]

    def __enter__(self) -> Logs:
        with _lock:
            _open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End this block (trainings after it no longer log here); closing twice is harmless."""
        with _lock:
            if self in _open:
                _open.remove(self)


def logging_to(log_dir: str | os.PathLike) -> Logs:
    """``with logging_to("logs"):`` logs every training of ``support`` inside the block."""
    return Logs(log_dir)


def active() -> Logs | None:
    """The innermost open block, or ``None`` outside every block (logging off)."""
    with _lock:
        return _open[-1] if _open else None


def log_dir() -> Path | None:
    """The folder of the innermost open block, or ``None`` while logging is off."""
    logs = active()
    return None if logs is None else logs.log_dir


def _next_run_number(path: Path) -> int:
    """Continue the numbering of runs already in ``path``."""
    if not path.is_dir():
        return 0
    numbers = [int(p.name.split("-")[0]) for p in path.iterdir()
               if p.is_dir() and p.name.split("-")[0].isdigit()]
    return max(numbers, default=-1) + 1


def callbacks(model: keras.Model, name: str | None = None, x=None) -> list[keras.callbacks.Callback]:
    """The callbacks of a new run of ``model`` in the innermost open block, or ``[]`` outside
    every block; see :meth:`Logs.callbacks`."""
    logs = active()
    return [] if logs is None else logs.callbacks(model, name, x=x)


def _enlarge(images: np.ndarray, at_least: int = 28) -> np.ndarray:
    """``[n, h, w, c]`` with each pixel repeated so that ``h >= at_least`` (nearest neighbour)."""
    factor = max(1, math.ceil(at_least / images.shape[1]))
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def _grid(images: np.ndarray, columns: int) -> np.ndarray:
    """``[n, h, w, c]`` in [0, 1] as one ``[1, H, W, c]`` image, 1-pixel white gaps."""
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    out = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c), dtype=np.float32)
    for i, image in enumerate(images):
        r, k = divmod(i, columns)
        out[r * (h + 1): r * (h + 1) + h, k * (w + 1): k * (w + 1) + w] = image
    return out[None]


def density_image(points: np.ndarray, extent: float, size: int = 128) -> np.ndarray:
    """2-D ``points: [n, 2]`` as a ``[1, size, size, 1]`` image of their histogram over
    ``[-extent, extent]^2`` (dark = many points, scaled by the square root of the count so
    that sparse regions stay visible; y points up)."""
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=size, range=[[-extent, extent]] * 2)
    shade = np.sqrt(counts[::-1] / max(counts.max(), 1.0))
    return (1.0 - shade)[None, :, :, None].astype(np.float32)


class TensorBoardLog(keras.callbacks.Callback):
    """Write one training's epoch scalars and sample images to ``run_dir`` (see the module).

    Works with Keras ``fit`` and with :func:`support.training.train_loop`'s hooks (which call
    ``set_model`` and ``on_epoch_end(epoch, logs)``). The step of every summary is the epoch.
    """

    def __init__(self, run_dir: str | os.PathLike, x=None, images_every: int | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.images_every = images_every
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._fixed = None if x is None else np.asarray(x[:RECONSTRUCTIONS], dtype=np.float32)
        self._extent = None
        if x is not None and np.ndim(x) == 2 and np.shape(x)[1] == 2:
            self._extent = float(np.max(np.abs(x))) * 1.1
        self._last_epoch = None
        self._last_images = None

    def _writer(self, split: str) -> tf.summary.SummaryWriter:
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.run_dir / split))
        return self._writers[split]

    def _every(self) -> int:
        if self.images_every:
            return self.images_every
        epochs = (self.params or {}).get("epochs")
        return max(1, (epochs or IMAGES_PER_TRAINING) // IMAGES_PER_TRAINING)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            split, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                tf.summary.scalar(tag, value, step=epoch)
        self._last_epoch = epoch
        if (epoch + 1) % self._every() == 0:
            self._images(epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        if self._last_epoch is not None and self._last_images != self._last_epoch:
            self._images(self._last_epoch)
        for writer in self._writers.values():
            writer.flush()

    def _images(self, step: int) -> None:
        model = self.model
        panels = {}
        if callable(getattr(model, "sample", None)):
            n = POINTS if self._extent is not None else SAMPLES
            samples = np.asarray(model.sample(n, seed=0))
            if samples.ndim == 2 and samples.shape[1] == 2:
                extent = self._extent or float(np.max(np.abs(samples))) * 1.1
                panels["samples"] = density_image(samples, extent)
            elif samples.ndim == 4:
                panels["samples"] = _grid(_enlarge(np.clip(samples, 0, 1)), columns=8)
        if self._fixed is not None and self._fixed.ndim == 4 and callable(getattr(model, "decode", None)):
            codes = model.encode(self._fixed)
            codes = codes[0] if isinstance(codes, (tuple, list)) else codes  # a VAE's (mean, log_var)
            x_hat = np.clip(np.asarray(model.decode(codes)), 0, 1)
            pairs = np.concatenate([self._fixed, x_hat])  # originals above reconstructions
            panels["reconstructions"] = _grid(_enlarge(pairs), columns=len(self._fixed))
        if panels:
            with self._writer("train").as_default():
                for tag, image in panels.items():
                    tf.summary.image(tag, image, step=step)
        self._last_images = step


def read_events(run_dir: str | os.PathLike) -> dict[str, dict[str, list[tuple[int, object]]]]:
    """Read a run's event files back: ``{split: {tag: [(step, value), ...]}}``, where a
    value is a float for scalars and a ``[h, w, c]`` uint8 array for images. For tests and for
    checking a run without starting TensorBoard."""
    found: dict[str, dict[str, list]] = {}
    for path in sorted(Path(run_dir).glob("*/events.out.tfevents.*")):
        split = path.parent.name
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                kind = value.metadata.plugin_data.plugin_name
                if kind == "images":  # [width, height, png bytes...]
                    item = tf.io.decode_png(tensor[2]).numpy()
                else:
                    item = float(tensor)
                found.setdefault(split, {}).setdefault(value.tag, []).append((int(event.step), item))
    return found
