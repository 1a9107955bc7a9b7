"""support.metrics: PCA against its closed forms, principal angles against known geometry,
probes and mutual information against known answers."""

import numpy as np
import pytest
import scipy.linalg
from sklearn.feature_selection import mutual_info_classif

from support import metrics
from support.metrics import (
    knn_accuracy,
    linear_probe_accuracy,
    mutual_information,
    pca,
    pca_reconstruction_mse,
    principal_angles,
    reconstruction_mse,
)


@pytest.fixture(scope="module")
def data():
    """Correlated Gaussian data [500, 4, 4, 1] with distinct variances along known axes."""
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    scales = np.linspace(3.0, 0.1, 16)
    x = (rng.normal(size=(500, 16)) * scales) @ rotation.T + 0.5
    return x.reshape(500, 4, 4, 1)


def test_pca_components_are_orthonormal_sorted_eigenvectors(data):
    fitted = pca(data, 5)
    x = data.reshape(len(data), -1)
    np.testing.assert_allclose(fitted.mean, x.mean(axis=0))
    np.testing.assert_allclose(fitted.components @ fitted.components.T, np.eye(5), atol=1e-12)
    assert np.all(np.diff(fitted.eigenvalues) <= 0)
    covariance = np.cov(x, rowvar=False, bias=True)
    np.testing.assert_allclose(
        fitted.components @ covariance, fitted.eigenvalues[:5, None] * fitted.components, atol=1e-10
    )
    np.testing.assert_allclose(fitted.eigenvalues.sum(), np.trace(covariance))


def test_pca_training_mse_is_discarded_variance_over_d(data):
    eigenvalues = pca(data, 1).eigenvalues
    for k in (1, 4, 15, 16):
        expected = eigenvalues[k:].sum() / 16
        assert pca_reconstruction_mse(data, data, k) == pytest.approx(expected, abs=1e-12)


def test_pca_recovers_a_planted_subspace_and_reconstructs_it_exactly():
    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.normal(size=(10, 3)))
    x = rng.normal(size=(200, 3)) @ basis.T + 2.0
    fitted = pca(x, 3)
    assert principal_angles(fitted.components.T, basis).max() < 1e-6
    x_test = rng.normal(size=(50, 3)) @ basis.T + 2.0
    assert pca_reconstruction_mse(x, x_test, 3) == pytest.approx(0.0, abs=1e-20)


def test_pca_test_mse_of_isotropic_noise_is_the_discarded_fraction():
    # Any k-dimensional projection keeps k/d of isotropic variance: (1 - k/d) / 12 for U(0, 1).
    rng = np.random.default_rng(2)
    x_train, x_test = rng.random((2000, 50)), rng.random((20000, 50))
    assert pca_reconstruction_mse(x_train, x_test, 10) == pytest.approx((1 - 10 / 50) / 12, rel=0.01)


def test_pca_rejects_bad_k(data):
    with pytest.raises(ValueError, match="k=17"):
        pca(data, 17)
    with pytest.raises(ValueError, match="k=0"):
        pca(data, 0)


def test_principal_angles_of_a_subspace_with_itself_are_zero():
    a = np.random.default_rng(3).normal(size=(20, 4))
    np.testing.assert_allclose(principal_angles(a, a @ np.diag([2.0, -1.0, 0.5, 3.0])), 0, atol=1e-6)


def test_principal_angles_of_orthogonal_subspaces_are_ninety():
    eye = np.eye(6)
    np.testing.assert_allclose(principal_angles(eye[:, :2], eye[:, 2:5]), [90, 90], atol=1e-12)


def test_principal_angles_of_a_known_rotation():
    # span{e0, e1} against span{e0, cos t e1 + sin t e2}: angles 0 and t.
    eye = np.eye(5)
    for degrees in (0.01, 5.0, 30.0, 60.0, 89.0):
        t = np.radians(degrees)
        b = np.stack([eye[0], np.cos(t) * eye[1] + np.sin(t) * eye[2]], axis=1)
        np.testing.assert_allclose(principal_angles(eye[:, :2], b), [0, degrees], atol=1e-9)


def test_principal_angles_match_scipy_and_are_symmetric():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=(12, 5))
    expected = np.sort(np.degrees(scipy.linalg.subspace_angles(a, b)))
    np.testing.assert_allclose(principal_angles(a, b), expected, atol=1e-10)
    np.testing.assert_allclose(principal_angles(b, a), expected, atol=1e-10)


def test_principal_angles_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same d"):
        principal_angles(np.ones((4, 2)), np.ones((5, 2)))


def test_reconstruction_mse_of_a_callable():
    x = np.full((3, 2, 2, 1), 0.5)
    assert reconstruction_mse(lambda v: v * 0.0, x) == pytest.approx(0.25)
    assert reconstruction_mse(lambda v: v, x) == 0.0
    with pytest.raises(ValueError, match="shape"):
        reconstruction_mse(lambda v: v[:, 0], x)


