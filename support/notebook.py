"""The notebook runtime: parameter schemas and validation, seeds, the results recorder, Colab.

Every notebook follows the same skeleton::

    # parameters cell (tagged "parameters"; papermill injects overrides after it)
    dataset: str = "digits"  # data set: digits, mnist or fashion_mnist
    ...
    # next cell: one call that validates, seeds and returns the run
    run = notebook.start("00_start_here", globals())
    ...
    run.record(test_mse=0.012)  # writes <results_dir>/00_start_here.json and shows a table

The schemas live here, not in the notebooks, so that ``python -m support run`` can check a
parameter before it starts a kernel, and a test can check that each notebook's parameters cell
declares exactly its schema with the same defaults.
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import math
import os
import platform
import random
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from support import checks

# --------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its type, default, what it does, and what values are allowed.

    ``type`` is ``int``, ``float``, ``str``, ``bool`` or ``list`` (a list of ``item`` values,
    ints by default, each checked against ``low``/``high``; the text ``"[2, 8]"``, as
    papermill's ``-p`` passes it, is read as YAML). Bounds are inclusive. ``kind="dir"`` marks
    a folder path: it must be non-empty and must not name an existing file;
    ``kind="optional_dir"`` is the same, or ``""`` to turn the feature off.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    kind: str | None = None
    item: type = int

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                list: f"a list of {'numbers' if self.item is float else 'integers'}"}[self.type]
        if self.kind == "dir":
            return "a non-empty folder path that is not an existing file"
        if self.kind == "optional_dir":
            return "a folder path that is not an existing file, or \"\" for none"
        if self.low is not None and self.high is not None:
            return f"{noun} from {self.low} to {self.high}"
        if self.low is not None:
            return f"{noun} >= {self.low}"
        if self.high is not None:
            return f"{noun} <= {self.high}"
        return noun

    def check(self, value: Any) -> Any:
        """Return ``value`` (ints widened to float for float parameters) or raise a
        ``ValueError`` naming the parameter, the value and what is allowed."""
        try:
            checked = self._coerce(value)
            if self.type is not list:
                self._check_value(checked)
        except _Refused as refused:
            raise ValueError(
                f"parameter {self.name}={value!r} is not allowed{refused.why}: "
                f"{self.name} must be {self.allowed()} ({self.help})."
            ) from None
        return checked

    def _coerce(self, value: Any) -> Any:
        """``value`` as this parameter's type, or :class:`_Refused`."""
        is_int = checks.is_int(value)
        if self.type is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise _Refused()
            return bool(value)
        if self.type is int:
            if not is_int:
                raise _Refused()
            return int(value)
        if self.type is float:
            if not checks.is_number(value):
                raise _Refused()
            if not math.isfinite(float(value)):
                raise _Refused(" (not finite)")
            return float(value)
        if self.type is list:
            return self._coerce_list(value)
        if not isinstance(value, str):
            raise _Refused()
        return value

    def _coerce_list(self, value: Any) -> list:
        if isinstance(value, str):  # papermill's -p passes "[2, 8]" as text
            value = _parse_list(value)
        if not isinstance(value, (list, tuple)) or not value:
            raise _Refused()
        kind = checks.is_number if self.item is float else checks.is_int
        for item in value:
            ok = kind(item)
            if not ok or not self._in_range(item) or not math.isfinite(item):
                raise _Refused(f" (element {item!r})")
        return [self.item(v) for v in value]

    def _check_value(self, value: Any) -> None:
        """Choices, range and, for folders, that they can be written; :class:`_Refused` if not."""
        if self.choices is not None and value not in self.choices:
            raise _Refused()
        if self.type in (int, float) and not self._in_range(value):
            raise _Refused()
        if self.kind == "dir" or (self.kind == "optional_dir" and value != ""):
            if not value.strip():
                raise _Refused(" (empty)")
            if Path(value).expanduser().is_file():
                raise _Refused(" (it is a file)")
            problem = _unwritable(Path(value).expanduser())
            if problem:
                raise _Refused(f" ({problem}; choose a folder you can write to)")

    def _in_range(self, value) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


