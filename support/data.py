"""Data sets of the series, offline first.

One entry point, :func:`load`, returns ``(x, y)`` NumPy arrays:

========================  =======================================  ===========================
name                      ``x``                                    ``y``
========================  =======================================  ===========================
``digits`` (default)      ``[n, 8, 8, 1]`` float32 in [0, 1]       ``[n]`` int64 digit 0-9
``mnist``                 ``[n, 28, 28, 1]`` float32 in [0, 1]     ``[n]`` int64 digit 0-9
``fashion_mnist``         ``[n, 28, 28, 1]`` float32 in [0, 1]     ``[n]`` int64 class 0-9
``ring8``, ``grid25``     ``[n, 2]`` float32 points in the plane   ``[n]`` int64 mode index
========================  =======================================  ===========================

* ``digits`` is scikit-learn's bundled copy of the UCI 8x8 digits (1,797 images, pixel values
  0-16 divided by 16), split 80/20, stratified by label with a fixed seed: 1,437 train, 360 test.
  It never touches the network.
* ``mnist`` and ``fashion_mnist`` are read from the original IDX gz files by :func:`read_idx`,
  each file checked against its published sha256. The files are looked for, in order, in
  ``data_dir`` (argument), in ``$SUPPORT_DATA_DIR``, and in the Keras cache
  (``~/.keras/datasets``), each with one subfolder per data set (``mnist/``, ``fashion-mnist/``)
  holding the original file names. Only when all miss, and ``$SUPPORT_OFFLINE`` is not set, is
  the file downloaded (``keras.utils.get_file``) into the Keras cache.
* ``ring8``: 8 Gaussians with centres evenly spaced on a circle of radius 2, standard deviation
  0.02; ``grid25``: 25 Gaussians centred on the grid {-4, -2, 0, 2, 4}^2, standard deviation 0.05.
  These are the mixtures of the mode-collapse literature (VEEGAN, Srivastava et al. 2017).
  Samples are drawn with a seed that depends on the split, so train and test differ.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from support import checks

IMAGE_SETS = ("digits", "mnist", "fashion_mnist")
MIXTURE_SETS = ("ring8", "grid25")
NAMES = IMAGE_SETS + MIXTURE_SETS
SPLITS = ("train", "test")

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

CLASS_NAMES = {
    "digits": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Published sha256 of the original files (the same bytes from every mirror).
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

SUBFOLDER = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}

MIRRORS = {
    "mnist": [
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ],
    "fashion_mnist": [
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

DOWNLOAD_TIMEOUT_S = 30


class DataError(ValueError):
    """A data set cannot be loaded: missing, corrupt or malformed files, or a bad name."""


# --------------------------------------------------------------------------- entry point


def load(
    name: str = "digits",
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    size: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a data set as ``(x, y)``; see the module docstring for shapes.

    Args:
        name: one of ``digits``, ``mnist``, ``fashion_mnist``, ``ring8``, ``grid25``.
        split: ``"train"`` or ``"test"``.
        data_dir: folder holding ``mnist/`` and ``fashion-mnist/`` with the IDX files; searched
            before ``$SUPPORT_DATA_DIR`` and the Keras cache.
        size: number of samples for the 2-D mixtures (default 50,000 train, 2,500 test); for
            image sets, keep only the first ``size`` examples (``None``: all).
        seed: seed of the 2-D mixtures (image sets ignore it: their split is fixed).
    """
    if name not in NAMES:
        raise DataError(
            f"dataset={name!r} is not a data set of this series; choose one of {', '.join(NAMES)}."
        )
    checks.choice(split, SPLITS, "split", error=DataError)
    checks.integer(size, "size", minimum=1, allow_none=True, error=DataError)
    if name in MIXTURE_SETS:
        default = 50_000 if split == "train" else 2_500
        return mixture(name, size or default, seed=seed + (0 if split == "train" else 1))
    if name == "digits":
        x, y = _digits(split)
    else:
        images, labels = _idx_pair(name, split, _dir_key(data_dir))
        x = (images.astype(np.float32) / 255.0)[..., None]
        y = labels.astype(np.int64)
    if size is not None:
        x, y = x[:size], y[:size]
    return x.copy(), y.copy()


