"""Data-parallel training: one epoch under a 2-replica ``MirroredStrategy`` equals one epoch on one
device.

TensorFlow fixes its logical devices when it first initialises them, which ``import support``
does, and pytest runs every test in one process. So this file is also the script: run with
``sys.executable``, it splits the CPU into two logical devices first thing, then imports
``support``, trains each model both ways and prints the results as JSON.

What is compared, and why the tolerance: every model here is made deterministic, so the two runs
differ only in float32 summation order (per-replica partial sums, then an all-reduce).

- ``DenseAutoencoder``: deterministic as it is.
- ``VAE``: the encoder's log-variance output is fixed at -30 (zero kernel, bias -30), so
  ``sigma = exp(-15) ~ 3e-7`` and the reparameterization noise moves ``z`` by less than float32
  resolves; without that the replicas' noise draws differ from the single device's and only a
  Monte Carlo comparison would be possible.
- ``GAN`` (PacGAN, ``pack=2``): the generator's first layer is frozen with a zero kernel, so
  ``G(z)`` does not depend on the noise ``z`` while the later layers still train.

Plain SGD is used on purpose: Adam divides by the gradient's running RMS, so a gradient off by
the number of replicas changes its updates hardly at all and would hide the bug. After 4 steps the
weights agree to ``ATOL = 1e-5`` (they move by ~1e-2 per step, and reordered float32 sums differ
by ~1e-7 relative); with the per-replica batch mean that Keras' custom ``train_step`` would give
(gradients summed over 2 replicas, so doubled), the autoencoder's weights differ by far more,
which the ``naive`` run checks so that this test would have failed before the fix.
"""

import json
import subprocess
import sys

import pytest

ATOL = 1e-5  # max |w_2 replicas - w_1 device| after 4 SGD steps; see the module docstring
RTOL = 1e-5  # on the epoch's reported losses
BATCH, EXAMPLES = 64, 256  # global batch: 32 examples per replica, 4 steps


@pytest.fixture(scope="module")
def distributed():
    """The JSON printed by this file run as a script on 2 logical CPUs."""
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["autoencoder", "vae", "gan"])
def test_two_replicas_train_like_one_device(distributed, name):
    result = distributed[name]
    assert result["replicas"] == 2
    assert result["max_weight_difference"] < ATOL, result
    assert result["max_weight_change"] > 100 * ATOL, result  # training did move the weights
    for metric, (one, two) in result["history"].items():
        assert two == pytest.approx(one, rel=RTOL), (metric, one, two)


def test_per_replica_mean_would_fail(distributed):
    """Reducing over the local batch only (the bug) doubles the gradient on 2 replicas."""
    naive = distributed["autoencoder_naive"]
    assert naive["max_weight_difference"] > 100 * ATOL, naive


def test_strategy_rejects_unknown_kind():
    from support import training

    with pytest.raises(ValueError, match="kind='tpu'"):
        training.strategy("tpu")
    assert training.strategy("default").num_replicas_in_sync == 1


# --------------------------------------------------------------------------- the script


def logical_cpus(n: int) -> list[str]:
    """Split the first physical CPU into ``n`` logical devices; call before TF initialises."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _run(make, start, data, strategy):
    """Build with ``make`` in ``strategy``'s scope, set the weights ``start``, train one epoch;
    return the epoch's logs and the final weights."""
    with strategy.scope():
        model = make()
        model.set_weights(start)
    history = model.fit(data, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    return {k: v[0] for k, v in history.items()}, model.get_weights()


def _compare(make, data, mirrored):
    import numpy as np
    import tensorflow as tf

    start = make().get_weights()
    one, w_one = _run(make, start, data, tf.distribute.get_strategy())
    two, w_two = _run(make, start, data, mirrored)
    return {
        "replicas": mirrored.num_replicas_in_sync,
        "max_weight_difference": max(float(np.max(np.abs(a - b))) for a, b in zip(w_one, w_two)),
        "max_weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(w_one, start)),
        "history": {k: (one[k], two[k]) for k in one},
    }


def main():
    devices = logical_cpus(2)
    import keras
    import numpy as np
    import tensorflow as tf

    from support import objectives, training
    from support.models import gan
    from support.models.autoencoders import DenseAutoencoder
    from support.models.vae import VAE

    keras.utils.set_random_seed(0)
    mirrored = training.strategy("mirrored", devices=devices)
    rng = np.random.default_rng(0)
    images = (rng.random((EXAMPLES, 8, 8, 1)) < 0.3).astype("float32")
    points = rng.normal(size=(EXAMPLES, 2)).astype("float32")

    def autoencoder():
        model = DenseAutoencoder(input_shape=(8, 8, 1), widths=(32,), latent_dim=4)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        return model

    def vae():
        model = VAE(input_shape=(8, 8, 1), latent_dim=2, widths=(32,))
        kernel, bias = model.encoder.get_layer("posterior").get_weights()
        kernel[:, 2:], bias[2:] = 0.0, -30.0  # log_var = -30: sigma = 3e-7, noise negligible
        model.encoder.get_layer("posterior").set_weights([kernel, bias])
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        return model

    def pacgan():
        generator = gan.mlp_generator(2, 2, width=16, depth=2)
        first = generator.layers[0]
        first.set_weights([np.zeros_like(first.kernel), rng.random(16).astype("float32")])
        first.trainable = False  # G(z) no longer depends on z; the later layers still train
        model = gan.GAN(generator, gan.mlp_discriminator(2, 16, 2, pack=2), pack=2)
        model.compile(d_optimizer=keras.optimizers.SGD(0.1), g_optimizer=keras.optimizers.SGD(0.1))
        return model

    results = {
        "autoencoder": _compare(autoencoder, images, mirrored),
        "vae": _compare(vae, images, mirrored),
        "gan": _compare(pacgan, points, mirrored),
    }
    objectives.replica_mean = lambda values: (tf.reduce_mean(values),) * 2  # the bug
    results["autoencoder_naive"] = _compare(autoencoder, images, mirrored)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
