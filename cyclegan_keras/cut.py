"""`CUT`, contrastive unpaired translation (CUT and FastCUT), trained by one `fit()`; its PatchNCE loss and MLP head.

Park, Efros, Zhang, Zhu, "Contrastive Learning for Unpaired Image-to-Image Translation", ECCV 2020.
The reference is the authors' code, taesungp/contrastive-unpaired-translation: `models/cut_model.py`
(the step), `models/patchnce.py` (the loss) and `PatchSampleF` in `models/networks.py` (the head).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from cyclegan_keras import networks
from cyclegan_keras.distribute import replica_share
from cyclegan_keras.losses import gan_loss
from cyclegan_keras.model import GANModel

NCE_LAYERS = (0, 4, 8, 12, 16)
NCE_LOSSES = ("nce_loss", "nce_idt_loss")  # of real_a's translation, of real_b's (the identity term)


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class PatchSampleMLP(keras.Model):
    """The reference's `PatchSampleF` as `mlp_sample`: feature vectors at given locations, projected, L2-normalised.

    Per feature map: the vectors at `sample_ids` (indexes into the flattened height x width, the same
    for every image of the batch), then `Dense(units) - ReLU - Dense(units)` of that map (made here for
    known channel counts, where the reference makes them at the first forward pass), then `x / (|x| + 1e-7)`.
    Computes in float32 whatever the global policy.

    Args:
        channels: the channel count of each feature map, in order.
        units: width of both layers of each MLP (the reference's `--netF_nc`).
    """

    def __init__(self, channels: tuple[int, ...] | list[int], units: int = 256, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1 or units < 1:
            raise ValueError(f"channels and units must be positive. Received: channels={channels}, units={units}")
        self.channels, self.units = channels, units
        self.hidden, self.projections = [], []
        for index, width in enumerate(channels):
            hidden = _dense(units, "relu", f"mlp{index}_dense0")
            projection = _dense(units, None, f"mlp{index}_dense1")
            hidden.build((None, width))
            projection.build((None, units))
            self.hidden.append(hidden)
            self.projections.append(projection)
        self.built = True

    def call(self, features, sample_ids):
        """`features`: NHWC maps; `sample_ids`: int32 `(samples,)` per map. Returns `(batch * samples, units)` each."""
        outputs = []
        for feature, ids, hidden, projection in zip(features, sample_ids, self.hidden, self.projections):
            feature = tf.cast(feature, "float32")
            flat = tf.reshape(feature, (tf.shape(feature)[0], -1, feature.shape[-1]))
            sampled = tf.reshape(tf.gather(flat, ids, axis=1), (-1, feature.shape[-1]))
            x = projection(hidden(sampled))
            outputs.append(x / (tf.sqrt(tf.reduce_sum(tf.square(x), axis=1, keepdims=True)) + 1e-7))
        return outputs

    def get_config(self):
        return {**super().get_config(), "channels": list(self.channels), "units": self.units}


def _dense(units, activation, name):
    # N(0, 0.02) kernels as every network here before `training` applies --init-type (CUT: xavier).
    init = keras.initializers.RandomNormal(0.0, 0.02)
    return keras.layers.Dense(units, activation=activation, kernel_initializer=init, dtype="float32", name=name)


def sample_ids(features, num_patches, seed):
    """Per feature map, `min(num_patches, height * width)` distinct random locations: the reference's
    `np.random.permutation(h * w)[:num_patches]`, one draw per map for the whole batch.

    Args:
        seed: a `keras.random.SeedGenerator` (training: its state is saved, so a resumed run draws on) or an int.
    """
    ids = []
    for feature in features:
        locations = feature.shape[1] * feature.shape[2] if None not in feature.shape[1:3] else None
        if locations is None:
            locations = tf.shape(feature)[1] * tf.shape(feature)[2]
            count = tf.minimum(num_patches, locations)
        else:
            count = min(num_patches, locations)
        # The top-k of uniform draws: a random subset in random order, as a permutation's head.
        scores = keras.random.uniform((locations,), seed=seed)
        ids.append(tf.math.top_k(scores, k=count, sorted=True).indices)
    return ids


def patch_nce_loss(query, key, batch_size, temperature=0.07, negatives_from_minibatch=False):
    """The reference's `PatchNCELoss`: per query, cross-entropy of its positive key against the other keys.

    Logits `[q . k+, q . k-...] / temperature`, the negatives being the other locations of the same
    image (of the whole batch with `negatives_from_minibatch`), the query's own key among them set to
    -10 (the reference's masked diagonal). It does not stop the key's gradient (the reference detaches
    it inside; `CUT` computes the keys outside its gradient tape).

    Args:
        query, key: `(batch_size * samples, dim)`, row `b * samples + s` for image `b`, location `s`.

    Returns:
        The loss of each query, `(batch_size * samples,)` float32.
    """
    query, key = tf.cast(query, "float32"), tf.cast(key, "float32")
    dim = query.shape[-1]
    positive = tf.reduce_sum(query * key, axis=1, keepdims=True)
    groups = 1 if negatives_from_minibatch else batch_size
    query, key = tf.reshape(query, (groups, -1, dim)), tf.reshape(key, (groups, -1, dim))
    negative = tf.matmul(query, key, transpose_b=True)
    count = tf.shape(query)[1]
    diagonal = tf.cast(tf.eye(count), tf.bool)[None]
    negative = tf.reshape(tf.where(diagonal, tf.constant(-10.0), negative), (-1, count))
    logits = tf.concat([positive, negative], axis=1) / temperature
    labels = tf.zeros(tf.shape(logits)[:1], tf.int32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def layer_mean_nce(queries, keys, sample_ids_, lambda_nce=1.0, nce_t=0.07, negatives_from_minibatch=False):
    """`lambda_nce` times the mean PatchNCE loss of each layer's pooled queries and keys, averaged over layers.

    The end of the reference's `calculate_NCE_loss`, given `PatchSampleMLP`'s outputs for the
    features of G(x) (`queries`) and of x (`keys`) at the same `sample_ids_`.
    """
    total = 0.0
    for query, key, locations in zip(queries, keys, sample_ids_):
        batch = tf.shape(query)[0] // tf.shape(locations)[0]
        total += tf.reduce_mean(patch_nce_loss(query, key, batch, nce_t, negatives_from_minibatch)) * lambda_nce
    return total / len(queries)


def _flipped(flip, images):
    """`images` mirrored left-right where `flip` (a scalar bool tensor) is true."""
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def _mirrored(flip, ids, feature):
    """Where `flip`: the flattened locations `ids` of `feature`'s map mirrored left-right, (h, w) -> (h, W - 1 - w)."""
    width = feature.shape[2] if feature.shape[2] is not None else tf.shape(feature)[2]
    return tf.where(flip, ids - ids % width + (width - 1 - ids % width), ids)


@keras.saving.register_keras_serializable(package="cyclegan_keras")
class CUT(GANModel):
    """CUT and FastCUT: one generator A -> B, kept close to its input by a patchwise contrastive loss.

    Park et al., ECCV 2020. Trains on `(real_a, real_b)` batches; one `train_step` is the reference's
    `optimize_parameters`: G's forward once, a discriminator step on real_b and the (detached) fake_b,
    then one step of G and the MLP head together against the updated D. The gradients of real_a's
    terms and of the identity term are taken one after the other (`_tape_groups`), their sum the
    reference's, and the keys are G's features of its input from that forward pass. The PatchNCE loss compares,
    at `num_patches` random locations of each `nce_layers` feature map of G's encoder, the features of
    G(a) (queries) with those of `a` (keys, no gradient); CUT adds the same between G(b) and `b`.
    LSGAN, no image pool. Compile settings choose the mode: CUT is the default, FastCUT is
    `compile(lambda_nce=10, nce_idt=False, flip_equivariance=True)`.

    Args:
        generator_ab: G, a `networks.resnet_generator` (CUT's has `antialias=True, antialias_up=True`).
        discriminator_b: D, logits for B images (CUT's: `patchgan_discriminator(antialias=True)`).
        patch_sampler: the MLP head (`PatchSampleMLP` over the `nce_layers` channels); None: one of 256 units.
        nce_layers: indexes of G's layers in the reference's `nn.Sequential` numbering (see
            `networks.reference_layers`) whose features PatchNCE compares.
        seed: of the sample locations and the flips.
    """

    _network_arguments = ("generator_ab", "discriminator_b", "patch_sampler")
    missing_direction = (
        "CUT learns one direction, a2b (A -> B): it has no B -> A generator (train another with "
        "--direction b2a for that)"
    )
    plateau_monitor = "nce_loss"
    discriminator_sees_fake_first = True  # compute_D_loss: pred_fake, then pred_real

    def __init__(
        self,
        generator_ab: keras.Model,
        discriminator_b: keras.Model,
        patch_sampler: PatchSampleMLP | None = None,
        nce_layers: tuple[int, ...] = NCE_LAYERS,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator_ab = generator_ab
        self.discriminator_b = discriminator_b
        self.nce_layers = tuple(int(index) for index in nce_layers)
        features = networks.encoder_features(generator_ab, self.nce_layers)
        # Untracked: they share G's layers, so saving them would store G's weights twice. `_translator`
        # is G with its features of the input besides: the keys come with the translation.
        object.__setattr__(self, "_encoder", features)
        translator = keras.Model(generator_ab.input, [generator_ab.output, *features.outputs], name="translator")
        object.__setattr__(self, "_translator", translator)
        channels = tuple(output.shape[-1] for output in features.outputs)
        if patch_sampler is None:
            patch_sampler = PatchSampleMLP(channels, name="patch_sampler")
        if tuple(patch_sampler.channels) != channels:
            raise ValueError(
                f"patch_sampler takes features of {tuple(patch_sampler.channels)} channels, but the generator's "
                f"layers {self.nce_layers} have {channels}"
            )
        self.patch_sampler = patch_sampler
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Keras saves no SeedGenerator; tracked as the model's variable, its state is (a resumed run draws on).
        self.draw_state = self.seed_generator.state
        self.seed = seed

    @property
    def generators(self):
        return {"a2b": self.generator_ab}

    @property
    def discriminators(self):
        return [self.discriminator_b]

    @property
    def generator_variables(self):
        # One Adam over G and the head: Adam keeps moments per variable, so this is the reference's
        # optimizer_G plus its optimizer_F (same lr and betas), also for the learning-rate schedule.
        return [*self.generator_ab.trainable_variables, *self.patch_sampler.trainable_variables]

    def snapshot_columns(self, real_a, real_b):
        fake_b, idt_b = self.translate(real_a, "a2b"), self.translate(real_b, "a2b")
        return dict(real_a=real_a, fake_b=fake_b, real_b=real_b, idt_b=idt_b)

    def compile(
        self,
        generator_optimizer: keras.optimizers.Optimizer | None = None,
        discriminator_optimizer: keras.optimizers.Optimizer | None = None,
        gan_mode: str = "lsgan",
        lambda_gan: float = 1.0,
        lambda_nce: float = 1.0,
        nce_idt: bool = True,
        num_patches: int = 256,
        nce_t: float = 0.07,
        flip_equivariance: bool = False,
        nce_includes_all_negatives_from_minibatch: bool = False,
        lambda_gp: float = 10.0,
        **kwargs,
    ) -> None:
        """Configures the objective (CUT's by default) and the optimizers.

        Args:
            generator_optimizer: over G and the MLP head; `Adam(2e-4, beta_1=0.5, beta_2=0.999)` if None.
            discriminator_optimizer: over D; the same Adam if None.
            gan_mode: `"lsgan"` (the reference's), `"vanilla"` or `"wgangp"` (with the gradient penalty).
            lambda_gan: weight of G's adversarial loss.
            lambda_nce: weight of PatchNCE (CUT 1, FastCUT 10); 0 trains G by the GAN loss alone.
            nce_idt: add PatchNCE between G(b) and b, averaged with the main one (CUT on, FastCUT off).
            num_patches: locations sampled per feature map.
            nce_t: the temperature.
            flip_equivariance: G sees the batch mirrored with probability 0.5 and its query features are
                mirrored back (FastCUT's regularization).
            nce_includes_all_negatives_from_minibatch: negatives from every image of the batch (per
                replica under `tf.distribute`), not only the query's own.
            lambda_gp: gradient-penalty weight for `"wgangp"`.
            **kwargs: to `keras.Model.compile`, which refuses its `optimizer`, `loss` and `*metrics` here.

        Raises:
            ValueError: on a setting out of range, or on an argument of `keras.Model.compile` it does not use.
        """
        # First, while the settings are all the locals but these.
        objective = {
            name: value
            for name, value in locals().items()
            if name not in ("self", "__class__", "generator_optimizer", "discriminator_optimizer", "kwargs")
        }
        self._check_objective(gan_mode, lambda_gan=lambda_gan, lambda_nce=lambda_nce, lambda_gp=lambda_gp)
        if num_patches < 1 or nce_t <= 0:
            raise ValueError(f"num_patches must be >= 1 and nce_t > 0. Received: {num_patches}, {nce_t}")
        g = self.generator_ab
        if nce_idt and g.input_shape[-1] != g.output_shape[-1]:
            raise ValueError(
                "The identity NCE term translates B images, so it needs equal input and output channels: set "
                f"nce_idt=False. Received a generator {g.input_shape} -> {g.output_shape}"
            )
        losses = ["gen_ab_loss", "nce_loss", *(["nce_idt_loss"] if nce_idt else []), "disc_b_loss"]
        super().compile(generator_optimizer, discriminator_optimizer, objective=objective, losses=losses, **kwargs)

    def _parts(self, real_a, real_b):
        """What G translates in a step: real_a, and real_b for the identity NCE term."""
        return [real_a, real_b] if self.objective["nce_idt"] else [real_a]

    def _nce_keys(self, features, seed):
        """The sample ids of `features` (one image batch's NCE feature maps), and the pooled keys (no gradient)."""
        ids = sample_ids(features, self.objective["num_patches"], seed)
        return ids, [tf.stop_gradient(key) for key in self.patch_sampler(features, sample_ids=ids)]

    def _nce_loss(self, fake, ids, keys, flip, training):
        """PatchNCE of `fake` (queries) against the keys of G's input: the reference's `calculate_NCE_loss`."""
        o = self.objective
        features = self._encoder(fake, training=training)
        # Mirrored, the reference flips the query maps back; sampling them at the mirrored locations is the same.
        query_ids = ids if flip is None else [_mirrored(flip, i, feature) for i, feature in zip(ids, features)]
        queries = self.patch_sampler(features, sample_ids=query_ids)
        return layer_mean_nce(
            queries, keys, ids, o["lambda_nce"], o["nce_t"], o["nce_includes_all_negatives_from_minibatch"]
        )

    def _tape_groups(self, parts):
        """Which parts G translates under one gradient tape. Each its own where G treats every image alone
        (no batch norm): the gradients add up to the same, but real_a's activations are freed before
        real_b's are made, so CUT's identity term does not double the peak memory. With batch norm,
        together, as the reference's `netG(cat(real_A, real_B))` normalizes them."""
        batch_norm = any(isinstance(layer, keras.layers.BatchNormalization) for layer in self.generator_ab.layers)
        return [list(range(parts))] if batch_norm else [[part] for part in range(parts)]

    def _discriminator_step(self, real_b, fake_b):
        """One step of D on real_b and the (detached) fake_b; returns its loss."""
        return self._step(
            self.discriminator_optimizer,
            self.discriminator_variables,
            lambda: self._discriminator_loss(self.discriminator_b, real_b, fake_b, True)[0],
        )

    def train_step(self, data):
        real_a, real_b = self._unpack(data)
        if not self.built:
            self.build(real_a.shape)
        o = self.objective
        parts = self._parts(real_a, real_b)
        flip = keras.random.uniform((), seed=self.seed_generator) < 0.5 if o["flip_equivariance"] else None
        nce = o["lambda_nce"] > 0
        variables = self.generator_variables if nce else self.generator_ab.trainable_variables
        losses = {name: tf.constant(0.0) for name in NCE_LOSSES[: len(parts)]}  # lambda_nce 0: none computed
        gradients = None
        for group in self._tape_groups(len(parts)) if nce else [[0]]:
            real = tf.concat([parts[part] for part in group], axis=0)
            if gradients is not None:  # not before the last part's gradients: its activations are freed first
                with tf.control_dependencies([g for g in gradients if g is not None]):
                    real = tf.identity(real)
            with tf.GradientTape() as tape:
                # The keys are G's features of its input, from the translation itself, or of the input as it
                # came where G saw it mirrored.
                fake, *key_features = self._translator(real if flip is None else _flipped(flip, real), training=True)
                if flip is not None and nce:
                    with tape.stop_recording():
                        key_features = tf.cond(flip, lambda: self._encoder(real, training=True), lambda: key_features)
                loss = 0.0
                if group[0] == 0:
                    fake_b = fake[: tf.shape(real_a)[0]]
                    with tape.stop_recording():  # the discriminator's step, between G's forward and its loss
                        losses["disc_b_loss"] = self._discriminator_step(real_b, tf.stop_gradient(fake_b))
                    losses["gen_ab_loss"] = gan_loss(self.discriminator_b(fake_b, training=True), True, o["gan_mode"])
                    loss += o["lambda_gan"] * losses["gen_ab_loss"]
                for index, part in enumerate(group if nce else []):
                    with tape.stop_recording():
                        maps = [_part(feature, index, len(group)) for feature in key_features]
                        ids, keys = self._nce_keys(maps, self.seed_generator)
                    fake_part = _part(fake, index, len(group))
                    losses[NCE_LOSSES[part]] = self._nce_loss(fake_part, ids, keys, flip, True)
                    loss += losses[NCE_LOSSES[part]] / len(parts)  # the reference's mean of the NCE terms
                # Each replica's loss is its share of the global batch's; a LossScaleOptimizer scales it further.
                scaled_loss = self.generator_optimizer.scale_loss(loss * replica_share())
            part_gradients = tape.gradient(scaled_loss, variables)
            gradients = (
                part_gradients if gradients is None else [_sum(*pair) for pair in zip(gradients, part_gradients)]
            )
        self.generator_optimizer.apply_gradients(zip(gradients, variables))
        return self._update_trackers(losses)

    def test_step(self, data):
        real_a, real_b = self._unpack(data)
        o = self.objective
        losses = {}
        for part, real in enumerate(self._parts(real_a, real_b)):
            fake, *features = self._translator(real, training=False)
            if part == 0:
                fake_b = fake
                losses["gen_ab_loss"] = gan_loss(self.discriminator_b(fake_b, training=False), True, o["gan_mode"])
            # Locations from the fixed seed: evaluating must not move the training draws.
            if o["lambda_nce"] > 0:
                ids, keys = self._nce_keys(features, self.seed)
                losses[NCE_LOSSES[part]] = self._nce_loss(fake, ids, keys, None, False)
            else:
                losses[NCE_LOSSES[part]] = 0.0
        losses["disc_b_loss"], _, _ = self._discriminator_loss(self.discriminator_b, real_b, fake_b, False)
        return self._update_trackers(losses)

    def get_config(self):
        return {**super().get_config(), "nce_layers": list(self.nce_layers), "seed": self.seed}


def _sum(a, b):
    """Two gradients of one variable added, either possibly None (the variable did not take part)."""
    return b if a is None else a if b is None else a + b


def _part(images, part, parts):
    """Batch rows `part` of `parts` equal parts of `images`."""
    size = tf.shape(images)[0] // parts
    return images[part * size : (part + 1) * size]
