"""Tests of resumable training: step-indexed batches and checkpoints (:func:`fit_resumable`).

The quality gate: a run interrupted after its first checkpoint and rerun with the same
``checkpoint_dir`` ends at the same step as an uninterrupted run, having run exactly the missing
steps, and (same seeds, deterministic ops) at the same weights, bit for bit.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # has the undo TF does not export

from support import data
from support.models.gan import GAN, mlp_discriminator, mlp_generator
from support.models.vae import VAE, KLWarmup
from support.training import InterruptAt, Interrupted, ResumableFit, fit_resumable

# --------------------------------------------------------------------------- step_batches


def _rows(dataset):
    """The batches of a dataset of ``[batch, 1]`` index columns, as a ``[steps, batch]`` array."""
    return np.stack([batch.numpy()[:, 0] for batch in dataset])


def test_step_batches_from_start_step_are_the_tail_of_the_full_sequence():
    x = np.arange(12, dtype=np.float32)[:, None]  # 3 batches of 4 per epoch
    full = _rows(data.step_batches(x, 4, seed=3, steps=12))
    for start in (1, 3, 5, 7, 11):
        np.testing.assert_array_equal(
            _rows(data.step_batches(x, 4, seed=3, start_step=start, steps=12 - start)), full[start:]
        )
    # Every example once per epoch, in a different order each epoch and for another seed.
    epochs = full.reshape(4, 12)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(12))
    assert len({tuple(epoch) for epoch in epochs}) == 4
    assert not np.array_equal(_rows(data.step_batches(x, 4, seed=4, steps=12)), full)
    # Endless without steps.
    assert len(_rows(data.step_batches(x, 4, seed=3).take(30))) == 30


def test_step_batches_drop_the_remainder_of_each_epoch():
    x = np.arange(10, dtype=np.float32)[:, None]  # 2 batches of 4 per epoch, 2 left out
    epochs = _rows(data.step_batches(x, 4, seed=0, steps=40)).reshape(20, 8)
    assert all(len(set(epoch)) == 8 for epoch in epochs)  # each example at most once
    left_out = {tuple(sorted(set(range(10)) - set(epoch))) for epoch in epochs}
    assert len(left_out) > 1  # not always the same two
    with pytest.raises(ValueError, match="batch_size=11"):
        data.step_batches(x, 11)


def test_dynamic_binarization_is_a_function_of_seed_and_step():
    x = np.full((64, 4, 4, 1), 0.3, dtype=np.float32)
    full = np.stack(list(data.step_batches(x, 16, seed=1, steps=40, binarization="dynamic")))
    tail = np.stack(list(data.step_batches(x, 16, seed=1, start_step=13, steps=27,
                                           binarization="dynamic")))
    np.testing.assert_array_equal(tail, full[13:])
    assert set(np.unique(full)) == {0.0, 1.0}
    # Bernoulli(0.3) bits: 40 * 256 draws, standard error 0.0045.
    assert abs(full.mean() - 0.3) < 0.02
    assert not np.array_equal(full[0], full[4])  # the same examples (next epoch), fresh bits


# --------------------------------------------------------------------------- fit_resumable

STEPS, EVERY, INTERRUPT_AT, BATCH = 60, 20, 30, 64


@pytest.fixture(scope="module")
def deterministic_ops():
    """Deterministic TensorFlow ops for this module only (the switch is process-wide)."""
    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was_enabled:
        tf_config.disable_op_determinism()


class CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


def make_gan(width=32, steps_per_execution=1):
    keras.utils.set_random_seed(0)
    gan = GAN(mlp_generator(2, width=width, depth=2), mlp_discriminator(width=width, depth=2))
    gan.compile(steps_per_execution=steps_per_execution)
    return gan


def assert_same_state(a, b):
    """Weights, seed-generator states and optimizer states all equal, bit for bit."""
    assert len(a.variables) == len(b.variables)
    for va, vb in zip(a.variables, b.variables):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=va.path)
    for name in ("d_optimizer", "g_optimizer", "optimizer"):
        if hasattr(a, name):
            for va, vb in zip(getattr(a, name).variables, getattr(b, name).variables):
                np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=f"{name} {va.path}")


@pytest.fixture(scope="module")
def gan_runs(deterministic_ops, tmp_path_factory):
    """An uninterrupted GAN run and one interrupted after its first checkpoint, then rerun.

    768 ring8 points in batches of 64: 12 steps per epoch, so the checkpoint at step 20 falls
    in the middle of epoch 1 and the resumed run starts with a partial epoch.
    """
    x, _ = data.mixture("ring8", 768, seed=0)
    settings = dict(steps=STEPS, batch_size=BATCH, checkpoint_every=EVERY, seed=1)
    whole_dir = tmp_path_factory.mktemp("whole")
    whole = make_gan()
    whole_result = fit_resumable(whole, x, checkpoint_dir=whole_dir, **settings)

    resumed_dir = tmp_path_factory.mktemp("resumed")
    with pytest.raises(Interrupted):
        fit_resumable(make_gan(), x, checkpoint_dir=resumed_dir,
                      callbacks=[InterruptAt(INTERRUPT_AT)], **settings)
    counter = CountBatches()
    resumed = make_gan()  # a fresh kernel: the model is built again from the same seed
    resumed_result = fit_resumable(resumed, x, checkpoint_dir=resumed_dir, callbacks=[counter],
                                   **settings)
    return dict(x=x, settings=settings, whole=whole, whole_result=whole_result, whole_dir=whole_dir,
                resumed=resumed, resumed_result=resumed_result, resumed_dir=resumed_dir,
                counted=counter.count)


def test_uninterrupted_run_checkpoints_every_n_steps(gan_runs):
    result = gan_runs["whole_result"]
    assert isinstance(result, ResumableFit)
    assert (result.start_step, result.steps_run, result.step) == (0, STEPS, STEPS)
    assert not result.resumed and result.checkpoint.endswith(f"ckpt-{STEPS}")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(gan_runs["whole_dir"]), 2)
    assert [path.rsplit("-", 1)[1] for path in manager.checkpoints] == ["40", "60"]
    assert result.history.epoch == [0, 1, 2, 3, 4]  # ceil(60 / 12) epochs
    assert gan_runs["whole"].g_optimizer.iterations.numpy() == STEPS


def test_interrupted_and_resumed_run_ends_where_the_uninterrupted_one_does(gan_runs):
    result = gan_runs["resumed_result"]
    assert (result.start_step, result.steps_run, result.step) == (EVERY, STEPS - EVERY, STEPS)
    assert result.resumed
    assert gan_runs["counted"] == STEPS - EVERY  # no step lost or repeated
    assert result.history.epoch == [1, 2, 3, 4]  # epoch 1 entered at its 9th step
    assert gan_runs["resumed"].d_optimizer.iterations.numpy() == STEPS
    assert_same_state(gan_runs["whole"], gan_runs["resumed"])


def test_rerun_of_a_finished_training_trains_nothing_and_restores_it(gan_runs):
    gan = make_gan()
    counter = CountBatches()
    result = fit_resumable(gan, gan_runs["x"], checkpoint_dir=gan_runs["whole_dir"],
                           callbacks=[counter], **gan_runs["settings"])
    assert (result.start_step, result.steps_run, counter.count) == (STEPS, 0, 0)
    assert result.history.history == {}
    assert_same_state(gan_runs["whole"], gan)


def test_checkpoint_dir_none_trains_the_same_steps_without_checkpoints(gan_runs):
    gan = make_gan(steps_per_execution=4)  # 4 steps per compiled call: the count is still exact
    result = fit_resumable(gan, gan_runs["x"], **gan_runs["settings"])
    assert (result.start_step, result.steps_run, result.checkpoint) == (0, STEPS, None)
    assert_same_state(gan_runs["whole"], gan)


def test_a_run_on_epoch_boundaries_has_no_batch_hook_and_trains_the_same_steps(gan_runs, tmp_path):
    # Start, checkpoints and end on epoch boundaries (12 steps per epoch), no other callback
    # with a batch hook: fit_resumable then counts at epoch ends, so that Keras need not wait for
    # each step's logs. It must save, count and train exactly as the step-by-step control does.
    settings = {**gan_runs["settings"], "steps": 36, "checkpoint_every": 12}
    gan = make_gan()
    seen = []
    fit = gan.fit
    gan.fit = lambda *args, **kwargs: seen.extend(kwargs["callbacks"]) or fit(*args, **kwargs)
    result = fit_resumable(gan, gan_runs["x"], checkpoint_dir=tmp_path / "epochs", **settings)
    default = keras.callbacks.Callback.on_train_batch_end
    assert seen and not [callback for callback in seen if type(callback).on_train_batch_end is not default]
    assert (result.start_step, result.steps_run, result.step) == (0, 36, 36)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path / "epochs"), 2)
    assert [path.rsplit("-", 1)[1] for path in manager.checkpoints] == ["24", "36"]
    assert gan.g_optimizer.iterations.numpy() == 36

    stepwise, counter = make_gan(), CountBatches()  # a batch hook: the step-by-step control
    fit_resumable(stepwise, gan_runs["x"], checkpoint_dir=tmp_path / "steps", callbacks=[counter],
                  **settings)
    assert counter.count == 36
    assert_same_state(stepwise, gan)


def test_a_checkpoint_of_another_model_or_other_data_is_refused(gan_runs):
    folder = gan_runs["whole_dir"]
    other = make_gan(width=16)
    before = [np.asarray(v).copy() for v in other.variables]
    with pytest.raises(ValueError, match="checkpoint_dir=.*different model") as error:
        fit_resumable(other, gan_runs["x"], checkpoint_dir=folder, **gan_runs["settings"])
    assert str(folder) in str(error.value) and "new checkpoint_dir" in str(error.value)
    for value, variable in zip(before, other.variables):  # nothing was restored
        np.testing.assert_array_equal(value, np.asarray(variable))
    settings = {**gan_runs["settings"], "batch_size": 32}
    with pytest.raises(ValueError, match="other data settings.*batch_size=64"):
        fit_resumable(make_gan(), gan_runs["x"], checkpoint_dir=folder, **settings)


def test_vae_resumed_mid_epoch_with_warmup_and_validation(deterministic_ops, tmp_path):
    """A VAE with dynamic binarization, KL warm-up and validation, interrupted in its first
    epoch and resumed in the same kernel with the same model object."""
    x_train, _ = data.load("digits", "train")  # 1437 images: 22 steps of 64 per epoch
    validation = tf.data.Dataset.from_tensor_slices(data.binarize(x_train[:128], seed=2)).batch(64)

    def make():
        keras.utils.set_random_seed(0)
        model = VAE(input_shape=(8, 8, 1), latent_dim=2, widths=(32,))
        model.init_output_bias(x_train)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model

    settings = dict(steps=50, batch_size=64, checkpoint_every=15, binarization="dynamic",
                    validation_data=validation)
    whole = make()
    whole_result = fit_resumable(whole, x_train, callbacks=[KLWarmup(2)], **settings)
    assert whole_result.history.history["beta"] == [0.5, 1.0, 1.0]

    model = make()
    with pytest.raises(Interrupted):
        fit_resumable(model, x_train, checkpoint_dir=tmp_path,
                      callbacks=[KLWarmup(2), InterruptAt(20)], **settings)
    counter = CountBatches()
    result = fit_resumable(model, x_train, checkpoint_dir=tmp_path,
                           callbacks=[KLWarmup(2), counter], **settings)
    assert (result.start_step, result.steps_run, counter.count) == (15, 35, 35)
    assert result.history.epoch == [0, 1, 2]
    np.testing.assert_array_equal(result.history.history["val_loss"][1:],
                                  whole_result.history.history["val_loss"][1:])
    assert_same_state(whole, model)


def test_fit_resumable_validates_its_arguments(tmp_path):
    x, _ = data.mixture("ring8", 128, seed=0)
    keras.utils.set_random_seed(0)
    uncompiled = GAN(mlp_generator(2, width=8, depth=1), mlp_discriminator(width=8, depth=1))
    with pytest.raises(ValueError, match="not compiled"):
        fit_resumable(uncompiled, x, steps=4, batch_size=32)
    gan = make_gan(width=8)
    for kwargs, match in [
        (dict(steps=0), "steps=0"),
        (dict(steps=4, checkpoint_every=0), "checkpoint_every=0"),
        (dict(steps=4, batch_size=256), "batch_size=256"),
        (dict(steps=4, binarization="sometimes"), "binarization='sometimes'"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit_resumable(gan, x, **{"batch_size": 32, **kwargs})
    with pytest.raises(ValueError, match="steps_per_execution=4"):
        fit_resumable(make_gan(width=8, steps_per_execution=4), x, steps=6, batch_size=32)


def test_train_vae_with_checkpoint_dir_resumes_to_the_uninterrupted_result(deterministic_ops, tmp_path):
    """Notebook 03's path: ``train_vae(..., checkpoint_dir=...)`` interrupted in its second
    epoch, then called again on a freshly built model (a new kernel), ends bit for bit where
    an uninterrupted call ends."""
    from support.training import train_vae

    x_train, _ = data.load("digits", "train")  # 22 steps of 64 per epoch
    x_val = data.binarize(x_train[:128], seed=2)

    def make():
        keras.utils.set_random_seed(0)
        return VAE(input_shape=(8, 8, 1), latent_dim=2, widths=(32,))

    settings = dict(epochs=3, batch_size=64, warmup_epochs=2, seed=5, checkpoint_every=10)
    whole = make()
    whole_history = train_vae(whole, x_train, x_val, **settings)
    assert len(whole_history.history["loss"]) == 3
    with pytest.raises(Interrupted):
        train_vae(make(), x_train, x_val, checkpoint_dir=tmp_path, callbacks=[InterruptAt(35)], **settings)
    resumed = make()
    history = train_vae(resumed, x_train, x_val, checkpoint_dir=tmp_path, **settings)
    assert history.epoch == [1, 2]  # restored at step 30, inside epoch 1
    assert history.history["val_loss"][-1] == whole_history.history["val_loss"][-1]
    assert_same_state(whole, resumed)
