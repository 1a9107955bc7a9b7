"""The series' Keras models: autoencoders, the VAE, the GAN, the classifier and the batched toy GANs.

They are written against Keras 3's TensorFlow backend (``tf.function`` training steps,
``tf.GradientTape``, ``tf.random`` seeds), so importing this package on another backend stops at
once with one error naming the fix, instead of failing later inside ``fit``.
"""

import json as _json
import os as _os


def _require_tensorflow_backend():
    requested = _os.environ.get("KERAS_BACKEND", "")
    if requested and requested != "tensorflow":
        raise ImportError(
            f"support.models needs Keras's TensorFlow backend, but KERAS_BACKEND={requested!r}. "
            "Set KERAS_BACKEND=tensorflow (or unset it) before Python starts.")
    # without the variable Keras reads keras.json, and imports that backend's package at once
    home = _os.environ.get("KERAS_HOME") or _os.path.join(_os.path.expanduser("~"), ".keras")
    config = _os.path.join(home, "keras.json")
    try:
        with open(config) as file:
            configured = _json.load(file).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        configured = "tensorflow"
    if not requested and configured != "tensorflow":
        raise ImportError(
            f"support.models needs Keras's TensorFlow backend, but {config} sets "
            f"\"backend\": {configured!r}. "
            "Set KERAS_BACKEND=tensorflow before Python starts, or \"backend\": \"tensorflow\" in that file.")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            f"support.models needs Keras's TensorFlow backend, but Keras is running on "
            f"{keras.backend.backend()!r} (from keras.json in KERAS_HOME or ~/.keras). Set "
            "KERAS_BACKEND=tensorflow before Python starts, or \"backend\": \"tensorflow\" in that file.")


_require_tensorflow_backend()
