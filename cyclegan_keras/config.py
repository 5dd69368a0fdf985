"""The settings of a training run and the package's vocabularies, importable without TensorFlow.

Each `TrainConfig` field carries its flag's help and accepted values: `cli.train` builds the
command line from them, and `TrainConfig.__post_init__` applies the same checks in Python.
"""

import argparse
import dataclasses
import math

# train.py --model: the methods of the authors' tools, sharing networks, data, loop and export.
MODELS = ("cyclegan", "cut", "fastcut", "pix2pix")
# The methods that learn from pairs (a2b only): their batches are pairs, cropped and flipped alike.
PAIRED_MODELS = ("pix2pix",)
# --dataset-mode: two sets of images (unpaired), A|B files split at the middle, two folders matched by name.
DATASET_MODES = ("unaligned", "aligned", "paired")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
DIRECTIONS = ("a2b", "b2a")
# The reference's spellings, in the command line (any case) and older runs' config.json.
LEGACY_DIRECTIONS = {"AtoB": "a2b", "BtoA": "b2a"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")
LR_POLICIES = ("linear", "step", "plateau", "cosine")
CHANNELS = (1, 3, 4)
# The names of the registries in `networks` (tests/test_train_cli.py keeps them equal).
GENERATORS = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128", "unet_64")
DISCRIMINATORS = ("basic", "n_layers", "pixel")
# What each generator needs of an input side: (a multiple of, at least); see tests/test_networks.py.
RESNET_BLOCKS = {"resnet_9blocks": 9, "resnet_6blocks": 6}
GENERATOR_SIZES = {
    "resnet_9blocks": (4, 8),
    "resnet_6blocks": (4, 8),
    "unet_256": (256, 256),
    "unet_128": (128, 128),
    "unet_64": (64, 64),
}
NORMS = ("instance", "batch", "none")
GAN_MODES = ("lsgan", "vanilla", "wgangp")
PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
# translate.py --preprocess: native size, or the reference's test.py resize to DEFAULT_LOAD_SIZE.
INFERENCE_PREPROCESS = ("none", "resize")
DEFAULT_LOAD_SIZE = 256
# translate.py/evaluate.py/export.py --batch-norm: the running statistics (the reference's test.py --eval)
# or each image's own (its default, batch size 1), see networks.with_image_statistics.
BATCH_NORM_MODES = ("running", "image")
# evaluate.py --resize-mode: the Inception input pipelines of pytorch-fid and clean-fid.
RESIZE_MODES = ("pytorch-fid", "clean")
TFDS_CONFIGS = (
    "apple2orange",
    "summer2winter_yosemite",
    "horse2zebra",
    "monet2photo",
    "cezanne2photo",
    "ukiyoe2photo",
    "vangogh2photo",
    "maps",
    "facades",
    "iphone2dslr_flower",
)
DATASETS = ("synthetic", *TFDS_CONFIGS)
# export.py --max-pixels: pixels summed over one SavedModel request; see bench/serving_memory.py.
SERVING_MAX_PIXELS = 2048 * 2048
# config.json keys of earlier versions -> today's names.
RENAMED_SETTINGS = {"jit_compile": "xla"}
EXPORT_PRECISIONS = ("float32", "mixed_bfloat16")
TFLITE_VARIANTS = ("float32", "float16", "dynamic", "int8")
EXPORT_ALIASES = {"bfloat16": "mixed_bfloat16", "none": "float32"}
# export.py --onnx: the optional packages (convert, name the axes, verify) and how to install them.
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")
ONNX_INSTALL = "pip install 'cyclegan-keras[onnx]'"

# `python train.py` on the synthetic dataset: minutes on a laptop CPU. Only for settings not given.
SYNTHETIC_DEFAULTS = dict(
    generator="resnet_6blocks", ngf=32, ndf=32, load_size=72, crop_size=64, n_epochs=3, n_epochs_decay=2
)

# CUT's settings (taesungp/contrastive-unpaired-translation), for --model cut and fastcut.
CUT_SETTINGS = (
    "lambda_nce",
    "nce_idt",
    "nce_layers",
    "num_patches",
    "nce_t",
    "netf_nc",
    "flip_equivariance",
    "nce_includes_all_negatives_from_minibatch",
    "no_antialias",
    "no_antialias_up",
)
# The settings only some methods read, by method; one given to another method is refused.
MODEL_SETTINGS = {
    "cyclegan": ("pool_size", "lambda_a", "lambda_b", "lambda_identity"),
    "cut": CUT_SETTINGS,
    "fastcut": CUT_SETTINGS,
    "pix2pix": ("lambda_l1",),
}
# Each method's own defaults (its reference's) for settings not given; the field defaults are CycleGAN's
# (and, for CUT's own settings, its parser's). CUT's --CUT_mode sets the two of CUT and FastCUT.
MODEL_DEFAULTS = {
    "cyclegan": {},
    "cut": dict(init_type="xavier", lambda_nce=1.0, nce_idt=True, n_epochs=200, n_epochs_decay=200),
    "fastcut": dict(
        init_type="xavier", lambda_nce=10.0, nce_idt=False, flip_equivariance=True, n_epochs=150, n_epochs_decay=50
    ),
    "pix2pix": dict(
        generator="unet_256",
        norm="batch",
        dropout=True,
        gan_mode="vanilla",
        dataset_mode="aligned",
        n_epochs=100,
        n_epochs_decay=100,
    ),
}
# SYNTHETIC_DEFAULTS' exceptions by method: pix2pix keeps a U-Net, one whose 1x1 bottleneck fits 64x64.
SYNTHETIC_MODEL_DEFAULTS = {"pix2pix": dict(generator="unet_64")}
# The ResNet generator's layers CUT's PatchNCE reads by default (the reference's numbering).
NCE_LAYERS = "0,4,8,12,16"


class ConfigError(ValueError):
    """A setting the user gave is invalid; the message names the flag."""


def parse_layers(text):
    """CUT's `--nce_layers`, e.g. "0,4,8,12,16", as a tuple of increasing non-negative ints.

    Raises:
        ValueError: not such a list.
    """
    try:
        layers = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        layers = ()
    if not layers or min(layers) < 0 or list(layers) != sorted(set(layers)):
        raise ValueError(f"must be increasing layer indexes separated by commas, e.g. {NCE_LAYERS}. Received: {text!r}")
    return layers


@dataclasses.dataclass(frozen=True, repr=False)
class Range:
    """The numbers a setting accepts (`minimum`/`maximum` inclusive, `above`/`below` exclusive); an argparse type."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    integer: bool = True

    def __str__(self):
        signs = ((">=", self.minimum), (">", self.above), ("<=", self.maximum), ("<", self.below))
        bounds = " and ".join(f"{sign} {value}" for sign, value in signs if value is not None)
        return f"{'an integer' if self.integer else 'a finite number'} {bounds}"

    __repr__ = __str__  # argparse names the type in some messages

    def __contains__(self, value):
        return (self.integer or math.isfinite(value)) and not (
            (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        )

    def __call__(self, text):
        try:
            value = (int if self.integer else float)(text)
        except ValueError:
            value = None
        if value is None or value not in self:
            raise argparse.ArgumentTypeError(f"must be {self}. Received: {text!r}")
        return value


def setting(default, help, choices=None, minimum=None, maximum=None, above=None, below=None, kind=None):
    """A `TrainConfig` field with its flag's help and accepted values (`kind`: a key of `cli.train.KIND_TYPES`)."""
    bounds = dict(minimum=minimum, maximum=maximum, above=above, below=below)
    bounds = {key: value for key, value in bounds.items() if value is not None}
    return dataclasses.field(default=default, metadata=dict(help=help, choices=choices, bounds=bounds, kind=kind))


def flag_name(field):
    """The command-line flag of a `TrainConfig` field (`--lambda-a`)."""
    return "--" + field.name.replace("_", "-")


def value_range(field):
    """The `Range` of a numeric field, or None when it has no bounds."""
    bounds = field.metadata["bounds"]
    return Range(**bounds, integer=field.type in (int, "int")) if bounds else None


def check_value(field, value):
    """An error message if `value` is outside what `field` accepts, else None (None values pass)."""
    choices, accepted = field.metadata["choices"], value_range(field)
    if value is None:
        return None
    if choices is not None and value not in choices:
        allowed = "one of " + ", ".join(str(c) for c in choices)
    elif accepted is not None and value not in accepted:
        allowed = accepted
    else:
        return None
    return f"{flag_name(field)} must be {allowed}. Received: {value!r}"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images become training tensors: the reference's `--preprocess` modes (`PREPROCESS_MODES`).

    Crops are random in training, centred at test time; images smaller than the crop are scaled
    up; `none` rounds the sides to a multiple of 4. Resizing is bicubic, antialiased as PIL's.
    """

    mode: str = "resize_and_crop"
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True
    channels: int = 3

    def __post_init__(self):
        if self.mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}. Received: {self.mode!r}")
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be 1, 3 or 4. Received: channels={self.channels}")
        if self.load_size < 1 or self.crop_size < 1:
            raise ValueError(f"load_size and crop_size must be positive. Received: {self.load_size}, {self.crop_size}")
        if self.mode in ("resize_and_crop", "scale_width_and_crop") and self.crop_size > self.load_size:
            raise ValueError(
                f"crop_size ({self.crop_size}) cannot be larger than load_size ({self.load_size}) "
                f"with preprocess {self.mode!r}"
            )

    @property
    def crops(self):
        return self.mode in ("resize_and_crop", "crop", "scale_width_and_crop")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; defaults are the paper's, each field's help says what it does.

    Raises:
        ConfigError: a setting out of range, or settings that contradict each other.
    """

    model: str = setting(
        "cyclegan",
        "the method: cyclegan (unpaired, both directions), cut or fastcut (unpaired, one direction: "
        "contrastive unpaired translation, the reference's --model cut --CUT_mode CUT/FastCUT), pix2pix "
        "(pairs, the one direction of --direction)",
        choices=MODELS,
    )
    dataset: str = setting(
        "synthetic",
        "'synthetic' (built in, no download) or a tfds cycle_gan config: horse2zebra, monet2photo, ...",
        choices=DATASETS,
    )
    dataroot: str = setting(
        None,
        "folder in the reference layout: trainA/, trainB/ (and testA/, testB/ for snapshots), or with "
        "--dataset-mode aligned train/ (and test/ or val/)",
        kind="dataroot",
    )
    dataset_mode: str = setting(
        "unaligned",
        "unaligned: two sets of images; aligned: each file of --dataroot's train/ holds A | B side by side "
        "(pix2pix's datasets); paired: two folders of pairs matched by file name (--train-a/--train-b, or "
        "--dataroot's trainA/, trainB/); on the synthetic data, aligned and paired give pairs",
        choices=DATASET_MODES,
    )
    train_a: str = setting(
        None,
        "folder of domain A images (with --train-b), instead of --dataroot; for --model pix2pix, pairs matched by name",
        kind="image_folder",
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
        choices=DIRECTIONS,
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
    lambda_l1: float = setting(100.0, "weight of the L1 loss |G(a) - b| to the pair's target", minimum=0.0)
    lambda_nce: float = setting(1.0, "weight of CUT's PatchNCE loss (0: the GAN loss alone)", minimum=0.0)
    nce_idt: bool = setting(False, "add PatchNCE between G(b) and b (the identity term), averaged with the main one")
    nce_layers: str = setting(
        NCE_LAYERS, "the generator's layers PatchNCE compares, in the reference's numbering", kind="layers"
    )
    num_patches: int = setting(256, "locations sampled per layer for PatchNCE", minimum=1)
    nce_t: float = setting(0.07, "PatchNCE's temperature", above=0.0)
    netf_nc: int = setting(256, "width of the MLP head over the features (the reference's --netF_nc)", minimum=1)
    flip_equivariance: bool = setting(False, "flip the batch left-right at random before G and its query features back")
    nce_includes_all_negatives_from_minibatch: bool = setting(
        False, "PatchNCE's negatives from every image of the batch, not only the query's own"
    )
    no_antialias: bool = setting(False, "stride-2 convolutions instead of CUT's blurred Downsample")
    no_antialias_up: bool = setting(False, "transposed convolutions instead of CUT's blurred Upsample and a conv")
    lr: float = setting(2e-4, "initial Adam learning rate", above=0.0)
    beta1: float = setting(0.5, "Adam beta_1", minimum=0.0, below=1.0)
    lr_policy: str = setting(
        "linear",
        "learning-rate schedule: linear (constant for --n-epochs, then linear decay), step (x0.1 every "
        "--lr-decay-iters epochs), plateau (x0.2 after 5 epochs without a 1%% lower cycle loss, CUT: NCE loss), cosine "
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
    xla: bool = setting(False, "compile the training step with XLA (Keras's jit_compile)")
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
        for field in dataclasses.fields(self):
            error = check_value(field, getattr(self, field.name))
            if error:
                raise ConfigError(error)
        foreign = [field for field in dataclasses.fields(self) if _refused(field.name, self.model)]
        for field in foreign:
            if getattr(self, field.name) != field.default:
                raise ConfigError(_refusal(field.name, self.model))
        if (self.train_a is None) != (self.train_b is None):
            raise ConfigError("--train-a and --train-b go together: give a folder for each domain")
        self._check_dataset_mode()
        if self.n_epochs + self.n_epochs_decay < 1:
            raise ConfigError("--n-epochs plus --n-epochs-decay must be at least 1")
        if self.epoch_count > self.n_epochs + self.n_epochs_decay:
            raise ConfigError(
                f"--epoch-count {self.epoch_count} is past the last epoch (--n-epochs + --n-epochs-decay = "
                f"{self.n_epochs + self.n_epochs_decay})"
            )
        if self.model == "cyclegan" and self.lambda_identity > 0 and self.input_nc != self.output_nc:
            raise ConfigError(
                f"The identity loss needs --input-nc equal to --output-nc ({self.input_nc} != "
                f"{self.output_nc}): add --lambda-identity 0"
            )
        if self.model in ("cut", "fastcut"):
            self._check_cut()
        try:
            preprocessing = self.preprocessing("A")
        except ValueError as error:
            raise ConfigError(f"--preprocess/--load-size/--crop-size: {error}") from None
        multiple, smallest = GENERATOR_SIZES[self.generator]
        if preprocessing.crops and (self.crop_size % multiple or self.crop_size < smallest):
            raise ConfigError(
                f"--crop-size {self.crop_size} must be a multiple of {multiple} and at least {smallest} "
                f"for --generator {self.generator}. Try --crop-size "
                f"{max(smallest, self.crop_size // multiple * multiple)}"
            )

    def _check_dataset_mode(self):
        tfds = self.dataset != "synthetic" and not self.uses_folders
        if self.model in PAIRED_MODELS and self.dataset_mode == "unaligned":
            raise ConfigError(
                f"--model {self.model} learns from pairs: --dataset-mode aligned (A|B files in --dataroot's "
                "train/) or paired (two folders matched by name)"
            )
        if tfds and self.dataset_mode != "unaligned":
            raise ConfigError(
                f"--dataset {self.dataset} has no pairs: tensorflow-datasets (4.9.10) has no pix2pix dataset, "
                "and its cycle_gan images carry no file names to pair them by. Download the authors' pix2pix "
                "dataset (e.g. http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz) and give "
                "its folder: --dataroot facades/"
            )
        if self.dataset_mode == "aligned" and self.train_a is not None:
            raise ConfigError(
                "--dataset-mode aligned reads A|B files from --dataroot's train/; --train-a/--train-b are two "
                "folders: use --dataset-mode paired"
            )

    def _check_cut(self):
        if self.generator not in RESNET_BLOCKS:
            raise ConfigError(
                f"--generator {self.generator} cannot be used with --model {self.model}: PatchNCE reads the "
                "encoder layers of the ResNet generator (resnet_9blocks, resnet_6blocks), as the reference"
            )
        try:
            layers = parse_layers(self.nce_layers)
        except ValueError as error:
            raise ConfigError(f"--nce-layers {error}") from None
        available = resnet_layer_count(RESNET_BLOCKS[self.generator], self.no_antialias, self.no_antialias_up)
        if layers[-1] >= available:
            raise ConfigError(
                f"--nce-layers {self.nce_layers}: --generator {self.generator} has layers 0..{available - 1} "
                "in the reference's numbering"
            )
        if self.nce_idt and self.lambda_nce > 0 and self.input_nc != self.output_nc:
            raise ConfigError(
                f"--nce-idt translates B images, so it needs --input-nc equal to --output-nc ({self.input_nc} != "
                f"{self.output_nc}): add --no-nce-idt"
            )

    @property
    def uses_folders(self):
        return self.dataroot is not None or self.train_a is not None

    @property
    def total_epochs(self):
        """Epochs this run trains: the reference's `epoch_count .. n_epochs + n_epochs_decay`."""
        return self.n_epochs + self.n_epochs_decay - (self.epoch_count - 1)

    def test_preprocessing(self, domain):
        """The reference's test-time `preprocessing` (its TestOptions): `load_size = crop_size`, no flip."""
        return dataclasses.replace(self.preprocessing(domain), load_size=self.crop_size, flip=False)

    def preprocessing(self, domain):
        """The `Preprocessing` of the model's domain "A" (input_nc channels) or "B" (output_nc)."""
        channels = self.input_nc if domain == "A" else self.output_nc
        return Preprocessing(
            mode=self.preprocess,
            load_size=self.load_size,
            crop_size=self.crop_size,
            flip=not self.no_flip,
            channels=channels,
        )


def resnet_layer_count(n_blocks, no_antialias=False, no_antialias_up=False):
    """Modules in the reference's `ResnetGenerator.model` (CUT's), what --nce-layers indexes."""
    return 4 + 2 * (3 if no_antialias else 4) + n_blocks + 2 * (3 if no_antialias_up else 4) + 3


def _refused(name, model):
    """Whether setting `name` belongs to methods other than `model` only."""
    return name not in MODEL_SETTINGS[model] and any(name in names for names in MODEL_SETTINGS.values())


def _refusal(name, model):
    owners = [other for other, names in MODEL_SETTINGS.items() if name in names]
    flag = "--" + name.replace("_", "-")
    return f"{flag} means nothing for --model {model}: it is a setting of --model {', '.join(owners)}"


def make_config(**given):
    """A `TrainConfig` from the settings given (None: not given) over the method's defaults.

    Precedence: the settings given, then `SYNTHETIC_DEFAULTS` (and the method's
    `SYNTHETIC_MODEL_DEFAULTS`) on the synthetic data, then `MODEL_DEFAULTS` of the method (whose
    `aligned` mode is `paired` for --train-a/--train-b), then the field defaults.

    Raises:
        ConfigError: a setting of another method was given, or a setting is invalid.
    """
    given = {RENAMED_SETTINGS.get(key, key): value for key, value in given.items() if value is not None}
    model = given.get("model", "cyclegan")
    if model not in MODELS:
        raise ConfigError(f"--model must be one of {', '.join(MODELS)}. Received: {model!r}")
    foreign = [name for name in given if _refused(name, model)]
    if foreign:
        raise ConfigError(_refusal(foreign[0], model))
    folders = given.get("dataroot") or given.get("train_a")
    synthetic = {}
    if given.get("dataset", "synthetic") == "synthetic" and not folders:
        synthetic = {**SYNTHETIC_DEFAULTS, **SYNTHETIC_MODEL_DEFAULTS.get(model, {})}
    defaults = dict(MODEL_DEFAULTS[model])
    if given.get("train_a") and defaults.get("dataset_mode") == "aligned":
        defaults["dataset_mode"] = "paired"  # two folders can only be pairs by name
    return TrainConfig(**{**defaults, **synthetic, **given})


def upgrade_settings(found):
    """The settings of an earlier version's config.json in today's names, with defaults for those added since."""
    found = {RENAMED_SETTINGS.get(key, key): value for key, value in found.items()}
    found = {**{field.name: field.default for field in dataclasses.fields(TrainConfig)}, **found}
    found["direction"] = LEGACY_DIRECTIONS.get(found["direction"], found["direction"])
    return found
