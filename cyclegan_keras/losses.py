"""The GAN losses every method here shares, as functions of tensors (and of a discriminator)."""

import keras
import tensorflow as tf


def gan_loss(logits: tf.Tensor, target_is_real: bool, gan_mode: str) -> tf.Tensor:
    """The reference's `GANLoss` on a map of discriminator logits, a float32 scalar.

    `lsgan`: squared error to 1 or 0, no sigmoid; `vanilla`: cross-entropy with logits; `wgangp`: -/+ mean.
    """
    logits = tf.cast(logits, "float32")
    if gan_mode == "wgangp":
        return -tf.reduce_mean(logits) if target_is_real else tf.reduce_mean(logits)
    target = tf.ones_like(logits) if target_is_real else tf.zeros_like(logits)
    if gan_mode == "lsgan":
        return tf.reduce_mean(tf.square(logits - target))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits))


def l1_loss(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Mean absolute difference, in float32."""
    return tf.reduce_mean(tf.abs(tf.cast(x, "float32") - tf.cast(y, "float32")))


def gradient_penalty(discriminator, real, fake, seed=None):
    """WGAN-GP's `E[(||grad D(x_hat)||_2 - 1)^2]` on random interpolates of `real` and `fake` (Gulrajani et al.)."""
    real = tf.cast(real, "float32")
    alpha = keras.random.uniform((tf.shape(real)[0], 1, 1, 1), seed=seed)
    interpolated = alpha * real + (1.0 - alpha) * tf.cast(fake, "float32")
    with tf.GradientTape() as tape:
        tape.watch(interpolated)
        logits = discriminator(interpolated, training=True)
    gradients = tape.gradient(logits, interpolated)
    norms = tf.norm(tf.reshape(gradients, (tf.shape(gradients)[0], -1)) + 1e-16, axis=1)
    return tf.reduce_mean(tf.square(norms - 1.0))