def test_directions_from_decoder_undo_any_invertible_mixing():
    from support.metrics import direction_angles, directions_from_decoder, pca

    rng = np.random.default_rng(0)
    scales = np.array([5.0, 3.0, 2.0, 0.3, 0.2, 0.1])
    x = rng.standard_normal((4000, 6)) * scales @ np.linalg.qr(rng.standard_normal((6, 6)))[0]
    fitted = pca(x, 3)
    mixing = rng.standard_normal((3, 3))  # what an unregularised linear AE may learn
    weight = mixing @ fitted.components
    singular, directions = directions_from_decoder(weight, x)
    assert direction_angles(directions, fitted.components).max() < 1e-6
    assert direction_angles(singular, fitted.components).max() > 1.0  # the SVD alone is not enough
    np.testing.assert_allclose(direction_angles(fitted.components, -fitted.components), 0.0,
                               atol=1e-6)


# --------------------------------------------------------------------------- representations


def split(z, y, n_train):
    return z[:n_train], y[:n_train], z[n_train:], y[n_train:]


def clusters(n=600, classes=4, dims=3, seed=0):
    """Well separated Gaussian clusters: centres 10 apart, standard deviation 0.5."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = 10.0 * rng.normal(size=(classes, dims))
    return centres[y] + 0.5 * rng.normal(size=(n, dims)), y


def test_separable_clusters_are_read_perfectly_by_probe_and_knn():
    z, y = clusters()
    assert linear_probe_accuracy(*split(z, y, 400)) == 1.0
    assert knn_accuracy(*split(z, y, 400)) == 1.0
    assert knn_accuracy(*split(z, y, 400), k=1, standardize=True) == 1.0


def test_labels_independent_of_the_features_give_chance_accuracy():
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(4000, 5)), rng.integers(0, 10, 4000)
    # 2000 test examples: the standard error of an accuracy near 0.1 is 0.007.
    assert linear_probe_accuracy(*split(z, y, 2000)) == pytest.approx(0.1, abs=0.03)
    assert knn_accuracy(*split(z, y, 2000), k=15) == pytest.approx(0.1, abs=0.03)


def test_probe_is_linear_and_knn_is_not_concentric_circles():
    # The label is the radius: no hyperplane separates the rings, neighbours always agree.
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    angle = rng.uniform(0, 2 * np.pi, 1000)
    radius = 1.0 + y + 0.05 * rng.normal(size=1000)
    z = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    assert linear_probe_accuracy(*split(z, y, 600)) < 0.65
    assert knn_accuracy(*split(z, y, 600)) == 1.0


def test_probe_ignores_the_scale_of_features():
    z, y = clusters(dims=2, seed=3)
    scaled = z * [1e-4, 1e4]
    assert linear_probe_accuracy(*split(scaled, y, 400)) == linear_probe_accuracy(*split(z, y, 400))


def test_probe_and_knn_flatten_images_and_validate():
    z, y = clusters(dims=4)
    images = z.reshape(-1, 2, 2, 1)
    assert knn_accuracy(*split(images, y, 400)) == 1.0
    with pytest.raises(ValueError, match="y_train has shape"):
        linear_probe_accuracy(z[:400], y[:399], z[400:], y[400:])
    with pytest.raises(ValueError, match="features per example"):
        knn_accuracy(z[:400], y[:400], z[400:, :3], y[400:])
    with pytest.raises(ValueError, match="k=401"):
        knn_accuracy(*split(z, y, 400), k=401)
    with pytest.raises(ValueError, match="C=0"):
        linear_probe_accuracy(*split(z, y, 400), C=0)
    with pytest.raises(ValueError, match="single class"):
        linear_probe_accuracy(z[:400], np.zeros(400), z[400:], y[400:])
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="z_train holds NaN"):
        linear_probe_accuracy(*split(bad, y, 400))


def test_mutual_information_of_a_deterministic_binary_label_is_log_2():
    z = np.random.default_rng(4).normal(size=2000)
    y = (z > 0).astype(int)
    assert mutual_information(z, y) == pytest.approx(np.log(2), abs=0.01)
    assert mutual_information(z, y, units="bits") == pytest.approx(1.0, abs=0.015)


def test_mutual_information_of_ten_equal_bins_is_log_10():
    z = np.random.default_rng(5).uniform(size=3000)
    assert mutual_information(z, np.floor(10 * z).astype(int)) == pytest.approx(np.log(10), abs=0.02)


def test_mutual_information_of_independent_labels_is_zero():
    rng = np.random.default_rng(6)
    z, y = rng.normal(size=(2000, 5)), rng.integers(0, 10, 2000)
    assert 0.0 <= mutual_information(z, y) < 0.02
    assert np.all(mutual_information(z, y, per_dimension=True) < 0.02)


def test_per_dimension_sum_is_not_the_joint_information():
    rng = np.random.default_rng(7)
    # XOR: each coordinate alone says nothing, both together say everything.
    z = rng.normal(size=(4000, 2))
    y = ((z[:, 0] > 0) ^ (z[:, 1] > 0)).astype(int)
    assert np.all(mutual_information(z, y, per_dimension=True) < 0.02)
    assert mutual_information(z, y) == pytest.approx(np.log(2), abs=0.05)  # measured 0.665
    # Two copies of one feature: the per-dimension sum exceeds H(y) = log 2, the joint does not.
    t = rng.normal(size=2000)
    y = (t > 0).astype(int)
    copies = np.stack([t, t], axis=1)
    assert mutual_information(copies, y, per_dimension=True).sum() > 1.9 * np.log(2)
    assert mutual_information(copies, y) == pytest.approx(np.log(2), abs=0.01)


def test_per_dimension_information_matches_scikit_learn():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 1000)
    z = rng.normal(size=(1000, 3)) + np.stack([y, 0.3 * y, 0 * y], axis=1)
    expected = mutual_info_classif(z, y, n_neighbors=3, random_state=0)
    np.testing.assert_allclose(mutual_information(z, y, per_dimension=True), expected, atol=1e-9)


def test_mutual_information_is_invariant_to_scaling_features():
    z, y = clusters(dims=3, seed=9)
    assert mutual_information(z * [1e-3, 1.0, 1e3], y) == pytest.approx(mutual_information(z, y), rel=1e-6)


def test_mutual_information_validates():
    z = np.zeros((10, 2))
    with pytest.raises(ValueError, match="units='bans'"):
        mutual_information(z, np.zeros(10), units="bans")
    with pytest.raises(ValueError, match="n_neighbors=0"):
        mutual_information(z, np.zeros(10), n_neighbors=0)
    with pytest.raises(ValueError, match=r"y has shape \(9,\)"):
        mutual_information(z, np.zeros(9))


# --------------------------------------------------------------------------- comparisons


def test_per_example_mse_averages_to_the_reconstruction_mse():
    rng = np.random.default_rng(0)
    x = rng.random((20, 4, 4, 1))
    per = metrics.per_example_mse(lambda b: b * 0.5, x)
    assert per.shape == (20,)
    assert per == pytest.approx(((x * 0.5) ** 2).reshape(20, -1).mean(axis=1))
    assert metrics.reconstruction_mse(lambda b: b * 0.5, x) == pytest.approx(per.mean())
    pca_mean = metrics.pca_per_example_mse(x, x, 3).mean()
    assert pca_mean == pytest.approx(metrics.pca_reconstruction_mse(x, x, 3))


def test_standard_errors():
    assert metrics.standard_error([1.0, 3.0]) == pytest.approx(1.0)
    assert metrics.binomial_se(0.9, 100) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="at least two"):
        metrics.standard_error([1.0])


def test_largest_z_is_bonferronis_bar_for_the_largest_of_several_scores():
    assert metrics.largest_z(1) == pytest.approx(1.95996, abs=1e-4)
    assert metrics.largest_z(5) == pytest.approx(2.5758, abs=1e-4)
    assert metrics.largest_z(8) == pytest.approx(2.7344, abs=1e-4)
    # it holds its level: the largest of eight independent null scores passes it at most 5 % of the time
    z = np.random.default_rng(0).standard_normal((100_000, 8))
    passed = np.mean(np.abs(z).max(1) > metrics.largest_z(8))
    assert 0.04 < passed <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 100_000)
    with pytest.raises(ValueError, match="comparisons"):
        metrics.largest_z(0)
    with pytest.raises(ValueError, match="level"):
        metrics.largest_z(3, level=1.5)


def test_paired_difference_is_the_one_sample_t_test_of_the_differences():
    from scipy import stats

    a = np.array([0.786, 0.880, 0.929, 0.340, 0.443])  # notebook 04's plain and cosine runs
    b = np.array([0.954, 0.948, 0.947, 0.930, 0.954])
    d = metrics.paired_difference(a, b)
    assert d.mean == pytest.approx(np.mean(b - a)) and d.n == 5
    assert d.se == pytest.approx(metrics.standard_error(b - a))
    assert d.t == pytest.approx(2.7764, abs=1e-4)  # t_{0.975, 4}
    assert d.half_width == pytest.approx(d.t * d.se)
    # the interval excludes 0 exactly when the two-sided t test rejects at 5 %
    assert d.finding == (stats.ttest_rel(b, a).pvalue < 0.05)
    assert d.mean > 2 * d.se and not d.finding  # beyond 2 s.e., yet not a finding with 4 degrees of freedom
    assert metrics.paired_difference([0, 0, 0], [1, 1.1, 0.9]).finding
    assert metrics.paired_difference([0, 0, 0], [1, 1.1, 0.9]).t == pytest.approx(4.3027, abs=1e-4)
    with pytest.raises(ValueError, match="paired runs"):
        metrics.paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="paired runs"):
        metrics.paired_difference([1], [2])
    with pytest.raises(ValueError, match="level"):
        metrics.paired_difference([1, 2], [2, 3], level=1.5)


def test_unpaired_difference_is_welchs_t_test():
    from scipy import stats

    a = np.array([95.4, 94.8, 94.7, 93.0, 95.4])  # notebook 04's cosine GAN and 05's DDPM on the ring
    b = np.array([95.9, 95.5, 96.0, 95.2, 95.9])
    d = metrics.unpaired_difference(a, b)
    assert d.mean == pytest.approx(b.mean() - a.mean())
    assert d.se == pytest.approx(np.hypot(metrics.standard_error(a), metrics.standard_error(b)))
    assert d.finding == (stats.ttest_ind(b, a, equal_var=False).pvalue < 0.05)
    assert stats.t.ppf(0.975, 8) <= d.t <= stats.t.ppf(0.975, 4)  # between n_a + n_b - 2 and min(n) - 1 d.f.
    constant = metrics.unpaired_difference([1, 1], [2, 2])  # no spread: any difference is a finding
    assert (constant.mean, constant.se, constant.finding) == (1.0, 0.0, True)
    with pytest.raises(ValueError, match="at least two runs"):
        metrics.unpaired_difference([1], [1, 2])


def test_precision_recall_points_average_to_precision_and_recall():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(200, 3)), rng.normal(0.5, 1.0, size=(150, 3))
    fake_in_real, real_in_fake = metrics.precision_recall_points(real, fake, k=4)
    assert fake_in_real.shape == (150,) and real_in_fake.shape == (200,)
    assert (fake_in_real.mean(), real_in_fake.mean()) == tuple(metrics.precision_recall(real, fake, k=4))


def test_rotating_the_last_direction_costs_the_eigenvalue_gap_times_sin_squared():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)) * np.array([3.0, 2.0, 1.5, 1.4, 0.5, 0.2])
    fitted = metrics.pca(x, 6)
    angles = [0.0, 10.0, 45.0, 90.0]
    errors = metrics.rotated_subspace_mse(x, x, 3, angles)
    gap = fitted.eigenvalues[2] - fitted.eigenvalues[3]
    expected = metrics.pca_reconstruction_mse(x, x, 3) + gap * np.sin(np.radians(angles)) ** 2 / 6
    assert errors == pytest.approx(expected, rel=1e-10)


def test_auroc_matches_the_ranking_and_hanley_mcneil():
    assert metrics.auroc([0, 1, 2], [3, 4, 5])[0] == 1.0
    assert metrics.auroc([3, 4, 5], [0, 1, 2])[0] == 0.0
    assert metrics.auroc([1, 1], [1, 1])[0] == 0.5  # ties count one half
    rng = np.random.default_rng(0)
    a, se = metrics.auroc(rng.normal(size=400), rng.normal(1.0, size=400))
    # two unit Gaussians one apart: AUROC = Phi(1 / sqrt 2) = 0.760; Hanley-McNeil s.e. ~0.017
    assert abs(a - 0.760) < 3 * se and 0.01 < se < 0.03


def test_retrieval_precision_counts_neighbours_of_the_same_label():
    z_train = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    y_train = np.array([0, 0, 0, 1, 1, 1])
    precision, se = metrics.retrieval_precision(z_train, y_train, [[0.05], [5.05]], [0, 0], k=3)
    assert precision == 0.5 and se == pytest.approx(0.5)
    assert metrics.distance_to_nearest([[1.0], [4.0]], z_train) == pytest.approx([0.8, 1.0])


def test_wasserstein1_matches_sorting_in_one_dimension_and_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 1)), rng.exponential(size=(300, 1))
    # in one dimension the optimal matching pairs the sorted points
    assert metrics.wasserstein1(a, b) == pytest.approx(np.abs(np.sort(a[:, 0]) - np.sort(b[:, 0])).mean())
    # a translation by c costs exactly |c|: W1 >= |difference of means| and the identity matching attains it
    points = rng.normal(size=(200, 2))
    assert metrics.wasserstein1(points, points + [0.3, -0.4]) == pytest.approx(0.5)
    assert metrics.wasserstein1(points, points[::-1]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same number"):
        metrics.wasserstein1(points, points[:100])
