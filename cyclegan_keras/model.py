"""`GANModel`, what every GAN method here shares, and `CycleGAN`, trained by one `fit()`."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras.src.utils import tracking

from cyclegan_keras.config import DIRECTIONS, GAN_MODES
from cyclegan_keras.distribute import mean_over_replicas, replica_share
from cyclegan_keras.image_pool import ImagePool
from cyclegan_keras.inference import translate_images
from cyclegan_keras.losses import gan_loss, gradient_penalty, l1_loss
from cyclegan_keras.networks import min_size, size_multiple

_UNUSED_COMPILE_ARGUMENTS = ("optimizer", "loss", "loss_weights", "metrics", "weighted_metrics")


class OptimizerPair:
    """`model.optimizer`: the generators' and the discriminators' optimizers, as one view with no state.

    Keras's stock callbacks treat an `optimizers` list as several (the `MultiOptimizer` protocol): they
    set, reduce and log each rate.
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
        "A GAN trains with two optimizers, so model.optimizer has no single learning rate. "
        "Use model.generator_optimizer.learning_rate and model.discriminator_optimizer.learning_rate "
        "(or each of model.optimizer.optimizers), or a schedule callback that sets both "
        "(cyclegan_keras.callbacks.LearningRateSchedule, keras.callbacks.LearningRateScheduler)."
    )

    def __repr__(self):
        return f"OptimizerPair({self.generator_optimizer.name!r}, {self.discriminator_optimizer.name!r})"


