"""Many small GANs on a 2-D mixture, trained at once: one training seed per slice of each weight.

Mode collapse is a claim about a distribution over training runs, so it needs several seeds, and
a 2-D GAN of 3 x 128 units is so small that one training step costs about as much Python and
kernel-launch overhead as arithmetic. :class:`ToyGANs` therefore holds ``S`` independent GANs in
one set of variables, each weight with a leading axis of size ``S`` (``W: [S, in, out]``), runs
them with batched matrix products, and trains hundreds of steps per compiled call, with the
real points drawn inside the graph from the mixture itself (``ring8``: 8 Gaussians of standard
deviation 0.02 on a circle of radius 2; ``grid25``). The runs do not interact: each seed's loss
is a mean over its own batch, the summed loss gives each slice exactly its own gradient, Adam
acts elementwise, and every random draw of seed ``s`` (initial weights, noise, real points,
gradient-penalty mixing) comes from stateless streams keyed by ``s`` alone, so a seed trains the
same whatever seeds run beside it.

The networks are those of :func:`support.models.gan.toy_gan`: a generator of ``depth`` ReLU layers
of ``width`` units and a linear 2-D output; a discriminator of ``depth`` LeakyReLU(0.2) layers
and one output (a logit, or a critic score for ``wgan_gp``), judging ``pack`` samples
concatenated (PacGAN, Lin et al. 2018). Losses, per seed, with ``l`` the discriminator's output:

    non_saturating  D: softplus(-l(x)) + softplus(l(G(z)))       G: softplus(-l(G(z)))
    minimax         D: as above                                  G: -softplus(l(G(z))) = log(1 - D)
    hinge           D: relu(1 - l(x)) + relu(1 + l(G(z)))        G: -l(G(z))
    wgan_gp         D: l(G(z)) - l(x) + gp_weight (|grad l(x_hat)| - 1)^2   G: -l(G(z))

(hinge: Lim and Ye 2017, Miyato et al. 2018; WGAN-GP: Gulrajani et al. 2017, ``x_hat`` uniform on
the segment between a real and a generated pack). ``spectral_norm=True`` divides every
discriminator weight matrix by its largest singular value, estimated by one power iteration per
step (Miyato et al. 2018). Adam with ``betas = (0.5, 0.999)`` on both networks by default
(Gulrajani et al. use ``(0.5, 0.9)`` for WGAN-GP), at a constant rate or decayed to 0 along a
cosine over the training (``schedule="cosine"``).

Typical use::

    gans = ToyGANs(seeds=range(5), toy="ring8", pack=2, schedule="cosine", steps=10_000)
    runs = gans.train(10_000, snapshot_every=1_000)      # ToyRuns
    runs.samples.shape                                   # (10, 5, 2500, 2): snapshot, seed, point

Several set-ups train side by side with :func:`train_together`, one thread each, which uses
what a single set-up's small operations leave idle of a second core (what that gains is in
benchmarks/README.md). Each set-up's results are the same as when it trains alone.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time

import numpy as np
import tensorflow as tf

from support import checks, data

LOSSES = ("non_saturating", "minimax", "hinge", "wgan_gp")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class ToyRuns:
    """What :meth:`ToyGANs.train` measured.

    Attributes:
        seeds: the training seeds, in the order of the ``seed`` axis.
        steps: generator steps at each snapshot.
        samples: ``[snapshots, seeds, n, 2]`` samples of each generator at each snapshot, from a
            fixed noise batch per seed.
        critic_gap: ``[snapshots, seeds]``: mean discriminator output on ``n`` real points minus
            that on the ``n`` samples (raw outputs; for ``wgan_gp`` the critic's estimate of the
            Wasserstein-1 distance, a lower bound while the critic is 1-Lipschitz).
        d_loss, g_loss: ``[snapshots, seeds]``: mean losses over the steps since the last snapshot.
        seconds: wall time of the training, snapshots included.
    """

    seeds: list
    steps: list
    samples: np.ndarray
    critic_gap: np.ndarray
    d_loss: np.ndarray
    g_loss: np.ndarray
    seconds: float


class _FusedAdam:
    """Adam as Keras 3 computes it (``epsilon = 1e-7`` outside the square root, bias correction
    folded into the rate), one fused ``ResourceApplyAdam`` kernel per variable instead of the
    dozen small operations per variable of ``keras.optimizers.Adam``: the toy GANs are so small
    that those operations, not the arithmetic, set the time of a step. ``total`` gives the
    cosine decay to 0 over that many updates (``keras.optimizers.schedules.CosineDecay``)."""

    def __init__(self, variables, rate: float, betas, total: int | None = None, epsilon: float = 1e-7):
        self.base_rate, self.total = float(rate), total
        self.beta_1, self.beta_2, self.epsilon = float(betas[0]), float(betas[1]), float(epsilon)
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)

    @property
    def learning_rate(self):
        """The rate of the next update."""
        if self.total is None:
            return tf.constant(self.base_rate)
        done = tf.minimum(tf.cast(self.iterations, tf.float32), float(self.total))
        return self.base_rate * 0.5 * (1.0 + tf.cos(math.pi * done / self.total))

    def apply(self, grads, variables):
        t = tf.cast(self.iterations + 1, tf.float32)
        rate = self.learning_rate
        b1, b2, epsilon = tf.constant(self.beta_1), tf.constant(self.beta_2), tf.constant(self.epsilon)
        b1_power, b2_power = tf.pow(b1, t), tf.pow(b2, t)
        for var, m, v, g in zip(variables, self.m, self.v, grads):
            tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=b1_power,
                                         beta2_power=b2_power, lr=rate, beta1=b1, beta2=b2, epsilon=epsilon,
                                         grad=g)
        self.iterations.assign_add(1)


class ToyGANs:
    """``S = len(seeds)`` independent MLP GANs on a 2-D mixture, trained together; see the module.

    Args:
        seeds: distinct integer training seeds (at least one).
        toy: ``"ring8"`` or ``"grid25"``.
        loss: one of ``non_saturating``, ``minimax``, ``hinge``, ``wgan_gp``.
        pack: PacGAN packing degree (1: a plain discriminator); must divide ``batch_size``.
        spectral_norm: spectrally normalise the discriminator's weights.
        d_steps: discriminator updates per generator update (5 is usual for ``wgan_gp``).
        learning_rate: the generator's Adam rate (peak rate with the cosine schedule).
        d_learning_rate: the discriminator's; ``None`` gives ``learning_rate``.
        schedule: ``"constant"`` or ``"cosine"`` (decay to 0 over ``steps`` generator updates).
        steps: generator updates of the whole training, needed by the cosine schedule.
        batch_size: real points (and generated samples) per step and seed.
        latent_dim, width, depth: noise size and the networks' hidden layers.
        gp_weight: weight of the gradient penalty (``wgan_gp`` only).
        betas: Adam's ``(beta_1, beta_2)`` for both networks, each in ``[0, 1)``.
    """

    def __init__(self, seeds=(0, 1, 2, 3, 4), toy: str = "ring8", *, loss: str = "non_saturating",
                 pack: int = 1, spectral_norm: bool = False, d_steps: int = 1,
                 learning_rate: float = 1e-3, d_learning_rate: float | None = None,
                 schedule: str = "constant", steps: int | None = None, batch_size: int = 256,
                 latent_dim: int = 2, width: int = 128, depth: int = 3, gp_weight: float = 10.0,
                 betas=(0.5, 0.999)):
        seeds = list(seeds)
        if not seeds or not all(checks.is_int(s) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds={seeds!r} must be distinct non-negative integers, at least one.")
        self.seeds = [int(s) for s in seeds]
        self.mixture = data.mixture_spec(toy)
        checks.choice(loss, LOSSES, "loss")
        checks.choice(schedule, SCHEDULES, "schedule")
        self.loss, self.schedule = loss, schedule
        self.pack = checks.positive_int(pack, "pack")
        self.batch_size = checks.positive_int(batch_size, "batch_size")
        if self.batch_size % self.pack:
            raise ValueError(f"pack={pack} must divide batch_size={batch_size}.")
        self.spectral_norm = bool(spectral_norm)
        self.d_steps = checks.positive_int(d_steps, "d_steps")
        self.latent_dim = checks.positive_int(latent_dim, "latent_dim")
        self.width, self.depth = checks.positive_int(width, "width"), checks.positive_int(depth, "depth")
        self.gp_weight = checks.positive_float(gp_weight, "gp_weight")
        g_rate = checks.positive_float(learning_rate, "learning_rate")
        d_rate = (g_rate if d_learning_rate is None
                  else checks.positive_float(d_learning_rate, "d_learning_rate"))
        self.total_steps = None
        if schedule == "cosine":
            self.total_steps = checks.positive_int(steps, "steps")
        betas = tuple(betas) if isinstance(betas, (tuple, list)) else ()
        if len(betas) != 2 or not all(checks.is_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas={betas!r} must be two numbers in [0, 1), Adam's (beta_1, beta_2).")
        self.betas = tuple(float(b) for b in betas)
        g_sizes = [self.latent_dim] + [self.width] * self.depth + [2]
        d_sizes = [2 * self.pack] + [self.width] * self.depth + [1]
        self.g_weights = self._layers(g_sizes, 0)
        self.d_weights = self._layers(d_sizes, 1)
        cosine = self.total_steps is not None
        self.g_optimizer = _FusedAdam(self.g_weights, g_rate, self.betas,
                                      self.total_steps if cosine else None)
        self.d_optimizer = _FusedAdam(self.d_weights, d_rate, self.betas,
                                      self.total_steps * self.d_steps if cosine else None)
        # the power iteration's vectors u: [S, out] per discriminator matrix
        self.d_u = [tf.Variable(self._normal((w.shape[2],), 2, i), trainable=False)
                    for i, w in enumerate(self.d_weights[::2])]
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._centers = tf.constant(self.mixture.centers)
        self._chunk = tf.function(self._train_chunk)

    # ------------------------------------------------------------------ parameters

    def _normal(self, shape, stream, index):
        return tf.stack([tf.random.stateless_normal(shape, seed=(s, 7_919 * stream + index))
                         for s in self.seeds])

    def _layers(self, sizes, stream):
        """``[W_0, b_0, W_1, b_1, ...]``, ``W: [S, in, out]`` Glorot-uniform, ``b`` zeros."""
        weights = []
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            limit = math.sqrt(6.0 / (n_in + n_out))
            w = tf.stack([tf.random.stateless_uniform((n_in, n_out), seed=(s, 104_729 * (stream + 1) + i),
                                                      minval=-limit, maxval=limit) for s in self.seeds])
            weights += [tf.Variable(w), tf.Variable(tf.zeros((len(self.seeds), n_out)))]
        return weights

    # ------------------------------------------------------------------ networks

    def generate(self, z):
        """``z: [S, n, latent_dim] -> [S, n, 2]``."""
        h = z
        for i in range(0, len(self.g_weights), 2):
            h = tf.matmul(h, self.g_weights[i]) + tf.expand_dims(self.g_weights[i + 1], 1)
            if i + 2 < len(self.g_weights):
                h = tf.nn.relu(h)
        return h

    def _normalised(self, update):
        """The discriminator's matrices, divided by their spectral norms when asked."""
        matrices = self.d_weights[::2]
        if not self.spectral_norm:
            return matrices
        out = []
        for w, u in zip(matrices, self.d_u):
            v = tf.math.l2_normalize(tf.einsum("sio,so->si", tf.stop_gradient(w), u), axis=-1)
            u_new = tf.math.l2_normalize(tf.einsum("sio,si->so", tf.stop_gradient(w), v), axis=-1)
            if update:
                u.assign(u_new)
            sigma = tf.einsum("si,sio,so->s", v, w, u_new)
            out.append(w / sigma[:, None, None])
        return out

    def discriminate(self, x, matrices=None):
        """``x: [S, n, 2] -> [S, n // pack]`` outputs, ``pack`` consecutive points per input."""
        if matrices is None:
            matrices = self._normalised(update=False)
        h = tf.reshape(x, (len(self.seeds), -1, 2 * self.pack))
        biases = self.d_weights[1::2]
        for i, (w, b) in enumerate(zip(matrices, biases)):
            h = tf.matmul(h, w) + tf.expand_dims(b, 1)
            if i + 1 < len(matrices):
                h = tf.nn.leaky_relu(h, 0.2)
        return h[..., 0]

    # ------------------------------------------------------------------ sampling

    def _draw(self, kind, n, counter):
        """Per-seed stateless draws: ``kind`` 0 noise z, 1 mixture points, 2 penalty mixing."""
        draws = []
        for s in self.seeds:
            key = tf.stack([tf.constant(s, tf.int64), counter * 8 + kind])
            if kind == 0:
                draws.append(tf.random.stateless_normal((n, self.latent_dim), seed=key))
            elif kind == 1:
                modes = tf.random.stateless_uniform((n,), seed=key, maxval=len(self.mixture.centers),
                                                    dtype=tf.int32)
                noise = tf.random.stateless_normal((n, 2), seed=key + tf.constant([0, 1], tf.int64))
                draws.append(tf.gather(self._centers, modes) + self.mixture.std * noise)
            else:
                draws.append(tf.random.stateless_uniform((n // self.pack, 1), seed=key))
        return tf.stack(draws)

    def real(self, n, seed=0):
        """``[S, n, 2]`` points of the mixture (a fixed draw per ``seed``)."""
        return self._draw(1, n, tf.constant(-1 - int(seed), tf.int64)).numpy()

    def sample(self, n, seed=0):
        """``[S, n, 2]`` samples of each generator from a fixed noise draw per ``seed``."""
        return self.generate(self._draw(0, n, tf.constant(-1 - int(seed), tf.int64))).numpy()

    # ------------------------------------------------------------------ training

    def _d_loss(self, real, fake, counter):
        matrices = self._normalised(update=True)
        real_out, fake_out = self.discriminate(real, matrices), self.discriminate(fake, matrices)
        if self.loss == "hinge":
            per = tf.nn.relu(1.0 - real_out), tf.nn.relu(1.0 + fake_out)
            loss = tf.reduce_mean(per[0], 1) + tf.reduce_mean(per[1], 1)
        elif self.loss == "wgan_gp":
            alpha = self._draw(2, self.batch_size, counter)  # one alpha per pack: [S, packs, 1]
            shape = (len(self.seeds), -1, 2 * self.pack)
            mixed = alpha * tf.reshape(real, shape) + (1 - alpha) * tf.reshape(fake, shape)
            with tf.GradientTape() as inner:
                inner.watch(mixed)
                # each output depends on its own input only: the gradient of the sum is per pack
                points = tf.reshape(mixed, (len(self.seeds), -1, 2))
                scores = tf.reduce_sum(self.discriminate(points, matrices))
            norms = tf.norm(inner.gradient(scores, mixed), axis=-1)
            loss = (tf.reduce_mean(fake_out, 1) - tf.reduce_mean(real_out, 1)
                    + self.gp_weight * tf.reduce_mean(tf.square(norms - 1.0), 1))
        else:
            loss = tf.reduce_mean(tf.nn.softplus(-real_out), 1) + tf.reduce_mean(tf.nn.softplus(fake_out), 1)
        return loss  # [S]

    def _g_loss(self, fake):
        fake_out = self.discriminate(fake)
        if self.loss == "non_saturating":
            return tf.reduce_mean(tf.nn.softplus(-fake_out), 1)
        if self.loss == "minimax":
            return -tf.reduce_mean(tf.nn.softplus(fake_out), 1)
        return -tf.reduce_mean(fake_out, 1)

    def _one_step(self):
        counter = self.step * (self.d_steps + 2)
        d_loss = tf.zeros(len(self.seeds))
        for k in range(self.d_steps):
            real = self._draw(1, self.batch_size, counter + k)
            fake = self.generate(self._draw(0, self.batch_size, counter + k))
            with tf.GradientTape() as tape:
                d_loss = self._d_loss(real, fake, counter + k)
                total = tf.reduce_sum(d_loss)  # each seed's slice gets its own loss's gradient
            grads = tape.gradient(total, self.d_weights)
            self.d_optimizer.apply(grads, self.d_weights)
        z = self._draw(0, self.batch_size, counter + self.d_steps)
        with tf.GradientTape() as tape:
            g_loss = self._g_loss(self.generate(z))
            total = tf.reduce_sum(g_loss)
        grads = tape.gradient(total, self.g_weights)
        self.g_optimizer.apply(grads, self.g_weights)
        self.step.assign_add(1)
        return d_loss, g_loss

    def _train_chunk(self, n):
        totals = (tf.zeros(len(self.seeds)), tf.zeros(len(self.seeds)))
        for _ in tf.range(n):
            d_loss, g_loss = self._one_step()
            totals = (totals[0] + d_loss, totals[1] + g_loss)
        n = tf.cast(n, tf.float32)
        return totals[0] / n, totals[1] / n

    def train(self, steps: int, snapshot_every: int | None = None, samples: int = 2500,
              chunk: int = 500) -> ToyRuns:
        """Train every GAN ``steps`` more generator steps, a snapshot of ``samples`` samples
        (fixed noise per seed) after every ``snapshot_every`` steps (default: only at the
        end), at most ``chunk`` steps per compiled call."""
        steps = checks.positive_int(steps, "steps")
        every = steps if snapshot_every is None else checks.positive_int(snapshot_every, "snapshot_every")
        chunk = checks.positive_int(chunk, "chunk")
        samples = checks.positive_int(samples, "samples")
        if samples % self.pack:
            raise ValueError(f"samples={samples} must be a multiple of pack={self.pack}.")
        began = time.perf_counter()
        reference = self.real(samples, seed=1)
        record = {"steps": [], "samples": [], "critic_gap": [], "d_loss": [], "g_loss": []}
        done = 0
        while done < steps:
            target = min(done + every, steps)
            d_sum, g_sum, counted = 0.0, 0.0, 0
            while done < target:
                n = min(chunk, target - done)
                d_loss, g_loss = self._chunk(tf.constant(n))
                d_sum, g_sum, counted = d_sum + d_loss.numpy() * n, g_sum + g_loss.numpy() * n, counted + n
                done += n
            if not (np.all(np.isfinite(d_sum)) and np.all(np.isfinite(g_sum))):
                bad = [s for s, v in zip(self.seeds, d_sum + g_sum) if not np.isfinite(v)]
                raise FloatingPointError(
                    f"Training diverged (NaN or infinite loss) at step {int(self.step.numpy())} for seeds "
                    f"{bad}: try a smaller learning_rate.")
            points = self.sample(samples, seed=0)
            gap = (tf.reduce_mean(self.discriminate(tf.constant(reference)), 1)
                   - tf.reduce_mean(self.discriminate(tf.constant(points)), 1)).numpy()
            record["steps"].append(int(self.step.numpy()))
            record["samples"].append(points)
            record["critic_gap"].append(gap)
            record["d_loss"].append(d_sum / counted)
            record["g_loss"].append(g_sum / counted)
        arrays = {k: np.stack(v) for k, v in record.items() if k != "steps"}
        return ToyRuns(self.seeds, record["steps"], seconds=time.perf_counter() - began, **arrays)


def train_together(models: dict, steps: int, snapshot_every: int | None = None, workers: int = 2,
                   **options) -> dict:
    """Train every :class:`ToyGANs` of ``models`` (name -> model) ``steps`` steps, ``workers`` at
    a time in threads; returns name -> :class:`ToyRuns`, in the order of ``models``.

    The models share nothing (their own variables, optimisers and stateless random streams), so
    each trains exactly as it would alone; only the wall time differs: each run's ``seconds``
    counts the time it shared the machine. The first error of any run (a diverged loss, a bad
    argument) is raised after the others stop. ``options`` go to :meth:`ToyGANs.train`.
    """
    if not isinstance(models, dict) or not models or not all(isinstance(m, ToyGANs) for m in models.values()):
        raise ValueError("models must be a non-empty dict of name -> ToyGANs.")
    steps, workers = checks.positive_int(steps, "steps"), checks.positive_int(workers, "workers")
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(models))) as pool:
        futures = {name: pool.submit(model.train, steps, snapshot_every, **options)
                   for name, model in models.items()}
        concurrent.futures.wait(futures.values(), return_when=concurrent.futures.FIRST_EXCEPTION)
        failed = [f for f in futures.values() if f.done() and f.exception() is not None]
        if failed:
            for f in futures.values():
                f.cancel()
            raise failed[0].exception()
        return {name: f.result() for name, f in futures.items()}
