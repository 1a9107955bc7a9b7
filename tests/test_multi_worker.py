"""Several machines, really: two worker processes on 127.0.0.1, joined by ``TF_CONFIG`` into one
``MultiWorkerMirroredStrategy``, train the VAE for one epoch and end at the weights of one process
that trains the same model on the same global batches.

This file is also the workers' script: run with ``sys.executable`` and a worker index, it reads
``TF_CONFIG`` (set by the test), builds :func:`support.training.strategy` ``("multi_worker")``,
loads the shared initial weights, trains, and (worker 0) saves the final weights.

Why the comparison is exact up to float32 summation order:

- the VAE is made deterministic as in ``test_distribute.py``: the encoder's log-variance output is
  fixed at -30, so the reparameterization noise moves ``z`` by ~3e-7, below what float32 resolves
  next to the means;
- every step is the whole data set (``EXAMPLES == BATCH``, the epoch repeats it ``STEPS`` times), so
  however ``tf.data`` shards a step's examples over the workers (``AutoShardPolicy.DATA``), the
  union is the same 64 examples and the global mean gradient is the same;
- plain SGD, so that a gradient off by the number of workers would show (Adam would hide it).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ATOL = 1e-5  # max |w_2 workers - w_1 process| after STEPS SGD steps
BATCH = EXAMPLES = 64  # the global batch is the whole data set: 32 examples per worker
STEPS = 4
WORKERS = 2


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _data():
    rng = np.random.default_rng(0)
    return (rng.random((EXAMPLES, 8, 8, 1)) < 0.3).astype("float32")


def _vae():
    import keras

    from support.models.vae import VAE

    model = VAE(input_shape=(8, 8, 1), latent_dim=2, widths=(32,))
    kernel, bias = model.encoder.get_layer("posterior").get_weights()
    kernel[:, 2:], bias[2:] = 0.0, -30.0  # log_var = -30: sigma = 3e-7, noise negligible
    model.encoder.get_layer("posterior").set_weights([kernel, bias])
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def _dataset():
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(_data()).batch(BATCH).repeat(STEPS)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _train(model, start):
    model.set_weights(start)
    history = model.fit(_dataset(), epochs=1, shuffle=False, verbose=0).history
    return {key: float(values[0]) for key, values in history.items()}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Start both workers, wait for them, and train the one-process reference here."""
    import keras

    folder = tmp_path_factory.mktemp("multi_worker")
    keras.utils.set_random_seed(0)
    reference = _vae()
    start = reference.get_weights()
    np.savez(folder / "start.npz", *start)
    ports = _free_ports(WORKERS)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(WORKERS):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                      "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen([sys.executable, __file__, str(index), str(folder)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=240)
            outputs.append((worker.returncode, out, err))
    finally:
        for worker in workers:
            worker.kill()
    for code, _, err in outputs:
        assert code == 0, err[-3000:]
    logs = _train(reference, start)
    return {"reference": (logs, reference.get_weights(), start),
            "workers": [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outputs],
            "folder": folder}


def test_two_worker_processes_train_the_vae_like_one_process(two_workers):
    logs, weights, start = two_workers["reference"]
    stored = np.load(two_workers["folder"] / "final.npz")
    distributed = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    for report in two_workers["workers"]:
        assert report["replicas"] == WORKERS, report
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, distributed))
    change = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, start))
    assert change > 100 * ATOL, change  # training did move the weights
    print(f"two workers vs one process: max |dw| {difference:.2g}, weights moved {change:.2g}")
    assert difference < ATOL, difference
    for report in two_workers["workers"]:
        assert report["loss"] == pytest.approx(logs["loss"], rel=1e-5), (report, logs)


# --------------------------------------------------------------------------- the workers' script


def main(index: int, folder: Path) -> None:
    from support import training

    strategy = training.strategy("multi_worker")
    stored = np.load(folder / "start.npz")
    start = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    with strategy.scope():
        model = _vae()
    logs = _train(model, start)
    if index == 0:
        np.savez(folder / "final.npz", *model.get_weights())
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, **logs}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(int(sys.argv[1]), Path(sys.argv[2]))
