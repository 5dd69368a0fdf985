"""`Pix2Pix`: paired image-to-image translation, trained by one `fit()` as `CycleGAN` is."""

from __future__ import annotations

import keras
import tensorflow as tf

from cyclegan_keras.distribute import replica_share
from cyclegan_keras.losses import gan_loss, l1_loss
from cyclegan_keras.model import GANModel


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class Pix2Pix(GANModel):
    """pix2pix: a conditional GAN learning A -> B from pairs `(real_a, real_b)`.

    Isola, Zhu, Zhou, Efros, CVPR 2017, as the authors' `models/pix2pix_model.py`: one
    `train_step` is one `optimize_parameters`: the forward pass `fake_b = G(real_a)`, then a step
    of the discriminator on the pairs `(real_a, real_b)` (real) and `(real_a, fake_b)` (fake), its
    loss times 0.5, then a step of the generator against the updated discriminator with
    `lambda_l1 * |fake_b - real_b|`. The discriminator sees a pair as its channels concatenated,
    input first. No image pool (the reference's `pool_size 0`).

    With the reference's batch norm, the networks normalize by batch statistics in training and by
    their running statistics at inference (`training=False`: `translate`, export, evaluation), as
    the reference's `test.py --eval`; `networks.with_image_statistics` gives its default instead.

    Args:
        generator_ab: G: A -> B (the reference's `unet_256`, batch norm, dropout).
        discriminator: D on `input_channels + output_channels` channels (a PatchGAN).
        seed: of the gradient penalty's interpolation (`gan_mode="wgangp"`).

    Example:

    ```python
    from cyclegan_keras import networks
    from cyclegan_keras.pix2pix import Pix2Pix

    model = Pix2Pix(
        networks.unet_generator(num_downs=5, filters=8, norm="batch", dropout=True),
        networks.patchgan_discriminator(filters=8, input_channels=6, norm="batch"),
    )
    model.compile()  # vanilla GAN loss, lambda_l1 100, the paper's Adam
    ```
    """

    _network_arguments = ("generator_ab", "discriminator")
    missing_direction = (
        "Pix2Pix translates a2b only: pix2pix learns the one direction it was trained in "
        "(--direction picks it in train.py)"
    )
    plateau_monitor = "l1_loss"
    discriminator_sees_fake_first = True  # backward_D: pred_fake, then pred_real

    def __init__(self, generator_ab: keras.Model, discriminator: keras.Model, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        channels = generator_ab.input_shape[-1] + generator_ab.output_shape[-1]
        if discriminator.input_shape[-1] != channels:
            raise ValueError(
                "The discriminator of pix2pix judges (input, output) pairs: it needs input_channels + "
                f"output_channels = {channels} channels. Received a discriminator on "
                f"{discriminator.input_shape[-1]} channels"
            )
        self.generator_ab = generator_ab
        self.discriminator = discriminator
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.seed = seed

    @property
    def generators(self):
        return {"a2b": self.generator_ab}

    @property
    def discriminators(self):
        return [self.discriminator]

    def snapshot_columns(self, real_a, real_b):
        return dict(input=real_a, output=self.translate(real_a, "a2b"), target=real_b)

    def compile(
        self,
        generator_optimizer: keras.optimizers.Optimizer | None = None,
        discriminator_optimizer: keras.optimizers.Optimizer | None = None,
        gan_mode: str = "vanilla",
        lambda_l1: float = 100.0,
        lambda_gp: float = 10.0,
        **kwargs,
    ) -> None:
        """Configures the objective (the paper's by default) and the optimizers.

        Args:
            generator_optimizer, discriminator_optimizer: `Adam(2e-4, beta_1=0.5, beta_2=0.999)` if None.
            gan_mode: `"vanilla"` (the reference's for pix2pix), `"lsgan"` or `"wgangp"`.
            lambda_l1: weight of |G(a) - b|.
            lambda_gp: gradient-penalty weight for `"wgangp"`.
            **kwargs: to `keras.Model.compile`, which refuses its `optimizer`, `loss` and `*metrics` here.
        """
        self._check_objective(gan_mode, lambda_l1=lambda_l1, lambda_gp=lambda_gp)
        losses = ["gen_ab_loss", "l1_loss", "disc_real_loss", "disc_fake_loss"]
        objective = dict(gan_mode=gan_mode, lambda_l1=lambda_l1, lambda_gp=lambda_gp)
        super().compile(generator_optimizer, discriminator_optimizer, objective=objective, losses=losses, **kwargs)

    def _discriminator_losses(self, real_a, real_b, fake_b, training):
        """The reference's `backward_D` terms: D's loss on the fake and on the real pair, and their 0.5-mean."""
        real_ab = tf.concat([real_a, tf.cast(real_b, real_a.dtype)], axis=-1)
        fake_ab = tf.concat([real_a, tf.cast(tf.stop_gradient(fake_b), real_a.dtype)], axis=-1)
        total, real, fake = self._discriminator_loss(self.discriminator, real_ab, fake_ab, training)
        return total, {"disc_fake_loss": fake, "disc_real_loss": real}

    def _generator_losses(self, real_a, real_b, fake_b, training):
        """The reference's `backward_G` terms: fool D on `(real_a, fake_b)`, and be near `real_b`."""
        fake_ab = tf.concat([real_a, tf.cast(fake_b, real_a.dtype)], axis=-1)
        losses = {
            "gen_ab_loss": gan_loss(self.discriminator(fake_ab, training=training), True, self.objective["gan_mode"]),
            "l1_loss": self.objective["lambda_l1"] * l1_loss(fake_b, real_b),
        }
        return losses["gen_ab_loss"] + losses["l1_loss"], losses

    def train_step(self, data):
        real_a, real_b = self._unpack(data)
        if not self.built:
            # Without a strategy the TF trainer builds nothing before the first trace.
            self.build(real_a.shape)
        losses = {}

        def discriminator_objective():
            total, terms = self._discriminator_losses(real_a, real_b, fake_b, True)
            losses.update(terms)
            return total

        with tf.GradientTape() as generator_tape:
            fake_b = self.generator_ab(real_a, training=True)
            # The discriminator's step comes between G's forward pass and its loss, as in the reference.
            with generator_tape.stop_recording():
                self._step(self.discriminator_optimizer, self.discriminator_variables, discriminator_objective)
            generator_loss, generator_losses = self._generator_losses(real_a, real_b, fake_b, True)
            # Each replica's loss is its share of the global batch's; a LossScaleOptimizer scales it further.
            scaled_loss = self.generator_optimizer.scale_loss(generator_loss * replica_share())
        gradients = generator_tape.gradient(scaled_loss, self.generator_variables)
        self.generator_optimizer.apply_gradients(zip(gradients, self.generator_variables))
        return self._update_trackers({**generator_losses, **losses})

    def test_step(self, data):
        real_a, real_b = self._unpack(data)
        fake_b = self.generator_ab(real_a, training=False)
        _, losses = self._discriminator_losses(real_a, real_b, fake_b, False)
        _, generator_losses = self._generator_losses(real_a, real_b, fake_b, False)
        return self._update_trackers({**generator_losses, **losses})

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
