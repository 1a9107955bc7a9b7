"""Metrics of the series, in NumPy: the PCA optimum, principal angles, reconstruction error,
how much a representation says about the labels (probes, kNN, mutual information), and
how good a generative model's samples are (mode coverage, Fréchet distance).

Everything here is a pure function of arrays (a model enters only as a callable), so the
numbers a notebook reports can be checked against closed forms in the tests.

Images ``[n, height, width, channels]`` are flattened to vectors ``[n, d]`` with
``d = height * width * channels``; all computations run in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import stats
from scipy.spatial.distance import cdist
from scipy.special import digamma
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KDTree, KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from support import checks


class PCA(NamedTuple):
    """The principal subspace of a training set.

    Attributes:
        mean: ``[d]`` training mean ``mu``.
        components: ``[k, d]`` orthonormal rows ``v_1 .. v_k``, the eigenvectors of the training
            covariance with the ``k`` largest eigenvalues, in decreasing order of eigenvalue.
        eigenvalues: ``[d]`` all eigenvalues ``lambda_1 >= ... >= lambda_d >= 0`` of the
            covariance, so that ``eigenvalues[k:]`` are the variances that the top-``k``
            subspace discards.
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray


def _flat(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"x has shape {x.shape}; expected [n, ...] with at least two axes.")
    return x.reshape(len(x), -1)


def pca(x_train, k: int) -> PCA:
    """Principal component analysis of ``x_train`` by eigen-decomposition of its covariance.

    With ``X`` the ``[n, d]`` training matrix and ``mu`` its mean, the covariance is
    ``C = (X - mu)^T (X - mu) / n`` (the 1/n normalisation, so that the training MSE identity
    below is exact) and ``C v_i = lambda_i v_i``. Each eigenvector's sign is fixed so that its
    largest-magnitude entry is positive, which makes the result reproducible.

    Args:
        x_train: ``[n, ...]`` training data.
        k: number of components kept, ``1 <= k <= d``.

    Returns:
        :class:`PCA` ``(mean [d], components [k, d], eigenvalues [d])``.
    """
    x = _flat(x_train)
    d = x.shape[1]
    checks.integer(k, "k", minimum=1, maximum=d, note="d = pixels per example")
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / len(x)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    # Round-off can make the null-space eigenvalues slightly negative; variances are >= 0.
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    components = eigenvectors[:, order[:k]].T
    signs = np.sign(components[np.arange(k), np.argmax(np.abs(components), axis=1)])
    return PCA(mean, components * signs[:, None], eigenvalues)


def pca_reconstruction_mse(x_train, x_test, k: int) -> float:
    """Per-pixel MSE of reconstructing ``x_test`` from its projection on the top-``k``
    principal subspace of ``x_train``.

    ``x_hat = mu + V^T V (x - mu)`` with ``V = components [k, d]``, and the value is
    ``mean over examples and pixels of (x - x_hat)^2``. This is the error of the best linear
    autoencoder with code size ``k`` trained (to its optimum) on ``x_train``: the optimal linear
    encoder/decoder pair spans the same subspace (Baldi and Hornik 1989). On the training set
    itself it equals ``sum(eigenvalues[k:]) / d``.
    """
    fitted = pca(x_train, k)
    x = _flat(x_test)
    if x.shape[1] != fitted.mean.shape[0]:
        raise ValueError(
            f"x_test has {x.shape[1]} values per example but x_train has "
            f"{fitted.mean.shape[0]}; they must match."
        )
    centred = x - fitted.mean
    residual = centred - (centred @ fitted.components.T) @ fitted.components
    return float(np.mean(residual**2))


