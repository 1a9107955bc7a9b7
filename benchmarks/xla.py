"""XLA or not: `support`'s training with ``jit_compile=True`` against the default.

For each model of the throughput table (dense autoencoder, convolutional Bernoulli VAE, DCGAN)
this builds the same `support` model twice, with the same initial weights, compiled

* **default**: ``jit_compile="auto"``, which Keras resolves to XLA only when there is a GPU
  (plain ``tf.function`` on a CPU), and
* **XLA**: ``jit_compile=True``, the whole ``train_step`` compiled by XLA,

and trains both with :func:`support.training.fit_resumable` on the same data, alternately in
one process (the order flips every repetition). A warm-up of 20 steps per contender traces the
step (and, for XLA, compiles it) before timing; its wall time is reported as the *first call*,
the price XLA pays once per model and batch shape. Each repetition then times ``--steps``
steps end to end. The table gives the median samples/s of each over ``--repeats`` repetitions,
the ratio XLA / default (above 1: XLA is faster) and the winner: the faster one when the ratio
is outside ``[1 / 1.15, 1.15]``, "neither" inside (the run-to-run spread of a shared 2-vCPU
machine is of that order).

Synthetic data of MNIST shape (10,000 uniform random images in [0, 1], no downloads); batch
size 128, 64 for the GAN.

Steps per second are not what a learner waits for: a notebook's training is a few seconds
long, and XLA's compile time is paid inside it. So a second table times whole trainings as the
notebooks run them, compile included: notebook 05's autoencoder (``train_autoencoder``), VAE
(``train_vae``) and DCGAN (``fit_resumable``, an epoch per compiled call) with its settings on
the bundled digits, ``--epochs`` each, with ``jit_compile`` at its default and ``True``,
alternately, ``--trainings`` times (median wall time).

    python benchmarks/xla.py [--repeats N] [--steps S] [--trainings T] [--epochs E]
    # defaults: 5, 100, 3 and 100
"""

from __future__ import annotations  # noqa: I001  (support before keras and tensorflow)
# ruff: noqa: E402  (the imports below follow import_tensorflow() on purpose)

import argparse
import statistics
import sys
import time

from support.notebook import import_tensorflow

import_tensorflow()  # before keras and tensorflow: without their C++ start-up lines

from throughput import MODELS, WARMUP_STEPS, header, run_support, support_model, synthetic_images

# Ratios closer to 1 than this factor are reported as no winner.
TIE = 1.15


def winner(ratio: float) -> str:
    """``"XLA"`` when ``ratio = XLA / default >= TIE``, ``"default"`` when ``<= 1 / TIE``,
    else ``"neither"``."""
    if ratio >= TIE:
        return "XLA"
    if ratio <= 1 / TIE:
        return "default"
    return "neither"


def measure(repeats: int = 5, steps: int = 100) -> str:
    """Run the comparison and return its report (Markdown: settings, table, spread)."""
    x = synthetic_images()
    rows = []
    for name in MODELS:
        print(f"xla: {name}", file=sys.stderr, flush=True)
        models, first_call = {}, {}
        for who, jit in (("default", "auto"), ("XLA", True)):
            models[who], batch_size = support_model(name, jit_compile=jit)
            first_call[who] = run_support(models[who], x, batch_size, WARMUP_STEPS, seed=0)
        times = {who: [] for who in models}
        for repeat in range(repeats):
            order = ("default", "XLA") if repeat % 2 == 0 else ("XLA", "default")
            for who in order:
                times[who].append(run_support(models[who], x, batch_size, steps, seed=repeat + 1))
        rate = {who: steps * batch_size / statistics.median(t) for who, t in times.items()}
        spread = {who: [steps * batch_size / s for s in t] for who, t in times.items()}
        resolved = {who: model.jit_compile for who, model in models.items()}
        rows.append((name, batch_size, rate, first_call, resolved, spread))

    lines = [f"Settings: {repeats} repetition{'s' * (repeats > 1)} of {steps} steps after a "
             f"{WARMUP_STEPS}-step warm-up "
             "(the first call), synthetic 28x28x1 images; no winner within a factor "
             f"{TIE} either way.", "",
             "| model | default samples/s | XLA samples/s | ratio XLA / default | first call, "
             "default / XLA (s) | faster |", "|---|---:|---:|---:|---:|---|"]
    for name, batch_size, rate, first_call, _, _ in rows:
        ratio = rate["XLA"] / rate["default"]
        lines.append(f"| {name} (batch {batch_size}) | {rate['default']:,.0f} | {rate['XLA']:,.0f} | "
                     f"{ratio:.2f} | {first_call['default']:.1f} / {first_call['XLA']:.1f} | "
                     f"{winner(ratio)} |")
    lines += ["", "Per repetition, samples/s (default; XLA):", "", "```"]
    width = max(len(row[0]) for row in rows) + 1
    for name, *_, spread in rows:
        lines.append(f"{name + ':':<{width}} "
                     + "; ".join(" ".join(f"{v:,.0f}" for v in spread[who]) for who in spread))
    lines += ["```", "", "jit_compile as Keras resolved it (default; XLA): "
              + ", ".join(f"{row[0]}: {row[4]['default']}; {row[4]['XLA']}" for row in rows) + "."]
    return "\n".join(lines)


