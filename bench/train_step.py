"""Seconds per training iteration and peak memory, per method, as each reference defines an iteration.

batch 1 per replica, basic PatchGAN discriminators, each method with its reference's settings
(`training.build_model`, so `--models` takes any `config.MODELS` name) and generator: CycleGAN two
resnet_9blocks generators, two discriminators, pool 50, identity loss on; CUT one generator, one
discriminator, PatchNCE with the identity term; FastCUT without it, flips on; pix2pix a unet_256
with batch norm and a conditional discriminator, vanilla GAN and L1. The timed path
is `model.fit`. Each (method, size, precision, strategy) runs in a fresh process, so its peaks are
its own: peak RSS (`rss_before_model_mb` is what the process held before building the model:
TensorFlow itself) and TensorFlow's peak tensor memory (`peak_tensor_memory_mb`, and
`step_peak_tensor_memory_mb`, the median timed step's own peak, steadier from run to run: on a CPU the
process runs with `TF_CPU_ALLOCATOR_USE_BFC=true`, whose allocator counts it as a GPU's does; it
leaves out the malloc arenas, thread stacks and libraries that RSS holds, so it is the figure that
compares with GPU memory; `peak_gpu_memory_mb` on a GPU). GFLOP/s take one CycleGAN iteration as
1.88 TFLOP at 256x256 and 0.47 TFLOP at 128x128 (the reference's counts). The ratios at the end
compare each method with the first, in the same run; the JSON records the CPU model and flags.

    python bench/train_step.py [--models cyclegan cut fastcut] [--sizes 128 256]
                               [--precisions float32 mixed_bfloat16] [--strategies one_device mirrored]
                               [--steps 5] [--jit]

`mirrored` runs MirroredStrategy over two logical devices of this one
machine (two GPUs where there are, else two logical CPUs): on a CPU it
cannot be faster, the figure shows the overhead of the replicated step.
"""

import argparse
import json
import resource
import time

import common  # environment first

TFLOP_PER_ITERATION = {128: 0.47, 256: 1.88}


class StepTimer:
    """Each step's seconds and, where TensorFlow counts the device's tensor memory, each step's own peak
    (the counter is reset as a step begins; `process_peak_mb` keeps the highest since the process began)."""

    def __init__(self, device=None):
        self.times, self.step_peaks_mb = [], []
        self.device, self.process_peak_mb = device, 0.0

    def peak_mb(self):
        import tensorflow as tf

        peak = tf.config.experimental.get_memory_info(self.device)["peak"] / 2**20
        self.process_peak_mb = max(self.process_peak_mb, peak)
        return peak

    def __call__(self):
        import keras
        import tensorflow as tf

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if timer.device:
                    timer.peak_mb()
                    tf.config.experimental.reset_memory_stats(timer.device)
                timer.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                timer.times.append(time.perf_counter() - timer.start)
                if timer.device:
                    timer.step_peaks_mb.append(timer.peak_mb())

        return Callback()