def principal_angles(a, b) -> np.ndarray:
    """Principal angles, in degrees and ascending, between the column spaces of ``a`` and ``b``.

    With ``Q_a [d, p]`` and ``Q_b [d, q]`` orthonormal bases (QR) of the column spaces, the
    cosines of the ``min(p, q)`` angles are the singular values of ``Q_a^T Q_b`` and their
    sines the singular values of ``Q_b - Q_a Q_a^T Q_b`` (the part of span ``b`` outside span
    ``a``). Small angles are read from the sines and large ones from the cosines, because
    ``arccos`` loses precision near 0 (Knyazev and Argentati 2002; the same as
    ``scipy.linalg.subspace_angles``). 0 degrees: a shared direction; 90: orthogonal ones.

    Subspaces stored as rows, such as a linear decoder's weight ``[k, d]`` or PCA components
    ``[k, d]``, are compared as ``principal_angles(weight.T, components.T)``.

    Args:
        a: ``[d, p]`` matrix of full column rank.
        b: ``[d, q]`` matrix of full column rank, the same ``d``.

    Returns:
        ``[min(p, q)]`` angles in degrees, ascending; the largest is the one that says how far
        the two subspaces are apart.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a {a.shape} and b {b.shape} must be matrices [d, p] and [d, q] with the same d."
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a or b holds NaN or infinite values (did the training diverge?).")
    q_a, _ = np.linalg.qr(a)
    q_b, _ = np.linalg.qr(b)
    if q_a.shape[1] < q_b.shape[1]:
        q_a, q_b = q_b, q_a  # the sine formula needs span(b) to be the smaller subspace
    # Singular values come in decreasing order: cosines of the angles in increasing order,
    # sines in decreasing order; the i-th smallest angle pairs cosines[i] with sines[::-1][i].
    cosines = np.clip(np.linalg.svd(q_a.T @ q_b, compute_uv=False), -1.0, 1.0)
    sines = np.clip(np.linalg.svd(q_b - q_a @ (q_a.T @ q_b), compute_uv=False), -1.0, 1.0)
    angles = np.where(cosines**2 >= 0.5, np.arcsin(sines[::-1]), np.arccos(cosines))
    return np.sort(np.degrees(angles))


def per_example_mse(model: Callable, x, batch_size: int = 1024) -> np.ndarray:
    """``[n]`` per-pixel MSE of each example, ``mean over pixels of (x - model(x))^2``.

    Args:
        model: a Keras model (called in inference mode on batches of ``batch_size``) or any
            callable mapping a batch to reconstructions of the same shape.
        x: ``[n, ...]`` data.
    """
    # Plain calls rather than ``predict``: ``predict`` compiles a function per model, and a
    # notebook that scores many small models would spend its time (and warnings) retracing.
    keras_model = hasattr(model, "predict")
    parts = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        parts.append(np.asarray(model(batch, training=False) if keras_model else model(batch)))
    x_hat = np.concatenate(parts).astype(np.float64)
    x = np.asarray(x, dtype=np.float64)
    if x_hat.shape != x.shape:
        raise ValueError(f"the reconstruction has shape {x_hat.shape}, x has {x.shape}.")
    return ((x - x_hat) ** 2).reshape(len(x), -1).mean(axis=1)


def reconstruction_mse(model: Callable, x, batch_size: int = 1024) -> float:
    """Per-pixel MSE ``mean over examples and pixels of (x - model(x))^2``
    (the mean of :func:`per_example_mse`)."""
    return float(np.mean(per_example_mse(model, x, batch_size)))


def pca_per_example_mse(x_train, x_test, k: int) -> np.ndarray:
    """``[n]`` per-pixel MSE of each test example projected on the top-``k`` principal
    subspace of ``x_train`` (its mean is :func:`pca_reconstruction_mse`)."""
    fitted = pca(x_train, k)
    centred = _flat(x_test) - fitted.mean
    residual = centred - (centred @ fitted.components.T) @ fitted.components
    return np.mean(residual**2, axis=1)


def standard_error(values) -> float:
    """Standard error of the mean of ``values``: ``std(values, ddof=1) / sqrt(n)``. Applied to
    paired differences (two models scored on the same examples) it is the standard error of
    the difference of their means."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) < 2:
        raise ValueError("a standard error needs at least two values.")
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


class Difference(NamedTuple):
    """A mean difference over a few paired runs, with its Student's t interval.

    ``half_width = t_{(1 + level) / 2, n - 1} * se``; ``finding`` is whether the interval
    excludes 0 (``|mean| > half_width``), the two-sided t test at ``1 - level``."""

    mean: float
    se: float
    n: int
    t: float
    half_width: float
    finding: bool


def paired_difference(a, b, level: float = 0.95) -> Difference:
    """``b - a`` over runs paired by seed (row ``i`` of each is the same seed), with the Student's
    t interval of its mean.

    Over a handful of seeds the mean of the differences divided by its standard error follows
    a t distribution with ``n - 1`` degrees of freedom, not a normal one: with 5 seeds the 95 %
    interval is ``±2.78 se``, with 3 seeds ``±4.30 se``. The "2 s.e." rule of large samples
    would call differences findings at about 88 % (5 seeds) or 82 % (3 seeds) confidence.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"a ({a.size} values) and b ({b.size}) must be paired runs, at least two of each.")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1).")
    diff = b - a
    se = standard_error(diff)
    t = float(stats.t.ppf((1 + level) / 2, len(diff) - 1))
    mean = float(diff.mean())
    return Difference(mean, se, len(diff), t, t * se, bool(abs(mean) > t * se))


def unpaired_difference(a, b, level: float = 0.95) -> Difference:
    """``mean(b) - mean(a)`` for two independent sets of runs (two models trained on their own
    seeds), with Welch's t interval: ``se = sqrt(se_a^2 + se_b^2)`` and the Welch-Satterthwaite
    degrees of freedom, which lie between ``min(n_a, n_b) - 1`` and ``n_a + n_b - 2``; ``n`` is
    reported as the smaller set's size. With 5 runs each the 95 % interval is about ``±2.3`` to
    ``±2.8 se``, not ``±2``."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a ({a.size} values) and b ({b.size}) need at least two runs each.")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1).")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    mean = float(b.mean() - a.mean())
    if se == 0.0:
        return Difference(mean, 0.0, min(len(a), len(b)), float("nan"), 0.0, mean != 0.0)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = float(stats.t.ppf((1 + level) / 2, dof))
    return Difference(mean, se, min(len(a), len(b)), t, t * se, bool(abs(mean) > t * se))


def largest_z(comparisons: int, level: float = 0.05) -> float:
    """The ``|z|`` that the largest of ``comparisons`` standard normal scores passes with
    probability at most ``level`` when every null holds (Bonferroni: each two-sided at
    ``level / comparisons``): 1.96 for one comparison, 2.58 for five, 2.73 for eight.

    For numerical checks of an identity by Monte Carlo, several z-scores at once: their largest
    is the one read, and 2 is too strict a bar for it (the largest of eight exceeds 2 about
    a third of the time). Valid for correlated scores too, then conservative."""
    comparisons = checks.integer(comparisons, "comparisons", minimum=1)
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1).")
    return float(stats.norm.ppf(1 - level / (2 * comparisons)))


