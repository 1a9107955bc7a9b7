"""support.training: the schedule's values, the batches, a recipe that reaches PCA, and the
explicit loop (the same weights as fit, early stopping, hooks, the NaN guard)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from support.data import load
from support.metrics import pca, pca_reconstruction_mse, principal_angles, reconstruction_mse
from support.models.autoencoders import DenseAutoencoder, decoder_matrix, reconstruction_loss
from support.training import (
    EarlyStopping,
    StopOnNaN,
    SubspaceTracker,
    TrainingDiverged,
    batches,
    learning_rate_schedule,
    train_autoencoder,
    train_loop,
    train_step_by_step,
)


def test_cosine_schedule_decays_from_the_peak_to_zero():
    schedule = learning_rate_schedule(0.1, "cosine", 100)
    rates = [float(schedule(step)) for step in (0, 50, 100)]
    np.testing.assert_allclose(rates, [0.1, 0.05, 0.0], atol=1e-7)
    assert learning_rate_schedule(0.1, "constant", 100) == 0.1


def test_batches_cover_each_epoch_once_in_a_new_order():
    x = np.arange(10, dtype=np.float32)[:, None]
    iterator = iter(batches(x, 4, seed=0))
    epochs = [np.concatenate([next(iterator) for _ in range(3)])[:, 0] for _ in range(2)]
    assert [len(e) for e in epochs] == [10, 10]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
    assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"schedule": "step"}, "schedule='step'"),
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop'"),
        ({"learning_rate": -1.0}, "learning_rate=-1.0"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(kwargs, match):
    model = DenseAutoencoder((4, 4, 1), latent_dim=2, linear=True)
    with pytest.raises(ValueError, match=match):
        train_autoencoder(model, np.zeros((8, 4, 4, 1), np.float32), **kwargs)


def test_linear_autoencoder_recipe_finds_a_planted_principal_subspace():
    # Rank-3 signal with separated variances plus isotropic noise, offset from 0: the recipe
    # must reach both the optimum MSE and the subspace itself.
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(16, 3)))
    signal = rng.normal(size=(512, 3)) * [1.0, 0.7, 0.5]
    x = (0.5 + signal @ basis.T + 0.1 * rng.normal(size=(512, 16))).astype(np.float32)
    x = x.reshape(512, 4, 4, 1)
    keras.utils.set_random_seed(0)
    model = DenseAutoencoder((4, 4, 1), latent_dim=3, linear=True)
    history = train_autoencoder(
        model, x[:384], x[384:], epochs=150, batch_size=32, learning_rate=0.01, seed=0
    )
    assert len(history.history["loss"]) == 150 and "val_loss" in history.history
    assert history.history["val_loss"][-1] == pytest.approx(
        reconstruction_mse(model, x[384:]), rel=1e-4
    )
    optimum = pca_reconstruction_mse(x[:384], x[384:], 3)
    assert reconstruction_mse(model, x[384:]) <= 1.03 * optimum
    weight, _ = decoder_matrix(model)
    assert principal_angles(weight.T, pca(x[:384], 3).components.T).max() < 5.0  # measured 0.5


def test_training_repeats_with_the_same_seed():
    x = np.random.default_rng(1).random((64, 4, 4, 1), dtype=np.float32)
    losses = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = DenseAutoencoder((4, 4, 1), widths=(8,), latent_dim=2)
        history = train_autoencoder(model, x, epochs=3, batch_size=16, seed=0)
        losses.append(history.history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


# --------------------------------------------------------------------------- the explicit loop


@pytest.fixture(scope="module")
def digits():
    x, _ = load("digits", "train")
    return x[:320], x[320:420]


def small_model(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return DenseAutoencoder((8, 8, 1), widths=(32, 16), latent_dim=4, **kwargs)


def max_weight_difference(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_loop_gives_the_weights_of_fit(digits, optimizer):
    # Same initial weights, optimizer settings and batches (batches() with the same seed):
    # the explicit loop and fit with the model's own train_step must apply the same updates.
    x_train, x_val = digits
    by_fit, by_loop = small_model(), small_model(seed=1)
    by_loop.set_weights(by_fit.get_weights())
    rate = 1e-2 if optimizer == "adam" else 0.5
    fit_history = train_autoencoder(
        by_fit, x_train, x_val, epochs=1, batch_size=64, learning_rate=rate,
        schedule="constant", optimizer=optimizer, seed=0,
    )
    sgd = keras.optimizers.SGD(rate, momentum=0.9)
    history = train_loop(
        by_loop, x_train, x_val, optimizer=keras.optimizers.Adam(rate) if optimizer == "adam" else sgd,
        epochs=1, batch_size=64, seed=0, progress=False,
    )
    assert max_weight_difference(by_fit, by_loop) <= 1e-5
    assert max_weight_difference(by_fit, small_model()) > 1e-3  # both really trained
    assert history["loss"][0] == pytest.approx(fit_history.history["loss"][0], rel=1e-5)
    assert history["val_loss"][0] == pytest.approx(fit_history.history["val_loss"][0], rel=1e-5)
    assert history["epochs"] == 1


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_seven_step_loop_gives_the_weights_and_losses_of_train_loop_and_fit(digits, optimizer):
    # The short loop notebook 02 shows must be the real thing: same updates as train_loop
    # and as fit, epoch after epoch (two epochs: the batch order changes between them).
    x_train, _ = digits

    def make_optimizer():
        if optimizer == "adam":
            return keras.optimizers.Adam(1e-2)
        return keras.optimizers.SGD(0.5, momentum=0.9)

    by_steps, by_loop, by_fit = small_model(), small_model(), small_model()
    losses = train_step_by_step(by_steps, x_train, optimizer=make_optimizer(), epochs=2, batch_size=64,
                                seed=3)
    history = train_loop(by_loop, x_train, optimizer=make_optimizer(), epochs=2, batch_size=64, seed=3,
                         progress=False)
    train_autoencoder(by_fit, x_train, epochs=2, batch_size=64, schedule="constant", optimizer=optimizer,
                      learning_rate=1e-2 if optimizer == "adam" else 0.5, seed=3)
    assert max_weight_difference(by_steps, by_loop) <= 1e-6
    assert max_weight_difference(by_steps, by_fit) <= 1e-5
    assert max_weight_difference(by_steps, small_model()) > 1e-3  # it really trained
    assert losses == pytest.approx(history["loss"], rel=1e-6)
    assert losses[1] < losses[0]


def test_the_seven_step_loop_takes_another_loss(digits):
    x_train, _ = digits

    def absolute_error(x, x_hat):
        return tf.reduce_mean(tf.abs(tf.reshape(x - x_hat, [tf.shape(x)[0], -1])), axis=1)

    by_steps, by_loop = small_model(), small_model()
    losses = train_step_by_step(by_steps, x_train, loss_fn=absolute_error, epochs=1, batch_size=100, seed=0)
    history = train_loop(by_loop, x_train, loss_fn=absolute_error, epochs=1, batch_size=100, seed=0,
                         progress=False)
    assert max_weight_difference(by_steps, by_loop) <= 1e-6
    assert losses == pytest.approx(history["loss"], rel=1e-6)


def test_train_loop_history_is_the_mean_loss_and_the_model_learns(digits):
    x_train, x_val = digits
    model = small_model()
    history = train_loop(model, x_train, x_val, optimizer=keras.optimizers.Adam(1e-2), epochs=8,
                         batch_size=32, progress=False)
    assert len(history["loss"]) == len(history["val_loss"]) == history["epochs"] == 8
    assert history["val_loss"][-1] == pytest.approx(reconstruction_mse(model, x_val), rel=1e-4)
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert "best_epoch" not in history


def scripted_loss(offsets):
    """A loss whose value is the reconstruction loss plus a per-epoch offset set by a hook: the
    offset moves the (validation) loss by a known amount without changing its gradient."""
    offset = tf.Variable(offsets[0], dtype=tf.float32, trainable=False)

    def loss_fn(x, x_hat):
        return reconstruction_loss(x, x_hat) + offset

    def next_offset(epoch, logs):
        offset.assign(offsets[min(epoch + 1, len(offsets) - 1)])

    return loss_fn, next_offset


def weights_recorder(model, weights):
    """A hook that appends the model's weights after every epoch to the list ``weights``."""
    return lambda epoch, logs: weights.append(model.get_weights())


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(digits):
    x_train, x_val = digits
    loss_fn, next_offset = scripted_loss([0.5, 0.3, 0.2, 0.4, 0.4, 0.4, 0.0, 0.0])
    weights = []
    model = small_model()
    history = train_loop(
        model, x_train, x_val, loss_fn=loss_fn, epochs=8, batch_size=64, progress=False,
        early_stopping=EarlyStopping(patience=2), hooks=[next_offset, weights_recorder(model, weights)],
    )
    # Best at epoch 2; epochs 3 and 4 do not improve: stop after epoch 4, never reach 6.
    assert history["epochs"] == 5 and history["stopped_early"]
    assert history["best_epoch"] == 2
    assert history["best_loss"] == pytest.approx(history["val_loss"][2])
    for restored, best in zip(model.get_weights(), weights[2]):
        np.testing.assert_array_equal(restored, best)


