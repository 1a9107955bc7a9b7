"""Time to quality: wall time on this machine until a model of `support` reaches a quality target.

Three targets, each checked at regular intervals during one training run:

* **VAE, dynamically binarized MNIST**: the test negative log-likelihood estimated by importance
  sampling with the encoder as proposal,
  ``NLL(x) = -log (1/k) sum_{i=1..k} p(x|z_i) p(z_i) / q(z_i|x)``, ``z_i ~ q(z|x)``,
  ``k = 500`` (:meth:`support.models.vae.VAE.importance_sampled_nll`), averaged over a fixed
  subset of 1,000 statically binarized test images, checked after every epoch; whenever the
  subset is at or below the target, all 10,000 test images are scored (same ``k``), and the
  target is reached when **that** is **<= 95 nats** (training goes on otherwise).
* **GAN on ring8** (8 Gaussians on a circle of radius 2, std 0.02): **8 of 8 modes covered and
  >= 80 % high-quality samples** among 2,500 samples, by the protocol of VEEGAN
  (:func:`support.metrics.mode_coverage`: a sample is high quality within 3 std of its nearest
  centre; a mode is covered when it is the nearest centre of one high-quality sample).
  Checked every 100 generator steps, seeds 0, 1 and 2; per seed and the median. The learning
  rate decays along a cosine over a fixed budget of 2,000 steps (as in notebook 04), so the
  budget is part of the configuration: a shorter budget decays sooner.
* **DCGAN on MNIST**: the classifier-FID
  ``d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` of the features of a small
  CNN trained on MNIST (:mod:`support.models.classifier`), between 10,000 samples and the
  10,000 test images, **<= 2 x the real-data floor** (the same distance between 10,000
  training and the 10,000 test images). Checked every 2 epochs, within a budget of
  ``--dcgan-minutes`` minutes of training (default 10); when the budget ends first the row
  says so and gives the best FID and when it was measured.

Times: *training* is the wall time from building the model to the evaluation that met the
target, **minus the time spent evaluating** (it includes ``fit``'s set-up and the tracing of the
training step: a user pays them too); *incl. evaluation* adds the evaluations made until then.
The VAE's scoring of the full test set counts as evaluation; the classifier that scores the
DCGAN is timed separately. MNIST is read from local files only (``$SUPPORT_DATA_DIR``, see
:func:`support.data.load`); without them the two MNIST rows are skipped, nothing is downloaded.

    SUPPORT_DATA_DIR=/path/to/data python benchmarks/time_to_quality.py [--quick] [--dcgan-minutes M]
"""

from __future__ import annotations  # noqa: I001  (support before keras and tensorflow)
# ruff: noqa: E402  (the imports below follow import_tensorflow() on purpose)

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from support.notebook import import_tensorflow

import_tensorflow()  # before keras and tensorflow: without their C++ start-up lines
import keras
from throughput import header

from support import data, metrics
from support.models import classifier as scoring
from support.models.gan import GAN, dcgan_discriminator, dcgan_generator, toy_gan
from support.models.vae import VAE
from support.training import fit_resumable, train_vae

