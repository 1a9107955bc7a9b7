"""Options of TensorFlow's graph optimiser (Grappler) for one block of code.

TensorFlow rewrites every compiled function's graph before running it. On some CPUs one of its
passes, the *remapper* (which fuses, for example, a convolution, its bias and its activation), fails on
the DCGAN discriminator's gradient: it prints an ``E ... remapper failed`` line and skips the
fusion, with no effect on the results. :func:`graph_options` turns such a pass off for the
functions first run inside a ``with`` block, and puts the previous options back on exit.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

# Grappler passes that are on by default and can be switched off for a block.
PASSES = ("arithmetic_optimization", "constant_folding", "debug_stripper", "dependency_optimization",
          "function_optimization", "layout_optimizer", "loop_optimization", "remapping", "shape_optimization")


@contextlib.contextmanager
def graph_options(**options: bool):
    """``with graph_options(remapping=False): model.fit(...)``: the Grappler passes named (see
    :data:`PASSES`) are on or off for the functions first traced and run inside the block; on exit
    every pass named is set back to what it was before (on, if it had not been set)."""
    unknown = sorted(set(options) - set(PASSES))
    if unknown or not options:
        raise ValueError(f"graph_options takes one or more of {', '.join(PASSES)}, as True or False; "
                         f"got {', '.join(unknown) or 'none'}.")
    for name, value in options.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be True or False.")
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options(options)
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({name: previous.get(name, True) for name in options})