class _Refused(Exception):
    """A parameter's value is not allowed; ``why`` is the detail added to the message."""

    def __init__(self, why: str = ""):
        super().__init__(why)
        self.why = why


def _unwritable(folder: Path) -> str:
    """Why ``folder`` cannot be created and written, or ``""`` when it can.

    Checked when a parameter is validated, before any training, so that a run cannot spend
    minutes and then fail to write its results. Folders this check creates are removed again:
    a rejected or later failing run leaves nothing behind.
    """
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a folder, so nothing can be created under it"
    created = []
    try:
        for part in reversed([folder, *folder.parents]):
            if not part.exists():
                part.mkdir()
                created.append(part)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        return f"it cannot be written: {error.strerror or error}"
    finally:
        for part in reversed(created):
            try:
                part.rmdir()
            except OSError:
                pass
    return ""


def _parse_list(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


DATASET = Param("dataset", str, "digits",
    "data set: digits, mnist or fashion_mnist",
    choices=("digits", "mnist", "fashion_mnist"))
SEED = Param("seed", int, 0, "seed of Python, NumPy and TensorFlow", low=0, high=2147483647)
LATENT_DIM = Param("latent_dim", int, 8, "size of the code z", low=1, high=256)
BATCH_SIZE = Param("batch_size", int, 64, "examples per gradient step", low=1, high=60000)
TRAIN_SIZE = Param("train_size", int, 0, "use the first N training images (0: all)", low=0, high=60000)
RESULTS_DIR = Param("results_dir", str, "results",
    "folder where run.record() writes this notebook's metrics (JSON)",
    kind="dir")
DETERMINISTIC = Param("deterministic", bool, False,
    "TensorFlow op determinism: identical reruns on the same machine (can be slower)")
STRATEGY = Param("strategy", str, "default",
    "where Keras models train: default (one device), mirrored (every local GPU), multi_worker "
    "(the cluster in TF_CONFIG)",
    choices=("default", "mirrored", "multi_worker"))
TENSORBOARD_DIR = Param("tensorboard_dir", str, "",
    "folder of TensorBoard logs of every training, for `tensorboard --logdir` (\"\": off)",
    kind="optional_dir")


SCHEMAS: dict[str, tuple[Param, ...]] = {
    "00_start_here": (
        replace(DATASET, help="image data set to look at: digits, mnist or fashion_mnist"),
        Param("samples", int, 32, "images shown in the grid", low=1, high=200),
        Param("mixture_samples", int, 2500, "points drawn from each 2-D mixture", low=10, high=100000),
        SEED,
        DETERMINISTIC,
        RESULTS_DIR,
    ),
    "01_autoencoders": (
        DATASET,
        Param("latent_dims", list, [2, 8, 32],
              "code sizes k of the nonlinear autoencoders, compared with PCA",
              low=1, high=256),
        Param("linear_dims", list, [2, 8, 16],
              "code sizes k of the linear autoencoder (section 4), compared with PCA",
              low=1, high=256),
        replace(TRAIN_SIZE, help="use the first N training images (0: all), for quick runs on MNIST"),
        Param("linear_epochs", int, 200,
              "passes over the training set for the linear autoencoder",
              low=1, high=5000),
        Param("linear_learning_rate", float, 0.01,
              "peak Adam learning rate of the linear autoencoder (cosine decay)",
              low=1e-06, high=1.0),
        Param("epochs", int, 100,
              "passes over the training set for the dense and convolutional autoencoders",
              low=1, high=5000),
        Param("learning_rate", float, 0.003,
              "their peak Adam learning rate (cosine decay)",
              low=1e-06, high=1.0),
        Param("sparsity", float, 0.0001,
              "weight of the L1 penalty on the sparse autoencoder's code",
              low=0.0, high=10.0),
        Param("anomaly_class", int, 8,
              "class left out of training in the anomaly-detection experiment",
              low=0, high=9),
        BATCH_SIZE,
        SEED,
        DETERMINISTIC,
        TENSORBOARD_DIR,
        STRATEGY,
        RESULTS_DIR,
    ),
    "02_mse_objective": (
        DATASET,
        LATENT_DIM,
        Param("epochs", int, 100, "passes over the training set", low=1, high=5000),
        BATCH_SIZE,
        Param("learning_rate", float, 0.003, "peak Adam learning rate", low=1e-06, high=1.0),
        Param("noise", float, 0.3,
              "corruption of the denoising autoencoders: Gaussian std and masked fraction",
              low=0.0, high=1.0),
        Param("small_train_size", int, 50,
              "training images of the overfitting experiment",
              low=10, high=60000),
        Param("code_sizes", list, [2, 8, 32], "code sizes of the architecture sweep", low=1, high=256),
        Param("depths", list, [1, 2, 3], "hidden layers per side in the architecture sweep", low=0, high=3),
        Param("sweep_epochs", int, 50,
              "passes over the training set for each model of the sweep",
              low=1, high=5000),
        TRAIN_SIZE,
        SEED,
        DETERMINISTIC,
        TENSORBOARD_DIR,
        RESULTS_DIR,
    ),
    "03_vae_elbo": (
        DATASET,
        LATENT_DIM,
        Param("encoder", str, "dense", "encoder and decoder: dense or conv", choices=("dense", "conv")),
        Param("widths", list, [128, 64],
              "hidden widths of the dense encoder (the decoder mirrors them)",
              low=1, high=4096),
        Param("likelihood", str, "bernoulli",
              "decoder p(x|z): bernoulli (binarized pixels) or gaussian (grey levels)",
              choices=("bernoulli", "gaussian")),
        Param("binarization", str, "dynamic",
              "dynamic (fresh coin flips every epoch) or static (one fixed draw)",
              choices=("dynamic", "static")),
        Param("beta", float, 1.0, "weight of the KL term; 1 is the ELBO", low=0.0, high=100.0),
        Param("kl_warmup_epochs", int, 20,
              "epochs over which the KL weight ramps up to beta (0: no warm-up)",
              low=0, high=5000),
        Param("epochs", int, 200, "passes over the training set for the main VAE", low=1, high=5000),
        BATCH_SIZE,
        Param("learning_rate", float, 0.001, "Adam learning rate", low=1e-06, high=1.0),
        Param("nll_samples", int, 5000,
              "importance samples k of the test NLL (5000 is the paper protocol)",
              low=1, high=100000),
        Param("betas", list, [0.25, 0.5, 1.0, 2.0, 4.0],
              "KL weights of the rate-distortion sweep",
              low=0.0, high=100.0, item=float),
        Param("sweep_epochs", int, 60,
              "passes for each smaller run (2-D code, collapse remedies, IWAE, beta sweep)",
              low=1, high=5000),
        Param("linear_epochs", int, 100, "passes for the linear-Gaussian VAE of section 3", low=1, high=5000),
        Param("seeds", int, 3,
              "training seeds of each comparison over seeds (collapse remedies, IWAE)",
              low=1, high=100),
        Param("free_bits", float, 0.1,
              "free bits lambda, nats per code dimension, of the second collapse remedy",
              low=0.0, high=100.0),
        Param("iwae_samples", list, [1, 5, 50],
              "k of the IWAE trainings compared in section 6 (1: the VAE)",
              low=1, high=5000),
        Param("snr_samples", list, [1, 5, 50, 500],
              "k at which the gradient signal-to-noise ratio is measured",
              low=1, high=100000),
        TRAIN_SIZE,
        Param("test_size", int, 0, "score the first N test images (0: all)", low=0, high=10000),
        Param("checkpoint_dir", str, "",
              "folder of checkpoints of the main VAE; rerunning with the same folder resumes (\"\": off)",
              kind="optional_dir"),
        Param("checkpoint_every", int, 500, "main VAE steps between checkpoints", low=1, high=1000000),
        SEED,
        DETERMINISTIC,
        TENSORBOARD_DIR,
        STRATEGY,
        RESULTS_DIR,
    ),
    "04_gan_training": (
        Param("dataset", str, "digits",
              "data set of the image GAN: digits, mnist or fashion_mnist",
              choices=("digits", "mnist", "fashion_mnist")),
        Param("toy", str, "ring8",
              "2-D mixture of the mode-collapse experiment: ring8 or grid25",
              choices=("ring8", "grid25")),
        Param("loss", str, "non_saturating",
              "GAN objective: non_saturating, minimax, hinge or wgan_gp",
              choices=("non_saturating", "minimax", "hinge", "wgan_gp")),
        Param("spectral_norm", bool, False,
              "spectrally normalise the DCGAN's discriminator (keras.layers.SpectralNormalization)"),
        Param("latent_dim", int, 32, "size of the DCGAN's noise z", low=1, high=512),
        Param("d_steps", int, 1,
              "discriminator updates per generator update (5 is usual for wgan_gp)",
              low=1, high=20),
        Param("epochs", int, 100, "passes over the training images for the DCGAN", low=1, high=5000),
        Param("toy_steps", int, 4000,
              "generator updates of each run on the 2-D mixture",
              low=10, high=1000000),
        replace(BATCH_SIZE, help="images per DCGAN step"),
        Param("toy_batch_size", int, 128, "points per step on the 2-D mixture", low=2, high=100000),
        Param("learning_rate", float, 0.0005, "Adam rate of the DCGAN (both networks)", low=1e-06, high=1.0),
        Param("toy_learning_rate", float, 0.003, "peak Adam rate of the 2-D GANs", low=1e-06, high=1.0),
        Param("filters", int, 32, "width of the DCGAN (filters of its first conv layer)", low=1, high=512),
        Param("seeds", list, [0, 1, 2, 3, 4], "seeds of the runs on the 2-D mixture", low=0, high=2147483647),
        Param("checkpoint_dir", str, "",
              "folder of DCGAN checkpoints; rerunning with the same folder resumes (\"\": off)",
              kind="optional_dir"),
        Param("checkpoint_every", int, 500, "DCGAN steps between checkpoints", low=1, high=1000000),
        TRAIN_SIZE,
        SEED,
        DETERMINISTIC,
        TENSORBOARD_DIR,
        RESULTS_DIR,
    ),
    "05_diffusion": (
        Param("toy", str, "ring8",
              "2-D mixture the diffusion models are trained on: ring8 or grid25",
              choices=("ring8", "grid25")),
        Param("timesteps", int, 200, "diffusion steps T of the trained models", low=2, high=10000),
        Param("schedule", str, "linear",
              "noise schedule: linear (Ho et al. 2020, scaled to T) or cosine (Nichol and Dhariwal 2021)",
              choices=("linear", "cosine")),
        Param("fourier_frequencies", list, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
              "angular frequencies of the Fourier features of x_t fed to the network ([0]: none)",
              item=float, low=0.0, high=1000.0),
        Param("toy_steps", int, 2500, "training steps of each model on the 2-D mixture",
              low=10, high=1000000),
        Param("toy_batch_size", int, 256, "points per training step", low=2, high=100000),
        Param("learning_rate", float, 0.001, "peak Adam rate (cosine decay to 0)", low=1e-06, high=1.0),
        Param("seeds", list, [0, 1, 2, 3, 4], "seeds of the models on the 2-D mixture (notebook 04's)",
              low=0, high=2147483647),
        Param("sampling_steps", list, [5, 10, 20, 50, 100],
              "DDIM step counts of sections 6 and 7 (at most timesteps)",
              low=2, high=10000),
        Param("langevin_step_size", float, 0.0001,
              "annealed Langevin's step epsilon at the smallest noise level", low=1e-09, high=1.0),
        DATASET,
        Param("epochs", int, 270,
              "passes over the training images for the image model (270: about 3,000 steps on digits)",
              low=1, high=100000),
        Param("batch_size", int, 128, "images per training step of the image model", low=1, high=60000),
        Param("image_widths", list, [512, 512, 512], "hidden widths of the image model's MLP", item=int,
              low=1, high=8192),
        TRAIN_SIZE,
        Param("test_size", int, 0, "score the first N test images (0: all)", low=0, high=10000),
        Param("checkpoint_dir", str, "",
              "folder of checkpoints, one subfolder per seed; rerunning with the same folder "
              "resumes (\"\": off)",
              kind="optional_dir"),
        SEED,
        DETERMINISTIC,
        TENSORBOARD_DIR,
        RESULTS_DIR,
    ),
    "06_comparison": (
        DATASET,
        replace(LATENT_DIM, help="code size k of every model with a code (the GANs' noise z too)"),
        Param("seeds", list, [0, 1, 2], "seeds: every model is trained once per seed", low=0,
              high=2147483647),
        Param("epochs", int, 200, "passes over the training set for the autoencoder, the VAEs and the IWAE",
              low=1, high=5000),
        Param("iwae_samples", int, 5, "importance samples k of the IWAE-trained model", low=2, high=1000),
        Param("made_epochs", int, 150, "passes over the training set for MADE", low=1, high=5000),
        Param("gan_epochs", int, 100, "passes over the training set for the non-saturating GAN",
              low=1, high=5000),
        Param("wgan_epochs", int, 25,
              "passes over the training set for the WGAN-GP (each step: 5 critic updates)", low=1, high=5000),
        Param("diffusion_epochs", int, 110, "passes over the training set for the DDPM", low=1, high=5000),
        Param("ddim_steps", int, 50, "DDIM steps of the DDPM sampler, eta 0 (2 to its T of 200)",
              low=2, high=200),
        BATCH_SIZE,
        Param("samples", int, 1000, "images drawn from each sampler for the sample columns", low=20,
              high=100000),
        Param("nll_samples", int, 1000, "importance samples k of the VAEs' test NLL", low=1, high=100000),
        TRAIN_SIZE,
        Param("test_size", int, 0, "score the first N test images (0: all)", low=0, high=10000),
        DETERMINISTIC,
        TENSORBOARD_DIR,
        STRATEGY,
        RESULTS_DIR,
    ),
}


def schema(notebook: str) -> tuple[Param, ...]:
    """The declared parameters of a notebook (name without ``.ipynb``)."""
    try:
        return SCHEMAS[notebook]
    except KeyError:
        raise ValueError(
            f"notebook {notebook!r} has no parameter schema; known: {', '.join(SCHEMAS)}"
        ) from None


def parameters_source(notebook: str) -> str:
    """The source of ``notebook``'s parameters cell, generated from its schema: one line
    ``name: type = default  # help`` per parameter, the form ``papermill --help-notebook``
    reads. The schema is the one source; ``python -m support normalise`` writes this text into
    the notebook and ``normalise --check`` fails when the cell differs."""
    def literal(value):
        return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)

    return "\n".join(f"{p.name}: {p.type.__name__} = {literal(p.default)}  # {p.help}"
                     for p in schema(notebook))


