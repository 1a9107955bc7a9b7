"""Tests of the GAN losses, the sample-quality metrics and the GAN model."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import linalg

from support import data, metrics, objectives
from support.models import gan as G
from support.models.gan import GAN

LOGITS = np.array([-100.0, -5.0, -0.3, 0.0, 0.7, 4.0, 100.0])
OTHER = np.array([3.0, -2.0, 0.5, 0.0, -0.7, 20.0, -100.0])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- losses


def test_discriminator_loss_matches_cross_entropy():
    got = objectives.discriminator_loss(LOGITS, OTHER).numpy()
    with np.errstate(divide="ignore"):
        direct = -np.log(_sigmoid(LOGITS)) - np.log(1 - _sigmoid(OTHER))
    finite = np.isfinite(direct) & (np.abs(LOGITS) < 50) & (np.abs(OTHER) < 50)
    # 1 - sigmoid(20) in the direct formula loses digits, hence rtol 1e-7.
    np.testing.assert_allclose(got[finite], direct[finite], rtol=1e-7)
    # Stable where the naive formula is not: -log sigmoid(-100) = 100 (+ softplus(3)).
    np.testing.assert_allclose(got[0], 100.0 + math.log1p(math.exp(3.0)), rtol=1e-12)
    assert np.all(np.isfinite(got)) and got.shape == (7,)


def test_generator_losses_match_direct_formulas():
    p = _sigmoid(LOGITS[1:-1])
    minimax = objectives.generator_minimax_loss(LOGITS[1:-1]).numpy()
    non_saturating = objectives.generator_non_saturating_loss(LOGITS[1:-1]).numpy()
    np.testing.assert_allclose(minimax, np.log(1 - p), rtol=1e-10)
    np.testing.assert_allclose(non_saturating, -np.log(p), rtol=1e-10)
    # Saturation: for a confidently rejected sample the minimax loss is flat, the other is not.
    assert objectives.generator_non_saturating_loss([-100.0]).numpy()[0] == pytest.approx(100.0)


def test_losses_accept_column_outputs_and_return_per_example():
    column = LOGITS[:, None].astype(np.float32)
    assert objectives.discriminator_loss(column, column).shape == (7,)
    assert objectives.generator_non_saturating_loss(column).shape == (7,)
    np.testing.assert_allclose(objectives.wasserstein_critic_loss(column, OTHER[:, None]).numpy(),
                               OTHER - LOGITS, rtol=1e-6)
    np.testing.assert_allclose(objectives.wasserstein_generator_loss(column).numpy(), -LOGITS)


def _linear_critic(w):
    w = tf.constant(w, tf.float64)
    return lambda x: tf.reduce_sum(tf.reshape(x, (tf.shape(x)[0], -1)) * tf.reshape(w, (1, -1)), -1)


def test_gradient_penalty_of_linear_critics():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(16, 3, 2)), rng.normal(size=(16, 3, 2))
    unit = rng.normal(size=(3, 2))
    unit /= np.linalg.norm(unit)
    penalty = objectives.gradient_penalty(_linear_critic(unit), real, fake, seed=1).numpy()
    assert penalty.shape == (16,)
    np.testing.assert_allclose(penalty, 0.0, atol=1e-10)
    penalty = objectives.gradient_penalty(_linear_critic(2.5 * unit), real, fake, seed=1).numpy()
    np.testing.assert_allclose(penalty, (2.5 - 1.0) ** 2, rtol=1e-8)


def test_gradient_penalty_interpolates_with_uniform_alpha_per_example():
    """f(x) = ||x||^2 / 2 has gradient x_hat = alpha x + (1 - alpha) x'; with x = (1/2, 0) and
    x' = 0 its norm alpha / 2 is below 1, so alpha = 2 (1 - sqrt(penalty))."""
    real = np.tile([[0.5, 0.0]], (4000, 1))
    fake = np.zeros((4000, 2))
    penalty = objectives.gradient_penalty(lambda x: 0.5 * tf.reduce_sum(x * x, -1), real, fake,
                                          seed=3).numpy()
    alpha = 2.0 * (1.0 - np.sqrt(penalty))
    assert alpha.min() >= -1e-6 and alpha.max() <= 1 + 1e-6
    assert abs(alpha.mean() - 0.5) < 0.02 and abs(alpha.var() - 1 / 12) < 0.01
    assert len(np.unique(np.round(alpha, 6))) > 3900  # one draw per example

