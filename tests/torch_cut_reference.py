"""The CUT authors' PyTorch code (taesungp/contrastive-unpaired-translation: models/networks.py,
models/patchnce.py, models/cut_model.py), trimmed to what parity needs: the anti-aliased
`Downsample`/`Upsample`, `ResnetGenerator` with its `layers`/`encode_only` forward, `PatchSampleF`
(mlp_sample) and `PatchNCELoss`, with instance norm as CUT trains.

Imported only where torch is installed. Run `python tests/torch_cut_reference.py` (with torch) to
rebuild the fixtures in tests/fixtures/ (cut_*.pth, cut_reference.npz).
"""

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

InstanceNorm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)


def get_filter(filt_size=3):
    a = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}
    a = np.array(a[filt_size])
    filt = torch.Tensor(a[:, None] * a[None, :])
    return filt / torch.sum(filt)


def get_pad_layer(pad_type):
    return {"reflect": nn.ReflectionPad2d, "repl": nn.ReplicationPad2d, "zero": nn.ZeroPad2d}[pad_type]


class Downsample(nn.Module):
    def __init__(self, channels, pad_type="reflect", filt_size=3, stride=2, pad_off=0):
        super().__init__()
        self.filt_size = filt_size
        self.pad_sizes = [
            int(1.0 * (filt_size - 1) / 2),
            int(np.ceil(1.0 * (filt_size - 1) / 2)),
            int(1.0 * (filt_size - 1) / 2),
            int(np.ceil(1.0 * (filt_size - 1) / 2)),
        ]
        self.pad_sizes = [pad_size + pad_off for pad_size in self.pad_sizes]
        self.stride = stride
        self.channels = channels
        filt = get_filter(filt_size=self.filt_size)
        self.register_buffer("filt", filt[None, None, :, :].repeat((self.channels, 1, 1, 1)))
        self.pad = get_pad_layer(pad_type)(self.pad_sizes)

    def forward(self, inp):
        return F.conv2d(self.pad(inp), self.filt, stride=self.stride, groups=inp.shape[1])


class Upsample(nn.Module):
    def __init__(self, channels, pad_type="repl", filt_size=4, stride=2):
        super().__init__()
        self.filt_size = filt_size
        self.filt_odd = np.mod(filt_size, 2) == 1
        self.pad_size = int((filt_size - 1) / 2)
        self.stride = stride
        self.channels = channels
        filt = get_filter(filt_size=self.filt_size) * (stride**2)
        self.register_buffer("filt", filt[None, None, :, :].repeat((self.channels, 1, 1, 1)))
        self.pad = get_pad_layer(pad_type)([1, 1, 1, 1])

    def forward(self, inp):
        ret_val = F.conv_transpose2d(
            self.pad(inp), self.filt, stride=self.stride, padding=1 + self.pad_size, groups=inp.shape[1]
        )[:, :, 1:, 1:]
        return ret_val if self.filt_odd else ret_val[:, :, :-1, :-1]


class ResnetBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        block = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), InstanceNorm(dim), nn.ReLU(True)]
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), InstanceNorm(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, n_blocks=9, no_antialias=False, no_antialias_up=False):
        super().__init__()
        norm_layer = InstanceNorm
        model = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, padding=0, bias=True),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            mult = 2**i
            if no_antialias:
                model += [
                    nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                    norm_layer(ngf * mult * 2),
                    nn.ReLU(True),
                ]
            else:
                model += [
                    nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=1, padding=1, bias=True),
                    norm_layer(ngf * mult * 2),
                    nn.ReLU(True),
                    Downsample(ngf * mult * 2),
                ]
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * 4)]
        for i in range(2):
            mult = 2 ** (2 - i)
            if no_antialias_up:
                model += [
                    nn.ConvTranspose2d(
                        ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=True
                    ),
                    norm_layer(ngf * mult // 2),
                    nn.ReLU(True),
                ]
            else:
                model += [
                    Upsample(ngf * mult),
                    nn.Conv2d(ngf * mult, ngf * mult // 2, 3, stride=1, padding=1, bias=True),
                    norm_layer(ngf * mult // 2),
                    nn.ReLU(True),
                ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, input, layers=(), encode_only=False):
        layers = list(layers)
        if len(layers) > 0:
            feat = input
            feats = []
            for layer_id, layer in enumerate(self.model):
                feat = layer(feat)
                if layer_id in layers:
                    feats.append(feat)
                if layer_id == layers[-1] and encode_only:
                    return feats
            return feat, feats
        return self.model(input)


class Normalize(nn.Module):
    def __init__(self, power=2):
        super().__init__()
        self.power = power

    def forward(self, x):
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1.0 / self.power)
        return x.div(norm + 1e-7)


class PatchSampleF(nn.Module):
    """`mlp_sample`; the MLPs are made from the first features seen, as the reference's `create_mlp`."""

    def __init__(self, nc=256):
        super().__init__()
        self.l2norm = Normalize(2)
        self.nc = nc
        self.mlp_init = False

    def create_mlp(self, feats):
        for mlp_id, feat in enumerate(feats):
            input_nc = feat.shape[1]
            mlp = nn.Sequential(*[nn.Linear(input_nc, self.nc), nn.ReLU(), nn.Linear(self.nc, self.nc)])
            setattr(self, "mlp_%d" % mlp_id, mlp)
        self.mlp_init = True

    def forward(self, feats, num_patches=64, patch_ids=None):
        return_ids = []
        return_feats = []
        if not self.mlp_init:
            self.create_mlp(feats)
        for feat_id, feat in enumerate(feats):
            feat_reshape = feat.permute(0, 2, 3, 1).flatten(1, 2)
            if patch_ids is not None:
                patch_id = patch_ids[feat_id]
            else:
                patch_id = np.random.permutation(feat_reshape.shape[1])
                patch_id = patch_id[: int(min(num_patches, patch_id.shape[0]))]
            patch_id = torch.as_tensor(patch_id, dtype=torch.long, device=feat.device)
            x_sample = feat_reshape[:, patch_id, :].flatten(0, 1)
            mlp = getattr(self, "mlp_%d" % feat_id)
            x_sample = mlp(x_sample)
            return_ids.append(patch_id)
            return_feats.append(self.l2norm(x_sample))
        return return_feats, return_ids


class PatchNCELoss(nn.Module):
    """`patchnce.py`; `detach_key=False` lets the parity fixture take the gradient through the key too."""

    def __init__(self, batch_size, nce_T=0.07, nce_includes_all_negatives_from_minibatch=False, detach_key=True):
        super().__init__()
        self.batch_size = batch_size
        self.nce_T = nce_T
        self.all_negatives = nce_includes_all_negatives_from_minibatch
        self.detach_key = detach_key
        self.cross_entropy_loss = torch.nn.CrossEntropyLoss(reduction="none")

    def forward(self, feat_q, feat_k):
        num_patches = feat_q.shape[0]
        dim = feat_q.shape[1]
        if self.detach_key:
            feat_k = feat_k.detach()
        l_pos = torch.bmm(feat_q.view(num_patches, 1, -1), feat_k.view(num_patches, -1, 1))
        l_pos = l_pos.view(num_patches, 1)
        batch_dim_for_bmm = 1 if self.all_negatives else self.batch_size
        feat_q = feat_q.view(batch_dim_for_bmm, -1, dim)
        feat_k = feat_k.view(batch_dim_for_bmm, -1, dim)
        npatches = feat_q.size(1)
        l_neg_curbatch = torch.bmm(feat_q, feat_k.transpose(2, 1))
        diagonal = torch.eye(npatches, device=feat_q.device, dtype=torch.bool)[None, :, :]
        l_neg_curbatch.masked_fill_(diagonal, -10.0)
        l_neg = l_neg_curbatch.view(-1, npatches)
        out = torch.cat((l_pos, l_neg), dim=1) / self.nce_T
        return self.cross_entropy_loss(out, torch.zeros(out.size(0), dtype=torch.long, device=feat_q.device))


def calculate_nce_loss(netF, feat_q, feat_k, criterion, num_patches, lambda_nce, sample_ids=None):
    """`CUTModel.calculate_NCE_loss` from the encoder features (without flips): the mean over layers."""
    feat_k_pool, sample_ids = netF(feat_k, num_patches, sample_ids)
    feat_q_pool, _ = netF(feat_q, num_patches, sample_ids)
    total = 0.0
    for f_q, f_k in zip(feat_q_pool, feat_k_pool):
        total += (criterion(f_q, f_k) * lambda_nce).mean()
    return total / len(feat_q)


def init_weights(net, seed):
    """Seeded weights: N(0, 0.02) kernels and (unlike the reference's zeros) random biases, to test their mapping."""
    torch.manual_seed(seed)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, 0.02 if not isinstance(module, nn.Linear) else 0.2)
            if module.bias is not None:
                nn.init.normal_(module.bias, 0.0, 0.02)
    return net.eval()


def nchw(images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def nhwc(tensor):
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


NCE_LAYERS = (0, 4, 8, 12, 16)


def make_fixtures(folder):
    """Tiny anti-aliased generators as .pth with their outputs and NCE features, and PatchNCE cases."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 32, 40, 3)).astype("float32")
    arrays = {"input": images}
    nets = {
        "cut_tiny": ResnetGenerator(3, 3, ngf=4, n_blocks=2),
        "cut_tiny_no_antialias_up": ResnetGenerator(3, 3, ngf=4, n_blocks=2, no_antialias_up=True),
        "cut_tiny_no_antialias": ResnetGenerator(3, 3, ngf=4, n_blocks=2, no_antialias=True),
    }
    for seed, (name, net) in enumerate(nets.items()):
        init_weights(net, seed=10 + seed)
        torch.save(net.state_dict(), folder / f"{name}.pth")
        with torch.no_grad():
            arrays[name] = nhwc(net(nchw(images)))
            if name != "cut_tiny":
                continue
            for layer, feature in zip(NCE_LAYERS, net(nchw(images), NCE_LAYERS, encode_only=True)):
                arrays[f"{name}_layer{layer}"] = nhwc(feature)
    # The layers on their own, odd sizes included.
    odd = rng.normal(size=(2, 7, 10, 3)).astype("float32")
    arrays["blur_input"] = odd
    with torch.no_grad():
        arrays["downsample"] = nhwc(Downsample(3)(nchw(odd)))
        arrays["upsample"] = nhwc(Upsample(3)(nchw(odd)))

    # PatchNCE + PatchSampleF on fixed features and fixed sample ids, batch 2: three layers with
    # channels 3, 8, 16; the last has fewer locations (16) than num_patches (20) asks.
    shapes = [(3, 10, 9), (8, 6, 5), (16, 4, 4)]
    num_patches = 20
    feat_q = [rng.normal(size=(2, *shape)).astype("float32") for shape in shapes]
    feat_k = [rng.normal(size=(2, *shape)).astype("float32") for shape in shapes]
    ids = [rng.permutation(h * w)[: min(num_patches, h * w)] for _, h, w in shapes]
    net_f = PatchSampleF(nc=8)
    net_f.create_mlp([torch.from_numpy(f) for f in feat_q])
    init_weights(net_f, seed=20)
    cases = {"num_patches": np.int64(num_patches), "nce_t": np.float32(0.07)}
    for layer, (q, k, i) in enumerate(zip(feat_q, feat_k, ids)):
        cases[f"feat_q{layer}"] = q.transpose(0, 2, 3, 1)
        cases[f"feat_k{layer}"] = k.transpose(0, 2, 3, 1)
        cases[f"ids{layer}"] = i
        mlp = getattr(net_f, f"mlp_{layer}")
        cases[f"mlp{layer}_dense0_kernel"] = mlp[0].weight.detach().numpy().T
        cases[f"mlp{layer}_dense0_bias"] = mlp[0].bias.detach().numpy()
        cases[f"mlp{layer}_dense1_kernel"] = mlp[2].weight.detach().numpy().T
        cases[f"mlp{layer}_dense1_bias"] = mlp[2].bias.detach().numpy()
    for all_negatives in (False, True):
        q = [torch.tensor(f, requires_grad=True) for f in feat_q]
        k = [torch.tensor(f, requires_grad=True) for f in feat_k]
        criterion = PatchNCELoss(2, 0.07, all_negatives, detach_key=False)
        loss = calculate_nce_loss(net_f, q, k, criterion, num_patches, 1.0, [torch.tensor(i) for i in ids])
        loss.backward()
        suffix = "_all" if all_negatives else ""
        cases[f"loss{suffix}"] = np.float32(loss.item())
        for layer in range(len(shapes)):
            cases[f"grad_q{layer}{suffix}"] = q[layer].grad.numpy().transpose(0, 2, 3, 1)
            cases[f"grad_k{layer}{suffix}"] = k[layer].grad.numpy().transpose(0, 2, 3, 1)
        # The reference's own loss (the key detached) has the same value.
        plain = [[torch.tensor(f) for f in feats] for feats in (feat_q, feat_k)]
        detached = PatchNCELoss(2, 0.07, all_negatives)
        same = calculate_nce_loss(net_f, *plain, detached, num_patches, 1.0, [torch.tensor(i) for i in ids])
        assert abs(same.item() - loss.item()) < 1e-7
    np.savez_compressed(folder / "cut_reference.npz", **arrays, **{f"nce_{key}": value for key, value in cases.items()})


if __name__ == "__main__":
    from pathlib import Path

    make_fixtures(Path(__file__).resolve().parent / "fixtures")
    print("wrote tests/fixtures/cut_*")