def validate(notebook: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check every declared parameter of ``notebook`` in ``values`` and reject unknown names.

    Returns the checked values. Raises ``ValueError`` for the first bad one.
    """
    params = schema(notebook)
    names = {p.name for p in params}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for {notebook}; its parameters are "
            f"{', '.join(sorted(names))}."
        )
    checked = {}
    for param in params:
        if param.name in values:
            checked[param.name] = param.check(values[param.name])
        else:
            checked[param.name] = param.default
    return checked


def describe(notebook: str, values: Mapping[str, Any] | None = None):
    """Show a notebook's parameters: name, type, default, current value, allowed values, help."""
    values = values or {}
    rows = [
        (p.name, p.type.__name__, p.default, values.get(p.name, p.default), p.allowed(), p.help)
        for p in schema(notebook)
    ]
    show_table(rows, header=("parameter", "type", "default", "value", "allowed", "what it does"))


def _injected_names(namespace: Mapping[str, Any]) -> set[str]:
    """Names assigned by papermill's injected-parameters cell, read from IPython's input
    history (``In``), where papermill's cell starts with the line ``# Parameters``."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return set()
    names = set()
    for source in history:
        if isinstance(source, str) and source.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


# --------------------------------------------------------------------------- TensorFlow start-up

# The lines TensorFlow's C++ side writes to file descriptor 2 while it loads on a machine
# without a GPU (or with one it was not built for): informational, and in a notebook they
# would fill the first output. Any other line written while TensorFlow loads is kept.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "oneDNN custom operations are on",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
)


class _NoRetracingWarning:
    """A ``logging`` filter that drops TensorFlow's "triggered tf.function retracing" warning:
    the notebooks build many small models on purpose, each traced once, which that warning
    counts as retracing."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def import_tensorflow():
    """Import TensorFlow for a notebook, without its C++ start-up lines; return the module.

    TensorFlow writes those lines (CUDA drivers not found, CPU instructions, oneDNN) to file
    descriptor 2 before its logging is configured, so no Python setting reaches them. While
    TensorFlow loads and looks for devices, descriptor 2 goes to a temporary file; afterwards
    the lines of :data:`STARTUP_NOISE` are dropped and every other line is written to
    ``sys.stderr``. If the import fails, everything captured is written back before the error
    is raised. Nothing else changes: no environment variable is set and TensorFlow's later
    messages (its C++ errors included) appear as usual. ``SUPPORT_TF_VERBOSE=1`` keeps every
    line. Only the notebook runtime calls this (:func:`start`); importing ``support`` never does.
    """
    if "tensorflow" in sys.modules or os.environ.get("SUPPORT_TF_VERBOSE"):
        import tensorflow as tf

        return tf
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (some embedded interpreters)
        import tensorflow as tf

        return tf
    failed = True
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            # Looking for devices initialises the platforms now, inside the capture: without
            # CUDA that is where TensorFlow logs "failed call to cuInit".
            tf.config.list_physical_devices()
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = lines if failed else [line for line in lines
                                          if not any(noise in line for noise in STARTUP_NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
    return tf


def _quiet_retracing(tf) -> None:
    logger = tf.get_logger()
    if not any(isinstance(f, _NoRetracingWarning) for f in logger.filters):
        logger.addFilter(_NoRetracingWarning())


# --------------------------------------------------------------------------- seeds


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy and TensorFlow (through Keras).

    ``deterministic=True`` also turns on TensorFlow's op determinism, which identical reruns
    on CPU need (some kernels otherwise reduce in a thread-dependent order). It cannot be
    turned off again in the same process.
    """
    import keras
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """A notebook's validated parameters and its results recorder."""

    notebook: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    tensorboard: Any = None  # the open :class:`support.tensorboard_logs.Logs`, if tensorboard_dir is set
    distribute_strategy: Any = None  # the ``tf.distribute.Strategy`` of the ``strategy`` parameter

    def __getattr__(self, name):
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(name)

    @property
    def results_path(self) -> Path:
        return Path(self.params["results_dir"]).expanduser() / f"{self.notebook}.json"

    def record(self, show: bool | str = True, **metrics: Any) -> None:
        """Add metrics to this run and write them, with the parameters, to
        ``<results_dir>/<notebook>.json`` (atomically: a reader never sees half a file).

        ``show``: ``True`` shows every metric in a table, ``"collapsed"`` in a table folded
        under a one-line ``<details>`` summary (for a notebook's last cell, after its
        takeaways), ``False`` nothing.

        Values must be numbers, strings, or lists/dicts of them.
        """
        for name, value in metrics.items():
            self.metrics[name] = _plain(value, name)
        document = {
            "notebook": self.notebook,
            "parameters": self.params,
            "metrics": self.metrics,
            "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        write_json_atomic(self.results_path, document)
        if show == "collapsed":
            show_markdown(
                f"<details><summary>All {len(flatten(self.metrics))} recorded metrics "
                f"(<code>{self.results_path.name}</code>)</summary>\n\n"
                + markdown_table(flatten(self.metrics).items(), ("metric", "value"))
                + "\n\n</details>")
        elif show:
            show_table(flatten(self.metrics), header=("metric", "value"))


def start(notebook: str, namespace: Mapping[str, Any], deterministic: bool = False) -> Run:
    """Validate the parameters of ``notebook`` found in ``namespace`` (the notebook's
    ``globals()``), seed everything with ``seed`` (with op determinism when ``deterministic``
    is passed here or is a true parameter), import TensorFlow without its start-up lines
    (:func:`import_tensorflow`), open the notebook's TensorBoard logging block when
    ``tensorboard_dir`` is set (:mod:`support.tensorboard_logs`; ``run.tensorboard``), enter
    the scope of the ``strategy`` parameter's distribution strategy for the rest of the kernel
    (``run.distribute_strategy``; TensorFlow's default strategy when the notebook has no such
    parameter), set the figure defaults, return the run.

    Raises ``ValueError`` naming the parameter for a bad value, and for a name that papermill
    injected but the notebook does not declare.
    """
    params = schema(notebook)
    names = {p.name for p in params}
    unknown = sorted(_injected_names(namespace) - names)
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for {notebook}; its parameters are "
            f"{', '.join(sorted(names))}."
        )
    missing = [p.name for p in params if p.name not in namespace]
    if missing:
        raise ValueError(f"the parameters cell of {notebook} does not define {missing[0]!r}.")
    values = validate(notebook, {p.name: namespace[p.name] for p in params})
    if values.get("strategy") == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise ValueError(
            "parameter strategy='multi_worker' needs the TF_CONFIG environment variable (the "
            "cluster and this worker's index), set on every worker before its kernel starts; "
            "on one machine use strategy='default' or 'mirrored'.")
    _quiet_retracing(import_tensorflow())
    if "seed" in values:
        set_seed(values["seed"], deterministic=deterministic or values.get("deterministic", False))
    run = Run(notebook, values)
    run.distribute_strategy = _enter_strategy(values.get("strategy", "default"))
    global _notebook_logs
    if _notebook_logs is not None:  # ``start`` run again in the same kernel
        _notebook_logs.close()
        _notebook_logs = None
    if values.get("tensorboard_dir"):
        from . import tensorboard_logs

        # The notebook's block of TensorBoard logging: open until the kernel ends (or the next
        # ``start``), since a ``with`` statement cannot span cells.
        _notebook_logs = run.tensorboard = tensorboard_logs.Logs(values["tensorboard_dir"]).__enter__()
    _figure_defaults()
    return run


_notebook_logs = None  # the TensorBoard block the last ``start`` opened, if any
_strategy_scope = None  # the distribution scope the last ``start`` entered, if any


def _enter_strategy(kind: str):
    """The notebook's ``tf.distribute`` strategy (:func:`support.training.strategy`), its scope
    entered until the kernel ends or the next ``start`` (a ``with`` block cannot span cells):
    every Keras model the notebook builds afterwards is built, compiled and fitted under it."""
    global _strategy_scope
    if _strategy_scope is not None:
        _strategy_scope.__exit__(None, None, None)
        _strategy_scope = None
    from .training import strategy

    chosen = strategy(kind)
    if kind != "default":
        _strategy_scope = chosen.scope()
        _strategy_scope.__enter__()
    return chosen


def _figure_defaults():
    import matplotlib.pyplot as plt

    # Sharp enough on a laptop screen and on GitHub (110 dpi, no text under 9 pt) while the
    # committed notebooks stay under 2 MB each.
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.grid": False,
                         "font.size": 10, "legend.fontsize": 9, "xtick.labelsize": 9,
                         "ytick.labelsize": 9, "axes.titlesize": 11, "axes.labelsize": 10})


# --------------------------------------------------------------------------- results


def _plain(value: Any, name: str = "value") -> Any:
    """Convert NumPy scalars/arrays and tuples to JSON types; reject what JSON cannot hold."""
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v, name) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metric {name} is {value}: a result must be a finite number.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"metric {name} has type {type(value).__name__}; record numbers or text.")


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; a list of records ``{"s": [{"x": 1}]}`` →
    ``{"s.0.x": 1}``; other lists stay as values."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            flat.update(flatten({str(i): v for i, v in enumerate(value)}, name + "."))
        else:
            flat[name] = value
    return flat


