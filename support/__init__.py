"""Generative Objectives: the tested pieces that the notebooks import.

Modules (each one concept): ``data``, ``objectives``, ``models``, ``training``, ``metrics``,
``plots``, ``tensorboard_logs``, ``notebook`` (parameters, seeds, results, Colab) and ``runner``
(``python -m support``).

Importing ``support`` has no side effects: it does not import TensorFlow, installs no import
hook, sets no environment variable and changes no logging. ``support.notebook`` checks a
notebook's parameters in a fraction of a second, so a bad value stops before the seconds
TensorFlow takes to load; quieting TensorFlow's start-up lines is the notebook runtime's job
(:func:`support.notebook.import_tensorflow`, called by :func:`support.notebook.start`), and
your own program sees TensorFlow's messages exactly as TensorFlow writes them.
"""

__version__ = "0.1.0"
