"""The image pool: a history of generated images for the discriminators."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class ImagePool(keras.layers.Layer):
    """A buffer of previously generated images for the discriminators (Shrivastava et al., 2017).

    Per image, as the reference's `ImagePool.query`: until full, store and return it; then with
    probability 0.5 swap it for a random stored one. In variables, so it is saved and resumes exactly;
    draws are stateless from `(seed, draw counter)` (XLA's Philox stream differs from TensorFlow's).

    Args:
        pool_size: images stored; 0 returns images as they are.
    """

    def __init__(self, pool_size: int = 50, seed: int = 0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0. Received: pool_size={pool_size}")
        self.pool_size = pool_size
        self.seed = seed

    def build(self, input_shape):
        if any(dim is None for dim in input_shape[1:]):
            raise ValueError(
                "ImagePool stores images of one size, so height, width and "
                f"channels must be known. Received: input_shape={input_shape}"
            )

        # Each replica keeps its own pool (on-read variables, which add_weight cannot make); a checkpoint
        # stores the first replica's, which every replica restores.
        def state(name, shape, dtype):
            return keras.Variable(
                "zeros",
                shape=shape,
                dtype=dtype,
                trainable=False,
                synchronization="on_read",
                aggregation="only_first_replica",
                name=name,
            )

        self.images = state("images", (max(self.pool_size, 1), *input_shape[1:]), self.dtype)
        self.count = state("count", (), "int32")
        self.draws = state("draws", (), "int32")

    def call(self, images):
        images = tf.stop_gradient(tf.cast(images, self.images.dtype))
        if self.pool_size == 0:
            return images
        batch_size = tf.shape(images)[0]
        stored_images = self.images.value
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1

        def query(i, outputs):
            image = images[i]
            seed = tf.stack([tf.constant(self.seed, tf.int32), self.draws.value])
            if replicas > 1:
                # Each replica's pool draws its own numbers.
                seed = tf.random.experimental.stateless_fold_in(seed, context.replica_id_in_sync_group)
            uniform = tf.random.stateless_uniform([2], seed=seed, alg="philox")
            self.draws.assign_add(1)
            count = self.count.value
            full = count >= self.pool_size
            swap = tf.logical_and(full, uniform[0] > 0.5)
            random_slot = tf.minimum(tf.cast(uniform[1] * self.pool_size, tf.int32), self.pool_size - 1)
            slot = tf.where(full, random_slot, count)
            stored = stored_images[slot]
            keep = tf.logical_and(full, tf.logical_not(swap))
            # Distributed variables lack scatter_nd_update; this costs 6 ms per 256x256 query, full pool.
            stored_images.assign(tf.tensor_scatter_nd_update(stored_images, [[slot]], [tf.where(keep, stored, image)]))
            self.count.assign(tf.minimum(count + 1, self.pool_size))
            output = tf.where(swap, stored, image)
            return i + 1, tf.tensor_scatter_nd_update(outputs, [[i]], [output])

        _, outputs = tf.while_loop(lambda i, _: i < batch_size, query, (tf.constant(0), tf.zeros_like(images)))
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, seed=self.seed)
        return config
