"""The authors' PyTorch generators (models/networks.py of
junyanz/pytorch-CycleGAN-and-pix2pix), trimmed to what conversion needs:
ResnetGenerator and UnetGenerator with instance norm, as published.

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
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=True)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), InstanceNorm(inner_nc)
        uprelu, upnorm = nn.ReLU(True), InstanceNorm(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=True)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=True)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64):
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)

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


if __name__ == "__main__":
    from pathlib import Path

    make_fixtures(Path(__file__).resolve().parent / "fixtures")
    print("wrote tests/fixtures/")