def binomial_se(p: float, n: int) -> float:
    """Standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` measured on ``n`` examples."""
    return float(np.sqrt(p * (1 - p) / n))


def rotated_subspace_mse(x_train, x_eval, k: int, angles_deg) -> np.ndarray:
    """Per-pixel MSE on ``x_eval`` of the top-``k`` PCA subspace of ``x_train`` with its last
    direction turned by each angle ``theta`` towards the next one:
    ``u_k -> cos(theta) u_k + sin(theta) u_{k+1}`` (the largest principal angle to PCA's
    subspace is then ``theta``).

    On ``x_train`` itself the increase over PCA's error is exactly
    ``(lambda_k - lambda_{k+1}) sin^2(theta) / d``: the subspace moves by ``theta`` while the
    error grows only by the eigenvalue gap times ``sin^2``, flat near ``theta = 0``.
    """
    fitted = pca(x_train, k + 1)
    basis = fitted.components
    centred = _flat(x_eval) - fitted.mean
    errors = []
    for theta in np.radians(np.asarray(angles_deg, dtype=np.float64)):
        turned = np.vstack([basis[:k - 1], np.cos(theta) * basis[k - 1] + np.sin(theta) * basis[k]])
        residual = centred - (centred @ turned.T) @ turned
        errors.append(np.mean(residual**2))
    return np.array(errors)


