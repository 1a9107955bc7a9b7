"""Step throughput of `support`'s training against a hand-written loop of the same model.

For each model (dense autoencoder, convolutional Bernoulli VAE, DCGAN) this trains

* **support**: the model's own ``train_step`` through Keras ``fit``, as
  :func:`support.training.fit_resumable` runs it (called here, without checkpoints), compiled
  as `support`'s training functions compile it (``train_autoencoder``, ``train_vae`` and
  notebook 05's GAN): an epoch per compiled call (``steps_per_execution`` = steps per epoch);
* **support, 1 step per call**: the same, compiled with Keras' default of one step per call
  (as a model that a user compiles without ``steps_per_execution`` runs): ``fit``'s own
  per-step cost; and
* **hand-written**: a fresh copy of the same architecture with the same initial weights, trained
  by a ``@tf.function`` step with ``tf.GradientTape`` on the same loss, with the same optimizer
  settings, fed by the same :func:`support.data.step_batches` dataset and batch size, one
  Python call per step as such loops are written,

alternately in one process (the order reverses every repetition). Each repetition times
``--epochs`` epochs of training steps end to end (building the dataset, iterating it, waiting
for the last update); a warm-up run of one epoch before the first repetition traces every
step, so tracing is not timed. The table gives the median samples/s of each over ``--repeats``
repetitions and the ratios to the hand-written loop (below 1 means `support` is slower).

Synthetic data of MNIST shape (10,000 uniform random images in [0, 1], no downloads); batch
size 128 (78 steps per epoch), 64 for the GAN (156 steps per epoch).

    python benchmarks/throughput.py [--repeats N] [--epochs E]
"""

from __future__ import annotations  # noqa: I001  (support before keras and tensorflow)
# ruff: noqa: E402  (the imports below follow import_tensorflow() on purpose)

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np

from support.notebook import import_tensorflow

import_tensorflow()  # before keras and tensorflow: without their C++ start-up lines
import keras
import tensorflow as tf

from support.data import step_batches
from support.models.autoencoders import DenseAutoencoder
from support.models.gan import GAN, dcgan_discriminator, dcgan_generator
from support.models.vae import VAE
from support.training import fit_resumable

IMAGE_SHAPE = (28, 28, 1)
EXAMPLES = 10_000
LATENT_DIM = 16
GAN_LATENT_DIM = 32
WARMUP_STEPS = 20  # xla.py's warm-up (there, one step per call)


# --------------------------------------------------------------------------- hand-written steps


def autoencoder_step(model: DenseAutoencoder, optimizer):
    """One update on ``mean over batch of mean over pixels of (x - x_hat)^2``, as
    ``Autoencoder.train_step`` (:func:`support.models.autoencoders.reconstruction_loss`)."""
    encoder, decoder = model.encoder, model.decoder
    variables = encoder.trainable_variables + decoder.trainable_variables

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            x_hat = decoder(encoder(x, training=True), training=True)
            loss = tf.reduce_mean(tf.square(x - x_hat))  # equal pixel counts: mean of means
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def vae_step(model: VAE, optimizer):
    """One update on the batch mean of ``-ELBO = reconstruction + beta * KL`` (Bernoulli
    likelihood summed over pixels, closed-form KL, one reparameterized sample), as
    ``VAE.example_terms``."""
    encoder, decoder, beta = model.encoder, model.decoder, model.target_beta
    variables = encoder.trainable_variables + decoder.trainable_variables

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            z_mean, z_log_var = tf.split(encoder(x, training=True), 2, axis=-1)
            z = z_mean + tf.exp(0.5 * z_log_var) * tf.random.normal(tf.shape(z_mean))
            logits = decoder(z, training=True)
            reconstruction = tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), axis=[1, 2, 3]
            )
            kl = 0.5 * tf.reduce_sum(tf.square(z_mean) + tf.exp(z_log_var) - 1.0 - z_log_var, axis=-1)
            loss = tf.reduce_mean(reconstruction + beta * kl)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def gan_step(generator, discriminator, d_optimizer, g_optimizer):
    """One discriminator update on ``softplus(-D(x)) + softplus(D(G(z)))`` and one generator
    update on the non-saturating ``softplus(-D(G(z)))``, batch means, as ``GAN.train_step``."""
    latent_dim = int(generator.input_shape[-1])
    d_variables, g_variables = discriminator.trainable_variables, generator.trainable_variables

    @tf.function
    def step(real):
        batch = tf.shape(real)[0]
        fake = generator(tf.random.normal((batch, latent_dim)), training=True)
        with tf.GradientTape() as tape:
            d_loss = tf.reduce_mean(
                tf.nn.softplus(-discriminator(real, training=True))
                + tf.nn.softplus(discriminator(fake, training=True))
            )
        d_optimizer.apply_gradients(zip(tape.gradient(d_loss, d_variables), d_variables))
        with tf.GradientTape() as tape:
            fake_out = discriminator(generator(tf.random.normal((batch, latent_dim)), training=True),
                                     training=True)
            g_loss = tf.reduce_mean(tf.nn.softplus(-fake_out))
        g_optimizer.apply_gradients(zip(tape.gradient(g_loss, g_variables), g_variables))
        return d_loss + g_loss

    return step