def notebook_training(name: str, jit_compile, epochs: int) -> float:
    """Wall seconds of one of notebook 05's trainings on digits (k = 8, batch 64), built after
    ``keras.utils.set_random_seed(0)`` and compiled with ``jit_compile``, compile included."""
    import keras

    from support import data, training
    from support.models.autoencoders import DenseAutoencoder
    from support.models.gan import GAN, dcgan_discriminator, dcgan_generator
    from support.models.vae import VAE
    from support.training import train_vae

    x, _ = data.load("digits", "train")
    shape, batch_size = x.shape[1:], 64
    keras.utils.set_random_seed(0)
    began = time.perf_counter()
    if name == "autoencoder":
        model = DenseAutoencoder(shape, (128, 64), 8)
        training.train_autoencoder(model, x, epochs=epochs, batch_size=batch_size, learning_rate=0.003,
                                   jit_compile=jit_compile)
    elif name == "VAE":
        model = VAE(shape, 8, widths=(128, 64), likelihood="bernoulli")
        train_vae(model, x, epochs=epochs, batch_size=batch_size, learning_rate=0.003,
                  warmup_epochs=min(20, epochs // 5), jit_compile=jit_compile)
    else:
        model = GAN(dcgan_generator(8, shape, filters=32), dcgan_discriminator(shape, filters=32))
        model.compile(d_optimizer=keras.optimizers.Adam(5e-4, beta_1=0.5),
                      g_optimizer=keras.optimizers.Adam(5e-4, beta_1=0.5), jit_compile=jit_compile,
                      steps_per_execution=len(x) // batch_size)
        training.fit_resumable(model, x, steps=epochs * (len(x) // batch_size), batch_size=batch_size)
    return time.perf_counter() - began


NOTEBOOK_TRAININGS = ("autoencoder", "VAE", "GAN")


def measure_trainings(trainings: int = 3, epochs: int = 100) -> str:
    """Time notebook 05's three trainings with and without XLA; return the Markdown table."""
    rows = []
    for name in NOTEBOOK_TRAININGS:
        print(f"xla: notebook training {name}", file=sys.stderr, flush=True)
        times = {"default": [], "XLA": []}
        for repeat in range(trainings):
            order = ("default", "XLA") if repeat % 2 == 0 else ("XLA", "default")
            for who in order:
                times[who].append(notebook_training(name, "auto" if who == "default" else True, epochs))
        rows.append((name, {who: statistics.median(t) for who, t in times.items()}, times))
    lines = [f"Whole trainings of notebook 05's three models with its settings, on digits (1,437 images "
             f"of 8x8, k = 8, batch 64), {epochs} epochs each, compile included; median of {trainings}:", "",
             "| training | default (s) | XLA (s) | ratio default / XLA | faster |",
             "|---|---:|---:|---:|---|"]
    for name, median, _ in rows:
        ratio = median["default"] / median["XLA"]
        lines.append(f"| {name} | {median['default']:.1f} | {median['XLA']:.1f} | {ratio:.2f} "
                     f"| {winner(ratio)} |")

    def each(t):
        return "; ".join(" ".join(f"{v:.1f}" for v in t[who]) for who in t)

    lines += ["", "Each training, seconds (default; XLA): "
              + ", ".join(f"{name}: {each(t)}" for name, _, t in rows) + "."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per contender")
    parser.add_argument("--steps", type=int, default=100, help="training steps per repetition")
    parser.add_argument("--trainings", type=int, default=3, help="whole trainings per contender")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of each whole training")
    args = parser.parse_args(argv)
    if min(args.repeats, args.steps, args.trainings, args.epochs) < 1:
        parser.error(f"--repeats={args.repeats}, --steps={args.steps}, --trainings={args.trainings} "
                     f"and --epochs={args.epochs} must be positive.")
    began = time.perf_counter()
    print(header() + "\n")
    print(measure(args.repeats, args.steps))
    print()
    print(measure_trainings(args.trainings, args.epochs))
    print(f"\nTotal time: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