def auroc(normal_scores, anomaly_scores) -> tuple[float, float]:
    """Area under the ROC curve of a score that should be higher for anomalies, and its
    standard error (Hanley and McNeil 1982).

    AUROC = P(score of a random anomaly > score of a random normal example), ties counting
    one half (the Mann-Whitney statistic): 0.5 is chance, 1 a perfect ranking.
    """
    normal = np.asarray(normal_scores, dtype=np.float64).ravel()
    anomalous = np.asarray(anomaly_scores, dtype=np.float64).ravel()
    if len(normal) < 2 or len(anomalous) < 2:
        raise ValueError("auroc needs at least two scores of each kind.")
    greater = (anomalous[:, None] > normal[None, :]).mean()
    ties = (anomalous[:, None] == normal[None, :]).mean()
    a = float(greater + 0.5 * ties)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    m, n = len(anomalous), len(normal)
    variance = (a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (m * n)
    return a, float(np.sqrt(max(variance, 0.0)))


def retrieval_precision(z_train, y_train, z_query, y_query, k: int = 5) -> tuple[float, float]:
    """Precision at ``k`` of nearest-neighbour retrieval: the fraction of each query's ``k``
    nearest training codes (Euclidean) that share its label, averaged over queries, with
    its standard error over queries."""
    z_tr, y_tr, z_q, y_q = _split(z_train, y_train, z_query, y_query)
    index = NearestNeighbors(n_neighbors=k).fit(z_tr)
    _, neighbours = index.kneighbors(z_q)
    per_query = (y_tr[neighbours] == y_q[:, None]).mean(axis=1)
    return float(per_query.mean()), standard_error(per_query)


def distance_to_nearest(points, reference) -> np.ndarray:
    """``[n]`` Euclidean distance from each of ``points`` to its nearest row of ``reference``."""
    index = NearestNeighbors(n_neighbors=1).fit(_flat(reference))
    return index.kneighbors(_flat(points))[0][:, 0]


def directions_from_decoder(weight, x_train) -> tuple[np.ndarray, np.ndarray]:
    """Principal directions read off a linear autoencoder's decoder (after Plaut 2018).

    A trained linear autoencoder's decoder ``weight [k, d]`` spans the top-``k`` principal
    subspace but its rows are an arbitrary basis of it (any invertible ``C`` gives the same
    reconstructions with ``C^-1`` in the encoder). Two steps recover the directions:

    1. SVD: ``weight^T = Q S R^T``; the left singular vectors ``Q [d, k]`` are an orthonormal
       basis of the subspace, but only a rotation of the principal directions;
    2. PCA inside the subspace: the eigenvectors ``E`` of the ``k x k`` covariance of the
       projected training data ``Q^T (x - mean)``, in decreasing order of eigenvalue, rotate
       ``Q`` onto the principal directions: ``Q E``.

    Returns:
        ``(singular [k, d], directions [k, d])``: the rows of ``Q^T`` (step 1) and of
        ``(Q E)^T`` (step 2), each row's sign chosen so that its largest entry is positive.
    """
    weight = np.asarray(weight, dtype=np.float64)
    x = _flat(x_train)
    q, _, _ = np.linalg.svd(weight.T, full_matrices=False)
    projected = (x - x.mean(axis=0)) @ q
    eigenvalues, rotation = np.linalg.eigh(np.cov(projected, rowvar=False, bias=True))
    directions = (q @ rotation[:, np.argsort(eigenvalues)[::-1]]).T
    return _fix_signs(q.T), _fix_signs(directions)


def _fix_signs(rows: np.ndarray) -> np.ndarray:
    largest = rows[np.arange(len(rows)), np.argmax(np.abs(rows), axis=1)]
    return rows * np.where(largest < 0, -1.0, 1.0)[:, None]


def direction_angles(a, b) -> np.ndarray:
    """Angle in degrees between each row of ``a [k, d]`` and the same row of ``b [k, d]``,
    ignoring sign (a direction and its negative are the same axis): ``arccos |<a_i, b_i>| /
    (|a_i| |b_i|)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} must have the same shape [k, d].")
    cosines = np.abs(np.sum(a * b, axis=1)) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cosines, 0.0, 1.0)))


# --------------------------------------------------------------------------- representations

UNITS = {"nats": 1.0, "bits": np.log(2.0)}


def _features(z, name: str) -> np.ndarray:
    """``z: [n]`` (one feature) or ``[n, ...]`` (flattened) as float64 ``[n, k]``."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 0 or len(z) == 0:
        raise ValueError(f"{name} has shape {z.shape}; expected a non-empty array [n, ...].")
    z = z.reshape(len(z), -1)
    if not np.isfinite(z).all():
        raise ValueError(f"{name} holds NaN or infinite values (did the training diverge?).")
    return z


def _labels(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} has shape {y.shape}; expected one label per example, ({n},).")
    return y


def _split(z_train, y_train, z_test, y_test):
    z_train, z_test = _features(z_train, "z_train"), _features(z_test, "z_test")
    if z_train.shape[1] != z_test.shape[1]:
        raise ValueError(
            f"z_train has {z_train.shape[1]} features per example and z_test "
            f"{z_test.shape[1]}; they must match."
        )
    y_train = _labels(y_train, len(z_train), "y_train")
    y_test = _labels(y_test, len(z_test), "y_test")
    if len(np.unique(y_train)) < 2:
        raise ValueError("y_train holds a single class; a classifier needs at least two.")
    return z_train, y_train, z_test, y_test


def linear_probe_accuracy(
    z_train, y_train, z_test, y_test, *, C: float = 1.0, max_iter: int = 5000
) -> float:
    """Test accuracy of a linear classifier trained on frozen features: the linear probe.

    Each feature is standardised with the training mean and standard deviation
    (``(z - mean) / std``, a constant feature is left at 0), then a multinomial logistic
    regression ``p(y = c | z) = softmax(W z + b)_c`` is fitted on ``(z_train, y_train)`` by
    L-BFGS with the L2 penalty ``||W||^2 / (2 C)`` (scikit-learn's ``LogisticRegression``),
    and the accuracy ``mean(argmax_c p(c | z) == y)`` is measured on ``(z_test, y_test)``.

    It asks how much label information a *linear* read-out can get from the features: a high
    value means the classes are (nearly) linearly separable in the representation. Because the
    features are standardised, the probe is blind to their scale, so codes whose dimensions
    have very different ranges compete fairly with PCA codes and pixels.

    Args:
        z_train: ``[n, ...]`` training features (codes, or images, flattened), or ``[n]``.
        y_train: ``[n]`` integer labels.
        z_test: ``[m, ...]`` test features, as many per example as ``z_train``.
        y_test: ``[m]`` labels.
        C: inverse strength of the L2 penalty, ``> 0``.
        max_iter: L-BFGS iterations.

    Returns:
        Accuracy in [0, 1]; chance is the frequency of the most common test class.
    """
    z_train, y_train, z_test, y_test = _split(z_train, y_train, z_test, y_test)
    if not (isinstance(C, (int, float)) and C > 0):
        raise ValueError(f"C={C!r} must be a positive number.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(z_train, y_train)
    return float(probe.score(z_test, y_test))


def knn_accuracy(z_train, y_train, z_test, y_test, k: int = 5, *, standardize: bool = False) -> float:
    """Test accuracy of the ``k``-nearest-neighbour classifier in feature space.

    Each test point gets the majority label of its ``k`` nearest training points in Euclidean
    distance ``||z - z_i||`` (ties go to the smallest label). Unlike the linear probe it needs
    no linear separability, only that neighbours share labels: it judges the *geometry* of the
    representation as it is, so by default the features are not rescaled; with
    ``standardize=True`` each feature is first standardised with the training statistics.

    Args:
        z_train, y_train, z_test, y_test: as in :func:`linear_probe_accuracy`.
        k: neighbours that vote, ``1 <= k <= n_train``.
        standardize: standardise each feature before measuring distances.

    Returns:
        Accuracy in [0, 1].
    """
    z_train, y_train, z_test, y_test = _split(z_train, y_train, z_test, y_test)
    checks.integer(k, "k", minimum=1, maximum=len(z_train), note="the training size")
    classifier = KNeighborsClassifier(n_neighbors=int(k))
    if standardize:
        classifier = make_pipeline(StandardScaler(), classifier)
    classifier.fit(z_train, y_train)
    return float(classifier.score(z_test, y_test))


def _ross_mutual_information(z: np.ndarray, y: np.ndarray, n_neighbors: int) -> float:
    """Ross's (2014) kNN estimate of ``I(z; y)`` in nats for continuous ``z [n, k]`` and
    discrete ``y [n]``, in the max-norm; the counting follows scikit-learn's ``_compute_mi_cd``
    so that for one feature both give the same value."""
    radius = np.zeros(len(z))
    k_all = np.zeros(len(z))
    label_counts = np.zeros(len(z))
    for label in np.unique(y):
        mask = y == label
        count = int(mask.sum())
        label_counts[mask] = count
        if count > 1:
            k = min(n_neighbors, count - 1)
            distances, _ = NearestNeighbors(n_neighbors=k, metric="chebyshev").fit(z[mask]).kneighbors()
            # Strictly inside the k-th same-label neighbour, as in Kraskov et al.'s counting.
            radius[mask] = np.nextafter(distances[:, -1], 0)
            k_all[mask] = k
    keep = label_counts > 1  # a label seen once has no same-label neighbour
    z, radius = z[keep], radius[keep]
    m_all = KDTree(z, metric="chebyshev").query_radius(z, radius, count_only=True)
    value = (
        digamma(keep.sum())
        + np.mean(digamma(k_all[keep]))
        - np.mean(digamma(label_counts[keep]))
        - np.mean(digamma(m_all))
    )
    return max(0.0, float(value))


def mutual_information(
    z, y, *, n_neighbors: int = 3, per_dimension: bool = False, units: str = "nats", seed: int = 0
):
    """A k-nearest-neighbour estimate of the mutual information ``I(z; y)`` between
    continuous features and discrete labels.

    ``I(z; y) = H(y) - H(y | z) = E[log p(z | y) / p(z)]``, between 0 (``z`` says nothing about
    ``y``) and ``H(y)`` (``y`` is a function of ``z``; ``log 10`` nats for ten balanced
    digits). The estimator is Ross's (2014) extension of Kraskov, Stoegbauer and Grassberger
    (2004): with ``d_i`` the max-norm distance from ``z_i`` to its ``k``-th nearest neighbour
    among the ``N_{y_i}`` points of its own label and ``m_i`` the number of points of any label
    closer than ``d_i`` (``z_i`` itself included),

        I_hat = psi(N) + psi(k) - mean_i psi(N_{y_i}) - mean_i psi(m_i)

    with ``psi`` the digamma function, clipped at 0 (the true value cannot be negative). Each
    feature is first divided by its standard deviation and, as in scikit-learn, jittered by
    ``1e-10`` times its mean magnitude so that tied values (e.g. pixels stuck at 0) do not
    give zero distances.

    Caveats (read them before comparing numbers):

    * **Bias in high dimensions.** kNN estimators need a number of samples that grows
      exponentially with the information to be captured and with the dimension; with ``n`` in
      the thousands and ``k`` in the tens they underestimate strongly dependent variables
      (Gao, Ver Steeg and Galstyan 2015) and the bias depends on the dimension. Compare
      representations of the *same* size on the *same* examples, not a 64-pixel image with
      an 8-dimensional code.
    * **Not a measure of usefulness.** Mutual information is unchanged by any invertible map
      of ``z``, so it does not reward codes whose classes are *linearly* separable (that is
      what :func:`linear_probe_accuracy` measures). For a deterministic encoder the data
      processing inequality gives ``I(encoder(x); y) <= I(x; y)``: a code can only lose label
      information, even when its estimate happens to come out higher.
    * **Per dimension is not joint.** ``per_dimension=True`` returns ``I(z_j; y)`` for each
      feature separately (what scikit-learn's ``mutual_info_classif`` computes, with the same
      estimator). Their sum is not ``I(z; y)``: it double-counts information that features
      share (two copies of one feature add up to twice its information, above ``H(y)``)
      and misses information carried only jointly (for ``y = [z_1 > 0] XOR [z_2 > 0]`` each
      ``I(z_j; y)`` is 0 while ``I(z; y) = log 2``).
    * Cost: a neighbour search per point, ``O(n^2 k)`` in the worst case (many dimensions);
      subsample ``z`` to a few thousand examples.

    Args:
        z: ``[n, ...]`` features (flattened) or ``[n]`` one feature.
        y: ``[n]`` discrete labels.
        n_neighbors: ``k``, the neighbours per point (3 as in KSG and scikit-learn; larger
            values lower the variance and raise the bias).
        per_dimension: return the ``[k]`` values ``I(z_j; y)`` instead of the joint estimate.
        units: ``"nats"`` (natural log) or ``"bits"`` (log base 2; 1 bit = log 2 nats).
        seed: seed of the jitter.

    Returns:
        The joint estimate (a float), or the ``[k]`` per-feature estimates.
    """
    z = _features(z, "z")
    y = _labels(y, len(z), "y")
    checks.choice(units, UNITS, "units")
    checks.positive_int(n_neighbors, "n_neighbors")
    std = z.std(axis=0)
    z = z / np.where(std > 0, std, 1.0)
    jitter = 1e-10 * np.maximum(1.0, np.abs(z).mean(axis=0))
    z = z + jitter * np.random.default_rng(seed).standard_normal(z.shape)
    if per_dimension:
        values = [_ross_mutual_information(z[:, [j]], y, n_neighbors) for j in range(z.shape[1])]
        return np.asarray(values) / UNITS[units]
    return _ross_mutual_information(z, y, n_neighbors) / UNITS[units]


# --------------------------------------------------------------------------- generative models


def wasserstein1(points_a, points_b) -> float:
    """The Wasserstein-1 (earth mover's) distance between two equal-size point sets ``[n, d]``,
    each point of weight ``1/n``: the mean Euclidean distance of the optimal one-to-one matching
    (an optimal plan between uniform weights on equal sizes is a permutation). Exact for the
    empirical distributions; as an estimate of the distance between the distributions they were
    drawn from it is biased upwards, by more in more dimensions. ``O(n^3)``: a few hundred to a
    couple of thousand points."""
    from scipy.optimize import linear_sum_assignment

    a, b = _feature_pair(points_a, points_b, "points_a", "points_b")
    if len(a) != len(b):
        raise ValueError(
            f"points_a and points_b must have the same number of points, not {len(a)} and {len(b)}.")
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


class ModeCoverage(NamedTuple):
    """Mode coverage of samples from a mixture (VEEGAN protocol).

    Attributes:
        modes_covered: number of modes that are the nearest mode of at least one high-quality
            sample.
        high_quality: fraction of samples within ``3 std`` of their nearest mode.
        counts: ``[modes]`` number of high-quality samples whose nearest mode is each mode.
    """

    modes_covered: int
    high_quality: float
    counts: np.ndarray


def mode_coverage(samples, centers, std: float, threshold: float = 3.0) -> ModeCoverage:
    """Modes covered and sample quality by the protocol of VEEGAN (Srivastava et al. 2017).

    A sample is *high quality* when its Euclidean distance to the nearest mode centre is at most
    ``threshold * std``; a mode is *covered* when it is the nearest mode of at least one
    high-quality sample. For exact samples of an isotropic 2-D mixture the expected high-quality
    fraction is ``P(chi_2 <= 3) = 1 - exp(-9/2) = 98.9 %``.

    Args:
        samples: ``[n, d]`` generated points.
        centers: ``[modes, d]`` mode centres.
        std: the modes' standard deviation, ``> 0``.
        threshold: the quality radius in units of ``std``.

    Returns:
        A :class:`ModeCoverage`.
    """
    samples = np.asarray(samples, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if samples.ndim != 2 or centers.ndim != 2 or samples.shape[1] != centers.shape[1]:
        raise ValueError(
            f"samples {samples.shape} and centers {centers.shape} must be [n, d] and [modes, d] "
            "with the same d."
        )
    if len(samples) == 0 or len(centers) == 0:
        raise ValueError("samples and centers must each hold at least one point.")
    checks.positive_float(std, "std")
    distances = np.sqrt(((samples[:, None, :] - centers[None, :, :]) ** 2).sum(-1))  # [n, modes]
    nearest = distances.argmin(axis=1)
    good = distances[np.arange(len(samples)), nearest] <= threshold * std
    counts = np.bincount(nearest[good], minlength=len(centers))
    return ModeCoverage(int((counts > 0).sum()), float(good.mean()), counts)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix; eigenvalues that
    rounding made slightly negative are clipped to 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance_gaussians(mean_a, cov_a, mean_b, cov_b) -> float:
    """Fréchet (2-Wasserstein squared) distance between two Gaussians.

    ``d^2 = ||mu_a - mu_b||^2 + Tr(Sigma_a + Sigma_b - 2 (Sigma_a Sigma_b)^{1/2})``. The trace of
    ``(Sigma_a Sigma_b)^{1/2}`` equals that of the symmetric ``(Sigma_a^{1/2} Sigma_b
    Sigma_a^{1/2})^{1/2}``, computed here by two symmetric eigendecompositions, so it is real and
    stays finite for singular covariances (dead ReLU features), where ``scipy.linalg.sqrtm`` of
    the product can return complex or infinite values.

    Args:
        mean_a, mean_b: ``[d]`` means.
        cov_a, cov_b: ``[d, d]`` covariances.

    Returns:
        The distance, ``>= 0`` (tiny negatives from rounding are clipped).
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    d = mean_a.shape[0]
    if mean_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(
            f"means {mean_a.shape}, {mean_b.shape} and covariances {cov_a.shape}, {cov_b.shape} "
            "must be [d] and [d, d] with one d."
        )
    root_a = _sqrt_psd(cov_a)
    eigenvalues = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID of Heusel et al.
    2017 when the features are Inception activations).

    ``d^2 = ||mu_a - mu_b||^2 + Tr(Sigma_a + Sigma_b - 2 (Sigma_a Sigma_b)^{1/2})`` with sample
    means and unbiased sample covariances; see :func:`frechet_distance_gaussians`. The estimate
    is biased upwards for finite samples, so compare values computed with equal sample sizes.

    Args:
        features_a: ``[n_a, d]`` features (e.g. a classifier's penultimate layer), ``n_a >= 2``.
        features_b: ``[n_b, d]`` features of the same ``d``.

    Returns:
        The distance, ``>= 0``; 0 for a set compared with itself.
    """
    a, b = _flat(features_a), _flat(features_b)
    if a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"features_a {a.shape} and features_b {b.shape} must be [n, d] with one d and n >= 2."
        )
    return frechet_distance_gaussians(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )


class Interval(NamedTuple):
    """A point estimate with a bootstrap percentile interval and standard error."""

    value: float
    low: float
    high: float
    se: float


def _feature_pair(features_a, features_b, name_a="features_a", name_b="features_b"):
    a, b = _flat(features_a), _flat(features_b)
    if a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"{name_a} {a.shape} and {name_b} {b.shape} must be [n, d] with one d and n >= 2."
        )
    return a, b


def frechet_distance_bootstrap(features_a, features_b, n_boot: int = 200, level: float = 0.95,
                               seed: int = 0) -> Interval:
    """:func:`frechet_distance` with a bootstrap interval: both sets are resampled with
    replacement ``n_boot`` times and the distance recomputed; ``se`` is the bootstraps' standard
    deviation. A resample repeats points, which itself raises the distance (fewer distinct points,
    more of the estimate's upward bias), so the central ``level`` percentile range is shifted
    back by the bootstraps' mean excess over the estimate (clipped at 0). The interval measures
    the sampling noise at this ``n``; it does not remove the estimate's own bias (of order
    ``1/n``), so it is no licence to compare values at different sample sizes."""
    a, b = _feature_pair(features_a, features_b)
    n_boot = int(n_boot)
    if n_boot < 2 or not 0 < level < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 2 and level={level} in (0, 1).")
    rng = np.random.default_rng(seed)
    values = np.array([frechet_distance(a[rng.integers(0, len(a), len(a))],
                                        b[rng.integers(0, len(b), len(b))]) for _ in range(n_boot)])
    tail = 100 * (1 - level) / 2
    value = frechet_distance(a, b)
    low, high = np.percentile(values, [tail, 100 - tail]) - (values.mean() - value)
    return Interval(value, float(max(low, 0.0)), float(max(high, 0.0)), float(values.std(ddof=1)))


def frechet_distance_difference_bootstrap(features_a, features_b, reference, n_boot: int = 200,
                                          level: float = 0.95, seed: int = 0) -> Interval:
    """``FID(a, reference) - FID(b, reference)`` with a paired bootstrap interval: each resample
    draws one set of row indices for ``a`` and ``b`` together (row ``i`` of each is a pair, e.g.
    two samplers started from the same noise; for unpaired sets any pairing is valid) and one for
    ``reference``, shared by both distances. What the two distances share (the reference images,
    the starting noise) then cancels in the difference, so its ``se`` is the right one for telling
    the two apart, and is typically far smaller than the two single ``se``s combined as if
    independent. The interval is shifted back by the bootstraps' mean excess, as in
    :func:`frechet_distance_bootstrap`, but not clipped: a difference can be negative."""
    a, b = _feature_pair(features_a, features_b)
    a, reference = _feature_pair(a, reference, "features_a", "reference")
    if len(a) != len(b):
        raise ValueError(f"features_a and features_b must have one row per pair: {len(a)} and {len(b)} rows.")
    n_boot = int(n_boot)
    if n_boot < 2 or not 0 < level < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 2 and level={level} in (0, 1).")
    def difference(x, y, ref):  # the reference's square root, computed once for both distances
        mean_r, cov_r = ref.mean(axis=0), np.cov(ref, rowvar=False)
        root_r = _sqrt_psd(np.atleast_2d(cov_r))
        out = []
        for z in (x, y):
            mean_z, cov_z = z.mean(axis=0), np.atleast_2d(np.cov(z, rowvar=False))
            trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root_r @ cov_z @ root_r), 0.0, None)).sum()
            out.append(np.sum((mean_z - mean_r) ** 2) + np.trace(cov_z) + np.trace(np.atleast_2d(cov_r))
                       - 2 * trace_sqrt)
        return max(out[0], 0.0) - max(out[1], 0.0)

    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for i in range(n_boot):
        pairs = rng.integers(0, len(a), len(a))
        ref = reference[rng.integers(0, len(reference), len(reference))].astype(np.float64)
        values[i] = difference(a[pairs].astype(np.float64), b[pairs].astype(np.float64), ref)
    tail = 100 * (1 - level) / 2
    value = frechet_distance(a, reference) - frechet_distance(b, reference)
    low, high = np.percentile(values, [tail, 100 - tail]) - (values.mean() - value)
    return Interval(value, float(low), float(high), float(values.std(ddof=1)))