def test_early_stopping_on_the_training_loss_runs_the_budget_while_it_improves(digits):
    x_train, _ = digits
    history = train_loop(
        small_model(), x_train, epochs=4, batch_size=64, progress=False,
        early_stopping=EarlyStopping(patience=1, monitor="loss"),
    )
    assert history["epochs"] == 4 and not history["stopped_early"] and history["best_epoch"] == 3


def test_hooks_callables_objects_and_keras_callbacks(digits):
    x_train, _ = digits
    calls = []

    class Recorder:
        def on_epoch_end(self, epoch, logs):
            calls.append(("object", epoch, logs["loss"]))

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                self.model.stop_training = True

    keras.utils.set_random_seed(0)
    model = DenseAutoencoder((8, 8, 1), latent_dim=2, linear=True)
    tracker = SubspaceTracker(pca(x_train, 2).components)
    history = train_loop(
        model, x_train, epochs=10, batch_size=64, progress=False,
        hooks=[lambda epoch, logs: calls.append(("callable", epoch)), Recorder(), tracker, Stop()],
    )
    assert history["epochs"] == 3
    assert [c for c in calls if c[0] == "callable"] == [("callable", e) for e in range(3)]
    assert [c[2] for c in calls if c[0] == "object"] == history["loss"]
    assert len(tracker.angles) == 3 and all(0 <= a <= 90 for a in tracker.angles)


