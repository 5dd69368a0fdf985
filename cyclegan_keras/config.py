"""The settings of a training run, importable without TensorFlow.

`TrainConfig` is a frozen dataclass whose fields are the reference's options
(`train.py` flags, with `-` for `_`). Each field carries in its metadata the
help text and the values it accepts (`choices`, or a numeric range), so the
command line (`cyclegan_keras.cli.train`) is generated from the fields and
checks every flag while parsing, and `TrainConfig.__post_init__` applies the
same checks to settings given in Python. A field cannot be added without
its help and its check: the CLI refuses to build a flag without them.

Nothing here imports TensorFlow at module level, so `train.py --help` and
the flag checks are instant; the checks that need the networks (the crop
size a generator's strides allow) import them inside `__post_init__`.
"""

import dataclasses
import math

# Vocabularies the flags accept. `distribute`, `networks` and `data` import
# the ones they own from here, so the TF-free parser and the library agree.
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
DIRECTIONS = ("a2b", "b2a")
# The reference's `init_weights` and `get_scheduler` choices.
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")
LR_POLICIES = ("linear", "step", "plateau", "cosine")
CHANNELS = (1, 3, 4)
# The registries in `networks` and `model.GAN_MODES` live in modules that
# import TensorFlow, so their names are repeated here and
# tests/test_train_cli.py keeps them equal; `data` takes PREPROCESS_MODES and
# TFDS_CONFIGS from here.
GENERATORS = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128")
DISCRIMINATORS = ("basic", "n_layers", "pixel")
NORMS = ("instance", "batch", "none")
GAN_MODES = ("lsgan", "vanilla", "wgangp")
PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
TFDS_CONFIGS = (
    "apple2orange",
    "summer2winter_yosemite",
    "horse2zebra",
    "monet2photo",
    "cezanne2photo",
    "ukiyoe2photo",
    "vangogh2photo",
    "maps",
    "cityscapes",
    "facades",
    "iphone2dslr_flower",
)
DATASETS = ("synthetic", *TFDS_CONFIGS)
# export.py --max-pixels: the most pixels (height x width, summed over the
# batch) one SavedModel request may hold; measured in bench/serving_memory.py.
SERVING_MAX_PIXELS = 2048 * 2048
# What an exported SavedModel computes in (training's policy names) and the
# TFLite variants; the older spellings `bfloat16` and `none` stay accepted.
EXPORT_PRECISIONS = ("float32", "mixed_bfloat16")
TFLITE_VARIANTS = ("float32", "float16", "dynamic", "int8")
EXPORT_ALIASES = {"bfloat16": "mixed_bfloat16", "none": "float32"}
# The FID Inception's input pipelines (pytorch-fid's and clean-fid's resize).
RESIZE_MODES = ("pytorch-fid", "clean")
# config.json of runs made before directions were a2b/b2a.
LEGACY_DIRECTIONS = {"AtoB": "a2b", "BtoA": "b2a"}

# `python train.py` with no arguments: the synthetic dataset, small enough to
# train in a few minutes on a laptop CPU. Used only for settings not given.
SYNTHETIC_DEFAULTS = dict(
    generator="resnet_6blocks",
    ngf=32,
    ndf=32,
    load_size=72,
    crop_size=64,
    n_epochs=3,
    n_epochs_decay=2,
)


class ConfigError(ValueError):
    """A setting the user gave is invalid; the message names the flag."""


