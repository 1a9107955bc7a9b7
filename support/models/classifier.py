"""The small classifier used to score generated images: a classifier-FID and class coverage.

The Inception network behind the FID (Heusel et al. 2017) knows nothing of 8x8 or 28x28 digits,
so, as is usual for MNIST-sized GANs, the images are scored with a small CNN trained on the
real training set:

    x: [batch, h, w, 1] in [0, 1]
      -> Conv2D(filters, 3, relu) -> MaxPool(2) -> Conv2D(2 filters, 3, relu) -> MaxPool(2)
      -> Flatten -> Dense(feature_dim, relu) named "features"     # h: [batch, feature_dim]
      -> Dropout -> Dense(num_classes) named "logits"              # l: [batch, num_classes]

(pooling with ``padding="same"``, so 8x8 -> 4x4 -> 2x2 and 28x28 -> 14x14 -> 7x7). Two numbers
are read from it:

* the **classifier-FID** of two image sets, the Fréchet distance between Gaussians fitted to
  their ``features`` activations (:func:`support.metrics.frechet_distance`): sample quality and
  diversity at once;
* the **class coverage** of one set: the histogram ``p`` of predicted labels and
  ``KL(p || uniform) = sum_c p_c log(K p_c)`` in nats, 0 when every class is equally frequent
  and ``log K`` when every image gets the same label (mode collapse).

Typical use::

    x_train, y_train = data.load("digits", "train")
    x_test, y_test = data.load("digits", "test")
    scorer = train_classifier(x_train, y_train, x_test, y_test)   # a few seconds on a CPU
    scorer.test_accuracy                                          # about 0.98
    classifier_fid(scorer, x_test, samples)
    class_coverage(scorer, samples).kl_to_uniform

The model is a plain functional ``keras.Model``: it saves to ``.keras`` and loads back with
:func:`keras.models.load_model`, and every function here takes it or the :class:`Classifier`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from support import checks, metrics
from support.metrics import frechet_distance

# Images outside [0, 1] by more than this are refused: the classifier never saw them, and the
# usual cause is a generator with a tanh output in [-1, 1].
RANGE_TOLERANCE = 1e-3

# Default length of training, in parameter updates (at least MIN_EPOCHS passes over the data):
# about 100 epochs of the 1,437 digits, 16 of 10,000 MNIST images, 3 of all 60,000.
DEFAULT_STEPS = 1200
MIN_EPOCHS = 3


class Classifier(NamedTuple):
    """A trained classifier.

    Attributes:
        model: the functional ``keras.Model`` of :func:`build_classifier`, ``x -> logits``.
        test_accuracy: accuracy on the test set given to :func:`train_classifier`, in [0, 1];
            ``None`` when none was given.
    """

    model: keras.Model
    test_accuracy: float | None


class ClassCoverage(NamedTuple):
    """How evenly a set of images spreads over the classes, by predicted label.

    Attributes:
        fractions: ``[num_classes]`` fraction of images given each label; sums to 1.
        kl_to_uniform: ``KL(fractions || uniform)`` in nats, in ``[0, log num_classes]``.
        classes_present: number of classes predicted for at least one image.
        min_fraction: the smallest entry of ``fractions`` (0 when a class is missing).
    """

    fractions: np.ndarray
    kl_to_uniform: float
    classes_present: int
    min_fraction: float


# --------------------------------------------------------------------------- the model


def build_classifier(image_shape, num_classes: int = 10, feature_dim: int = 128, filters: int = 16,
                     dropout: float = 0.3) -> keras.Model:
    """The small CNN of the module docstring, ``x: [batch, *image_shape] -> logits: [batch,
    num_classes]``, with the ReLU layer ``"features"`` (``[batch, feature_dim]``) before the
    dropout and the output layer.

    Args:
        image_shape: ``(height, width, channels)``, e.g. ``(8, 8, 1)`` or ``(28, 28, 1)``.
        num_classes: number of classes ``K >= 2``.
        feature_dim: width of the ``"features"`` layer.
        filters: filters of the first convolution; the second has twice as many. 16 is enough
            for digits; 32 costs about 3.5 times as much per 28x28 image on a CPU.
        dropout: dropout rate in ``[0, 1)`` between ``"features"`` and the logits (training only).
    """
    image_shape = checks.image_shape(image_shape, "image_shape")
    num_classes = checks.positive_int(num_classes, "num_classes")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be at least 2.")
    feature_dim = checks.positive_int(feature_dim, "feature_dim")
    filters = checks.positive_int(filters, "filters")
    dropout = checks.fraction(dropout, "dropout")
    layers = keras.layers
    x = keras.Input(image_shape, name="image")
    h = layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv1")(x)
    h = layers.MaxPooling2D(2, padding="same", name="pool1")(h)
    h = layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(2, padding="same", name="pool2")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(feature_dim, activation="relu", name="features")(h)
    h = layers.Dropout(dropout, name="dropout")(h)
    logits = layers.Dense(num_classes, name="logits")(h)
    return keras.Model(x, logits, name="classifier")


# --------------------------------------------------------------------------- training


def _training_images(x, name):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"{name} has shape {x.shape}; expected images [n, height, width, channels].")
    _check_values(x, name)
    return x


def _check_values(x, name):
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    low, high = float(x.min()), float(x.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name} has values in [{low:.3g}, {high:.3g}]; the classifier expects images in "
            "[0, 1] (rescale a tanh output with (x + 1) / 2, or clip)."
        )


def _class_labels(y, n, num_classes, name):
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{name} has shape {y.shape} and dtype {y.dtype}; expected {n} integer labels, ({n},)."
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"{name} holds labels in [{y.min()}, {y.max()}]; they must lie in [0, {num_classes - 1}]."
        )
    return y.astype(np.int64)


def _batches(x, y, batch_size, seed):
    """An endless ``tf.data.Dataset`` of ``(x, y)`` batches, each pass in a fresh order drawn on
    indices (cheaper than shuffling ``n`` separate images); used with ``steps_per_epoch``, so Keras
    never rebuilds an iterator, which is most of an epoch's cost on a small data set."""
    x, y = tf.constant(x), tf.constant(y)
    n = int(x.shape[0])
    indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return (
        indices.batch(batch_size)
        .map(lambda i: (tf.gather(x, i), tf.gather(y, i)), num_parallel_calls=tf.data.AUTOTUNE)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )


def train_classifier(
    x_train,
    y_train,
    x_test=None,
    y_test=None,
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    seed: int | None = 0,
    num_classes: int | None = None,
    feature_dim: int = 128,
    filters: int = 16,
    verbose=0,
) -> Classifier:
    """Build and train :func:`build_classifier` on ``(x_train, y_train)``.

    The loss is the softmax cross-entropy ``-log softmax(l)_y`` averaged over the batch,
    minimised by Adam whose learning rate falls from ``learning_rate`` to 0 along a cosine
    over the whole run (so the last epochs settle instead of jittering).

    Args:
        x_train: ``[n, height, width, channels]`` images in [0, 1].
        y_train: ``[n]`` integer labels in ``[0, num_classes)``.
        x_test, y_test: optional test set, both or neither; gives ``test_accuracy``.
        epochs: passes over ``x_train``; ``None``: enough for about 1,200 updates and at least
            3 passes (about 100 epochs of the 8x8 digits, 16 of 10,000 MNIST images and 3 of
            all 60,000): about 98 % test accuracy on digits and 98-99 % on MNIST.
        batch_size: examples per update.
        learning_rate: Adam's initial learning rate.
        seed: seeds Python, NumPy and TensorFlow (``keras.utils.set_random_seed``) before the
            model is built, and the batch order; ``None`` leaves the seeds alone. Reruns with one
            seed gave identical weights on the CPUs tried; only
            ``tf.config.experimental.enable_op_determinism()`` guarantees it (on GPUs too).
        num_classes: ``None``: ``max(y_train) + 1`` (at least 2).
        feature_dim, filters: as in :func:`build_classifier`.
        verbose: Keras' ``fit`` verbosity (0: silent, ``"auto"``: a progress bar).

    Returns:
        A :class:`Classifier` ``(model, test_accuracy)``.
    """
    x_train = _training_images(x_train, "x_train")
    if num_classes is None:
        labels = np.asarray(y_train)
        # Labels that are not integers are refused below, with their own message.
        integer = labels.size > 0 and np.issubdtype(labels.dtype, np.integer)
        num_classes = max(int(labels.max()) + 1, 2) if integer else 2
    num_classes = checks.positive_int(num_classes, "num_classes")
    y_train = _class_labels(y_train, len(x_train), num_classes, "y_train")
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together (or neither).")
    if x_test is not None:
        x_test = _training_images(x_test, "x_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"x_test has images of shape {x_test.shape[1:]}, x_train {x_train.shape[1:]}; "
                "they must match."
            )
        y_test = _class_labels(y_test, len(x_test), num_classes, "y_test")
    batch_size = checks.positive_int(batch_size, "batch_size")
    learning_rate = checks.positive_float(learning_rate, "learning_rate")
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    if epochs is None:
        epochs = max(MIN_EPOCHS, math.ceil(DEFAULT_STEPS / steps_per_epoch))
    epochs = checks.positive_int(epochs, "epochs")

    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = build_classifier(x_train.shape[1:], num_classes, feature_dim, filters)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        _batches(x_train, y_train, batch_size, seed),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # the dataset shuffles itself
        verbose=verbose,
    )
    accuracy = None
    if x_test is not None:
        accuracy = float(np.mean(predict_labels(model, x_test) == y_test))
    return Classifier(model, accuracy)