MNIST_SHAPE = (28, 28, 1)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Budgets and evaluation sizes; the targets themselves are fixed (see the module docstring)."""

    vae_target: float = 95.0  # nats
    vae_epochs: int = 30  # budget: at most this many passes over the 60,000 training images
    vae_train_size: int | None = None  # first N training images (None: all)
    vae_eval_size: int = 1000  # test images of the check after every epoch
    vae_k: int = 500  # importance samples of every NLL estimate
    ring8_steps: int = 2000  # the cosine schedule's whole budget, in generator steps
    ring8_eval_every: int = 100  # generator steps between checks
    ring8_seeds: tuple[int, ...] = (0, 1, 2)
    ring8_samples: int = 2500
    dcgan_minutes: float = 10.0  # budget of training time, evaluation excluded
    dcgan_eval_every: int = 2  # epochs between checks
    dcgan_train_size: int | None = None  # first N training images for the DCGAN and the classifier
    classifier_epochs: int | None = None  # None: train_classifier's default length
    fid_size: int = 10_000  # samples, test and training images of every FID


FULL = Settings()
# Plumbing check: every code path but the VAE's confirmation runs, in about a minute.
QUICK = Settings(vae_epochs=1, vae_train_size=6000, vae_eval_size=100, vae_k=50, ring8_steps=400,
                 ring8_seeds=(0,), dcgan_minutes=0.1, dcgan_eval_every=1, dcgan_train_size=3000,
                 classifier_epochs=1, fid_size=1000)


@dataclasses.dataclass
class Result:
    """One row of the table; ``reached`` is ``None`` for a skipped row."""

    model: str
    target: str
    reached: bool | None
    outcome: str
    training_s: float | None = None
    wall_s: float | None = None
    evaluations: int = 0
    config: str = ""
    details: list[str] = dataclasses.field(default_factory=list)


def progress(message: str) -> None:
    print(f"time to quality: {message}", file=sys.stderr, flush=True)


def plural(count, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def duration(seconds: float | None) -> str:
    """``"42 s"`` below two minutes, ``"9.6 min"`` above; ``"—"`` for ``None``."""
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --------------------------------------------------------------------------- the clock


class Watch(keras.callbacks.Callback):
    """Checks a model during ``fit`` and stops it at the target or at a budget of training time.

    Training seconds = wall seconds since :meth:`start` - seconds spent in ``evaluate``.
    ``evaluate()`` runs at the end of every ``every``-th epoch and at the last one (the end of
    ``fit``'s epochs, or a stop by the budget or by ``fit_resumable``'s step count); ``fit``
    stops after the first value for which ``reached(value)`` holds.

    Attributes:
        evaluations: ``[(epoch, training seconds, wall seconds, value), ...]``, epochs from 1.
        hit: the entry of the first evaluation that reached the target, or ``None``.
    """

    def __init__(self, evaluate: Callable[[], object], reached: Callable[[object], bool],
                 every: int = 1, budget_s: float | None = None):
        super().__init__()
        self.evaluate, self.reached, self.every, self.budget_s = evaluate, reached, every, budget_s
        self.evaluations: list[tuple[int, float, float, object]] = []
        self.hit = None
        self.began = self.evaluation_s = 0.0

    def start(self) -> None:
        self.began, self.evaluation_s = time.perf_counter(), 0.0

    def training_seconds(self) -> float:
        return time.perf_counter() - self.began - self.evaluation_s

    def on_train_batch_end(self, batch, logs=None):
        if self.budget_s is not None and self.training_seconds() >= self.budget_s:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        last = self.model.stop_training or epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        trained, began = self.training_seconds(), time.perf_counter()
        value = self.evaluate()
        self.evaluation_s += time.perf_counter() - began
        self.evaluations.append((epoch + 1, trained, time.perf_counter() - self.began, value))
        if self.reached(value):
            self.hit = self.evaluations[-1]
            self.model.stop_training = True


def load_mnist():
    """``((x_train, y_train), (x_test, y_test))`` from local files, or the reason they are not
    there (a string): a benchmark never downloads."""
    previous = os.environ.get("SUPPORT_OFFLINE")
    os.environ["SUPPORT_OFFLINE"] = "1"
    try:
        return data.load("mnist", "train"), data.load("mnist", "test")
    except data.DataError as exc:
        if "not found" in str(exc):
            return "skipped: no MNIST files (set SUPPORT_DATA_DIR)"
        return f"skipped: {str(exc).splitlines()[0]}"
    finally:
        if previous is None:
            os.environ.pop("SUPPORT_OFFLINE")
        else:
            os.environ["SUPPORT_OFFLINE"] = previous


# --------------------------------------------------------------------------- VAE


def vae_row(settings: Settings, mnist) -> Result:
    """Dense Bernoulli VAE 784-512-256-32 until the test IS-NLL is at most the target."""
    target = f"test IS-NLL (k = {settings.vae_k}) <= {settings.vae_target:g} nats"
    config = ("dense Bernoulli VAE 784-512-256, 32-d code; `train_vae`: Adam 1e-3, batch 128, "
              f"dynamic binarization, no KL warm-up; at most {plural(settings.vae_epochs, 'epoch')}")
    if isinstance(mnist, str):
        return Result("VAE, MNIST", target, None, mnist, config=config)
    (x_train, _), (x_test, _) = mnist
    x_train = x_train[: settings.vae_train_size]
    x_binary = data.binarize(x_test, seed=1)  # one fixed binarization of the test set
    x_check = x_binary[: settings.vae_eval_size]

    confirmations = []  # (epoch, seconds) of every check on the full test set

    def evaluate():
        """``(subset NLL, full-test NLL or None)``: the full test set is scored only when the
        subset meets the target, and training goes on when the full set does not."""
        value = float(np.mean(model.importance_sampled_nll(x_check, k=settings.vae_k)))
        progress(f"VAE epoch {len(watch.evaluations) + 1}: IS-NLL {value:.2f} nats "
                 f"({len(x_check)} test images)")
        if value > settings.vae_target:
            return value, None
        began = time.perf_counter()
        full = float(np.mean(model.importance_sampled_nll(x_binary, k=settings.vae_k)))
        confirmations.append((len(watch.evaluations) + 1, full, time.perf_counter() - began))
        progress(f"VAE epoch {len(watch.evaluations) + 1}: all {len(x_binary)} test images: {full:.2f} nats")
        return value, full

    watch = Watch(evaluate, lambda values: values[1] is not None and values[1] <= settings.vae_target)
    watch.start()
    keras.utils.set_random_seed(0)
    model = VAE(MNIST_SHAPE, 32, widths=(512, 256), likelihood="bernoulli")
    train_vae(model, x_train, epochs=settings.vae_epochs, batch_size=128, learning_rate=1e-3,
              binarization="dynamic", seed=0, callbacks=[watch])
    trace = " ".join(f"{subset:.1f}" for *_, (subset, _) in watch.evaluations)
    details = [f"* VAE: IS-NLL on {len(x_check):,} test images after each epoch (nats): {trace}."]
    details += [f"* VAE: after epoch {epoch}, all {len(x_binary):,} test images: {full:.2f} nats "
                f"(scored in {duration(seconds)}, counted as evaluation)."
                for epoch, full, seconds in confirmations]
    if watch.hit is None:
        epoch, trained, wall, (value, _) = watch.evaluations[-1]
        outcome = (f"not reached in {plural(epoch, 'epoch')}: {value:.2f} nats at the end on the "
                   f"{len(x_check):,} checked every epoch")
        return Result("VAE, MNIST", target, False, outcome, trained, wall, len(watch.evaluations),
                      config, details)
    epoch, trained, wall, (value, full) = watch.hit
    outcome = (f"{full:.2f} nats on all {len(x_binary):,} test images after epoch {epoch} "
               f"({value:.2f} on the {len(x_check):,} checked every epoch)")
    return Result("VAE, MNIST", target, True, outcome, trained, wall, len(watch.evaluations),
                  config, details)


# --------------------------------------------------------------------------- ring8


def ring8_run(settings: Settings, seed: int) -> Watch:
    """One PacGAN run on ring8 with the cosine schedule, checked every ``ring8_eval_every`` steps."""
    spec = data.mixture_spec("ring8")
    points, _ = data.mixture("ring8", 50_000, seed=seed)
    steps, every = settings.ring8_steps, settings.ring8_eval_every
    per_call = math.gcd(steps, every, 50)  # steps per compiled call: fewer Python round trips

    def evaluate():
        samples = np.asarray(gan.sample(settings.ring8_samples, seed=seed + 1000))
        return metrics.mode_coverage(samples, spec.centers, spec.std)

    def reached(coverage):
        return coverage.modes_covered == spec.n_modes and coverage.high_quality >= 0.8

    watch = Watch(evaluate, reached)
    watch.start()
    keras.utils.set_random_seed(seed)
    gan = toy_gan(pack=2, schedule="cosine", steps=steps, learning_rate=1e-3, steps_per_execution=per_call)
    fit_resumable(gan, points, steps=steps, batch_size=256, seed=seed, steps_per_epoch=every,
                  callbacks=[watch])
    return watch


def ring8_row(settings: Settings) -> Result:
    """The ring8 target per seed; the row holds the medians over the seeds."""
    target = f"8/8 modes, >= 80 % high quality ({settings.ring8_samples:,} samples)"
    every = settings.ring8_eval_every
    config = (f"`toy_gan`: MLP 3x128 G and D, PacGAN pack 2, z 2-d, Adam 1e-3 (beta_1 0.5) both, "
              f"cosine decay over {settings.ring8_steps:,} steps, batch 256, 50,000 points; "
              f"checked every {every} steps")
    lines = ["| ring8 seed | reached at step | modes | high quality | training | incl. evaluation | "
             "evaluations |", "|---:|---:|---:|---:|---:|---:|---:|"]
    runs = {}
    for seed in settings.ring8_seeds:
        watch = runs[seed] = ring8_run(settings, seed)
        epoch, trained, wall, coverage = watch.hit or watch.evaluations[-1]
        step = f"{epoch * every:,}" if watch.hit else f"not reached ({epoch * every:,} steps)"
        progress(f"ring8 seed {seed}: {step}")
        lines.append(f"| {seed} | {step} | {coverage.modes_covered} | {100 * coverage.high_quality:.1f} % | "
                     f"{duration(trained) if watch.hit else '—'} | {duration(wall) if watch.hit else '—'} | "
                     f"{len(watch.evaluations)} |")
    hits = [watch.hit for watch in runs.values() if watch.hit]
    if len(hits) == len(runs):
        steps = statistics.median(hit[0] * every for hit in hits)
        outcome = f"all {len(runs)} seeds; median step {steps:,.0f}"
    else:
        outcome = f"{len(hits)} of {len(runs)} seeds reached it in {settings.ring8_steps:,} steps"
    # A seed that never reached the target counts as infinitely slow in the medians.
    times = [(hit[1], hit[2]) if (hit := watch.hit) else (math.inf, math.inf) for watch in runs.values()]
    trained, wall = (statistics.median(t[i] for t in times) for i in (0, 1))
    evaluations = statistics.median(len(watch.evaluations) for watch in runs.values())
    name = f"GAN, ring8 (median of {plural(len(runs), 'seed')})"
    return Result(name, target, len(hits) == len(runs), outcome,
                  None if math.isinf(trained) else trained, None if math.isinf(wall) else wall,
                  evaluations, config, lines)


# --------------------------------------------------------------------------- DCGAN


def dcgan_row(settings: Settings, mnist) -> Result:
    """DCGAN until its classifier-FID is within 2x the real-data floor, or out of budget."""
    target = "classifier-FID <= 2 x real-data floor"
    config = ("`GAN(dcgan_generator(32, filters=32), dcgan_discriminator(filters=32))`, "
              "non-saturating loss, Adam 5e-4 (beta_1 0.5) both, batch 64 (notebook 04's defaults), "
              "an epoch per compiled call; "
              f"checked every {plural(settings.dcgan_eval_every, 'epoch')}, "
              f"budget {settings.dcgan_minutes:g} min of training")
    if isinstance(mnist, str):
        return Result("DCGAN, MNIST", target, None, mnist, config=config)
    (x_train, y_train), (x_test, y_test) = mnist
    x_train, y_train = x_train[: settings.dcgan_train_size], y_train[: settings.dcgan_train_size]
    n = min(settings.fid_size, len(x_test), len(x_train))
    began = time.perf_counter()
    classifier = scoring.train_classifier(x_train, y_train, x_test, y_test, seed=0,
                                          epochs=settings.classifier_epochs)
    floor = scoring.classifier_fid(classifier, x_train[:n], x_test[:n])
    test_features = scoring.features(classifier, x_test[:n])  # computed once for every check
    scorer_s = time.perf_counter() - began
    progress(f"DCGAN scorer: accuracy {classifier.test_accuracy:.3f}, floor {floor:.3f} ({scorer_s:.0f} s)")

    def evaluate():
        samples = gan.sample(n, seed=1).numpy()  # the same z at every check
        # The classifier-FID of the samples against the test images, as scoring.classifier_fid.
        value = metrics.frechet_distance(scoring.features(classifier, samples), test_features)
        progress(f"DCGAN after {duration(watch.training_seconds())} of training: FID {value:.2f}")
        return value

    watch = Watch(evaluate, lambda value: value <= 2 * floor, every=settings.dcgan_eval_every,
                  budget_s=60 * settings.dcgan_minutes)
    watch.start()
    keras.utils.set_random_seed(0)
    gan = GAN(dcgan_generator(32, MNIST_SHAPE, filters=32), dcgan_discriminator(MNIST_SHAPE, filters=32))
    epoch_steps = len(x_train) // 64
    # An epoch per compiled call, as notebook 05's GAN (fewer Python round trips); the budget is
    # then checked at the end of each epoch, so training may run up to one epoch past it.
    gan.compile(d_optimizer=keras.optimizers.Adam(5e-4, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(5e-4, beta_1=0.5), steps_per_execution=epoch_steps)
    # The budget stops training; the step count is only an upper bound fit needs.
    fit_resumable(gan, x_train, steps=10_000 * epoch_steps, batch_size=64, seed=0, callbacks=[watch])
    trace = ", ".join(f"{duration(trained)}: {value:.2f}" for _, trained, _, value in watch.evaluations)
    details = [f"* DCGAN: FID ({n:,} samples vs {n:,} test images) after training for: {trace}.",
               f"* DCGAN: the scorer (classifier: {100 * classifier.test_accuracy:.1f} % test accuracy; "
               f"and the floor) took {duration(scorer_s)}; an epoch is {epoch_steps} steps."]
    floors = f"floor {floor:.2f}, target {2 * floor:.2f}"
    if watch.hit:
        epoch, trained, wall, value = watch.hit
        return Result("DCGAN, MNIST", target, True, f"FID {value:.2f} after epoch {epoch} ({floors})",
                      trained, wall, len(watch.evaluations), config, details)
    epoch, trained, wall, value = min(watch.evaluations, key=lambda entry: entry[3])
    outcome = (f"not reached in {settings.dcgan_minutes:g} min; best FID {value:.2f} at "
               f"{duration(trained)}, epoch {epoch} ({floors})")
    _, trained, wall, _ = watch.evaluations[-1]
    return Result("DCGAN, MNIST", target, False, outcome, trained, wall, len(watch.evaluations), config,
                  details)


# --------------------------------------------------------------------------- report


def measure(settings: Settings = FULL) -> str:
    """Run the three benchmarks and return the report (Markdown: table, configurations, traces)."""
    mnist = load_mnist()
    results = [vae_row(settings, mnist), ring8_row(settings), dcgan_row(settings, mnist)]
    lines = ["| model | target | reached | result | training | incl. evaluation | evaluations |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in results:
        reached = {None: "skipped", True: "yes", False: "no"}[r.reached]
        lines.append(f"| {r.model} | {r.target} | {reached} | {r.outcome} | {duration(r.training_s)} | "
                     f"{duration(r.wall_s)} | {r.evaluations:g} |")
    lines += ["", "Configurations:", ""]
    lines += [f"* {r.model}: {r.config}." for r in results]
    for r in results:
        lines += ["", *r.details] if r.details else []
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (about a minute): checks the code, not the models")
    parser.add_argument("--dcgan-minutes", type=float, default=None,
                        help=f"DCGAN budget of training minutes (default {FULL.dcgan_minutes:g})")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.dcgan_minutes is not None:
        if not args.dcgan_minutes > 0:
            parser.error(f"--dcgan-minutes={args.dcgan_minutes} must be positive.")
        settings = dataclasses.replace(settings, dcgan_minutes=args.dcgan_minutes)
    began = time.perf_counter()
    print(header() + "\n")
    print(measure(settings))
    print(f"\nTotal time: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
