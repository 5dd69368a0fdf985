"""Do CUT and FastCUT learn the synthetic task as well as CycleGAN, at equal steps?

The synthetic domains have a known true mapping T (A -> B rolls the colour channels). Each method
is built as `train.py --model NAME` builds it (`training.build_model`: its reference's defaults,
CUT's anti-aliased networks and xavier init), at a small size (resnet_6blocks, 8 filters, 32x32,
batch 4), trained the same number of steps on the same 64 + 64 images, and scored by the mean
|G(a) - T(a)| on 16 held-out images (and the input itself, the identity baseline) every
`--every` steps. The error is in [-1, 1] units; lower is better. CUT's reference initialises with
xavier at gain 0.02 (kernels about 10x smaller than CycleGAN's N(0, 0.02)), which slows the first
hundreds of steps; `--also-normal-init` trains CUT and FastCUT a second time with CycleGAN's init,
so that the objectives compare alone. PatchNCE's layer 0 is the input's pixels: matching the
output's pixels to the input's resists a mapping that changes every colour, as this one does;
`--also-nce-layers 4,8,12,16` trains them a third time without it. Not a timing benchmark (the seconds include tracing).

    python bench/learning_comparison.py [--steps 300] [--every 100] [--seeds 1] [--models cyclegan cut fastcut]
                                        [--also-normal-init] [--also-nce-layers 4,8,12,16]
"""

import argparse
import time

import common  # noqa: F401  (environment first)


def run(model_name, steps, every, seed, **overrides):
    import numpy as np
    import tensorflow as tf

    from cyclegan_keras import training

    size = 32
    real_a, real_b, test_a, truth_b = common.synthetic_task(size)
    config = training.make_config(
        model=model_name,
        generator="resnet_6blocks",
        ngf=8,
        ndf=8,
        load_size=size,
        crop_size=size,
        batch_size=4,
        seed=seed,
        **overrides,
    )
    model = training.build_model(config)
    data = tf.data.Dataset.from_tensor_slices((real_a, real_b)).shuffle(64, seed=seed).batch(4).repeat()

    def error():
        return round(float(np.mean(np.abs(model.generator("a2b")(test_a) - truth_b))), 4)

    errors = {0: error()}
    start = time.perf_counter()
    for done in range(every, steps + 1, every):
        model.fit(data, steps_per_epoch=every, epochs=1, verbose=0)
        errors[done] = error()
    seconds = time.perf_counter() - start  # tracing included: not a timing benchmark
    return common.learning_record(
        model_name, config.init_type, seed, steps, errors, test_a, truth_b, seconds, overrides=overrides
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cyclegan", "cut", "fastcut"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100, help="score every this many steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--also-normal-init", action="store_true", help="CUT and FastCUT again with N(0, 0.02)")
    parser.add_argument(
        "--also-nce-layers", metavar="LAYERS", help="CUT and FastCUT again with these PatchNCE layers, e.g. 4,8,12,16"
    )
    parser.add_argument("--out", default="bench/results/learning_comparison.json")
    args = parser.parse_args()
    runs = [(model, {}) for model in args.models]
    variants = []  # CycleGAN's init is normal and it has no PatchNCE
    if args.also_normal_init:
        variants.append({"init_type": "normal"})
    if args.also_nce_layers:
        variants.append({"nce_layers": args.also_nce_layers})
    runs += [(model, variant) for variant in variants for model in args.models if model != "cyclegan"]
    results = []
    for seed in args.seeds:
        for model, overrides in runs:
            result = run(model, args.steps, args.every, seed, **overrides)
            print(result, flush=True)
            results.append(result)
    summary = {}
    for model, overrides in runs:
        name = model + "".join(f" ({key} {value})" for key, value in overrides.items())
        finals = [
            r["error_to_true_mapping"][args.steps]
            for r in results
            if (r["model"], r["overrides"]) == (model, overrides)
        ]
        summary[name] = round(sum(finals) / len(finals), 4)
    first = next(iter(summary))
    for name, mean in summary.items():
        print(f"{name}: mean error after {args.steps} steps {mean:.4f} ({mean / summary[first]:.2f}x {first}'s)")
    common.write_json(args.out, {"per_run": results, "mean_final_error": summary})


if __name__ == "__main__":
    main()