# --------------------------------------------------------------------------- reading the classifier


def _model(classifier) -> keras.Model:
    model = classifier.model if isinstance(classifier, Classifier) else classifier
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"classifier={type(classifier).__name__} must be a Classifier or the keras.Model of "
            "build_classifier."
        )
    try:
        model.get_layer("features")
    except ValueError:
        raise ValueError(
            f"classifier model {model.name!r} has no layer named 'features'; build it with "
            "build_classifier."
        ) from None
    return model


def _images(x, model, name) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    expected = tuple(model.input_shape[1:])
    if x.ndim != 4 or x.shape[1:] != expected or len(x) == 0:
        raise ValueError(
            f"{name} has shape {x.shape}; the classifier takes images [n, {', '.join(map(str, expected))}] "
            "with n >= 1."
        )
    _check_values(x, name)
    return x


def _outputs(classifier, x, batch_size, name="x") -> tuple[np.ndarray, np.ndarray]:
    """``(features [n, feature_dim], logits [n, num_classes])`` in inference mode (no dropout)."""
    model = _model(classifier)
    x = _images(x, model, name)
    batch_size = checks.positive_int(batch_size, "batch_size")
    both = keras.Model(model.input, [model.get_layer("features").output, model.output])
    # Plain calls rather than ``predict``: ``predict`` compiles a function for each new model.
    parts = [both(x[start:start + batch_size], training=False) for start in range(0, len(x), batch_size)]
    return tuple(np.concatenate([np.asarray(part[i]) for part in parts]) for i in range(2))


def features(classifier, x, batch_size: int = 1024) -> np.ndarray:
    """Activations of the ReLU layer ``"features"``: ``x: [n, *image_shape] -> [n, feature_dim]``,
    float32, ``>= 0``.

    Args:
        classifier: a :class:`Classifier` or the model of :func:`build_classifier`.
        x: images in [0, 1] of the shape the classifier was built for.
        batch_size: images per forward pass.
    """
    return _outputs(classifier, x, batch_size)[0]


def class_probabilities(classifier, x, batch_size: int = 1024) -> np.ndarray:
    """``softmax(logits)``: ``x: [n, *image_shape] -> [n, num_classes]``, rows summing to 1."""
    logits = _outputs(classifier, x, batch_size)[1].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def predict_labels(classifier, x, batch_size: int = 1024) -> np.ndarray:
    """``argmax_c logits_c``: ``x: [n, *image_shape] -> [n]`` int64 labels."""
    return np.argmax(_outputs(classifier, x, batch_size)[1], axis=1).astype(np.int64)


# --------------------------------------------------------------------------- scores


def classifier_fid(classifier, x_a, x_b, batch_size: int = 1024) -> float:
    """Fréchet distance between Gaussians fitted to the ``features`` of two image sets:

    ``d^2 = ||mu_a - mu_b||^2 + Tr(Sigma_a + Sigma_b - 2 (Sigma_a Sigma_b)^{1/2})``

    (:func:`support.metrics.frechet_distance`). 0 for a set with itself; the estimate is biased
    upwards for small sets, so compare values computed with equal set sizes.

    Args:
        classifier: a :class:`Classifier` or the model of :func:`build_classifier`.
        x_a, x_b: ``[n_a, *image_shape]`` and ``[n_b, *image_shape]`` images in [0, 1],
            ``n_a, n_b >= 2``.
    """
    for value, name in ((x_a, "x_a"), (x_b, "x_b")):
        if len(np.asarray(value)) < 2:
            raise ValueError(f"{name} holds {len(np.asarray(value))} image(s); the FID needs at least 2.")
    return frechet_distance(
        _outputs(classifier, x_a, batch_size, "x_a")[0], _outputs(classifier, x_b, batch_size, "x_b")[0]
    )