class PrecisionRecall(NamedTuple):
    """Improved precision and recall (Kynkäänniemi et al. 2019): ``precision`` is the fraction of
    generated points inside the real manifold (the union of balls around each real point with
    radius its distance to its ``k``-th nearest real neighbour); ``recall`` the fraction of real
    points inside the generated manifold, built the same way."""

    precision: float
    recall: float


def _inside(points, support, k, chunk_bytes: int = 2**26):
    """Whether each of ``points`` lies in a ball around some support point whose radius is that
    point's distance to its ``k``-th nearest support neighbour. The distance matrix is built a
    block of rows at a time (at most ``chunk_bytes`` per block), so 10,000 x 10,000 feature sets
    need tens of megabytes, not the [n_points, n_support, d] cube."""
    radii = NearestNeighbors(n_neighbors=k + 1).fit(support).kneighbors(support)[0][:, k]
    rows = max(1, chunk_bytes // (8 * len(support)))
    return np.concatenate([(cdist(points[i:i + rows], support) <= radii[None, :]).any(axis=1)
                           for i in range(0, len(points), rows)])


def precision_recall_points(real_features, fake_features, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The points behind :func:`precision_recall`: whether each fake point lies in the real
    manifold (``[n_fake]``, its mean is the precision) and whether each real point lies in the
    fake manifold (``[n_real]``, its mean is the recall). Two models scored against the same
    real points have recalls paired point by point: the standard error of their difference is
    :func:`standard_error` of the difference of these indicators."""
    real, fake = _feature_pair(real_features, fake_features, "real_features", "fake_features")
    checks.integer(k, "k", minimum=1, maximum=min(len(real), len(fake)) - 1)
    return _inside(fake, real, k), _inside(real, fake, k)


def precision_recall(real_features, fake_features, k: int = 3) -> PrecisionRecall:
    """Kynkäänniemi et al. (2019)'s precision and recall of ``fake_features`` against
    ``real_features`` (``[n, d]`` each), with ``k``-nearest-neighbour balls (``k = 3`` in the
    paper). Two samples of one distribution score close to 1 on both."""
    fake_in_real, real_in_fake = precision_recall_points(real_features, fake_features, k)
    return PrecisionRecall(float(fake_in_real.mean()), float(real_in_fake.mean()))


# --------------------------------------------------------------------------- scores


def _mixture_arguments(x, means, std, weights):
    """``x [n, d]``, ``means [k, d]``, ``std`` and ``log_weights [k]``, checked, in float64."""
    x = np.asarray(x, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    if x.ndim != 2 or means.ndim != 2 or x.shape[1] != means.shape[1] or len(means) == 0:
        raise ValueError(
            f"x {x.shape} and means {means.shape} must be [n, d] and [k, d] with the same d, k >= 1."
        )
    std = checks.positive_float(std, "std")
    if weights is None:
        return x, means, std, np.full(len(means), -np.log(len(means)))
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(means),) or np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
        raise ValueError(
            f"weights={weights!r} must be {len(means)} non-negative numbers that sum to 1, one per mean."
        )
    with np.errstate(divide="ignore"):  # a weight of 0 is a component that is never drawn
        return x, means, std, np.log(weights)


def _component_log_densities(x, means, std, log_weights):
    """``[n, k]``: ``log w_k + log N(x; mu_k, std^2 I)``."""
    squared = ((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1)
    return log_weights - squared / (2 * std**2) - 0.5 * x.shape[1] * np.log(2 * np.pi * std**2)


def mixture_log_density(x, means, std: float, weights=None) -> np.ndarray:
    """Log-density of an isotropic Gaussian mixture, ``[n]`` in nats:
    ``log p(x) = log sum_k w_k N(x; mu_k, std^2 I)``, by log-sum-exp (the largest term is taken
    out before exponentiating, so points far from every mode do not underflow to ``-inf``).

    The data of :func:`support.data.mixture` noised by ``x~ = x + sigma n`` are again such a
    mixture: the same ``means`` (``mixture_spec(name).centers``) with
    ``std = sqrt(mixture_spec(name).std^2 + sigma^2)``.

    Args:
        x: ``[n, d]`` points.
        means: ``[k, d]`` component means ``mu_k``.
        std: the components' common standard deviation, ``> 0``.
        weights: ``[k]`` mixture weights summing to 1; ``None`` for equal weights.
    """
    log_terms = _component_log_densities(*_mixture_arguments(x, means, std, weights))
    top = log_terms.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(log_terms - top).sum(axis=1, keepdims=True)))[:, 0]


def mixture_score(x, means, std: float, weights=None) -> np.ndarray:
    """The score ``grad_x log p(x)`` of an isotropic Gaussian mixture, ``[n, d]``:
    ``sum_k r_k(x) (mu_k - x) / std^2`` with the responsibilities
    ``r_k(x) = softmax_k(log w_k + log N(x; mu_k, std^2 I))`` (a softmax, stable far from the
    modes). Same arguments as :func:`mixture_log_density`."""
    x, means, std, log_weights = _mixture_arguments(x, means, std, weights)
    log_terms = _component_log_densities(x, means, std, log_weights)
    responsibilities = np.exp(log_terms - log_terms.max(axis=1, keepdims=True))
    responsibilities /= responsibilities.sum(axis=1, keepdims=True)
    return (responsibilities @ means - x) / std**2


class ScoreError(NamedTuple):
    """How far an estimated score is from the exact one, per point (see :func:`score_error`).

    Attributes:
        cosine: ``[n]`` cosine similarity of the two vectors, in ``[-1, 1]`` (1: same direction).
        relative: ``[n]`` relative error ``||estimated - exact|| / ||exact||``.
    """

    cosine: np.ndarray
    relative: np.ndarray


def score_error(estimated, exact) -> ScoreError:
    """Per-point agreement of an ``estimated`` score with the ``exact`` one (``[n, ...]`` each,
    flattened to vectors): the cosine similarity ``<e, s> / (||e|| ||s||)`` and the relative
    error ``||e - s|| / ||s||``. Where a norm is 0 (at a mode, the exact score vanishes) the
    quotient is undefined and is ``nan``: summarise with ``np.nanmedian``."""
    estimated, exact = _flat(estimated), _flat(exact)
    if estimated.shape != exact.shape:
        raise ValueError(f"estimated {estimated.shape} and exact {exact.shape} must have the same shape.")
    norm_estimated = np.linalg.norm(estimated, axis=1)
    norm_exact = np.linalg.norm(exact, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.sum(estimated * exact, axis=1) / (norm_estimated * norm_exact)
        relative = np.linalg.norm(estimated - exact, axis=1) / norm_exact
    cosine = np.where(norm_estimated * norm_exact > 0, cosine, np.nan)
    relative = np.where(norm_exact > 0, relative, np.nan)
    return ScoreError(np.clip(cosine, -1.0, 1.0), relative)
