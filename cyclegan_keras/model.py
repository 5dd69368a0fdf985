"""`CycleGAN`: two generators and two discriminators trained by one `fit()`."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from cyclegan_keras import ops
from cyclegan_keras.config import DIRECTIONS, GAN_MODES
from cyclegan_keras.image_pool import ImagePool
from cyclegan_keras.networks import min_size, size_multiple

# Arguments of keras.Model.compile that the CycleGAN objective has no use for.
_UNUSED_COMPILE_ARGUMENTS = ("optimizer", "loss", "loss_weights", "metrics", "weighted_metrics")


def gan_loss(logits: tf.Tensor, target_is_real: bool, gan_mode: str) -> tf.Tensor:
    """The reference's `GANLoss` on a map of discriminator logits.

    - `lsgan`: mean squared error to 1 (real) or 0 (fake), no sigmoid.
    - `vanilla`: binary cross-entropy with logits (the original GAN).
    - `wgangp`: the Wasserstein critic loss, `-mean` for real, `mean` for fake.
    """
    logits = tf.cast(logits, "float32")
    if gan_mode == "wgangp":
        return -tf.reduce_mean(logits) if target_is_real else tf.reduce_mean(logits)
    target = tf.ones_like(logits) if target_is_real else tf.zeros_like(logits)
    if gan_mode == "lsgan":
        return tf.reduce_mean(tf.square(logits - target))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits))


def l1_loss(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.abs(tf.cast(x, "float32") - tf.cast(y, "float32")))


def replica_share() -> float:
    """1 / replicas in sync: turns a replica's mean loss into its share of the global mean.

    Under `tf.distribute`, each replica computes its losses as means over its
    own part of the batch, and the optimizer *sums* the replicas' gradients.
    Scaling each replica's loss by this factor makes N replicas with batch b
    take the same step as one device with batch N * b (the per-image losses
    are means over equal per-replica batches, as the data drop remainders).
    """
    context = tf.distribute.get_replica_context()
    return 1.0 / context.num_replicas_in_sync if context is not None else 1.0


def mean_over_replicas(value: tf.Tensor) -> tf.Tensor:
    """The mean of `value` over all replicas (identity on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)