def class_histogram(classifier, x, batch_size: int = 1024) -> np.ndarray:
    """Fraction of the images in ``x`` given each label: ``[num_classes]``, summing to 1.

    ``p_c = #{i : argmax logits(x_i) = c} / n`` with ``num_classes`` read from the model.
    """
    logits = _outputs(classifier, x, batch_size)[1]
    counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
    return counts / counts.sum()


def kl_to_uniform(fractions) -> float:
    """``KL(p || uniform) = sum_c p_c log(K p_c)`` in nats, with ``0 log 0 = 0``.

    0 when ``p`` is uniform, ``log K`` when all mass is on one class; equals ``log K - H(p)``.

    Args:
        fractions: ``[K]`` non-negative fractions summing to 1, ``K >= 2``.
    """
    p = np.asarray(fractions, dtype=np.float64)
    if p.ndim != 1 or len(p) < 2:
        raise ValueError(f"fractions has shape {p.shape}; expected a vector [K] with K >= 2 classes.")
    if not np.isfinite(p).all() or (p < 0).any() or abs(p.sum() - 1) > 1e-6:
        raise ValueError(
            f"fractions={np.array2string(p, precision=3)} must be non-negative and sum to 1 "
            f"(they sum to {p.sum():.6g}); divide counts by their total."
        )
    present = p > 0
    return float(max(np.sum(p[present] * np.log(len(p) * p[present])), 0.0))


def class_coverage(classifier, x, batch_size: int = 1024) -> ClassCoverage:
    """The :class:`ClassCoverage` of ``x``: the :func:`class_histogram`, its
    :func:`kl_to_uniform`, the number of classes predicted at least once and the smallest
    fraction. A GAN that has dropped modes shows missing classes and a KL well above that of
    the real test set."""
    fractions = class_histogram(classifier, x, batch_size)
    return ClassCoverage(
        fractions, kl_to_uniform(fractions), int((fractions > 0).sum()), float(fractions.min())
    )


class SampleReport(NamedTuple):
    """What :func:`sample_report` measures of one set of generated images against real ones."""

    fid: float  # classifier-FID against the test images
    fid_low: float  # bootstrap 95 % interval (bias-shifted, see frechet_distance_bootstrap)
    fid_high: float
    fid_se: float  # bootstrap standard error
    precision: float  # Kynkäänniemi et al.'s precision against the test images
    recall: float
    n: int  # images scored on each side: precision and recall have binomial s.e. over n
    classes_present: int
    min_fraction: float  # the rarest class's share of the samples
    kl_to_uniform: float  # nats
    memorisation_ratio: float  # median pixel distance to the nearest training image, over the test images'


def sample_report(classifier, samples, x_test, x_train, n_boot: int = 50, k: int = 5,
                  seed: int = 0) -> SampleReport:
    """Sample quality of ``samples`` in one call, the leaderboard's columns:

    * classifier-FID against ``x_test`` with a bootstrap interval and s.e.
      (:func:`support.metrics.frechet_distance_bootstrap`, ``n_boot`` resamples);
    * precision and recall (:func:`support.metrics.precision_recall`, ``k`` neighbours) of the
      samples' features against the test images';
    * the class coverage (:func:`class_coverage`) of all the samples;
    * the **memorisation ratio**: the median pixel distance from a sample to its nearest training
      image, over the same median for the test images (which the model never saw). Near 1: the
      samples are as far from the training set as new real images are; well below 1: they copy
      training images.

    FID and precision/recall use ``n = min(len(samples), len(x_test))`` images of each set (the
    first ``n``), so that FIDs computed here for several models are at one sample size.
    """
    samples = np.asarray(samples, dtype=np.float32)
    n = min(len(samples), len(x_test))
    if n < k + 2:
        raise ValueError(f"sample_report needs at least {k + 2} samples and test images; got {n}.")
    sample_features = features(classifier, samples[:n])
    test_features = features(classifier, x_test[:n])
    fid = metrics.frechet_distance_bootstrap(sample_features, test_features, n_boot=n_boot, seed=seed)
    pr = metrics.precision_recall(test_features, sample_features, k=k)
    coverage = class_coverage(classifier, samples)
    to_train = np.median(metrics.distance_to_nearest(samples[:n], x_train))
    real_to_train = np.median(metrics.distance_to_nearest(x_test[:n], x_train))
    return SampleReport(fid.value, fid.low, fid.high, fid.se, pr.precision, pr.recall, n,
                        coverage.classes_present, coverage.min_fraction, coverage.kl_to_uniform,
                        float(to_train / real_to_train))