def _memory_device():
    """The device whose tensor memory TensorFlow counts: the first GPU, the CPU under the BFC allocator, or None."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    device = gpus[0].name if gpus else "CPU:0"
    try:
        tf.config.experimental.get_memory_info(device)
    except ValueError:  # TensorFlow's default CPU allocator counts nothing
        return None
    return device


def make_strategy(name):
    import tensorflow as tf

    if name == "one_device":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus[:2]] if len(gpus) >= 2 else ["/cpu:0", "/cpu:1"]
    return tf.distribute.MirroredStrategy(devices)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(model_name, size, steps, warmup, jit_compile, precision, strategy_name, generator, filters):
    import numpy as np
    import tensorflow as tf

    from cyclegan_keras import distribute, training
    from cyclegan_keras.config import MODEL_DEFAULTS

    strategy = make_strategy(strategy_name)
    before = _rss_mb()
    generator = generator or MODEL_DEFAULTS[model_name].get("generator", "resnet_9blocks")
    config = training.make_config(
        model=model_name,
        generator=generator,
        ngf=filters,
        ndf=filters,
        load_size=size,
        crop_size=size,
        precision=precision,
        xla=jit_compile,
    )
    with strategy.scope(), distribute.precision_policy(precision):
        model = training.build_model(config)
    replicas = strategy.num_replicas_in_sync
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 1, size, size, 3)).astype("float32")
    data = tf.data.Dataset.from_tensors((images[0][0], images[1][0])).repeat().batch(replicas, drop_remainder=True)
    device = _memory_device()
    timer = StepTimer(device)
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer()], shuffle=False)
    times = timer.times[warmup:]
    seconds = float(np.median(times))
    result = {
        "model": model_name,
        "size": size,
        "precision": precision,
        "strategy": strategy_name,
        "replicas": replicas,
        "generator": generator,
        "filters": filters,
        "jit_compile": jit_compile,
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "steps_timed": len(times),
        "first_step_s": round(timer.times[0], 2),
        "seconds_per_iteration": round(seconds, 3),
        "seconds_min": round(min(times), 3),
        "iterations_per_second": round(1 / seconds, 3),
        "images_per_second": round(replicas / seconds, 3),
        "rss_before_model_mb": round(before),
        "peak_rss_mb": round(_rss_mb()),
    }
    if device:  # the BFC allocator's count (see the module's docstring)
        kind = "gpu" if "GPU" in device else "tensor"
        result[f"peak_{kind}_memory_mb"] = round(timer.peak_mb())
        # The median timed step's own peak: the first step's (tracing) and the allocator's run-to-run noise left out.
        result[f"step_peak_{kind}_memory_mb"] = round(float(np.median(timer.step_peaks_mb[warmup:])))
    if size in TFLOP_PER_ITERATION and model_name == "cyclegan" and filters == 64:
        result["gflops_per_second"] = round(replicas * TFLOP_PER_ITERATION[size] * 1000 / seconds, 1)
    return result


def _ratios(results):
    """Each method's iterations per second and peak memory relative to the first method's, per setting."""
    first = results[0]["model"]
    key = lambda r: (r["size"], r["precision"], r["strategy"])  # noqa: E731
    baseline = {key(r): r for r in results if r["model"] == first}
    for result in results:
        base = baseline.get(key(result))
        if base is None or result["model"] == first:
            continue
        result[f"speed_vs_{first}"] = round(base["seconds_per_iteration"] / result["seconds_per_iteration"], 2)
        for name in (
            "peak_rss_mb",
            "peak_tensor_memory_mb",
            "peak_gpu_memory_mb",
            "step_peak_tensor_memory_mb",
            "step_peak_gpu_memory_mb",
        ):
            if name in result:
                result[f"{name}_vs_{first}"] = round(result[name] / base[name], 2)
        extra = result["peak_rss_mb"] - result["rss_before_model_mb"]
        base_extra = base["peak_rss_mb"] - base["rss_before_model_mb"]
        result[f"model_rss_vs_{first}"] = round(extra / base_extra, 2) if base_extra > 0 else None
        print(
            f"{result['model']} at {result['size']}, {result['precision']}, {result['strategy']}: "
            f"{result[f'speed_vs_{first}']}x {first}'s iterations/s, peak RSS {result['peak_rss_mb_vs_' + first]}x "
            f"(above the process's start: {result[f'model_rss_vs_{first}']}x)"
            + "".join(
                f", peak {kind} memory {result[f'peak_{kind}_memory_mb_vs_{first}']}x (per step: "
                f"{result[f'step_peak_{kind}_memory_mb_vs_{first}']}x)"
                for kind in ("tensor", "gpu")
                if f"peak_{kind}_memory_mb_vs_{first}" in result
            )
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cyclegan"], help="cyclegan, cut, fastcut (config.MODELS)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--precisions", nargs="+", default=["float32"], help="float32, mixed_bfloat16, mixed_float16")
    parser.add_argument("--strategies", nargs="+", default=["one_device"], help="one_device, mirrored")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations (tracing)")
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA")
    parser.add_argument(
        "--generator",
        help="for every method (default: each one's reference default: pix2pix unet_256, else resnet_9blocks)",
    )
    parser.add_argument("--filters", type=int, default=64, help="ngf and ndf (smaller for a smoke run)")
    parser.add_argument("--out", default="bench/results/train_step.json")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one measurement, in the process run for it
    args = parser.parse_args()
    if args.job:
        job = json.loads(args.job)
        if job["strategy_name"] == "mirrored":
            import tensorflow as tf

            if len(tf.config.list_physical_devices("GPU")) < 2:
                cpu = tf.config.list_physical_devices("CPU")[0]
                tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        print(common.RESULT_PREFIX + json.dumps(measure(**job)), flush=True)
        return
    results = []
    for size in args.sizes:
        for strategy in args.strategies:
            for precision in args.precisions:
                for model in args.models:
                    job = dict(
                        model_name=model,
                        size=size,
                        steps=args.steps,
                        warmup=args.warmup,
                        jit_compile=args.jit,
                        precision=precision,
                        strategy_name=strategy,
                        generator=args.generator,
                        filters=args.filters,
                    )
                    result = common.in_fresh_process(__file__, job)
                    print(result, flush=True)
                    results.append(result)
    _ratios(results)
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