def setting(default, help, choices=None, minimum=None, maximum=None, above=None, below=None, kind=None, flag=None):
    """A `TrainConfig` field with its help text and the values it accepts.

    Args:
        default: the paper's value (None: not set).
        help: the flag's help text.
        choices: the accepted values, or None.
        minimum, maximum: inclusive bounds of a number, or None.
        above, below: exclusive bounds of a number, or None. A float
            setting with any bound must also be finite.
        kind: what a path must be: `"folder"` (exists), `"inception_weights"` (a file), `"image_folder"`
            (holds images) or `"output_folder"` (can be created), or
            `"direction"` (a2b/b2a, the reference's spellings as aliases).
        flag: the command-line flag when it is not `--` + the name with `-`.
    """
    metadata = dict(
        help=help, choices=choices, minimum=minimum, maximum=maximum, above=above, below=below, kind=kind, flag=flag
    )
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field):
    """The command-line flag of a `TrainConfig` field (`--lambda-a`, `--xla`)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def allowed(field):
    """What a field accepts, in words (`a number > 0`), or None for no numeric bound."""
    m = field.metadata
    if m["choices"] is not None:
        return "one of " + ", ".join(str(c) for c in m["choices"])
    parts = []
    for key, sign in (("minimum", ">="), ("above", ">"), ("maximum", "<="), ("below", "<")):
        if m[key] is not None:
            parts.append(f"{sign} {m[key]}")
    if not parts:
        return None
    noun = "an integer" if field.type in (int, "int") else "a finite number"
    return f"{noun} {' and '.join(parts)}"


def check_value(field, value):
    """An error message if `value` is outside what `field` accepts, else None (None values pass)."""
    if value is None:
        return None
    m = field.metadata
    bad = False
    if m["choices"] is not None:
        bad = value not in m["choices"]
    elif allowed(field) is not None:
        if isinstance(value, float) and not math.isfinite(value):
            bad = True
        else:
            bad = (
                (m["minimum"] is not None and value < m["minimum"])
                or (m["maximum"] is not None and value > m["maximum"])
                or (m["above"] is not None and value <= m["above"])
                or (m["below"] is not None and value >= m["below"])
            )
    if bad:
        return f"{flag_name(field)} must be {allowed(field)}. Received: {value!r}"
    return None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Defaults are the paper's.

    Field names are the reference's options (`train.py` flags, with `-` for
    `_`). `dataset` is `"synthetic"`, a tfds `cycle_gan` config, or ignored
    when `dataroot` (a folder with trainA/ and trainB/) or `train_a` and
    `train_b` (any two folders) are given.

    Directions and channels, as the reference: `direction="b2a"` makes the
    dataset's B images the model's domain A (what `generator_ab` translates
    from). `input_nc` is always the channels of the model's domain A and
    `output_nc` those of its domain B; so with `b2a` the B folder is read
    with `input_nc` channels and the A folder with `output_nc`.

    Raises:
        ConfigError: a setting out of range, or settings that contradict
            each other; the message names the flag.
    """

    dataset: str = setting(
        "synthetic",
        "'synthetic' (built in, no download) or a tfds cycle_gan config: horse2zebra, monet2photo, ...",
        choices=DATASETS,
    )
    dataroot: str = setting(
        None,
        "folder in the reference layout: trainA/, trainB/ (and testA/, testB/ for snapshots)",
        kind="folder",
    )
    train_a: str = setting(
        None, "folder of domain A images (with --train-b), instead of --dataroot", kind="image_folder"
    )
    train_b: str = setting(None, "folder of domain B images (with --train-a)", kind="image_folder")
    data_dir: str = setting(None, "tensorflow-datasets data folder", kind="output_folder")
    download: bool = setting(False, "let tensorflow-datasets download the dataset (needs the internet)")
    synthetic_count: int = setting(128, "images per domain of the synthetic dataset", minimum=1)
    max_dataset_size: int = setting(
        None, "use at most this many images of each domain (the first ones, in file-name order)", minimum=1
    )
    direction: str = setting(
        "a2b",
        "a2b or b2a (the reference's AtoB, BtoA also work): with b2a the dataset's B images are the model's domain A",
        kind="direction",
    )
    input_nc: int = setting(
        3,
        "channels of the model's domain A (the dataset's B with --direction b2a): 1 grayscale, 3 RGB, 4 RGBA",
        choices=CHANNELS,
    )
    output_nc: int = setting(3, "channels of the model's domain B", choices=CHANNELS)
    generator: str = setting("resnet_9blocks", "the generators' architecture", choices=GENERATORS)
    discriminator: str = setting(
        "basic", "basic (70x70 PatchGAN), n_layers (with --n-layers-d) or pixel", choices=DISCRIMINATORS
    )
    n_layers_d: int = setting(3, "stride-2 layers of the n_layers discriminator", minimum=1, maximum=8)
    ngf: int = setting(64, "generator filters in the first layer", minimum=1)
    ndf: int = setting(64, "discriminator filters in the first layer", minimum=1)
    norm: str = setting("instance", "normalization layers", choices=NORMS)
    init_type: str = setting(
        "normal", "initialization of conv kernels (the reference's --init_type)", choices=INIT_TYPES
    )
    init_gain: float = setting(
        0.02, "scale of the initialization (std for normal; gain for xavier, orthogonal)", above=0.0
    )
    dropout: bool = setting(False, "dropout(0.5) in the generators (off for CycleGAN, as the paper)")
    gan_mode: str = setting("lsgan", "the adversarial loss", choices=GAN_MODES)
    pool_size: int = setting(50, "image pool size per direction; 0 disables it", minimum=0)
    lambda_a: float = setting(10.0, "weight of the cycle loss A -> B -> A", minimum=0.0)
    lambda_b: float = setting(10.0, "weight of the cycle loss B -> A -> B", minimum=0.0)
    lambda_identity: float = setting(
        0.5, "identity loss weight relative to the cycle weights (0 disables it)", minimum=0.0
    )
    lr: float = setting(2e-4, "initial Adam learning rate", above=0.0)
    beta1: float = setting(0.5, "Adam beta_1", minimum=0.0, below=1.0)
    lr_policy: str = setting(
        "linear",
        "learning-rate schedule: linear (constant for --n-epochs, then linear decay), step (x0.1 every "
        "--lr-decay-iters epochs), plateau (x0.2 after 5 epochs without a 1%% lower cycle loss), cosine "
        "(to 0 over --n-epochs)",
        choices=LR_POLICIES,
    )
    lr_decay_iters: int = setting(50, "epochs between the x0.1 steps of --lr-policy step", minimum=1)
    n_epochs: int = setting(100, "epochs at the initial learning rate", minimum=0)
    n_epochs_decay: int = setting(100, "epochs of linear decay to zero after that", minimum=0)
    epoch_count: int = setting(
        1,
        "the number of the first epoch, as the reference: trains epochs epoch_count .. n_epochs + "
        "n_epochs_decay, and the linear policy counts from it",
        minimum=1,
    )
    batch_size: int = setting(1, "images per domain in a batch (per replica)", minimum=1)
    serial_batches: bool = setting(
        False, "take the images in order (A[i], B[i]) instead of shuffled A and random B, as the reference"
    )
    load_size: int = setting(286, "resize images to this size first", minimum=1)
    crop_size: int = setting(256, "then crop to this size", minimum=1)
    preprocess: str = setting("resize_and_crop", "how images are resized and cropped", choices=PREPROCESS_MODES)
    no_flip: bool = setting(False, "no random horizontal flips")
    seed: int = setting(
        0, "seed of the initial weights, the data order and the augmentation", minimum=0, maximum=2**31 - 1
    )
    steps_per_epoch: int = setting(None, "cap an epoch at this many steps (at most one pass over the data)", minimum=1)
    checkpoint_every: int = setting(
        500, "also checkpoint every this many steps (epoch ends always); 0: epoch ends only", minimum=0
    )
    snapshot_every: int = setting(None, "also save a snapshot every this many steps", minimum=1)
    snapshot_every_epochs: int = setting(
        1, "save a snapshot (PNG and TensorBoard image) every this many epochs; 0: none", minimum=0
    )
    snapshot_count: int = setting(4, "image pairs in each snapshot", minimum=1)
    strict_data: bool = setting(
        False, "fail before training if any image file cannot be read (default: skip and report it)"
    )
    jit_compile: bool = setting(False, "compile the training step with XLA", flag="--xla")
    deterministic: bool = setting(False, "deterministic ops (slower; for bit-exact reruns)")
    strategy: str = setting(
        "auto",
        "auto, one_device, mirrored (all local GPUs), multi_worker (TF_CONFIG) or tpu; --batch-size is per replica",
        choices=STRATEGIES,
    )
    precision: str = setting(
        "float32",
        "float32, mixed_bfloat16 (TPU, recent GPUs, CPUs with AMX/AVX512-BF16) or mixed_float16 (GPUs)",
        choices=PRECISIONS,
    )
    eval_every: int = setting(
        0,
        "every this many epochs (and at the last), score the test split: FID/KID with Inception weights, "
        "PSNR/SSIM/MAE on the synthetic data; logged to log.csv and TensorBoard, best model kept as "
        "WORKDIR/best.keras; 0: off",
        minimum=0,
    )
    inception_weights: str = setting(
        None,
        "FID Inception weights for --eval-every (pytorch-fid's .pth or the TorchScript .pt; "
        "default: $CYCLEGAN_INCEPTION_WEIGHTS, then ~/.cache/cyclegan_keras/)",
        kind="inception_weights",
    )

    def __post_init__(self):
        def fail(message):
            raise ConfigError(message)

        for field in dataclasses.fields(self):
            error = check_value(field, getattr(self, field.name))
            if error:
                fail(error)
        if self.direction not in DIRECTIONS:
            fail(
                f"--direction must be one of {', '.join(DIRECTIONS)} (the command line also takes AtoB, BtoA). "
                f"Received: {self.direction!r}"
            )
        if (self.train_a is None) != (self.train_b is None):
            fail("--train-a and --train-b go together: give a folder for each domain")
        if self.n_epochs + self.n_epochs_decay < 1:
            fail("--n-epochs plus --n-epochs-decay must be at least 1")
        if self.epoch_count > self.n_epochs + self.n_epochs_decay:
            fail(
                f"--epoch-count {self.epoch_count} is past the last epoch (--n-epochs + --n-epochs-decay = "
                f"{self.n_epochs + self.n_epochs_decay})"
            )
        if self.lambda_identity > 0 and self.input_nc != self.output_nc:
            fail(
                f"The identity loss needs --input-nc equal to --output-nc ({self.input_nc} != "
                f"{self.output_nc}): add --lambda-identity 0"
            )
        try:
            preprocessing = self.preprocessing("A")
        except ValueError as error:
            fail(f"--preprocess/--load-size/--crop-size: {error}")
        # A few ms: the strides' truth. Built in a graph of its own, so no
        # eager op runs before a multi-worker strategy is made.
        import tensorflow as tf

        from cyclegan_keras import networks

        with tf.Graph().as_default():
            probe = networks.build_generator(self.generator, filters=1)
            multiple, smallest = networks.size_multiple(probe), networks.min_size(probe)
        if preprocessing.crops and (self.crop_size % multiple or self.crop_size < smallest):
            fail(
                f"--crop-size {self.crop_size} must be a multiple of {multiple} and at least {smallest} "
                f"for --generator {self.generator}. Try --crop-size "
                f"{max(smallest, self.crop_size // multiple * multiple)}"
            )

    @property
    def uses_folders(self):
        return self.dataroot is not None or self.train_a is not None

    @property
    def total_epochs(self):
        """Epochs this run trains: the reference's `epoch_count .. n_epochs + n_epochs_decay`."""
        return self.n_epochs + self.n_epochs_decay - (self.epoch_count - 1)

    def test_preprocessing(self, domain):
        """The reference's test-time transform for `domain`: as `preprocessing`, with
        `load_size = crop_size` and no flip (its TestOptions), so a resized image
        is shown whole. Snapshots and `--eval-every` use it."""
        return dataclasses.replace(self.preprocessing(domain), load_size=self.crop_size, flip=False)

    def preprocessing(self, domain):
        """`data.Preprocessing` for the model's domain "A" (input_nc channels) or "B" (output_nc)."""
        from cyclegan_keras import data  # imports TensorFlow

        channels = self.input_nc if domain == "A" else self.output_nc
        return data.Preprocessing(
            mode=self.preprocess,
            load_size=self.load_size,
            crop_size=self.crop_size,
            flip=not self.no_flip,
            channels=channels,
        )


def make_config(**given):
    """A `TrainConfig` from the settings a user gave (None means not given).

    On the synthetic dataset the settings of `SYNTHETIC_DEFAULTS` replace the
    paper's when not given, so `python train.py` finishes in minutes.
    """
    given = {key: value for key, value in given.items() if value is not None}
    folders = given.get("dataroot") or given.get("train_a")
    if given.get("dataset", "synthetic") == "synthetic" and not folders:
        given = {**SYNTHETIC_DEFAULTS, **given}
    return TrainConfig(**given)
