"""The authors' PyTorch code on the synthetic task of `learning_comparison.py`: how far its CycleGAN, CUT and
FastCUT move G(a) towards the true mapping in the same steps, to read ours against.

The reference is taesungp/contrastive-unpaired-translation (its `cut` model in both modes, and its
`cycle_gan` model with CycleGAN's own settings: N(0, 0.02) init, no anti-aliasing), trained by its
own `optimize_parameters` on the same 64 + 64 images (random batches of 4 from each domain, as its
unaligned loader draws them), resnet_6blocks, 8 filters, 32x32, its defaults otherwise (CUT:
xavier init at gain 0.02, anti-aliased networks), and scored as `learning_comparison.py` scores
ours: the mean |G(a) - T(a)| on the same 16 held-out images every `--every` steps (lower is better).
Needs PyTorch (`pip install torch==2.13.0`) and a checkout of the reference; not a timing benchmark.

    git clone https://github.com/taesungp/contrastive-unpaired-translation /path/to/cut
    python bench/learning_reference.py --reference /path/to/cut [--steps 300] [--every 100] [--seeds 1]
"""

import argparse
import contextlib
import io
import sys
import tempfile
import time

import common  # environment first

# The reference's command line for each method, beside the shared settings.
METHODS = {
    "cyclegan": ["--model", "cycle_gan", "--init_type", "normal", "--no_antialias", "--no_antialias_up"],
    "cut": ["--model", "cut", "--CUT_mode", "CUT"],
    "fastcut": ["--model", "cut", "--CUT_mode", "FastCUT"],
}


def run(reference, method, steps, every, seed, workdir):
    import numpy as np
    import torch

    _stand_in_for_torchvision()
    sys.path.insert(0, reference)
    from models import create_model
    from options.train_options import TrainOptions

    torch.manual_seed(seed)
    np.random.seed(seed)  # the reference's patch locations and flips
    torch.set_num_threads(2)
    real_a, real_b, test_a, truth_b = common.synthetic_task(32)
    shared = ["--dataroot", workdir, "--checkpoints_dir", workdir, "--name", method, "--gpu_ids", "-1"]
    shared += ["--netG", "resnet_6blocks", "--ngf", "8", "--ndf", "8", "--load_size", "32", "--crop_size", "32"]
    shared += ["--batch_size", "4", "--display_id", "0"]
    argv, sys.argv = sys.argv, ["train.py", *shared, *METHODS[method]]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            opt = TrainOptions().parse()
            opt.amp = False  # its cycle_gan model reads this (apex's mixed precision), which no option sets
            model = create_model(opt)
    finally:
        sys.argv = argv
    generator = model.netG if method != "cyclegan" else model.netG_A

    def nchw(images):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    rng = np.random.default_rng(seed)

    def batch():
        a, b = rng.integers(0, len(real_a), 4), rng.integers(0, len(real_b), 4)
        return {"A": nchw(real_a[a]), "B": nchw(real_b[b]), "A_paths": ["a"] * 4, "B_paths": ["b"] * 4}

    def error():
        with torch.no_grad():
            fake = generator(nchw(test_a)).numpy().transpose(0, 2, 3, 1)
        return round(float(np.mean(np.abs(fake - truth_b))), 4)

    first = batch()
    with contextlib.redirect_stdout(io.StringIO()):  # its option and network listings
        if method != "cyclegan":  # CUT builds its MLP head on the first batch, as its train.py
            model.data_dependent_initialize(first)
        model.setup(opt)
    errors = {0: error()}
    start = time.perf_counter()
    for step in range(1, steps + 1):
        model.set_input(first if step == 1 else batch())
        model.optimize_parameters()
        if step % every == 0:
            errors[step] = error()
    seconds = time.perf_counter() - start
    return common.learning_record(
        method, opt.init_type, seed, steps, errors, test_a, truth_b, seconds, reference_flags=METHODS[method]
    )


def _stand_in_for_torchvision():
    """The reference imports torchvision for its image files and data loaders, which this does not use; PyPI's
    torchvision does not load beside the CPU build of torch here, so an empty module stands in if it is missing."""
    import importlib.util
    import types

    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": torchvision, "torchvision.transforms": torchvision.transforms})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="a checkout of taesungp/contrastive-unpaired-translation")
    parser.add_argument("--models", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100, help="score every this many steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--out", default="bench/results/learning_reference.json")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for method in args.models:
                result = run(args.reference, method, args.steps, args.every, seed, workdir)
                print(result)
                runs.append(result)
    finals = {}
    for result in runs:
        finals.setdefault(result["model"], []).append(result["error_to_true_mapping"][args.steps])
    summary = {name: round(sum(values) / len(values), 4) for name, values in finals.items()}
    print("mean error to the true mapping at the end (lower is better):", summary)
    common.write_json(args.out, {"per_run": runs, "mean_final_error": summary})


if __name__ == "__main__":
    main()