class GANModel(keras.Model):
    """The parts of a GAN method that are not the method's own.

    A subclass defines `generators`, `discriminators`, `_network_arguments` (its networks, for
    `get_config`), `snapshot_columns`, steps returning `self._update_trackers(losses)`, and a
    `compile` calling this one; `missing_direction` if it learns one direction (why the other is
    refused), `plateau_monitor` if the `plateau` learning-rate policy may watch one of its losses.
    """

    _network_arguments: tuple[str, ...] = ()
    # Why `generator(direction)` refuses a direction not in `generators` (None: it lists those it has).
    missing_direction: str | None = None
    # The epoch-mean loss that `callbacks.LearningRateSchedule("plateau")` watches for this method.
    plateau_monitor: str | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_trackers = {}

    @property
    def generators(self) -> dict[str, keras.Model]:
        """`{direction: generator}` for the directions this model translates."""
        raise NotImplementedError

    @property
    def discriminators(self) -> list[keras.Model]:
        raise NotImplementedError

    @property
    def generator_variables(self) -> list[keras.Variable]:
        return [v for generator in self.generators.values() for v in generator.trainable_variables]

    @property
    def discriminator_variables(self) -> list[keras.Variable]:
        return [v for discriminator in self.discriminators for v in discriminator.trainable_variables]

    def generator(self, direction: str) -> keras.Model:
        """The generator for `direction`: `"a2b"` or `"b2a"`."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}. Received: direction={direction!r}")
        if direction not in self.generators:
            reason = self.missing_direction or f"{type(self).__name__} translates {', '.join(self.generators)} only"
            raise ValueError(f"{reason}. Received: direction={direction!r}")
        return self.generators[direction]

    def translate(self, images: np.ndarray, direction: str = "a2b", **kwargs) -> np.ndarray:
        """Translates images of any size in [-1, 1] with the generator for `direction`.

        Args:
            images: array `(n, height, width, channels)` or one image.
            **kwargs: `batch_size`, `max_memory`, `tile_size`, `overlap` of `inference.translate_images`.
        """
        return translate_images(self.generator(direction), images, **kwargs)

    def call(self, inputs, training=False):
        return self.generator("a2b")(inputs, training=training)

    def snapshot_columns(self, real_a: np.ndarray, real_b: np.ndarray) -> dict[str, np.ndarray]:
        """`{name: images}`, the columns of a training snapshot of these fixed test pairs (in [-1, 1])."""
        raise NotImplementedError

    def compile(
        self,
        generator_optimizer: keras.optimizers.Optimizer | None = None,
        discriminator_optimizer: keras.optimizers.Optimizer | None = None,
        *,
        objective: dict,
        losses: list[str],
        **kwargs,
    ) -> None:
        """Sets the optimizers (default: the paper's Adam), `model.optimizer` and the trackers of `losses`.

        `objective` (the subclass's compile arguments) goes into the compile config.
        """
        refused = sorted(set(kwargs) & set(_UNUSED_COMPILE_ARGUMENTS))
        if refused:
            raise ValueError(
                f"{type(self).__name__}.compile() does not take {', '.join(refused)}: its objective is fixed by "
                f"{', '.join(objective)}, and it trains with two optimizers, generator_optimizer (its "
                "generators) and discriminator_optimizer (its discriminators). Its losses are reported as "
                "metrics already. Received: " + ", ".join(f"{name}={kwargs[name]!r}" for name in refused)
            )
        if objective.get("gan_mode") == "wgangp":
            lean = [
                f"{d.name}/{layer.name}"
                for d in self.discriminators
                for layer in d.layers
                if getattr(layer, "lean_gradient", False)
            ]
            if lean:
                raise ValueError(
                    "gan_mode='wgangp' differentiates the discriminators twice, which the lean gradient of "
                    f"{', '.join(lean)} cannot: build them with lean_gradient=False"
                )
        # Keras's default optimizer would be an RMSprop that trains nothing (and is saved in every file).
        super().compile(optimizer=None, **kwargs)
        self.objective = dict(objective)
        self.generator_optimizer = self._loss_scaled(generator_optimizer or _adam("generator"))
        self.discriminator_optimizer = self._loss_scaled(discriminator_optimizer or _adam("discriminator"))
        # Now, not in the first step: lazy creation fails under tf.distribute, and loading needs them.
        self.generator_optimizer.build(self.generator_variables)
        self.discriminator_optimizer.build(self.discriminator_variables)
        self.optimizer = OptimizerPair(self.generator_optimizer, self.discriminator_optimizer)
        # Untracked, as Keras's compile() makes its own: a built (or loaded) model's state is locked.
        with tracking.DotNotTrackScope():
            self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in losses}

    # The order of D's two forward passes in the reference's `backward_D` (it moves batch-norm statistics).
    discriminator_sees_fake_first = False

    def build(self, input_shape):
        """Checks that training images of `input_shape` (a `real_a` batch's) fit the networks."""
        height, width = input_shape[1], input_shape[2]
        if height is not None and width is not None:
            self._check_image_size(height, width)

    @staticmethod
    def _check_objective(gan_mode, **weights):
        """Refuses an unknown `gan_mode` or a negative weight, naming the argument."""
        if gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}. Received: gan_mode={gan_mode!r}")
        for key, value in weights.items():
            if value < 0:
                raise ValueError(f"{key} must be >= 0. Received: {key}={value}")

    def _discriminator_loss(self, discriminator, real, fake, training):
        """The reference's D loss: `(total, real term, fake term)`, total = 0.5 * (real + fake) + WGAN-GP's penalty.

        Reads `gan_mode` and `lambda_gp` of the compiled objective.
        """
        gan_mode, lambda_gp = self.objective["gan_mode"], self.objective.get("lambda_gp", 0.0)
        terms = {}
        for name in ("fake", "real") if self.discriminator_sees_fake_first else ("real", "fake"):
            images = fake if name == "fake" else real
            terms[name] = gan_loss(discriminator(images, training=training), name == "real", gan_mode)
        total = 0.5 * (terms["real"] + terms["fake"])
        if gan_mode == "wgangp" and lambda_gp > 0:
            total += lambda_gp * gradient_penalty(discriminator, real, fake, self.seed_generator)
        return total, terms["real"], terms["fake"]

    def _step(self, optimizer, variables, loss_fn):
        """One step of `optimizer` on `loss_fn()`, as this replica's share of the global batch's loss; returns it."""
        with tf.GradientTape() as tape:
            loss = loss_fn()
            # A LossScaleOptimizer scales it further (float16).
            scaled_loss = optimizer.scale_loss(loss * replica_share())
        optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))
        return loss

    def _loss_scaled(self, optimizer):
        """`optimizer` in a `LossScaleOptimizer` when a network computes in float16 (its gradients underflow)."""
        networks = [*self.generators.values(), *self.discriminators]
        float16 = any(network.dtype_policy.compute_dtype == "float16" for network in networks)
        if float16 and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.loss_trackers.values())

    def _update_trackers(self, losses):
        """Adds a step's `{name: loss}` to the trackers; returns the logs."""
        for name, value in losses.items():
            self.loss_trackers[name].update_state(value)
        # Each replica's trackers hold its own running means (on-read variables): log their mean.
        logs = {tracker.name: mean_over_replicas(tracker.result()) for tracker in self.metrics}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # fit() reduces logs along axis 0 there, failing on scalars (tensorflow/tensorflow#72388).
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _unpack(self, data):
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError(
                f"{type(self).__name__} expects batches of (real_a, real_b). "
                f"Received a batch of type {type(data).__name__}"
                + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
            )
        return data

    def _check_image_size(self, height, width):
        """Refuses training images the networks cannot take, naming the network."""
        for generator in self.generators.values():
            multiple, smallest = size_multiple(generator), min_size(generator)
            if height % multiple or width % multiple or min(height, width) < smallest:
                raise ValueError(
                    f"Training images must have sides that are multiples of {multiple} "
                    f"and at least {smallest} for generator {generator.name!r}. "
                    f"Received images of {height}x{width}"
                )
        for discriminator in self.discriminators:
            try:
                discriminator.compute_output_shape((None, height, width, discriminator.input_shape[-1]))
            except ValueError:
                raise ValueError(
                    f"Training images of {height}x{width} are too small for discriminator "
                    f"{discriminator.name!r}: use larger images or fewer layers"
                ) from None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 builds from `strategy.reduce("MEAN", batch)`, failing on PerReplica tuples
        # (keras-team/keras#20585): building needs only the first replica's.
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

    def get_config(self):
        config = super().get_config()
        for key in self._network_arguments:
            network = getattr(self, key)
            config[key] = keras.saving.serialize_keras_object(network) if network is not None else None
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls._network_arguments:
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
            jit_compile=self.jit_compile,
            **self.objective,
        )

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("generator_optimizer", "discriminator_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)


def _adam(networks):
    # Named, so the stock callbacks' logs say which rate is which (`learning_rate_generator_adam`).
    return keras.optimizers.Adam(learning_rate=2e-4, beta_1=0.5, beta_2=0.999, name=f"{networks}_adam")


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class CycleGAN(GANModel):
    """CycleGAN: unpaired image-to-image translation between domains A (the paper's X) and B.

    Zhu et al., ICCV 2017. Trains on `(real_a, real_b)` batches; one `train_step` is one iteration of the
    reference (`optimize_parameters`): a step over both generators, then one over both discriminators
    on real images and on fakes drawn through their `ImagePool`s, each loss times 0.5.

    Args:
        generator_ab, generator_ba: G: A -> B and F: B -> A.
        discriminator_a, discriminator_b: D_X (logits for A images) and D_Y.
        pool_size: images per direction's pool; 0 disables the pools.
        feature_extractor: for the "feature loss + GAN" baseline (e.g. `networks.vgg16_features`).
        seed: of the image pools and the gradient penalty.
    """

    _network_arguments = ("generator_ab", "generator_ba", "discriminator_a", "discriminator_b", "feature_extractor")
    plateau_monitor = "cycle_loss"

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
        self.pool_a = ImagePool(pool_size, seed=seed, name="pool_a")
        self.pool_b = ImagePool(pool_size, seed=seed + 1, name="pool_b")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.pool_size = pool_size
        self.seed = seed

    @property
    def generators(self):
        return {"a2b": self.generator_ab, "b2a": self.generator_ba}

    @property
    def discriminators(self):
        return [self.discriminator_a, self.discriminator_b]

    def snapshot_columns(self, real_a, real_b):
        fake_b, fake_a = self.translate(real_a, "a2b"), self.translate(real_b, "b2a")
        cycled_a, cycled_b = self.translate(fake_b, "b2a"), self.translate(fake_a, "a2b")
        return dict(real_a=real_a, fake_b=fake_b, cycled_a=cycled_a, real_b=real_b, fake_a=fake_a, cycled_b=cycled_b)

    def build(self, input_shape):
        """Builds the image pools for training images of `input_shape` (that of a `real_a` batch)."""
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            return  # An inference-only build; fit() builds the pools.
        self._check_image_size(height, width)
        self.pool_b.build((None, height, width, self.generator_ab.output_shape[-1]))
        self.pool_a.build((None, height, width, self.generator_ba.output_shape[-1]))

    def get_build_config(self):
        # A loaded model must rebuild the pools' size, even if first built for inference at any size.
        if self.pool_b.built:
            height, width = self.pool_b.images.shape[1:3]
            return {"input_shape": (None, height, width, self.generator_ab.input_shape[-1])}
        return super().get_build_config()

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
        """Configures the objective (the paper's by default; its ablations are settings) and the optimizers.

        Args:
            generator_optimizer: over both generators; `Adam(2e-4, beta_1=0.5, beta_2=0.999)` if None.
            discriminator_optimizer: over both discriminators; the same Adam if None.
            gan_mode: `"lsgan"`, `"vanilla"` or `"wgangp"`.
            lambda_a, lambda_b: weights of the cycles |F(G(a)) - a| and |G(F(b)) - b|.
            lambda_identity: |G(b) - b| + |F(a) - a| relative to lambda_a/lambda_b (0.5 means weight 5).
            lambda_pixel: weight of |G(a) - a| + |F(b) - b| (the "pixel loss" baseline).
            lambda_feature: weight of the L1 distance between features of x and of its translation.
            lambda_gp: gradient-penalty weight for `"wgangp"`.
            **kwargs: to `keras.Model.compile`, which refuses its `optimizer`, `loss` and `*metrics` here.

        Raises:
            ValueError: on a setting out of range, or on an argument of `keras.Model.compile` it does not use.
        """
        # First, while the lambda_* arguments are all the locals, in the signature's order.
        weights = {name: value for name, value in locals().items() if name.startswith("lambda_")}
        self._check_objective(gan_mode, **weights)
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
        losses = ["gen_ab_loss", "gen_ba_loss", "cycle_loss", "identity_loss", "disc_a_loss", "disc_b_loss"]
        losses += [f"{name}_loss" for name in ("pixel", "feature") if weights[f"lambda_{name}"] > 0]
        objective = dict(gan_mode=gan_mode, **weights)
        super().compile(generator_optimizer, discriminator_optimizer, objective=objective, losses=losses, **kwargs)
        self.gan_mode = gan_mode
        self.loss_weights = weights

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
        cycle = identity = tf.constant(0.0)
        if w["lambda_a"] > 0:
            cycled_a = f(fake_b, training=training)
            cycle += w["lambda_a"] * l1_loss(cycled_a, real_a)
        if w["lambda_b"] > 0:
            cycled_b = g(fake_a, training=training)
            cycle += w["lambda_b"] * l1_loss(cycled_b, real_b)
        losses["cycle_loss"] = cycle
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

    def train_step(self, data):
        real_a, real_b = self._unpack(data)
        if not self.built:
            # Without a strategy the TF trainer builds nothing before the first trace.
            self.build(real_a.shape)
        # Each replica's loss is its share of the global batch's; a LossScaleOptimizer scales it further.
        share = replica_share()
        with tf.GradientTape() as tape:
            generator_loss, losses, fake_a, fake_b = self._generator_losses(real_a, real_b, True)
            scaled_loss = self.generator_optimizer.scale_loss(generator_loss * share)
        gradients = tape.gradient(scaled_loss, self.generator_variables)
        self.generator_optimizer.apply_gradients(zip(gradients, self.generator_variables))

        pooled_fake_a = self.pool_a(fake_a)
        pooled_fake_b = self.pool_b(fake_b)

        def discriminator_objective():
            losses["disc_a_loss"], _, _ = self._discriminator_loss(self.discriminator_a, real_a, pooled_fake_a, True)
            losses["disc_b_loss"], _, _ = self._discriminator_loss(self.discriminator_b, real_b, pooled_fake_b, True)
            return losses["disc_a_loss"] + losses["disc_b_loss"]

        self._step(self.discriminator_optimizer, self.discriminator_variables, discriminator_objective)
        return self._update_trackers(losses)

    def test_step(self, data):
        real_a, real_b = self._unpack(data)
        _, losses, fake_a, fake_b = self._generator_losses(real_a, real_b, False)
        # No pool at evaluation: it would change the training state.
        losses["disc_a_loss"], _, _ = self._discriminator_loss(self.discriminator_a, real_a, fake_a, False)
        losses["disc_b_loss"], _, _ = self._discriminator_loss(self.discriminator_b, real_b, fake_b, False)
        return self._update_trackers(losses)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "seed": self.seed}