def format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def text_table(rows, header) -> str:
    """A plain-text table with aligned columns."""
    cells = [list(map(str, header))] + [[format_value(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def show_table(rows, header=("name", "value")):
    """Show a table: rendered Markdown in a notebook, plain text elsewhere.

    ``rows`` is a mapping (one row per item) or a sequence of row tuples."""
    if isinstance(rows, Mapping):
        rows = list(rows.items())
    rows = [tuple(r) for r in rows]
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        print(text_table(rows, header))
        return
    if get_ipython() is None:
        print(text_table(rows, header))
        return
    display(Markdown(markdown_table(rows, header)))


def markdown_cell(value: Any) -> str:
    """One table cell as Markdown: ``|`` escaped (it would split the cell) and line breaks
    folded into spaces (they would end the row)."""
    return " ".join(format_value(value).split("\n")).replace("|", "\\|")


def markdown_table(rows, header) -> str:
    """A GitHub-flavoured Markdown table whose every row has the header's column count."""
    rows = [tuple(r) for r in rows]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells and the header {len(header)}: {row!r}")
    lines = ["| " + " | ".join(markdown_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def show_markdown(text: str):
    """Show Markdown computed by a cell (how numbers reach the prose)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def recorded(notebook: str, results_dir: str | os.PathLike | None = None) -> tuple[dict[str, Any], str]:
    """What another notebook of the series recorded, flattened (``{"toy.plain.modes": [...]}``),
    and where it was read from.

    From ``<results_dir>/<notebook>.json`` when that file exists (a run of the series writes
    every notebook's results to one folder, so a later notebook reads the numbers of the run
    before it); otherwise from the committed notebook's collapsed record table, as shown there
    (numbers to 4 significant digits). Raises ``ValueError`` naming both places when neither
    exists.
    """
    if results_dir is not None:
        path = Path(results_dir).expanduser() / f"{notebook}.json"
        if path.is_file():
            return flatten(json.loads(path.read_text())["metrics"]), f"this run's {path.name}"
    committed = project_root() / "notebooks" / f"{notebook}.ipynb"
    if not committed.is_file():
        raise ValueError(f"no results of {notebook}: neither {results_dir}/{notebook}.json nor "
                         f"{committed} exists; run {notebook} first with the same results_dir.")
    return _committed_record(json.loads(committed.read_text())), f"the committed {committed.name}"


def _committed_record(document: dict) -> dict[str, Any]:
    """The rows of the last record table (``run.record(show="collapsed")``) in a notebook."""
    flat = {}
    for cell in document.get("cells", []):
        for output in cell.get("outputs", []):
            text = "".join(output.get("data", {}).get("text/markdown", ""))
            if "recorded metrics" not in text or "<details>" not in text:
                continue
            flat = {}
            for line in text.splitlines()[2:]:
                cells = [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
                if len(cells) == 2 and cells[0] not in ("metric", "---"):
                    try:
                        flat[cells[0]] = json.loads(cells[1])
                    except ValueError:
                        flat[cells[0]] = cells[1]
    return flat


def write_json_atomic(path: Path, document: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("tensorflow", "keras", "numpy"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return versions


# --------------------------------------------------------------------------- Colab

COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
SETUP_MARKER = "# Setup: on Colab only"


def repository_url(pyproject: str | os.PathLike | None = None) -> str:
    """The repository URL from ``pyproject.toml`` (``[project.urls] Repository``)."""
    import tomllib

    path = Path(pyproject) if pyproject else project_root() / "pyproject.toml"
    with open(path, "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def colab_url(repository: str, notebook_path: str, branch: str = "main") -> str:
    """``https://github.com/OWNER/REPO`` + ``notebooks/x.ipynb`` → the Colab address."""
    prefix = "https://github.com/"
    if not repository.startswith(prefix):
        raise ValueError(f"repository URL {repository!r} is not a github.com URL")
    slug = repository[len(prefix):]
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/{notebook_path}"


def badge_markdown(repository: str, notebook_path: str) -> str:
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(repository, notebook_path)})"


def colab_setup_source(repository: str) -> str:
    """The first code cell of every notebook: installs this package on Colab, nothing elsewhere.

    It cannot import ``support`` (not installed yet on Colab), so the URL is written into the
    cell by ``python -m support badges``. The package asks only for TensorFlow >= 2.16, which
    Colab already has, so pip keeps Colab's own build.
    """
    return (
        f"{SETUP_MARKER}, install the series' package (elsewhere this cell does nothing).\n"
        "import importlib.util\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        f'REPOSITORY = "{repository}"  # written by `python -m support badges` from pyproject.toml\n'
        'if "google.colab" in sys.modules and importlib.util.find_spec("support") is None:\n'
        "    subprocess.run(\n"
        '        [sys.executable, "-m", "pip", "install", "--quiet", f"git+{REPOSITORY}"],\n'
        "        check=True,\n"
        "    )"
    )
