"""The seed-batched 2-D GANs: independent seeds, every loss, spectral normalisation, bad input."""

import numpy as np
import pytest
import tensorflow as tf

from support.models.toy_gans import ToyGANs, train_together

SMALL = dict(width=16, depth=2, batch_size=32)


def test_a_seed_trains_the_same_alone_and_beside_others():
    alone = ToyGANs(seeds=[3], **SMALL).train(20, samples=64).samples[-1, 0]
    together = ToyGANs(seeds=[5, 3], **SMALL).train(20, samples=64).samples[-1, 1]
    np.testing.assert_allclose(alone, together, rtol=1e-4, atol=1e-5)
    other = ToyGANs(seeds=[5], **SMALL).train(20, samples=64).samples[-1, 0]
    assert np.abs(other - alone).max() > 1e-2  # and another seed trains differently


def test_set_ups_trained_together_train_as_they_do_alone():
    def models():
        return {"plain": ToyGANs(seeds=[0, 1], **SMALL), "packed": ToyGANs(seeds=[0, 1], pack=2, **SMALL),
                "wgan": ToyGANs(seeds=[0, 1], loss="wgan_gp", d_steps=2, **SMALL)}
    alone = {name: model.train(30, snapshot_every=10, samples=64) for name, model in models().items()}
    together = train_together(models(), 30, snapshot_every=10, samples=64)
    assert list(together) == ["plain", "packed", "wgan"]
    for name, runs in alone.items():
        assert together[name].steps == runs.steps == [10, 20, 30]
        np.testing.assert_allclose(together[name].samples, runs.samples, rtol=1e-5, atol=1e-6)


def test_training_together_raises_the_first_failure():
    diverging = ToyGANs(seeds=[0], learning_rate=1e30, **SMALL)
    with pytest.raises(FloatingPointError, match="diverged"):
        train_together({"fine": ToyGANs(seeds=[0], **SMALL), "diverging": diverging}, 20)
    with pytest.raises(ValueError, match="dict of name -> ToyGANs"):
        train_together({}, 10)
    with pytest.raises(ValueError, match="workers"):
        train_together({"fine": ToyGANs(seeds=[0], **SMALL)}, 10, workers=0)


@pytest.mark.parametrize("loss", ["non_saturating", "minimax", "hinge", "wgan_gp"])
def test_every_loss_trains_with_packing(loss):
    gans = ToyGANs(seeds=[0, 1], loss=loss, pack=2, d_steps=2, **SMALL)
    runs = gans.train(10, snapshot_every=5, samples=100)
    assert runs.steps == [5, 10] and runs.samples.shape == (2, 2, 100, 2)
    assert np.all(np.isfinite(runs.critic_gap)) and np.all(np.isfinite(runs.d_loss))


def test_spectral_norm_keeps_each_discriminator_matrix_at_unit_norm():
    gans = ToyGANs(seeds=[0, 1], spectral_norm=True, learning_rate=1e-2, **SMALL)
    gans.train(200)
    for w in gans._normalised(update=False):
        top = np.linalg.svd(w.numpy(), compute_uv=False)[:, 0]  # [S] largest singular values
        np.testing.assert_allclose(top, 1.0, rtol=0.05)


def test_the_cosine_schedule_ends_at_zero_rate():
    gans = ToyGANs(seeds=[0], schedule="cosine", steps=30, **SMALL)
    gans.train(30)
    assert float(gans.g_optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    before = [w.numpy().copy() for w in gans.g_weights]
    gans.train(5)  # past the schedule: the rate stays 0, so nothing moves
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, gans.g_weights))


def test_samples_and_real_points_have_the_mixture_scale():
    gans = ToyGANs(seeds=[0, 1], **SMALL)
    real = gans.real(1000)
    radius = np.linalg.norm(real, axis=-1)
    assert real.shape == (2, 1000, 2) and abs(radius.mean() - 2.0) < 0.01
    assert gans.sample(7).shape == (2, 7, 2)
    assert np.array_equal(gans.sample(7, seed=3), gans.sample(7, seed=3))
    assert tf.is_tensor(gans.generate(tf.zeros((2, 4, 2))))


@pytest.mark.parametrize("kwargs, message", [
    (dict(seeds=[0, 0]), "distinct"),
    (dict(seeds=[]), "at least one"),
    (dict(loss="wasserstein"), "loss='wasserstein'"),
    (dict(pack=3), "pack=3 must divide batch_size=256"),
    (dict(schedule="cosine"), "steps"),
    (dict(learning_rate=0), "learning_rate=0"),
    (dict(toy="ring9"), "ring9"),
    (dict(betas=(0.5, 1.0)), "betas=.*Adam"),
    (dict(betas=0.9), "betas=.*Adam"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(Exception, match=message):
        ToyGANs(**kwargs)


@pytest.mark.parametrize("total", [None, 7])
def test_the_fused_adam_takes_keras_adams_steps(total):
    # the toy GANs' Adam is one fused kernel per variable; it must move weights as Keras's does
    import keras

    from support.models.toy_gans import _FusedAdam

    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    ours, theirs = tf.Variable(start), tf.Variable(start)
    rate = 0.01 if total is None else keras.optimizers.schedules.CosineDecay(0.01, total)
    fused = _FusedAdam([ours], 0.01, (0.5, 0.9), total)
    reference = keras.optimizers.Adam(rate, beta_1=0.5, beta_2=0.9)
    for step in range(10):
        grad = tf.constant(rng.normal(size=(3, 4)).astype(np.float32))
        fused.apply([grad], [ours])
        reference.apply_gradients([(grad, theirs)])
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
