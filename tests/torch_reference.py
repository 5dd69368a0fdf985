"""The authors' PyTorch generators (models/networks.py of
junyanz/pytorch-CycleGAN-and-pix2pix), trimmed to what conversion needs:
ResnetGenerator and UnetGenerator with instance norm, as the CycleGAN models
are published, and UnetGenerator with batch norm and dropout, as the pix2pix
ones are (`--norm batch`: no conv bias before a norm).

Imported only where torch is installed: by `make_torch_fixtures.py` and by
the full-size parity test. Run `python tests/torch_reference.py` (with torch)
to rebuild the fixtures in tests/fixtures/.
"""

import functools

import torch
from torch import nn

InstanceNorm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim, use_dropout):
        super().__init__()
        block = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), InstanceNorm(dim), nn.ReLU(True)]
        if use_dropout:
            block += [nn.Dropout(0.5)]
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), InstanceNorm(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, n_blocks=9, use_dropout=False):
        super().__init__()
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=True), InstanceNorm(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            model += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                InstanceNorm(ngf * mult * 2),
                nn.ReLU(True),
            ]
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * 4, use_dropout)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=True),
                InstanceNorm(ngf * mult // 2),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    def __init__(
        self,
        outer_nc,
        inner_nc,
        input_nc=None,
        submodule=None,
        outermost=False,
        innermost=False,
        norm_layer=InstanceNorm,
        use_dropout=False,
    ):
        super().__init__()
        self.outermost = outermost
        use_bias = norm_layer is InstanceNorm
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=use_bias)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), norm_layer(inner_nc)
        uprelu, upnorm = nn.ReLU(True), norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model += [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=InstanceNorm, use_dropout=False):
        super().__init__()
        norm = dict(norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, **norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout, **norm)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, **norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, **norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, **norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, **norm)

    def forward(self, x):
        return self.model(x)


def init_weights(net, seed):
    """The reference's init_weights('normal', 0.02), seeded."""
    torch.manual_seed(seed)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                # The reference sets biases to 0; random ones test the bias mapping too.
                nn.init.normal_(module.bias, 0.0, 0.02)
    return net.eval()


def reference_output(net, images):
    """Runs `net` on NHWC float32 numpy images; returns NHWC numpy."""
    import numpy as np

    with torch.no_grad():
        output = net(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
    return output.numpy().transpose(0, 2, 3, 1)


def make_fixtures(folder):
    """Tiny generators as .pth (zip and legacy format) with reference outputs."""
    from pathlib import Path

    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 32, 64, 3)).astype("float32")
    nets = {
        "resnet_tiny": init_weights(ResnetGenerator(3, 3, ngf=4, n_blocks=2), seed=1),
        "unet_tiny": init_weights(UnetGenerator(3, 3, num_downs=5, ngf=4), seed=2),
    }
    arrays = {"input": images}
    for name, net in nets.items():
        torch.save(net.state_dict(), folder / f"{name}.pth")
        torch.save(net.state_dict(), folder / f"{name}_legacy.pth", _use_new_zipfile_serialization=False)
        arrays[name] = reference_output(net, images)
    np.savez_compressed(folder / "torch_reference_outputs.npz", **arrays)


def randomize_batch_norms(net, seed):
    """Gamma, beta and running statistics away from their initial values, so that a mix-up shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.weight.shape
            with torch.no_grad():
                module.weight.copy_(1.0 + 0.2 * torch.randn(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.num_batches_tracked.fill_(7)
    return net


def image_statistics_output(net, images):
    """The reference's test.py without `--eval` (batch size 1), dropout aside: each image normalized by its own
    batch-norm statistics. Runs on a copy: train mode would move the running statistics."""
    import copy

    import numpy as np

    net = copy.deepcopy(net).train()
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    return np.concatenate([reference_output(net, image[None]) for image in images])


def make_batchnorm_fixtures(folder):
    """A tiny pix2pix generator (U-Net, batch norm, dropout) as .pth with eval- and train-mode outputs."""
    from pathlib import Path

    import numpy as np

    folder = Path(folder)
    images = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    net = UnetGenerator(3, 3, num_downs=6, ngf=4, norm_layer=nn.BatchNorm2d, use_dropout=True)
    net = randomize_batch_norms(init_weights(net, seed=4), seed=5)
    with torch.no_grad():  # outputs of about 0.3, not 0.01: a mapping error must show against them
        net.model.model[3].weight.mul_(20.0)
    torch.save(net.state_dict(), folder / "unet_batchnorm_tiny.pth")
    torch.save(net.state_dict(), folder / "unet_batchnorm_tiny_legacy.pth", _use_new_zipfile_serialization=False)
    np.savez_compressed(
        folder / "torch_reference_batchnorm.npz",
        input=images,
        running_statistics=reference_output(net, images),
        image_statistics=image_statistics_output(net, images),
    )


if __name__ == "__main__":
    import sys
    from pathlib import Path

    fixtures = Path(__file__).resolve().parent / "fixtures"
    # `batchnorm` rebuilds only the pix2pix fixture, leaving the others' bytes as committed.
    if sys.argv[1:] != ["batchnorm"]:
        make_fixtures(fixtures)
    make_batchnorm_fixtures(fixtures)
    print("wrote tests/fixtures/")
