"""Per-image latency of the exported generator at 256x256, against Keras.

Exports a resnet_9blocks generator (random weights: latency does not depend
on them) as SavedModel, every TFLite variant and ONNX, then times batch-1
inference on 256x256 images: Keras (the padded tf.function), the reloaded
SavedModel, each .tflite in ai_edge_litert with all CPU threads, and the
.onnx in onnxruntime (its default threads: one per physical core).

    python bench/inference.py [--runs 5]
"""

import argparse
import os
import tempfile
import time

import common  # noqa: F401  (environment first)


def median_seconds(fn, runs):
    import numpy as np

    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="bench/results/inference.json")
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from cyclegan_keras import export, networks
    from cyclegan_keras.inference import onnx_session, padded_call

    keras.utils.set_random_seed(0)
    generator = networks.build_generator("resnet_9blocks")
    samples = export.sample_images(generator, 256, count=3)
    image = samples[0][None]
    results = {"size": 256, "generator": "resnet_9blocks", "batch": 1, "threads": os.cpu_count()}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        formats = ("saved_model", "tflite", "onnx")
        report = export.export(generator, out, formats, export.TFLITE_VARIANTS, samples=samples)
        results["export_seconds"] = round(time.perf_counter() - start, 1)
        keras_fn = tf.function(padded_call(generator))
        results["keras_ms"] = round(1000 * median_seconds(lambda: keras_fn(image).numpy(), args.runs), 1)
        serving = tf.saved_model.load(os.path.join(out, "saved_model", "1")).signatures["serving_default"]
        results["saved_model_ms"] = round(
            1000 * median_seconds(lambda: serving(images=tf.constant(image))["translated"].numpy(), args.runs), 1
        )
        onnx = next(a for a in report["artifacts"] if a["format"] == "onnx")
        session = onnx_session(os.path.join(out, onnx["path"]))
        results["onnx_ms"] = round(1000 * median_seconds(lambda: session.run(None, {"images": image}), args.runs), 1)
        results["onnx_mb"] = round(onnx["size_bytes"] / 2**20, 2)
        results["onnx_psnr_db"] = onnx["psnr_db"]
        results["onnx_max_abs_error"] = onnx["max_abs_error"]
        results["onnx_providers"] = session.get_providers()
        results["onnxruntime"] = onnx["onnxruntime"]
        for artifact in report["artifacts"]:
            if artifact["format"] != "tflite":
                continue
            interpreter = Interpreter(model_path=os.path.join(out, artifact["path"]), num_threads=os.cpu_count())
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, image.shape, strict=False)
            interpreter.allocate_tensors()

            def run():
                interpreter.set_tensor(index, image)
                interpreter.invoke()

            variant = artifact["variant"]
            results[f"tflite_{variant}_ms"] = round(1000 * median_seconds(run, args.runs), 1)
            results[f"tflite_{variant}_mb"] = round(artifact["size_bytes"] / 2**20, 2)
            results[f"tflite_{variant}_psnr_db"] = artifact["psnr_db"]
            results[f"tflite_{variant}_max_abs_error"] = artifact["max_abs_error"]
            results[f"tflite_{variant}_float_ops"] = artifact["float_ops"]
    for key, value in results.items():
        print(f"{key}: {value}")
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