def test_progress_bar_goes_to_stderr(digits, capsys):
    train_loop(small_model(), digits[0], epochs=2, batch_size=64, progress=True)
    captured = capsys.readouterr()
    assert "train_loop" in captured.err and "2/2" in captured.err and captured.out == ""


def test_a_huge_learning_rate_raises_one_clear_error_and_keeps_finite_weights(digits):
    # A linear output lets the squared error grow without bound (a sigmoid output saturates
    # instead: the loss stays finite and the network dies, which no NaN guard can see).
    model = small_model(output_activation=None)
    with pytest.raises(TrainingDiverged, match=r"epoch 0 at step \d+ .*smaller learning rate") as caught:
        train_loop(model, digits[0], optimizer=keras.optimizers.SGD(1e4), epochs=5, batch_size=64,
                   progress=False, init_output_bias=False)
    assert isinstance(caught.value, ValueError)
    assert caught.value.epoch == 0 and not math.isfinite(caught.value.loss)
    assert "learning_rate=1e+04" in str(caught.value)
    # Diverged in epoch 0: the weights are back to the initial ones, not NaN.
    for restored, initial in zip(model.get_weights(), small_model(output_activation=None).get_weights()):
        np.testing.assert_array_equal(restored, initial)


def test_nan_in_a_later_epoch_restores_the_last_finite_epoch(digits):
    x_train, _ = digits
    loss_fn, next_offset = scripted_loss([0.0, 0.0, float("nan")])
    weights = []
    model = small_model()
    with pytest.raises(TrainingDiverged, match="epoch 2 at step 0") as caught:
        train_loop(model, x_train, loss_fn=loss_fn, epochs=5, batch_size=64, progress=False,
                   hooks=[next_offset, weights_recorder(model, weights)])
    assert (caught.value.epoch, caught.value.step) == (2, 0)
    assert len(caught.value.history["loss"]) == 2
    assert "end of epoch 1" in str(caught.value)
    for restored, good in zip(model.get_weights(), weights[1]):
        np.testing.assert_array_equal(restored, good)