def _dir_key(data_dir):
    return None if data_dir is None else str(Path(data_dir).expanduser().resolve())


def image_shape(name: str) -> tuple[int, int, int]:
    """``(height, width, channels)`` of an image data set."""
    if name == "digits":
        return (8, 8, 1)
    if name in ("mnist", "fashion_mnist"):
        return (28, 28, 1)
    raise DataError(f"dataset={name!r} has no images; image sets are {', '.join(IMAGE_SETS)}.")


# --------------------------------------------------------------------------- digits


@functools.cache
def _digits_all():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int64)
    return train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )


def _digits(split):
    x_train, x_test, y_train, y_test = _digits_all()
    return (x_train, y_train) if split == "train" else (x_test, y_test)


# --------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzip or raw) into a uint8 array of the shape its header declares.

    IDX layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions
    ``d``, then ``d`` big-endian uint32 sizes, then the data. Image files thus have a 16-byte
    header (``d = 3``), label files an 8-byte one (``d = 1``).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable IDX file ({exc}).") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number).")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX type 0x{raw[2]:02x} is not unsigned byte (0x08).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header declares shape {shape} ({expected} bytes) "
            f"but {len(raw) - header} bytes follow."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def keras_cache_dir() -> Path:
    """The Keras data-set cache, ``$KERAS_HOME/datasets`` or ``~/.keras/datasets``."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "datasets"


def search_dirs(name: str, data_dir=None) -> list[Path]:
    """Folders searched for a data set's files, in order."""
    roots = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("SUPPORT_DATA_DIR"):
        roots.append(Path(os.environ["SUPPORT_DATA_DIR"]).expanduser())
    roots.append(keras_cache_dir())
    return [root / SUBFOLDER[name] for root in roots]


def locate(name: str, filename: str, data_dir=None) -> Path:
    """Path of a verified IDX file, downloading it into the Keras cache if it is nowhere.

    Raises :class:`DataError` when a file found has the wrong sha256 (it is not used), or when
    the file is missing and cannot be downloaded.
    """
    expected = SHA256[name][filename]
    folders = search_dirs(name, data_dir)
    for folder in folders:
        path = folder / filename
        if path.is_file():
            actual = sha256_of(path)
            if actual != expected:
                raise DataError(
                    f"{path} is corrupt: its sha256 is {actual}, the published one is "
                    f"{expected}. The file was not used; delete it (or replace it with the "
                    "original) and load again."
                )
            return path
    if os.environ.get("SUPPORT_OFFLINE"):
        reason = "downloads are off ($SUPPORT_OFFLINE is set)"
    else:
        try:
            return _download(name, filename, folders[-1])
        except DataError as exc:
            reason = str(exc)
    looked = "\n".join(f"  - {folder}" for folder in folders)
    raise DataError(
        f"{name}: {filename} was not found and could not be downloaded: {reason}.\n"
        f"Looked in:\n{looked}\n"
        f"Fix: put the original files in <dir>/{SUBFOLDER[name]}/ and set SUPPORT_DATA_DIR=<dir> "
        f"(or pass data_dir=...), or use dataset='digits', which is bundled and needs no files."
    )


def _download(name: str, filename: str, target_folder: Path) -> Path:
    """Download into a temporary folder, verify, then move into place: no partial file stays."""
    import keras

    target_folder.mkdir(parents=True, exist_ok=True)
    expected = SHA256[name][filename]
    errors = []
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for mirror in MIRRORS[name]:
            with tempfile.TemporaryDirectory(dir=target_folder, prefix=".download-") as tmp:
                try:
                    fetched = keras.utils.get_file(
                        fname=filename, origin=mirror + filename, cache_dir=tmp, cache_subdir="."
                    )
                except (Exception, KeyboardInterrupt) as exc:
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    errors.append(f"{mirror}: {exc}")
                    continue
                if sha256_of(fetched) != expected:
                    errors.append(f"{mirror}: the downloaded {filename} has the wrong sha256")
                    continue
                final = target_folder / filename
                shutil.move(fetched, final)
                return final
    finally:
        socket.setdefaulttimeout(previous_timeout)
    raise DataError("; ".join(errors) or "no mirror configured")


