"""Where training runs: `tf.distribute` strategies, mixed-precision policies, replica arithmetic.

Requests are checked against the machine first, so a wrong choice fails with one line naming the flag.
"""

import contextlib
import json
import os

import keras
import tensorflow as tf

from cyclegan_keras.config import PRECISIONS, STRATEGIES  # noqa: F401  (the flags' vocabularies live there)


class DistributeError(ValueError):
    """A strategy or precision the machine cannot provide; the message names the flag."""


def cluster_workers():
    """The number of workers (chief included) that `TF_CONFIG` names, 0 without it."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except (json.JSONDecodeError, AttributeError):
        raise DistributeError(f"TF_CONFIG is not a JSON object: {text[:200]!r}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def resolve(name):
    """The strategy `name` means here: `auto` is `multi_worker` (TF_CONFIG), `mirrored` (GPUs) or `one_device`."""
    if name not in STRATEGIES:
        raise DistributeError(f"--strategy must be one of {', '.join(STRATEGIES)}. Received: {name!r}")
    if name == "auto":
        if cluster_workers() > 1:
            return "multi_worker"
        return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one_device"
    if name == "multi_worker" and cluster_workers() == 0:
        raise DistributeError(
            "--strategy multi_worker needs TF_CONFIG (the cluster's addresses and this worker's "
            "index) in each worker's environment; see the README's 'Train on several machines'"
        )
    return name


def make_strategy(name="auto"):
    """The `tf.distribute.Strategy` for `--strategy name`; make a `multi_worker` one before any other op.

    Raises:
        DistributeError: the machine lacks what `name` needs.
    """
    name = resolve(name)
    if name == "one_device":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:
            raise DistributeError(
                f"--strategy multi_worker: {error}. Create the strategy before any other "
                "TensorFlow op (train() does so when given the strategy name)"
            ) from None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistributeError(f"--strategy tpu: no TPU found ({first_line})") from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Whether this process writes the run's files: the `chief` task, else worker 0, or a lone process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if has_chief:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def check_precision(name):
    """Checks `--precision name`; returns a warning for a choice slower than float32 here, or None."""
    if name not in PRECISIONS:
        raise DistributeError(f"--precision must be one of {', '.join(PRECISIONS)}. Received: {name!r}")
    if name == "float32" or tf.config.list_physical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return None
    if name == "mixed_float16":
        return (
            "--precision mixed_float16 on a CPU: TensorFlow has no fast float16 kernels there, so "
            "training is slower than float32. Use mixed_bfloat16 on a CPU with AMX or AVX512-BF16."
        )
    flags = cpu_flags()
    if not {"amx_bf16", "avx512_bf16"} & flags:
        return (
            "--precision mixed_bfloat16: this CPU has neither AMX nor AVX512-BF16, so bfloat16 is "
            "emulated and slower than float32."
        )
    return None


def cpu_info(key):
    """The value of `key` ("flags", "model name") in /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    return set((cpu_info("flags") or "").split())


@contextlib.contextmanager
def precision_policy(name):
    """Sets Keras's global dtype policy to `name` inside the block (then restores the previous one)."""
    check_precision(name)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def replica_share():
    """1 / replicas in sync: scales a replica's mean loss to its share of the global one (gradients are summed)."""
    context = tf.distribute.get_replica_context()
    return 1.0 / context.num_replicas_in_sync if context is not None else 1.0


def mean_over_replicas(value):
    """The mean of `value` over all replicas (identity on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