# --------------------------------------------------------------------------- the two contenders


MODELS = ("dense autoencoder", "conv VAE", "DCGAN")
BATCH_SIZES = {"dense autoencoder": 128, "conv VAE": 128, "DCGAN": 64}


def support_model(name: str, jit_compile="auto", steps_per_execution: int = 1):
    """``(model, batch_size)``: the compiled `support` model ``name`` of the table, its weights
    drawn after ``keras.utils.set_random_seed(0)`` (so every call gives the same initial weights),
    compiled with ``jit_compile`` (``"auto"``: XLA only on a GPU; ``True``: XLA) and
    ``steps_per_execution``."""
    keras.utils.set_random_seed(0)
    options = {"jit_compile": jit_compile, "steps_per_execution": steps_per_execution}
    if name == "dense autoencoder":
        model = DenseAutoencoder(IMAGE_SHAPE, (128, 64), LATENT_DIM)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), **options)
        return model, BATCH_SIZES[name]
    if name == "conv VAE":
        model = VAE(IMAGE_SHAPE, LATENT_DIM, encoder="conv", filters=(32, 64))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), **options)
        return model, BATCH_SIZES[name]
    if name == "DCGAN":
        model = GAN(dcgan_generator(GAN_LATENT_DIM, IMAGE_SHAPE, filters=32),
                    dcgan_discriminator(IMAGE_SHAPE, filters=32))
        model.compile(d_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5),
                      g_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5), **options)
        return model, BATCH_SIZES[name]
    raise ValueError(f"name={name!r} is not a benchmarked model; choose one of {', '.join(MODELS)}.")


CONTENDERS = ("support", "support, 1 step per call", "hand-written")


def steps_per_epoch(name: str) -> int:
    """Steps in one pass over the synthetic data at the model's batch size (78 or 156)."""
    return EXAMPLES // BATCH_SIZES[name]


def build(name: str):
    """``({contender: model or step}, batch_size)``: the `support` model compiled with an epoch
    per call, the same compiled with one step per call, and the hand-written step of a copy,
    all three with the same initial weights."""
    model, batch_size = support_model(name, steps_per_execution=steps_per_epoch(name))
    one_step, _ = support_model(name)
    if name == "dense autoencoder":
        copy = DenseAutoencoder(IMAGE_SHAPE, (128, 64), LATENT_DIM)
        copy.set_weights(model.get_weights())
        step = autoencoder_step(copy, keras.optimizers.Adam(1e-3))
    elif name == "conv VAE":
        copy = VAE(IMAGE_SHAPE, LATENT_DIM, encoder="conv", filters=(32, 64))
        copy.set_weights(model.get_weights())
        step = vae_step(copy, keras.optimizers.Adam(1e-3))
    else:
        generator = dcgan_generator(GAN_LATENT_DIM, IMAGE_SHAPE, filters=32)
        discriminator = dcgan_discriminator(IMAGE_SHAPE, filters=32)
        generator.set_weights(model.generator.get_weights())
        discriminator.set_weights(model.discriminator.get_weights())
        step = gan_step(generator, discriminator, keras.optimizers.Adam(1e-3, beta_1=0.5),
                        keras.optimizers.Adam(1e-3, beta_1=0.5))
    return dict(zip(CONTENDERS, (model, one_step, step))), batch_size