# --------------------------------------------------------------------------- metrics


def test_mode_coverage_of_real_ring8_samples():
    spec = data.mixture_spec("ring8")
    x, _ = data.load("ring8", "test", size=20_000)
    result = metrics.mode_coverage(x, spec.centers, spec.std)
    assert result.modes_covered == 8
    assert result.high_quality == pytest.approx(1 - math.exp(-4.5), abs=0.003)
    assert result.counts.sum() == pytest.approx(result.high_quality * len(x))
    assert result.counts.min() > 0.1 * len(x)


def test_mode_coverage_of_one_mode_and_of_noise():
    spec = data.mixture_spec("ring8")
    rng = np.random.default_rng(0)
    one_mode = spec.centers[3] + spec.std * rng.standard_normal((500, 2))
    result = metrics.mode_coverage(one_mode, spec.centers, spec.std)
    assert result.modes_covered == 1 and result.counts[3] == result.counts.sum()
    far = metrics.mode_coverage(np.zeros((10, 2)), spec.centers, spec.std)
    assert far.modes_covered == 0 and far.high_quality == 0.0
    with pytest.raises(ValueError, match="std"):
        metrics.mode_coverage(one_mode, spec.centers, 0.0)
    with pytest.raises(ValueError, match="samples"):
        metrics.mode_coverage(one_mode[:, :1], spec.centers, spec.std)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 6)) @ np.random.default_rng(1).normal(size=(6, 6))
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians():
    mean_a, mean_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    std_a, std_b = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 1.5])
    closed = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    exact = metrics.frechet_distance_gaussians(mean_a, np.diag(std_a**2), mean_b, np.diag(std_b**2))
    assert exact == pytest.approx(closed, rel=1e-12)
    rng = np.random.default_rng(0)
    a = mean_a + std_a * rng.standard_normal((100_000, 3))
    b = mean_b + std_b * rng.standard_normal((100_000, 3))
    assert metrics.frechet_distance(a, b) == pytest.approx(closed, rel=0.02)


def test_frechet_distance_gaussians_matches_sqrtm_for_full_covariances():
    rng = np.random.default_rng(2)
    la, lb = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov_a, cov_b = la @ la.T, lb @ lb.T
    mean_a, mean_b = rng.normal(size=4), rng.normal(size=4)
    reference = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b)
                 - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b)).real)
    got = metrics.frechet_distance_gaussians(mean_a, cov_a, mean_b, cov_b)
    assert got == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_is_finite_for_singular_covariances():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(50, 64)), 0.0)
    b = np.maximum(rng.normal(size=(50, 64)) + 0.5, 0.0)
    a[:, :20] = 0.0  # dead units: rank-deficient covariance, and n < d
    b[:, 10:30] = 0.0
    value = metrics.frechet_distance(a, b)
    assert np.isfinite(value) and value > 0
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="features_a"):
        metrics.frechet_distance(a, b[:, :3])


# --------------------------------------------------------------------------- builders


@pytest.mark.parametrize("image_shape", [(8, 8, 1), (28, 28, 1)])
def test_dcgan_builders_shapes_and_range(image_shape):
    generator = G.dcgan_generator(16, image_shape, filters=8)
    discriminator = G.dcgan_discriminator(image_shape, filters=8)
    x = generator(tf.random.normal((3, 16)), training=False).numpy()
    assert x.shape == (3, *image_shape) and x.min() >= 0 and x.max() <= 1
    assert discriminator(x).shape == (3, 1)


def test_builders_validate_parameters():
    with pytest.raises(ValueError, match="image_shape"):
        G.dcgan_generator(8, (10, 10, 1))
    with pytest.raises(ValueError, match="width"):
        G.mlp_generator(2, width=0)
    with pytest.raises(ValueError, match="pack"):
        GAN(G.mlp_generator(2), G.mlp_discriminator(pack=1), pack=2)
    gan = GAN(G.mlp_generator(2), G.mlp_discriminator())
    with pytest.raises(ValueError, match="loss='wgan'"):
        gan.compile(loss="wgan")
    with pytest.raises(ValueError, match="d_steps"):
        gan.compile(d_steps=0)