def test_stop_on_nan_gives_fit_the_same_error(digits):
    model = small_model(output_activation=None)
    with pytest.raises(TrainingDiverged, match="epoch 0 by step"):
        train_autoencoder(model, digits[0], epochs=5, batch_size=64, optimizer="sgd", learning_rate=1e4,
                          schedule="constant", init_output_bias=False, callbacks=[StopOnNaN()])
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_stop_on_nan_is_silent_when_training_is_finite(digits):
    model = small_model()
    history = train_autoencoder(model, digits[0], epochs=2, batch_size=64, callbacks=[StopOnNaN()])
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"early_stopping": EarlyStopping()}, "x_val is None"),
        ({"early_stopping": 3}, "early_stopping=3"),
        ({"hooks": [3]}, "hooks holds 3"),
        ({"loss_fn": lambda x, x_hat: tf.reduce_mean(reconstruction_loss(x, x_hat))}, r"expected \[batch\]"),
        ({"x_val": np.zeros((4, 4, 4, 1))}, "x_val has examples of shape"),
    ],
)
def test_train_loop_rejects_bad_arguments(digits, kwargs, match):
    kwargs = {"x_val": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        train_loop(small_model(), digits[0][:64], epochs=kwargs.pop("epochs", 1), progress=False, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"patience": 0}, "patience=0"), ({"min_delta": -1.0}, "min_delta=-1.0"),
     ({"monitor": "accuracy"}, "monitor='accuracy'")],
)
def test_early_stopping_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


# --------------------------------------------------------------------------- Grappler options


def test_graph_options_switch_a_pass_off_inside_the_block_and_back_after():
    from support.training import graph_options

    before = tf.config.optimizer.get_experimental_options()
    with graph_options(remapping=False):
        assert tf.config.optimizer.get_experimental_options()["remapping"] is False
    after = tf.config.optimizer.get_experimental_options()
    assert after.get("remapping", True) == before.get("remapping", True)
    with pytest.raises(RuntimeError), graph_options(remapping=False):
        raise RuntimeError("an error inside the block")
    assert tf.config.optimizer.get_experimental_options().get("remapping", True) is True  # restored anyway


@pytest.mark.parametrize("options, message", [
    ({}, "got none"), ({"remaping": False}, "got remaping"), ({"remapping": "no"}, "must be True or False"),
])
def test_graph_options_name_a_bad_option(options, message):
    from support.training import graph_options

    with pytest.raises(ValueError, match=message), graph_options(**options):
        pass


DCGAN_FIT = """
import sys
from support import notebook
notebook.import_tensorflow()
import keras
from support import data, training
from support.models.gan import GAN, dcgan_discriminator, dcgan_generator
x, _ = data.load("digits", "train")
keras.utils.set_random_seed(0)
gan = GAN(dcgan_generator(32, x.shape[1:], filters=32), dcgan_discriminator(x.shape[1:], filters=32))
gan.compile(d_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
            g_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5))
if sys.argv[1] == "off":
    with training.graph_options(remapping=False):
        training.fit_resumable(gan, x, steps=10 * (len(x) // 64), batch_size=64, seed=0)
else:
    training.fit_resumable(gan, x, steps=10 * (len(x) // 64), batch_size=64, seed=0)
"""


def test_the_dcgan_fit_without_remapping_prints_no_remapper_error(tmp_path):
    # notebook 04 trains its DCGAN inside graph_options(remapping=False): on CPUs where Grappler's
    # remapper fails on the discriminator's gradient, that keeps its error line out of the notebook
    import os
    import subprocess
    import sys

    script = tmp_path / "fit.py"
    script.write_text(DCGAN_FIT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}  # the tests' conftest quiets TensorFlow's C++ log
    runs = {mode: subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True,
                                 timeout=300, env=env)
            for mode in ("on", "off")}
    for mode, done in runs.items():
        assert done.returncode == 0, (mode, done.stderr[-2000:])
    if "remapper failed" not in runs["on"].stderr:
        pytest.skip("Grappler's remapper does not fail on this CPU: nothing to keep out")
    assert "remapper failed" not in runs["off"].stderr, runs["off"].stderr[-2000:]