def run_support(model, x, batch_size: int, steps: int, seed: int) -> float:
    """Seconds to train ``steps`` steps with ``fit_resumable`` (``fit`` ends with a sync)."""
    start = time.perf_counter()
    fit_resumable(model, x, steps=steps, batch_size=batch_size, seed=seed)
    return time.perf_counter() - start


def run_hand(step, x, batch_size: int, steps: int, seed: int) -> float:
    """Seconds to train ``steps`` steps with the hand-written loop, up to the last update."""
    start = time.perf_counter()
    loss = None
    for batch in step_batches(x, batch_size, seed=seed, steps=steps):
        loss = step(batch)
    float(loss)  # wait for the last step
    return time.perf_counter() - start


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return (f"{os.cpu_count()} CPUs ({cpu}); GPUs: {', '.join(gpus) or 'none'}; "
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")


def synthetic_images() -> np.ndarray:
    """``EXAMPLES`` uniform random images of MNIST shape in [0, 1]: no download needed."""
    return np.random.default_rng(0).uniform(size=(EXAMPLES, *IMAGE_SHAPE)).astype(np.float32)


def run(who: str, trainee, x, batch_size: int, steps: int, seed: int) -> float:
    """Seconds for contender ``who`` to train ``steps`` steps."""
    return (run_hand if who == "hand-written" else run_support)(trainee, x, batch_size, steps, seed)


def measure(repeats: int = 5, epochs: int = 2) -> str:
    """Run the comparison and return its report (Markdown: settings, table, spread)."""
    x = synthetic_images()
    rows = []
    for name in MODELS:
        print(f"throughput: {name}", file=sys.stderr, flush=True)
        trainees, batch_size = build(name)
        steps = epochs * steps_per_epoch(name)
        # Warm-up: trace every step (and let tf.data and the thread pools settle), untimed.
        for who, trainee in trainees.items():
            run(who, trainee, x, batch_size, steps_per_epoch(name), seed=0)
        times = {who: [] for who in CONTENDERS}
        for repeat in range(repeats):
            for who in CONTENDERS if repeat % 2 == 0 else CONTENDERS[::-1]:
                times[who].append(run(who, trainees[who], x, batch_size, steps, seed=repeat + 1))
        rate = {who: steps * batch_size / statistics.median(t) for who, t in times.items()}
        spread = {who: [steps * batch_size / s for s in t] for who, t in times.items()}
        rows.append((name, batch_size, steps, rate, trainees["support"].jit_compile, spread))

    lines = [f"Settings: {repeats} repetition{'s' * (repeats > 1)} of {epochs} epoch{'s' * (epochs > 1)} "
             f"each, {EXAMPLES:,} synthetic {'x'.join(map(str, IMAGE_SHAPE))} images; `support` "
             "compiled with an epoch per call as its training functions do, and with one step per call.",
             "", "| model | steps | support samples/s | 1 step per call | hand-written samples/s | "
             "ratio support / hand | ratio 1 step per call / hand |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, batch_size, steps, rate, *_ in rows:
        ours, one, hand = (rate[who] for who in CONTENDERS)
        lines.append(f"| {name} (batch {batch_size}) | {steps} | {ours:,.0f} | {one:,.0f} | {hand:,.0f} | "
                     f"{ours / hand:.2f} | {one / hand:.2f} |")
    lines += ["", f"Per repetition, samples/s ({'; '.join(CONTENDERS)}):", "", "```"]
    width = max(len(row[0]) for row in rows) + 1
    for name, *_, spread in rows:
        lines.append(f"{name + ':':<{width}} "
                     + "; ".join(" ".join(f"{v:,.0f}" for v in spread[who]) for who in CONTENDERS))
    lines += ["```", "", f"fit's jit_compile (XLA): {', '.join(f'{r[0]}: {r[4]}' for r in rows)}; "
              "the hand-written steps are plain tf.function."]
    return "\n".join(lines)


def header() -> str:
    """The date (UTC) and machine lines that head every report."""
    return (f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
            f"Machine: {machine()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per contender")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs (passes over the 10,000 images) per repetition")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.epochs < 1:
        parser.error(f"--repeats={args.repeats} and --epochs={args.epochs} must be positive.")
    began = time.perf_counter()
    print(header() + "\n")
    print(measure(args.repeats, args.epochs))
    print(f"\nTotal time: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