# --------------------------------------------------------------------------- the GAN model


def _small_gan(loss="non_saturating", d_steps=1, pack=1):
    keras.utils.set_random_seed(0)
    gan = GAN(G.mlp_generator(2, width=16, depth=2),
              G.mlp_discriminator(width=16, depth=2, pack=pack), pack=pack)
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5), loss=loss, d_steps=d_steps,
                gp_weight=10.0)
    return gan


@pytest.fixture(scope="module")
def ring8():
    return data.load("ring8", "train", size=256)[0]


@pytest.mark.parametrize(
    "loss, d_steps, pack",
    [("non_saturating", 1, 1), ("minimax", 2, 1), ("hinge", 1, 1), ("wgan_gp", 3, 1),
     ("non_saturating", 1, 2)],
)
def test_train_step_updates_both_networks_and_counts_steps(ring8, loss, d_steps, pack):
    gan = _small_gan(loss, d_steps, pack)
    g_before = [w.numpy().copy() for w in gan.generator.trainable_weights]
    d_before = [w.numpy().copy() for w in gan.discriminator.trainable_weights]
    history = gan.fit(ring8, batch_size=64, epochs=1, shuffle=False, verbose=0).history
    assert set(history) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(np.isfinite(v[0]) for v in history.values())
    batches = len(ring8) // 64
    assert int(gan.d_optimizer.iterations.numpy()) == d_steps * batches
    assert int(gan.g_optimizer.iterations.numpy()) == batches
    assert all(not np.array_equal(b, w.numpy())
               for b, w in zip(g_before, gan.generator.trainable_weights))
    # Every kernel moves (a critic's output bias cancels in f(G(z)) - f(x) and the penalty).
    assert all(not np.array_equal(b, w.numpy())
               for b, w in zip(d_before, gan.discriminator.trainable_weights) if b.ndim == 2)
    if loss not in ("hinge", "wgan_gp"):  # probabilities; the other two report raw outputs
        assert 0 < history["d_real"][0] < 1 and 0 < history["d_fake"][0] < 1


def test_sample_is_repeatable_with_a_seed():
    gan = _small_gan()
    a, b = gan.sample(10, seed=4).numpy(), gan.sample(10, seed=4).numpy()
    assert a.shape == (10, 2) and np.array_equal(a, b)
    assert not np.array_equal(a, gan.sample(10, seed=5).numpy())


@pytest.mark.parametrize("loss, pack", [("non_saturating", 2), ("wgan_gp", 1)])
def test_keras_round_trip_restores_generator_and_compile(tmp_path, ring8, loss, pack):
    gan = _small_gan(loss, d_steps=2, pack=pack)
    gan.fit(ring8, batch_size=64, epochs=1, verbose=0)
    path = tmp_path / "gan.keras"
    gan.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, GAN) and loaded.pack == pack
    z = tf.random.stateless_normal((32, 2), seed=(7, 0))
    np.testing.assert_array_equal(gan.generator(z).numpy(), loaded.generator(z).numpy())
    x = ring8[:32]
    np.testing.assert_array_equal(gan.discriminator(gan._packed(x)).numpy(),
                                  loaded.discriminator(loaded._packed(x)).numpy())
    assert (loaded.loss_name, loaded.d_steps, loaded.gp_weight) == (loss, 2, 10.0)
    assert int(loaded.d_optimizer.iterations.numpy()) == int(gan.d_optimizer.iterations.numpy())
    np.testing.assert_allclose(loaded.g_optimizer.variables[-1].numpy(),
                               gan.g_optimizer.variables[-1].numpy())
    loaded.fit(ring8, batch_size=64, epochs=1, verbose=0)  # training resumes


def test_hinge_loss_is_zero_beyond_the_margin_and_linear_inside():
    real, fake = tf.constant([2.0, 0.5, -1.0]), tf.constant([-3.0, 0.0, 1.0])
    np.testing.assert_allclose(objectives.hinge_discriminator_loss(real, fake).numpy(),
                               [0.0 + 0.0, 0.5 + 1.0, 2.0 + 2.0])


