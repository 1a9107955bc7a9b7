"""Generative Objectives: the tested pieces that the notebooks import.

Modules (each one concept): ``data``, ``objectives``, ``models``, ``training``, ``metrics``,
``plots``, ``notebook`` (parameters, seeds, results, Colab) and ``runner`` (``python -m support``).
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _import_tensorflow_quietly():
    """Import TensorFlow with its C++ start-up lines (oneDNN, CUDA, CPU features) dropped.

    TensorFlow writes them to file descriptor 2 before its logging is configured, so no
    environment variable silences them, and in a notebook they would fill the first output.
    Python errors still raise as usual. ``SUPPORT_TF_VERBOSE=1`` keeps the lines.

    Later C++ log lines are filtered up to level 3 (errors included): graph optimisers such as
    grappler's remapper log an "error" when a fusion does not apply to a gradient (the DCGAN
    discriminator's LeakyReLU) and then run the graph unfused, a harmless message that would
    otherwise appear in a notebook's output. Real failures still raise Python exceptions.
    """
    if "tensorflow" in _sys.modules or _os.environ.get("SUPPORT_TF_VERBOSE"):
        return
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        _sys.stderr.flush()
        saved = _os.dup(2)
    except (OSError, ValueError):  # no real stderr (some embedded interpreters)
        import tensorflow  # noqa: F401
        return
    devnull = _os.open(_os.devnull, _os.O_WRONLY)
    try:
        _os.dup2(devnull, 2)
        import tensorflow

        # Looking for GPUs initialises the device platforms now, inside the redirect: on a
        # machine without CUDA that is where TensorFlow logs "failed call to cuInit".
        tensorflow.config.list_physical_devices()
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)
        _os.close(devnull)


_import_tensorflow_quietly()
