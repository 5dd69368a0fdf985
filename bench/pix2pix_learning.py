"""Does pairing help? pix2pix against CycleGAN on the same synthetic images (the paper's point).

The synthetic paired task: B[i] = T(A[i]), T the known channel roll. Both methods train on the
same 128 pairs for the same steps, as `train.py` runs them on the synthetic data (64x64 crops, 32
filters): pix2pix on the pairs (its U-Net, unet_64, and also CycleGAN's resnet_6blocks, to
separate the supervision from the architecture), CycleGAN on the same images unpaired
(`--dataset-mode paired`: its batches draw B at random). Reports mean |G(a) - T(a)| on the 64
held-out test images, in [-1, 1] units, beside that of leaving the input unchanged.

    python bench/pix2pix_learning.py [--steps-per-epoch 128 --epochs 2] [--out bench/results/pix2pix_learning.json]
"""

import argparse
import tempfile
import time

import common  # noqa: F401  (environment first)

RUNS = {
    "pix2pix (unet_64)": dict(model="pix2pix"),
    "pix2pix (resnet_6blocks)": dict(model="pix2pix", generator="resnet_6blocks"),
    "cyclegan (resnet_6blocks, same images unpaired)": dict(model="cyclegan", dataset_mode="paired"),
}


def run(settings, epochs, steps_per_epoch):
    import numpy as np

    from cyclegan_keras import config, data, inference, training

    run_config = config.make_config(
        **settings, n_epochs=epochs, n_epochs_decay=0, steps_per_epoch=steps_per_epoch, snapshot_every_epochs=0
    )
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        model = training.train(run_config, workdir, verbose=0)
        seconds = time.perf_counter() - start
    test_a, _ = training.load_domains(run_config, "test")
    real_a = data.domain_images(test_a, run_config.test_preprocessing("A"))
    truth = data.synthetic_mapping(real_a, run_config.direction)
    error = float(np.mean(np.abs(inference.translate_images(model.generator("a2b"), real_a) - truth)))
    return {
        "settings": {k: getattr(run_config, k) for k in ("model", "generator", "norm", "dataset_mode", "ngf")},
        "steps": int(model.generator_optimizer.iterations),
        "error_to_true_mapping": round(error, 4),
        "identity_error": round(float(np.mean(np.abs(real_a - truth))), 4),
        "seconds_incl_tracing": round(seconds, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=128)
    parser.add_argument("--out", default="bench/results/pix2pix_learning.json")
    args = parser.parse_args()
    results = {}
    for name, settings in RUNS.items():
        results[name] = run(settings, args.epochs, args.steps_per_epoch)
        print(name, results[name], flush=True)
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