@pytest.mark.parametrize("loss, spectral_norm",
                         [("non_saturating", False), ("hinge", True), ("wgan_gp", False)])
def test_dcgan_trains_on_digits(loss, spectral_norm):
    x, _ = data.load("digits", "train", size=64)
    keras.utils.set_random_seed(0)
    gan = GAN(G.dcgan_generator(8, (8, 8, 1), filters=8),
              G.dcgan_discriminator((8, 8, 1), filters=8, spectral_norm=spectral_norm))
    gan.compile(loss=loss)
    history = gan.fit(x, batch_size=32, epochs=1, verbose=0).history
    assert all(np.isfinite(v[0]) for v in history.values())
    assert int(gan.g_optimizer.iterations.numpy()) == 2
    samples = gan.sample(5, seed=0).numpy()
    assert samples.shape == (5, 8, 8, 1) and 0 <= samples.min() and samples.max() <= 1


# --------------------------------------------------------------------------- toy set-ups


def test_toy_gan_set_ups_and_their_rates():
    gan = G.toy_gan(pack=2, schedule="cosine", steps=100, learning_rate=2e-3, d_learning_rate=1e-4)
    assert gan.pack == 2 and gan.discriminator.input_shape == (None, 4)
    # cosine: each optimizer starts at its own peak rate and decays to 0 at the last step
    assert float(gan.d_optimizer._get_current_learning_rate()) == pytest.approx(1e-4)
    assert isinstance(gan.g_optimizer._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert float(gan.g_optimizer._learning_rate(100)) == pytest.approx(0.0, abs=1e-9)
    plain = G.toy_gan()
    assert float(plain.d_optimizer.learning_rate) == pytest.approx(1e-3)
    for bad in (dict(schedule="linear"), dict(schedule="cosine"), dict(learning_rate=0.0),
                dict(steps_per_execution=0)):
        with pytest.raises(ValueError):
            G.toy_gan(**bad)


def test_sample_snapshots_repeat_the_same_noise():
    from support import training

    keras.utils.set_random_seed(0)
    gan = G.toy_gan(steps=8)
    points, _ = data.mixture("ring8", 256, seed=0)
    snapshots = training.SampleSnapshots(5, seed=3)
    training.fit_resumable(gan, points, steps=8, batch_size=64, steps_per_epoch=4, callbacks=[snapshots])
    assert [epoch for epoch, _ in snapshots.snapshots] == [1, 2]
    np.testing.assert_allclose(snapshots.snapshots[-1][1], gan.sample(5, seed=3).numpy())
    assert not np.allclose(snapshots.snapshots[0][1], snapshots.snapshots[1][1])  # it trained


def test_precision_recall_of_one_distribution_and_of_a_dropped_half():
    rng = np.random.default_rng(0)
    real, same = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
    pr = metrics.precision_recall(real, same)
    assert pr.precision > 0.9 and pr.recall > 0.9
    half = same[same[:, 0] > 0]  # covers half of the real distribution, all of it realistic
    pr = metrics.precision_recall(real, half)
    assert pr.precision > 0.9 and pr.recall < 0.65
    far = metrics.precision_recall(real, same + 10.0)
    assert far.precision == 0.0 and far.recall == 0.0
    with pytest.raises(ValueError, match="k="):
        metrics.precision_recall(real, same, k=0)
    with pytest.raises(ValueError, match="one d"):
        metrics.precision_recall(real, same[:, :1])


def test_precision_recall_blocks_match_the_definition_and_stay_small():
    # The membership test is built block by block: it must equal the one-shot definition, and
    # 10,000 x 10,000 points in 128 dimensions (the MNIST run) must not need the 95 GiB cube.
    rng = np.random.default_rng(2)
    points, support = rng.normal(size=(300, 5)), rng.normal(size=(200, 5))
    radii = np.sort(np.sqrt(((support[:, None] - support[None]) ** 2).sum(-1)), axis=1)[:, 3]
    expected = (np.sqrt(((points[:, None] - support[None]) ** 2).sum(-1)) <= radii[None]).any(axis=1)
    for chunk_bytes in (1, 8 * 200 * 7, 2**26):  # one row, seven rows, all rows per block
        np.testing.assert_array_equal(metrics._inside(points, support, 3, chunk_bytes), expected)
    import tracemalloc
    big = rng.normal(size=(10_000, 128)).astype(np.float32)
    tracemalloc.start()
    metrics.precision_recall(big, big[::-1].copy(), k=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**30, f"peak {peak / 2**20:.0f} MiB"


def test_frechet_bootstrap_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    bootstrap = metrics.frechet_distance_bootstrap
    small = bootstrap(rng.normal(size=(100, 4)), rng.normal(0.5, 1, (100, 4)), n_boot=100)
    large = bootstrap(rng.normal(size=(2000, 4)), rng.normal(0.5, 1, (2000, 4)), n_boot=50)
    assert small.low <= small.value <= small.high and large.low <= large.value <= large.high
    assert large.se < small.se
    assert abs(large.value - 4 * 0.25) < 0.1  # the closed form: ||mu_a - mu_b||^2 with equal covariances
    with pytest.raises(ValueError, match="n_boot"):
        metrics.frechet_distance_bootstrap(rng.normal(size=(10, 2)), rng.normal(size=(10, 2)), n_boot=1)


def test_paired_frechet_difference_is_the_difference_and_pairing_shrinks_its_se():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(300, 4))
    a = rng.normal(0.3, 1, (300, 4))
    b = a + rng.normal(0, 0.1, a.shape) + 0.05  # b's row i is a's row i, moved a little: paired
    paired = metrics.frechet_distance_difference_bootstrap(a, b, reference, n_boot=100)
    fid = metrics.frechet_distance
    assert paired.value == pytest.approx(fid(a, reference) - fid(b, reference))
    assert paired.low <= paired.value <= paired.high
    alone = [metrics.frechet_distance_bootstrap(x, reference, n_boot=100).se for x in (a, b)]
    assert paired.se < np.hypot(*alone) / 3  # the shared rows and reference cancel
    with pytest.raises(ValueError, match="one row per pair"):
        metrics.frechet_distance_difference_bootstrap(a, b[:-1], reference)


@pytest.mark.parametrize("how", ["environment", "keras.json"])
def test_a_non_tensorflow_keras_backend_stops_at_import_with_the_fix(tmp_path, how):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if how == "environment":
        env["KERAS_BACKEND"] = "jax"
    else:  # Keras reads its backend from KERAS_HOME/keras.json; numpy needs no extra package
        (tmp_path / "keras.json").write_text(json.dumps({"backend": "numpy"}))
        env["KERAS_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", "import support.models.gan"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "KERAS_BACKEND=tensorflow" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: support.models needs Keras's TensorFlow backend")


def test_spectral_normalisation_holds_each_discriminator_layer_at_unit_norm(tmp_path):
    x, _ = data.load("digits", "train", size=128)
    keras.utils.set_random_seed(0)
    discriminator = G.dcgan_discriminator((8, 8, 1), filters=8, spectral_norm=True)
    wrapped = [layer for layer in discriminator.layers
               if isinstance(layer, keras.layers.SpectralNormalization)]
    assert [w.layer.name for w in wrapped] == ["conv_1", "conv_2", "logit"]
    gan = GAN(G.dcgan_generator(8, (8, 8, 1), filters=8), discriminator)
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-2), loss="hinge")
    gan.fit(x, batch_size=32, epochs=3, verbose=0)
    for layer in wrapped:  # the kernel a training call uses, as a matrix [.., out]
        kernel = layer.layer.kernel.numpy().reshape(-1, layer.layer.kernel.shape[-1])
        assert np.linalg.svd(kernel, compute_uv=False)[0] == pytest.approx(1.0, rel=0.05)
    path = tmp_path / "sn.keras"
    gan.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.discriminator(x[:8]).numpy(), gan.discriminator(x[:8]).numpy(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="spectral_norm='yes'"):
        G.dcgan_discriminator((8, 8, 1), spectral_norm="yes")
