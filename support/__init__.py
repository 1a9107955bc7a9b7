"""Generative Objectives: the tested pieces that the notebooks import.

Modules (each one concept): ``data``, ``objectives``, ``models``, ``training``, ``metrics``,
``plots``, ``tensorboard_logs``, ``notebook`` (parameters, seeds, results, Colab) and ``runner``
(``python -m support``).

Importing ``support`` does not import TensorFlow: ``support.notebook`` checks a notebook's
parameters in a fraction of a second, so a bad value stops before the seconds TensorFlow takes
to load. TensorFlow is imported, quietly, the first time anything imports ``tensorflow`` or
``keras`` after ``support`` (see :func:`_import_tensorflow_quietly`).
"""

import importlib.abc as _abc
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

    TensorFlow's Python warning that a ``tf.function`` "triggered tf.function retracing" is
    dropped too (:class:`_NoRetracingWarning`): the notebooks build many small models on purpose,
    each traced once, which that warning counts as retracing.
    """
    if "tensorflow" in _sys.modules or _os.environ.get("SUPPORT_TF_VERBOSE"):
        return
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        _sys.stderr.flush()
        saved = _os.dup(2)
    except (OSError, ValueError):  # no real stderr (some embedded interpreters)
        import tensorflow

        _quiet_retracing(tensorflow)
        return
    devnull = _os.open(_os.devnull, _os.O_WRONLY)
    try:
        _os.dup2(devnull, 2)
        import tensorflow

        # Looking for GPUs initialises the device platforms now, inside the redirect: on a
        # machine without CUDA that is where TensorFlow logs "failed call to cuInit".
        tensorflow.config.list_physical_devices()
        _quiet_retracing(tensorflow)
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)
        _os.close(devnull)


class _NoRetracingWarning:
    """A ``logging`` filter that drops TensorFlow's "triggered tf.function retracing" warning."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def _quiet_retracing(tensorflow):
    logger = tensorflow.get_logger()
    if not any(isinstance(f, _NoRetracingWarning) for f in logger.filters):
        logger.addFilter(_NoRetracingWarning())


class _QuietTensorFlowImport(_abc.MetaPathFinder):
    """Import hook: the first ``import tensorflow`` or ``import keras`` (by a module of
    ``support``, a notebook or your own code) runs :func:`_import_tensorflow_quietly` first,
    then lets the normal import go on. It removes itself after that one use."""

    def find_spec(self, name, path=None, target=None):
        if name in ("tensorflow", "keras"):
            _remove_hook()
            _import_tensorflow_quietly()
        return None  # the regular finders do the import itself


def _remove_hook():
    _sys.meta_path[:] = [f for f in _sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]


if "tensorflow" not in _sys.modules and not any(
    isinstance(f, _QuietTensorFlowImport) for f in _sys.meta_path
):
    _sys.meta_path.insert(0, _QuietTensorFlowImport())