class OptimizerPair:
    """`CycleGAN.optimizer`: the generators' and the discriminators' optimizers, as one.

    Keras's callbacks that touch the learning rate (`LearningRateScheduler`,
    `ReduceLROnPlateau`, `TensorBoard`) treat a `model.optimizer` with an
    `optimizers` list as several optimizers (the protocol of
    `keras.optimizers.MultiOptimizer`): they set, reduce and log the rate of
    each, as `learning_rate_<optimizer name>`. So those callbacks change
    the rates CycleGAN trains with, for both optimizers alike.

    It is a view, not an optimizer: it applies no gradients and holds no
    state of its own (each optimizer is saved with the model under its own
    name), and it has no single `learning_rate` to read or set.

    Args:
        generator_optimizer: the optimizer of both generators.
        discriminator_optimizer: the optimizer of both discriminators.
    """

    def __init__(
        self,
        generator_optimizer: keras.optimizers.Optimizer,
        discriminator_optimizer: keras.optimizers.Optimizer,
    ):
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer

    @property
    def optimizers(self) -> list[keras.optimizers.Optimizer]:
        return [self.generator_optimizer, self.discriminator_optimizer]

    @property
    def built(self) -> bool:
        return all(optimizer.built for optimizer in self.optimizers)

    @property
    def iterations(self):
        """Training steps done: one generator update per step."""
        return self.generator_optimizer.iterations

    @property
    def variables(self) -> list:
        return [v for optimizer in self.optimizers for v in optimizer.variables]

    @property
    def learning_rate(self):
        raise AttributeError(self._NO_SINGLE_RATE)

    @learning_rate.setter
    def learning_rate(self, value):
        raise AttributeError(self._NO_SINGLE_RATE)

    _NO_SINGLE_RATE = (
        "A CycleGAN trains with two optimizers, so model.optimizer has no single learning rate. "
        "Use model.generator_optimizer.learning_rate and model.discriminator_optimizer.learning_rate "
        "(or each of model.optimizer.optimizers), or a schedule callback that sets both "
        "(cyclegan_keras.callbacks.LinearDecaySchedule, keras.callbacks.LearningRateScheduler)."
    )

    def __repr__(self):
        return f"OptimizerPair({self.generator_optimizer.name!r}, {self.discriminator_optimizer.name!r})"


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class CycleGAN(keras.Model):
    """CycleGAN: unpaired image-to-image translation between domains A and B.

    Names map to the paper's as: `generator_ab` = G: X -> Y,
    `generator_ba` = F: Y -> X, `discriminator_b` = D_Y (real B vs
    `fake_b = G(real_a)`), `discriminator_a` = D_X. Domain A is X.

    One `train_step` is one iteration of the reference
    (`CycleGANModel.optimize_parameters`):
    1. `fake_b = G(real_a)`, `cycled_a = F(fake_b)`, `fake_a = F(real_b)`,
       `cycled_b = G(fake_a)` (and `same_b = G(real_b)`, `same_a = F(real_a)`
       for the identity loss).
    2. One optimizer step over both generators on
       `lambda_gan * (L_GAN(G) + L_GAN(F)) + cycle + identity (+ baselines)`,
       the discriminators untouched.
    3. One optimizer step over both discriminators, each on real images
       (target real) and on fakes drawn through its `ImagePool` (target
       fake), each loss times 0.5.

    The data are `(real_a, real_b)` batches, unpaired. Calling the model
    translates A -> B; `translate()` does either direction on any size.
    The pools are built for the training image size when the model is built
    (by `fit()`, or `model.build((None, height, width, channels))`).

    Args:
        generator_ab: `keras.Model`, A -> B (G).
        generator_ba: `keras.Model`, B -> A (F).
        discriminator_a: `keras.Model`, logits for domain A images (D_X).
        discriminator_b: `keras.Model`, logits for domain B images (D_Y).
        pool_size: int. Image pool size per direction; 0 disables the pools.
            Defaults to `50`.
        feature_extractor: optional `keras.Model` for the "feature loss + GAN"
            baseline (e.g. `networks.vgg16_features`). Defaults to `None`.
        seed: int. Seed of the image pools and the gradient penalty.
            Defaults to `0`.

    Example:
    >>> from cyclegan_keras import networks
    >>> model = CycleGAN(
    ...     networks.resnet_generator(n_blocks=1, filters=8),
    ...     networks.resnet_generator(n_blocks=1, filters=8),
    ...     networks.patchgan_discriminator(filters=8),
    ...     networks.patchgan_discriminator(filters=8))
    >>> model.compile()
    >>> images = np.zeros((2, 32, 32, 3), "float32")
    >>> history = model.fit((images, images), epochs=1, verbose=0)
    >>> sorted(history.history)[:2]
    ['cycle_loss', 'disc_a_loss']

    Reference:
        Zhu, Park, Isola, Efros, "Unpaired Image-to-Image Translation using
        Cycle-Consistent Adversarial Networks", ICCV 2017.
    """

    def __init__(
        self,
        generator_ab: keras.Model,
        generator_ba: keras.Model,
        discriminator_a: keras.Model,
        discriminator_b: keras.Model,
        pool_size: int = 50,
        feature_extractor: keras.Model | None = None,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator_ab = generator_ab
        self.generator_ba = generator_ba
        self.discriminator_a = discriminator_a
        self.discriminator_b = discriminator_b
        self.feature_extractor = feature_extractor
        self.pool_size = pool_size
        self.seed = seed
        self.pool_a = ImagePool(pool_size, seed=seed, name="pool_a")
        self.pool_b = ImagePool(pool_size, seed=seed + 1, name="pool_b")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name)
            for name in (
                "gen_ab_loss",
                "gen_ba_loss",
                "cycle_loss",
                "identity_loss",
                "disc_a_loss",
                "disc_b_loss",
                "pixel_loss",
                "feature_loss",
            )
        }

    # -- Keras plumbing ------------------------------------------------------

    def build(self, input_shape):
        """Builds the image pools for training images of `input_shape`.

        `input_shape` is that of a `real_a` batch; `real_b` batches are
        expected to have the same height and width.
        """
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            return  # An inference-only build; fit() builds the pools.
        for generator in (self.generator_ab, self.generator_ba):
            multiple, smallest = size_multiple(generator), min_size(generator)
            if height % multiple or width % multiple or min(height, width) < smallest:
                raise ValueError(
                    f"Training images must have sides that are multiples of {multiple} "
                    f"and at least {smallest} for generator {generator.name!r}. "
                    f"Received images of {height}x{width}"
                )
        for discriminator in (self.discriminator_a, self.discriminator_b):
            try:
                discriminator.compute_output_shape((None, height, width, discriminator.input_shape[-1]))
            except ValueError:
                raise ValueError(
                    f"Training images of {height}x{width} are too small for discriminator "
                    f"{discriminator.name!r}: use larger images or fewer layers"
                ) from None
        channels_b = self.generator_ab.output_shape[-1]
        channels_a = self.generator_ba.output_shape[-1]
        self.pool_b.build((None, height, width, channels_b))
        self.pool_a.build((None, height, width, channels_a))

    def get_build_config(self):
        # The pools' image size is what a loaded model must rebuild, even if
        # the model was first built for inference on images of any size.
        if self.pool_b.built:
            height, width = self.pool_b.images.shape[1:3]
            return {"input_shape": (None, height, width, self.generator_ab.input_shape[-1])}
        return super().get_build_config()

    def call(self, inputs, training=False):
        return self.generator_ab(inputs, training=training)

    def compile(
        self,
        generator_optimizer: keras.optimizers.Optimizer | None = None,
        discriminator_optimizer: keras.optimizers.Optimizer | None = None,
        gan_mode: str = "lsgan",
        lambda_a: float = 10.0,
        lambda_b: float = 10.0,
        lambda_identity: float = 0.5,
        lambda_gan: float = 1.0,
        lambda_pixel: float = 0.0,
        lambda_feature: float = 0.0,
        lambda_gp: float = 10.0,
        **kwargs,
    ) -> None:
        """Configures the objective and the optimizers.

        The defaults are the paper's. The paper's ablations are settings:
        cycle alone `lambda_gan=0`; GAN alone `lambda_a=lambda_b=0,
        lambda_identity=0`; GAN + forward cycle `lambda_b=0`; GAN + backward
        cycle `lambda_a=0`; the baselines "pixel loss + GAN"
        (`lambda_a=lambda_b=lambda_identity=0, lambda_pixel=10`) and "feature
        loss + GAN" (the same with `lambda_feature` and a `feature_extractor`).

        Args:
            generator_optimizer: one optimizer over both generators. Defaults
                to `Adam(2e-4, beta_1=0.5, beta_2=0.999)`.
            discriminator_optimizer: one optimizer over both discriminators.
                Defaults to the same Adam.
            gan_mode: `"lsgan"`, `"vanilla"` or `"wgangp"`. Defaults to
                `"lsgan"`.
            lambda_a: float. Weight of the forward cycle |F(G(a)) - a|.
                Defaults to `10.0`.
            lambda_b: float. Weight of the backward cycle |G(F(b)) - b|.
                Defaults to `10.0`.
            lambda_identity: float. Identity loss |G(b) - b| + |F(a) - a|,
                relative to lambda_a/lambda_b (0.5 means weight 5). Needs
                generators with equal input and output channels. Defaults to
                `0.5`.
            lambda_gan: float. Weight of the generators' adversarial losses.
                Defaults to `1.0`.
            lambda_pixel: float. Weight of |G(a) - a| + |F(b) - b| (the
                "pixel loss" baseline). Defaults to `0.0`.
            lambda_feature: float. Weight of the L1 distance between features
                of x and of its translation. Defaults to `0.0`.
            lambda_gp: float. Gradient-penalty weight for `"wgangp"`.
                Defaults to `10.0`.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `run_eagerly`, ...). Its `optimizer`,
                `loss`, `loss_weights`, `metrics` and `weighted_metrics` are
                refused: the objective and the optimizers are the arguments
                above.

        After `compile()`, `model.optimizer` is an `OptimizerPair` of both
        optimizers (`model.optimizer.optimizers`), the multi-optimizer form
        Keras's `LearningRateScheduler`, `ReduceLROnPlateau` and `TensorBoard`
        callbacks handle: they set and log both learning rates.

        Raises:
            ValueError: on a setting out of range, or on an argument of
                `keras.Model.compile` that CycleGAN does not use.
        """
        refused = sorted(set(kwargs) & set(_UNUSED_COMPILE_ARGUMENTS))
        if refused:
            raise ValueError(
                f"CycleGAN.compile() does not take {', '.join(refused)}: its objective is fixed by "
                "gan_mode and the weights lambda_a, lambda_b, lambda_identity, lambda_gan, lambda_pixel, "
                "lambda_feature and lambda_gp, and it trains with two optimizers, generator_optimizer "
                "(both generators) and discriminator_optimizer (both discriminators). Its losses are "
                "reported as metrics already. Received: " + ", ".join(f"{name}={kwargs[name]!r}" for name in refused)
            )
        if gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}. Received: gan_mode={gan_mode!r}")
        weights = dict(
            lambda_a=lambda_a,
            lambda_b=lambda_b,
            lambda_identity=lambda_identity,
            lambda_gan=lambda_gan,
            lambda_pixel=lambda_pixel,
            lambda_feature=lambda_feature,
            lambda_gp=lambda_gp,
        )
        for key, value in weights.items():
            if value < 0:
                raise ValueError(f"{key} must be >= 0. Received: {key}={value}")
        same_channels = all(g.input_shape[-1] == g.output_shape[-1] for g in (self.generator_ab, self.generator_ba))
        if (lambda_identity > 0 or lambda_pixel > 0) and not same_channels:
            raise ValueError(
                "The identity and pixel losses compare a generator's input and "
                "output, so they need equal input and output channels. Set "
                "lambda_identity=0 and lambda_pixel=0. Received generators "
                f"{self.generator_ab.input_shape} -> {self.generator_ab.output_shape} and "
                f"{self.generator_ba.input_shape} -> {self.generator_ba.output_shape}"
            )
        if lambda_feature > 0 and self.feature_extractor is None:
            raise ValueError("lambda_feature > 0 needs a feature_extractor passed to CycleGAN().")
        # No optimizer for Keras's own train_step: its default would be an
        # RMSprop that trains nothing (and is saved in every .keras file).
        super().compile(optimizer=None, **kwargs)
        self.gan_mode = gan_mode
        self.loss_weights = weights
        self.generator_optimizer = self._loss_scaled(generator_optimizer or self._default_optimizer("generator"))
        self.discriminator_optimizer = self._loss_scaled(
            discriminator_optimizer or self._default_optimizer("discriminator")
        )
        # Build the optimizer state now, not lazily inside the first step:
        # lazy creation fails under tf.distribute, and loading a saved model
        # needs the variables to exist before their values are restored.
        self.generator_optimizer.build(self.generator_variables)
        self.discriminator_optimizer.build(self.discriminator_variables)
        self.optimizer = OptimizerPair(self.generator_optimizer, self.discriminator_optimizer)

    @staticmethod
    def _default_optimizer(networks):
        # Named, so the stock callbacks' logs say which rate is which
        # (`learning_rate_generator_adam`).
        return keras.optimizers.Adam(learning_rate=2e-4, beta_1=0.5, beta_2=0.999, name=f"{networks}_adam")

    def _loss_scaled(self, optimizer):
        """`optimizer` wrapped in a `LossScaleOptimizer` when the networks compute in float16.

        float16 gradients underflow without loss scaling; bfloat16 has
        float32's exponent range and needs none.
        """
        float16 = any(
            network.dtype_policy.compute_dtype == "float16"
            for network in (self.generator_ab, self.generator_ba, self.discriminator_a, self.discriminator_b)
        )
        if float16 and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    @property
    def generator_variables(self) -> list[keras.Variable]:
        return self.generator_ab.trainable_variables + self.generator_ba.trainable_variables

    @property
    def discriminator_variables(self) -> list[keras.Variable]:
        return self.discriminator_a.trainable_variables + self.discriminator_b.trainable_variables

    @property
    def optimizers(self) -> list[keras.optimizers.Optimizer]:
        """Both optimizers, for callbacks that set the learning rate."""
        return [self.generator_optimizer, self.discriminator_optimizer]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_trackers[name] for name in self._reported_losses()]

    def _reported_losses(self):
        names = ["gen_ab_loss", "gen_ba_loss", "cycle_loss", "identity_loss", "disc_a_loss", "disc_b_loss"]
        weights = getattr(self, "loss_weights", {})
        if weights.get("lambda_pixel", 0) > 0:
            names.append("pixel_loss")
        if weights.get("lambda_feature", 0) > 0:
            names.append("feature_loss")
        return names

    # -- The method ------------------------------------------------------------

    def _unpack(self, data):
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError(
                "CycleGAN expects batches of (real_a, real_b). "
                f"Received a batch of type {type(data).__name__}"
                + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
            )
        return data

    def _generator_losses(self, real_a, real_b, training):
        """Step 1 and the generators' objective. Returns (total, losses, fakes)."""
        w = self.loss_weights
        g, f = self.generator_ab, self.generator_ba
        fake_b = g(real_a, training=training)
        fake_a = f(real_b, training=training)
        losses = {
            "gen_ab_loss": gan_loss(self.discriminator_b(fake_b, training=training), True, self.gan_mode),
            "gen_ba_loss": gan_loss(self.discriminator_a(fake_a, training=training), True, self.gan_mode),
        }
        zero = tf.constant(0.0)
        cycle = zero
        if w["lambda_a"] > 0:
            cycled_a = f(fake_b, training=training)
            cycle += w["lambda_a"] * l1_loss(cycled_a, real_a)
        if w["lambda_b"] > 0:
            cycled_b = g(fake_a, training=training)
            cycle += w["lambda_b"] * l1_loss(cycled_b, real_b)
        losses["cycle_loss"] = cycle
        identity = zero
        if w["lambda_identity"] > 0:
            same_b = g(real_b, training=training)
            same_a = f(real_a, training=training)
            identity = w["lambda_identity"] * (
                w["lambda_b"] * l1_loss(same_b, real_b) + w["lambda_a"] * l1_loss(same_a, real_a)
            )
        losses["identity_loss"] = identity
        total = w["lambda_gan"] * (losses["gen_ab_loss"] + losses["gen_ba_loss"]) + cycle + identity
        if w["lambda_pixel"] > 0:
            losses["pixel_loss"] = w["lambda_pixel"] * (l1_loss(fake_b, real_a) + l1_loss(fake_a, real_b))
            total += losses["pixel_loss"]
        if w["lambda_feature"] > 0:
            phi = self.feature_extractor
            losses["feature_loss"] = w["lambda_feature"] * (
                l1_loss(phi(fake_b), phi(real_a)) + l1_loss(phi(fake_a), phi(real_b))
            )
            total += losses["feature_loss"]
        return total, losses, fake_a, fake_b

    def _discriminator_loss(self, discriminator, real, fake, training):
        """0.5 * (L(D(real), real) + L(D(fake), fake)), plus the WGAN-GP penalty."""
        loss = 0.5 * (
            gan_loss(discriminator(real, training=training), True, self.gan_mode)
            + gan_loss(discriminator(fake, training=training), False, self.gan_mode)
        )
        if self.gan_mode == "wgangp" and self.loss_weights["lambda_gp"] > 0:
            loss += self.loss_weights["lambda_gp"] * self._gradient_penalty(discriminator, real, fake)
        return loss

    def _gradient_penalty(self, discriminator, real, fake):
        """E[(||grad D(x_hat)||_2 - 1)^2] on random interpolates (Gulrajani et al.)."""
        real = tf.cast(real, "float32")
        alpha = keras.random.uniform((tf.shape(real)[0], 1, 1, 1), seed=self.seed_generator)
        interpolated = alpha * real + (1.0 - alpha) * tf.cast(fake, "float32")
        with tf.GradientTape() as tape:
            tape.watch(interpolated)
            logits = discriminator(interpolated, training=True)
        gradients = tape.gradient(logits, interpolated)
        norms = tf.norm(tf.reshape(gradients, (tf.shape(gradients)[0], -1)) + 1e-16, axis=1)
        return tf.reduce_mean(tf.square(norms - 1.0))

    def train_step(self, data):
        real_a, real_b = self._unpack(data)
        if not self.built:
            # Without a strategy the TF trainer builds nothing before the
            # first trace; the pools' variables are created here, once.
            self.build(real_a.shape)
        # Under tf.distribute each replica's loss is its share of the global
        # batch's (see `replica_share`); a LossScaleOptimizer (mixed_float16)
        # scales it further and skips steps whose gradients overflow.
        share = replica_share()
        with tf.GradientTape() as tape:
            generator_loss, losses, fake_a, fake_b = self._generator_losses(real_a, real_b, True)
            scaled_loss = self.generator_optimizer.scale_loss(generator_loss * share)
        gradients = tape.gradient(scaled_loss, self.generator_variables)
        self.generator_optimizer.apply_gradients(zip(gradients, self.generator_variables))

        pooled_fake_a = self.pool_a(fake_a)
        pooled_fake_b = self.pool_b(fake_b)
        with tf.GradientTape() as tape:
            losses["disc_a_loss"] = self._discriminator_loss(self.discriminator_a, real_a, pooled_fake_a, True)
            losses["disc_b_loss"] = self._discriminator_loss(self.discriminator_b, real_b, pooled_fake_b, True)
            discriminator_loss = losses["disc_a_loss"] + losses["disc_b_loss"]
            scaled_loss = self.discriminator_optimizer.scale_loss(discriminator_loss * share)
        gradients = tape.gradient(scaled_loss, self.discriminator_variables)
        self.discriminator_optimizer.apply_gradients(zip(gradients, self.discriminator_variables))
        return self._update_trackers(losses)

    def test_step(self, data):
        real_a, real_b = self._unpack(data)
        _, losses, fake_a, fake_b = self._generator_losses(real_a, real_b, False)
        # No pool at evaluation: it would change the training state.
        losses["disc_a_loss"] = self._discriminator_loss(self.discriminator_a, real_a, fake_a, False)
        losses["disc_b_loss"] = self._discriminator_loss(self.discriminator_b, real_b, fake_b, False)
        return self._update_trackers(losses)

    def _update_trackers(self, losses):
        for name in self._reported_losses():
            self.loss_trackers[name].update_state(losses[name])
        # Each replica's trackers hold its own running means (on-read
        # variables, read locally); the logs are their mean over replicas.
        logs = {tracker.name: mean_over_replicas(tracker.result()) for tracker in self.metrics}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # fit() reduces each log with `strategy.reduce("MEAN", value,
            # axis=0)` there, which fails on scalars ("Invalid reduction
            # dimension 0", tensorflow/tensorflow#72388): give it vectors of
            # one element, which it reduces to the scalar mean.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under MultiWorkerMirroredStrategy, Keras 3.15 reduces the first
        # batch with `strategy.reduce("MEAN", batch)`, which fails for a tuple
        # of PerReplica values ("Attempt to convert a value (PerReplica...)",
        # keras-team/keras#20585). Take the first replica's part of the batch
        # instead: building needs its shape, not a mean of images.
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None:
            for _, _, batches in iterator:
                data_batch = next(batches)
                break
            data_batch = tf.nest.map_structure(
                lambda value: (
                    strategy.experimental_local_results(value)[0]
                    if isinstance(value, tf.distribute.DistributedValues)
                    else value
                ),
                data_batch,
            )
        return super()._maybe_symbolic_build(data_batch=data_batch)

    # -- Inference -------------------------------------------------------------

    def generator(self, direction: str) -> keras.Model:
        """The generator for `direction`: `"a2b"` (G) or `"b2a"` (F)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}. Received: direction={direction!r}")
        return self.generator_ab if direction == "a2b" else self.generator_ba

    def translate(
        self,
        images: np.ndarray,
        direction: str = "a2b",
        batch_size: int = 8,
        max_memory: int | None = None,
        tile_size: int | None = None,
        overlap: int | None = None,
    ) -> np.ndarray:
        """Translates images of any size (see `inference.translate_images`).

        Args:
            images: array `(n, height, width, channels)` or one image
                `(height, width, channels)`, float values in [-1, 1].
            direction: `"a2b"` or `"b2a"`. Defaults to `"a2b"`.
            batch_size: int. Most images per generator call. Defaults to `8`.
            max_memory, tile_size, overlap: the memory budget and tiling
                (see `inference.translate_images`). Default to half the
                available memory and tiles only where needed.

        Returns:
            A float32 numpy array of the input's height and width (output
            channels of the generator), values in [-1, 1].
        """
        from cyclegan_keras import inference  # inference builds on this module

        generator = self.generator(direction)
        return inference.translate_images(generator, images, batch_size, max_memory, tile_size, overlap)

    # -- Serialization -----------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            generator_ab=serialize(self.generator_ab),
            generator_ba=serialize(self.generator_ba),
            discriminator_a=serialize(self.discriminator_a),
            discriminator_b=serialize(self.discriminator_b),
            feature_extractor=serialize(self.feature_extractor) if self.feature_extractor else None,
            pool_size=self.pool_size,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("generator_ab", "generator_ba", "discriminator_a", "discriminator_b", "feature_extractor"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def get_compile_config(self):
        if not self.compiled:
            return {}
        serialize = keras.saving.serialize_keras_object
        return dict(
            generator_optimizer=serialize(self.generator_optimizer),
            discriminator_optimizer=serialize(self.discriminator_optimizer),
            gan_mode=self.gan_mode,
            jit_compile=self.jit_compile,
            **self.loss_weights,
        )

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("generator_optimizer", "discriminator_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)


def padded_call(generator: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function running `generator` in inference mode on any image size.

    Height and width are reflect-padded up to what the generator's strides
    and paddings need (`networks.size_multiple`, `networks.min_size`) and
    the output is cropped back to the input size. The exporters trace it
    into their signatures.
    """
    multiple, smallest = size_multiple(generator), min_size(generator)
    return lambda images: ops.call_padded(lambda x: generator(x, training=False), images, multiple, smallest)


def padded_generator(generator: keras.Model) -> tf.types.experimental.PolymorphicFunction:
    """`padded_call(generator)` as a `tf.function`, traced once for any size."""
    spec = tf.TensorSpec((None, None, None, generator.input_shape[-1]), tf.float32)
    return tf.function(padded_call(generator), input_signature=[spec])
