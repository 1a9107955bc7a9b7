"""Generative adversarial networks (Goodfellow et al. 2014) and WGAN-GP (Gulrajani et al. 2017).

A generator ``G`` maps ``z ~ N(0, I)`` to samples; a discriminator outputs a logit ``l`` with
``D(x) = sigmoid(l)`` (or, for ``loss="wgan_gp"``, a critic score ``f(x)``). :class:`GAN` holds
both and trains them in alternation in its own ``train_step``: per batch of real data,
``d_steps`` discriminator updates (each with fresh ``z`` and the same real batch), then one
generator update. The losses come from :mod:`support.objectives`:

    loss="non_saturating"  D: -log D(x) - log(1 - D(G(z)))    G: -log D(G(z))
    loss="minimax"         D: as above                         G: log(1 - D(G(z)))
    loss="hinge"           D: relu(1 - l(x)) + relu(1 + l(G(z)))   G: -l(G(z))
    loss="wgan_gp"         D: f(G(z)) - f(x) + gp_weight * (||grad f(x_hat)|| - 1)^2
                           G: -f(G(z))

``fit`` reports ``d_loss``, ``g_loss``, ``d_real`` (mean ``D(x)``) and ``d_fake`` (mean
``D(G(z))``), probabilities for the logistic losses and raw outputs for the hinge loss and
WGAN-GP. ``dcgan_discriminator(spectral_norm=True)`` wraps every layer with weights in
``keras.layers.SpectralNormalization`` (Miyato et al. 2018), a second way to bound the
discriminator's slope.

PacGAN (Lin et al. 2018): with ``pack > 1`` the discriminator judges ``pack`` samples
concatenated into one input (build it with ``mlp_discriminator(pack=pack)``); ``train_step``
groups real and generated batches into packs of ``pack`` consecutive examples, dropping a
remainder, so a batch of 256 gives 128 packs of 2. Typical use on the ring of 8 Gaussians::

    gan = GAN(mlp_generator(latent_dim=2), mlp_discriminator())
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5))
    gan.fit(data.dataset(x_train, batch_size=256), epochs=50)
    points = gan.sample(2500, seed=0)

Saving: ``get_config`` stores both networks and ``get_compile_config`` both optimizers and the
loss settings, so ``gan.save("gan.keras")`` / ``keras.models.load_model("gan.keras")`` restores
the weights, the optimizer states and the compiled training set-up.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from support import checks, objectives
from support.models.autoencoders import standard_normal

LOSSES = ("non_saturating", "minimax", "hinge", "wgan_gp")
RAW_OUTPUTS = ("hinge", "wgan_gp")  # losses whose discriminator outputs are not logits


# --------------------------------------------------------------------------- builders


def mlp_generator(latent_dim: int, output_dim: int = 2, width: int = 128, depth: int = 3,
                  name: str = "generator") -> keras.Sequential:
    """``z: [batch, latent_dim] -> x: [batch, output_dim]``: ``depth`` ReLU layers of ``width``
    units and a linear output (the 2-D mixtures are unbounded)."""
    latent_dim = checks.positive_int(latent_dim, "latent_dim")
    output_dim = checks.positive_int(output_dim, "output_dim")
    width = checks.positive_int(width, "width")
    depth = checks.positive_int(depth, "depth")
    layers = [keras.Input((latent_dim,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    layers.append(keras.layers.Dense(output_dim, name="samples"))
    return keras.Sequential(layers, name=name)


def mlp_discriminator(input_dim: int = 2, width: int = 128, depth: int = 3, pack: int = 1,
                      name: str = "discriminator") -> keras.Sequential:
    """``x: [batch, pack * input_dim] -> [batch, 1]`` logits: ``depth`` LeakyReLU(0.2) layers of
    ``width`` units. With ``pack > 1`` (PacGAN) each input row is ``pack`` examples
    concatenated; :class:`GAN` does the packing."""
    input_dim = checks.positive_int(input_dim, "input_dim")
    width = checks.positive_int(width, "width")
    depth = checks.positive_int(depth, "depth")
    pack = checks.positive_int(pack, "pack")
    layers = [keras.Input((pack * input_dim,))]
    for _ in range(depth):
        layers += [keras.layers.Dense(width), keras.layers.LeakyReLU(0.2)]
    layers.append(keras.layers.Dense(1, name="logit"))
    return keras.Sequential(layers, name=name)


def _check_dcgan_shape(image_shape):
    shape = checks.image_shape(image_shape, "image_shape")
    if shape[0] % 4 or shape[1] % 4:
        raise ValueError(
            f"image_shape={image_shape!r}: height and width must be multiples of 4 (two stride-2 "
            "layers), e.g. (8, 8, 1) or (28, 28, 1)."
        )
    return shape


def dcgan_generator(latent_dim: int, image_shape=(28, 28, 1), filters: int = 64,
                    name: str = "generator") -> keras.Sequential:
    """A DCGAN generator (Radford et al. 2016): ``z: [batch, latent_dim] -> [batch, h, w, c]``
    in [0, 1]. A dense layer to an ``h/4 x w/4 x 2 filters`` map, then two stride-2 transposed
    convolutions; batch norm and ReLU after every hidden layer, a sigmoid output to match data
    in [0, 1]. ``h`` and ``w`` must be multiples of 4 (8x8 digits, 28x28 MNIST)."""
    latent_dim = checks.positive_int(latent_dim, "latent_dim")
    height, width, channels = _check_dcgan_shape(image_shape)
    filters = checks.positive_int(filters, "filters")
    base = (height // 4, width // 4, 2 * filters)
    return keras.Sequential([
        keras.Input((latent_dim,)),
        keras.layers.Dense(int(np.prod(base)), use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Reshape(base),
        keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", activation="sigmoid",
                                     name="pixels"),
    ], name=name)


def dcgan_discriminator(image_shape=(28, 28, 1), filters: int = 64, spectral_norm: bool = False,
                        name: str = "discriminator") -> keras.Sequential:
    """A DCGAN discriminator: ``[batch, h, w, c] -> [batch, 1]`` logits from two stride-2
    convolutions with LeakyReLU(0.2). No batch norm, so that it also serves as a WGAN-GP critic
    (the penalty is per example; batch norm would mix examples). ``spectral_norm=True`` wraps
    the two convolutions and the output layer in ``keras.layers.SpectralNormalization`` (one
    power iteration per training call), so each has a largest singular value of 1."""
    _check_dcgan_shape(image_shape)
    filters = checks.positive_int(filters, "filters")
    if not isinstance(spectral_norm, (bool, np.bool_)):
        raise ValueError(f"spectral_norm={spectral_norm!r} must be True or False.")

    def weighted(layer):
        return keras.layers.SpectralNormalization(layer, name=f"sn_{layer.name}") if spectral_norm else layer

    return keras.Sequential([
        keras.Input(checks.image_shape(image_shape, "image_shape")),
        weighted(keras.layers.Conv2D(filters, 4, strides=2, padding="same", name="conv_1")),
        keras.layers.LeakyReLU(0.2),
        weighted(keras.layers.Conv2D(2 * filters, 4, strides=2, padding="same", name="conv_2")),
        keras.layers.LeakyReLU(0.2),
        keras.layers.Flatten(),
        weighted(keras.layers.Dense(1, name="logit")),
    ], name=name)


SCHEDULES = ("constant", "cosine")


def toy_gan(*, latent_dim: int = 2, pack: int = 1, loss: str = "non_saturating", d_steps: int = 1,
            learning_rate: float = 1e-3, d_learning_rate: float | None = None,
            schedule: str = "constant", steps: int | None = None, width: int = 128, depth: int = 3,
            steps_per_execution: int = 1) -> GAN:
    """A compiled MLP GAN for the 2-D mixtures (``ring8``, ``grid25``): ``depth`` x ``width``
    generator and discriminator, Adam with ``beta_1 = 0.5`` on both.

    Args:
        latent_dim: size of the noise ``z``.
        pack: PacGAN packing degree (1: a plain discriminator).
        loss, d_steps: as in :meth:`GAN.compile`.
        learning_rate: the generator's Adam rate (peak rate with ``schedule="cosine"``).
        d_learning_rate: the discriminator's rate; ``None`` gives ``learning_rate``. A much
            smaller one makes a *weak* discriminator.
        schedule: ``"constant"``, or ``"cosine"`` decay to 0 over ``steps`` generator updates
            (Loshchilov and Hutter 2017), applied to both optimizers.
        steps: training steps, needed by the cosine schedule.
        steps_per_execution: training steps per compiled call (fewer Python round trips for
            these tiny networks; the updates are the same).
    """
    checks.choice(schedule, SCHEDULES, "schedule")
    rates = {"learning_rate": checks.positive_float(learning_rate, "learning_rate"),
             "d_learning_rate": checks.positive_float(
                 learning_rate if d_learning_rate is None else d_learning_rate, "d_learning_rate")}
    if schedule == "cosine":
        steps = checks.positive_int(steps, "steps")
        # The discriminator's optimizer counts d_steps updates per generator step.
        g_rate = keras.optimizers.schedules.CosineDecay(rates["learning_rate"], steps)
        d_rate = keras.optimizers.schedules.CosineDecay(rates["d_learning_rate"], steps * d_steps)
    else:
        g_rate, d_rate = rates["learning_rate"], rates["d_learning_rate"]
    gan = GAN(mlp_generator(latent_dim, 2, width, depth), mlp_discriminator(2, width, depth, pack),
              pack=pack)
    gan.compile(d_optimizer=keras.optimizers.Adam(d_rate, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(g_rate, beta_1=0.5), loss=loss,
                d_steps=d_steps, steps_per_execution=checks.positive_int(steps_per_execution,
                                                                  "steps_per_execution"))
    return gan


# --------------------------------------------------------------------------- the model


@keras.saving.register_keras_serializable(package="support")
class GAN(keras.Model):
    """A generator and a discriminator trained in alternation; see the module docstring.

    Args:
        generator: a model ``[batch, latent_dim] -> [batch, ...]`` with a known input shape.
        discriminator: a model ``[batch, pack * ...] -> [batch, 1]`` (logits or critic scores).
        pack: PacGAN packing degree; the discriminator's input must be ``pack`` generated
            examples concatenated.
    """

    def __init__(self, generator, discriminator, pack: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.pack = checks.positive_int(pack, "pack")
        self.latent_dim = int(generator.input_shape[-1])
        sample_size = int(np.prod(generator.output_shape[1:]))
        input_size = int(np.prod(discriminator.input_shape[1:]))
        if input_size != self.pack * sample_size:
            raise ValueError(
                f"pack={pack!r}: the discriminator takes {input_size} values per input, but "
                f"{self.pack} generated examples hold {self.pack * sample_size}; build it with "
                f"pack={pack} (e.g. mlp_discriminator(input_dim={sample_size}, pack={pack}))."
            )
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_real_tracker = keras.metrics.Mean(name="d_real")
        self.d_fake_tracker = keras.metrics.Mean(name="d_fake")
        # The training noise (z, and alpha of WGAN-GP) comes from this generator: its state is a
        # variable, so a checkpoint restores it and a resumed training draws the same noise.
        self.seed_generator = keras.random.SeedGenerator()
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(
            generator=keras.saving.serialize_keras_object(self.generator),
            discriminator=keras.saving.serialize_keras_object(self.discriminator),
            pack=self.pack,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        config["discriminator"] = keras.saving.deserialize_keras_object(config["discriminator"])
        return cls(**config)

    # ------------------------------------------------------------------ compile and saving

    def compile(self, d_optimizer=None, g_optimizer=None, loss: str = "non_saturating",
                d_steps: int = 1, gp_weight: float = 10.0, **kwargs):
        """Set the two optimizers and the objective.

        Args:
            d_optimizer, g_optimizer: Keras optimizers (or their names) of the discriminator and
                the generator; ``None`` gives Adam(1e-3, beta_1=0.5).
            loss: ``"non_saturating"``, ``"minimax"``, ``"hinge"`` or ``"wgan_gp"``.
            d_steps: discriminator updates per generator update (5 is usual for WGAN-GP).
            gp_weight: weight ``lambda`` of the gradient penalty (``"wgan_gp"`` only).
        """
        checks.choice(loss, LOSSES, "loss")
        super().compile(**kwargs)
        default = {"class_name": "Adam", "config": {"learning_rate": 1e-3, "beta_1": 0.5}}
        self.d_optimizer = keras.optimizers.get(default if d_optimizer is None else d_optimizer)
        self.g_optimizer = keras.optimizers.get(default if g_optimizer is None else g_optimizer)
        self.loss_name = loss
        self.d_steps = checks.positive_int(d_steps, "d_steps")
        self.gp_weight = checks.positive_float(gp_weight, "gp_weight", allow_zero=True)
        # Create the optimizers' variables now, in the model's strategy scope: built lazily
        # inside a replicated training step they fail under MirroredStrategy.
        with self.distribute_strategy.scope():
            for optimizer, model in ((self.d_optimizer, self.discriminator),
                                     (self.g_optimizer, self.generator)):
                if not optimizer.built:
                    optimizer.build(model.trainable_variables)

    def get_compile_config(self):
        return {
            "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
            "g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer),
            "loss": self.loss_name,
            "d_steps": self.d_steps,
            "gp_weight": self.gp_weight,
        }

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("d_optimizer", "g_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        # `compile` builds the optimizers, whose variables must exist before `.keras` loading
        # assigns their saved values.
        self.compile(**config)

    # ------------------------------------------------------------------ sampling

    def call(self, z, training=None):
        """``z: [batch, latent_dim] -> G(z)``."""
        return self.generator(z, training=training)

    def sample(self, n: int, seed: int | None = None):
        """``n`` samples ``G(z)``, ``z ~ N(0, I)``; ``seed`` makes the draw repeatable
        (stateless), ``None`` uses TensorFlow's global generator."""
        z = standard_normal(n, self.latent_dim, seed)
        return self.generator(z, training=False)

    # ------------------------------------------------------------------ training

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker, self.d_real_tracker, self.d_fake_tracker]

    def _packed(self, x):
        """``[batch, ...] -> [batch // pack, pack * prod(...)]`` (identity for ``pack=1``)."""
        if self.pack == 1:
            return x
        size = int(np.prod(x.shape[1:]))
        packs = tf.shape(x)[0] // self.pack
        return tf.reshape(x[: packs * self.pack], (packs, self.pack * size))

    def _discriminate(self, x, training=True):
        return self.discriminator(self._packed(x), training=training)

    def _noise(self, batch_size):
        """``z ~ N(0, I)``, ``[batch_size, latent_dim]``, from the model's seed generator."""
        return keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)

    def _discriminator_step(self, real):
        z = self._noise(tf.shape(real)[0])
        fake = self.generator(z, training=True)
        with tf.GradientTape() as tape:
            real_out = self._discriminate(real)
            fake_out = self._discriminate(fake)
            if self.loss_name == "wgan_gp":
                per_pack = objectives.wasserstein_critic_loss(real_out, fake_out)
                penalty = objectives.gradient_penalty(
                    self.discriminator, self._packed(real), self._packed(fake),
                    seed=self.seed_generator.next(),
                )
                per_pack = per_pack + self.gp_weight * penalty
            elif self.loss_name == "hinge":
                per_pack = objectives.hinge_discriminator_loss(real_out, fake_out)
            else:
                per_pack = objectives.discriminator_loss(real_out, fake_out)
            # Under a distribution strategy: this replica's share of the global batch mean.
            d_loss, d_report = objectives.replica_mean(per_pack)
        variables = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, variables), variables))
        return d_report, real_out, fake_out

    def _generator_step(self, batch_size):
        z = self._noise(batch_size)
        with tf.GradientTape() as tape:
            fake_out = self._discriminate(self.generator(z, training=True))
            if self.loss_name in RAW_OUTPUTS:  # hinge and WGAN-GP: G minimises -l(G(z))
                per_pack = objectives.wasserstein_generator_loss(fake_out)
            elif self.loss_name == "minimax":
                per_pack = objectives.generator_minimax_loss(fake_out)
            else:
                per_pack = objectives.generator_non_saturating_loss(fake_out)
            g_loss, g_report = objectives.replica_mean(per_pack)
        variables = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, variables), variables))
        return g_report

    def train_step(self, data):
        real, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        real = tf.cast(real, self.compute_dtype)
        for _ in range(self.d_steps):
            d_loss, real_out, fake_out = self._discriminator_step(real)
        g_loss = self._generator_step(tf.shape(real)[0])
        if self.loss_name not in RAW_OUTPUTS:  # report probabilities D(x), not logits
            real_out, fake_out = tf.sigmoid(real_out), tf.sigmoid(fake_out)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.d_real_tracker.update_state(objectives.replica_mean(tf.reshape(real_out, [-1]))[1])
        self.d_fake_tracker.update_state(objectives.replica_mean(tf.reshape(fake_out, [-1]))[1])
        return objectives.step_logs(self.metrics)