@functools.lru_cache(maxsize=4)
def _idx_pair(name: str, split: str, data_dir: str | None):
    image_file, label_file = _IDX_FILES[split]
    images = read_idx(locate(name, image_file, data_dir))
    labels = read_idx(locate(name, label_file, data_dir))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{name} {split}: images {images.shape} and labels {labels.shape} do not match."
        )
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


# --------------------------------------------------------------------------- 2-D mixtures


@dataclass(frozen=True)
class Mixture:
    """An equal-weight mixture of isotropic Gaussians in the plane."""

    name: str
    centers: np.ndarray  # [modes, 2]
    std: float

    @property
    def n_modes(self) -> int:
        return len(self.centers)


def mixture_spec(name: str) -> Mixture:
    """Centres and standard deviation of ``ring8`` or ``grid25``."""
    if name == "ring8":
        angles = 2 * np.pi * np.arange(8) / 8
        centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return Mixture(name, centers.astype(np.float32), 0.02)
    if name == "grid25":
        ticks = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        centers = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(-1, 2)
        return Mixture(name, centers.astype(np.float32), 0.05)
    raise DataError(f"{name!r} is not a mixture; choose one of {', '.join(MIXTURE_SETS)}.")


def mixture(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of a mixture: points ``[n, 2]`` float32 and their mode index ``[n]``."""
    spec = mixture_spec(name)
    # The name enters the seed so that ring8 and grid25 never share their noise draws.
    rng = np.random.default_rng([seed, MIXTURE_SETS.index(name)])
    modes = rng.integers(0, spec.n_modes, size=n)
    points = spec.centers[modes] + spec.std * rng.standard_normal((n, 2))
    return points.astype(np.float32), modes.astype(np.int64)


# --------------------------------------------------------------------------- binarization


def binarize(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Static binarization: one Bernoulli draw per pixel with probability equal to its
    intensity, fixed once by ``seed`` (the same binary data set every epoch)."""
    rng = np.random.default_rng(seed)
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def dataset(
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    batch_size: int = 128,
    shuffle: bool = True,
    seed: int = 0,
    binarization: str = "none",
    drop_remainder: bool = False,
):
    """A ``tf.data.Dataset`` of batches of ``x`` (or ``(x, y)``): shuffled each epoch with
    ``seed``, batched, binarized, prefetched.

    ``binarization``: ``"none"``; ``"static"`` (binarize once, here, with ``seed``);
    ``"dynamic"`` (a fresh Bernoulli draw every time an example is seen, which regularises a
    Bernoulli VAE; Burda et al. 2016).
    """
    import tensorflow as tf

    checks.binarization(binarization)
    if binarization == "static":
        x = binarize(x, seed)
    data = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if shuffle:
        data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size, drop_remainder=drop_remainder)
    if binarization == "dynamic":
        def sample(batch, *rest):
            draws = tf.cast(tf.random.uniform(tf.shape(batch)) < batch, batch.dtype)
            return (draws, *rest) if rest else draws

        data = data.map(sample, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- corruption (denoising)

CORRUPTIONS = ("gaussian", "masking")


def corrupt(x: np.ndarray, noise: str = "gaussian", level: float = 0.3, seed: int = 0) -> np.ndarray:
    """A corrupted copy of ``x`` in [0, 1], as a denoising autoencoder sees its input
    (Vincent et al. 2008, 2010): ``"gaussian"`` adds N(0, level^2) to every pixel and clips to
    [0, 1]; ``"masking"`` sets each pixel to 0 with probability ``level``."""
    checks.choice(noise, CORRUPTIONS, "noise")
    if not 0 <= level <= 1:
        raise ValueError(f"level={level!r} must be between 0 and 1.")
    rng = np.random.default_rng(seed)
    if noise == "gaussian":
        return np.clip(x + level * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    return (x * (rng.random(x.shape) >= level)).astype(np.float32)


def noisy_pairs(x: np.ndarray, *, noise: str = "gaussian", level: float = 0.3,
                batch_size: int = 128, seed: int = 0):
    """An endless ``tf.data.Dataset`` of ``(corrupted, clean)`` batches for training a denoising
    autoencoder with ``fit``: a fresh permutation and a fresh corruption every epoch (the same
    corruption as :func:`corrupt`). Pass ``steps_per_epoch=ceil(n / batch_size)`` to ``fit``."""
    import tensorflow as tf

    corrupt(x[:1], noise, level)  # validates noise and level
    data = tf.data.Dataset.from_tensor_slices(x.astype(np.float32))
    data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)

    def pair(clean):
        if noise == "gaussian":
            noisy = tf.clip_by_value(clean + level * tf.random.normal(tf.shape(clean)), 0.0, 1.0)
        else:
            noisy = clean * tf.cast(tf.random.uniform(tf.shape(clean)) >= level, clean.dtype)
        return noisy, clean

    return data.map(pair, num_parallel_calls=tf.data.AUTOTUNE).repeat().prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- step-indexed batches

# Stream tags folded into the seed, so that the permutations and the binarization bits never
# share a random stream.
_ORDER_STREAM, _BITS_STREAM = 0, 1


def step_batches(
    x: np.ndarray,
    batch_size: int = 128,
    *,
    seed: int = 0,
    start_step: int = 0,
    steps: int | None = None,
    binarization: str = "none",
):
    """A ``tf.data.Dataset`` of batches indexed by the training step, for resumable training.

    Batch ``s`` (``s = 0, 1, ...``) is a pure function of ``(x, seed, s)``. With
    ``m = n // batch_size`` batches per epoch, step ``s`` lies in epoch ``e = s // m`` and holds
    the examples at positions ``(s % m) * batch_size`` to ``(s % m + 1) * batch_size - 1`` of
    that epoch's permutation of ``x``, drawn statelessly from ``(seed, e)``. The remainder is
    **dropped**: the last ``n % batch_size`` examples of each permutation are left out, so every
    batch has the same shape and each example appears at most once per epoch (exactly once when
    ``batch_size`` divides ``n``); which examples are left out changes from epoch to epoch.

    ``start_step`` gives the tail of that same sequence, so a training resumed at step ``s``
    sees exactly the batches the uninterrupted training would have seen. ``steps`` limits the
    number of batches (``None``: endless).

    ``binarization``: ``"none"``; ``"static"`` (one fixed draw, :func:`binarize` with ``seed``);
    ``"dynamic"`` (fresh Bernoulli bits for every batch, drawn statelessly from ``(seed, s)``,
    so a resumed training sees the same bits too).

    Args:
        x: ``[n, ...]`` examples, ``n >= batch_size``.
        batch_size: examples per batch.
        seed: seed of the permutations and of the binarization.
        start_step: index of the first batch, ``>= 0``.
        steps: number of batches, or ``None`` for an endless dataset.
        binarization: ``"none"``, ``"static"`` or ``"dynamic"``.

    Returns:
        Batches ``[batch_size, ...]`` float32.
    """
    import tensorflow as tf

    checks.binarization(binarization)
    checks.integer(seed, "seed")
    checks.positive_int(batch_size, "batch_size")
    checks.integer(start_step, "start_step", minimum=0)
    checks.integer(steps, "steps", minimum=0, allow_none=True)
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    batches_per_epoch = n // batch_size
    if x.ndim < 1 or batches_per_epoch == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} examples of x; the remainder is "
            "dropped, so an epoch would have no batch. Use batch_size <= len(x)."
        )
    if binarization == "static":
        x = binarize(x, seed)
    examples = tf.constant(x)
    first_epoch, offset = divmod(int(start_step), batches_per_epoch)
    order_key = tf.constant([int(seed), _ORDER_STREAM], tf.int64)
    bits_key = tf.constant([int(seed), _BITS_STREAM], tf.int64)

    def epoch_batches(epoch):
        key = tf.random.experimental.stateless_fold_in(order_key, epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)
        order = tf.reshape(order[: batches_per_epoch * batch_size], (batches_per_epoch, batch_size))
        step = epoch * batches_per_epoch + tf.range(batches_per_epoch, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((step, order))

    def gather(step, order):
        batch = tf.gather(examples, order)
        if binarization == "dynamic":
            key = tf.random.experimental.stateless_fold_in(bits_key, step)
            batch = tf.cast(tf.random.stateless_uniform(tf.shape(batch), seed=key) < batch, batch.dtype)
        return batch

    batches = tf.data.Dataset.counter(first_epoch).flat_map(epoch_batches).skip(offset)
    if steps is not None:
        batches = batches.take(int(steps))
    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
