"""Multi-worker training for real: worker processes on 127.0.0.1 joined by TF_CONFIG."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Keras's fit() under MultiWorkerMirroredStrategy, as CycleGAN uses it: the
# test fails if either of the model's workarounds for Keras 3.15 is removed
# (tuple batches in the symbolic build, scalar logs in strategy.reduce).
FIT_ONE_WORKER = """
import json
import numpy as np
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
from cyclegan_keras import CycleGAN, networks
with strategy.scope():
    generators = [networks.resnet_generator(n_blocks=1, filters=8) for _ in range(2)]
    discriminators = [networks.patchgan_discriminator(filters=8) for _ in range(2)]
    model = CycleGAN(*generators, *discriminators, pool_size=2)
    model.compile()
index = json.loads(__import__("os").environ["TF_CONFIG"])["task"]["index"]
images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
data = tf.data.Dataset.from_tensor_slices((images, images[::-1])).batch(2).repeat()
history = model.fit(data, steps_per_epoch=2, epochs=1, verbose=0).history
print("LOSSES", json.dumps({name: values[-1] for name, values in history.items()}))
"""


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(argv, count=2, cwd=ROOT, log_dir=None):
    """`count` processes of `argv`, each with its TF_CONFIG; their output goes to files."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(count)]}
    processes = []
    for index in range(count):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        env["PYTHONPATH"] = str(ROOT)
        env["TMPDIR"] = str(Path(log_dir) / "tmp")  # where a non-chief worker writes, and must clean up
        (Path(log_dir) / "tmp").mkdir(exist_ok=True)
        log = open(Path(log_dir) / f"worker{index}-{time.monotonic_ns()}.log", "w+")
        processes.append((subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return processes


def finish(processes, timeout):
    outputs = []
    for process, log in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other, _ in processes:
                other.kill()
            raise
        log.seek(0)
        outputs.append((process.returncode, log.read()))
    return outputs


# Three processes (two workers and this one): the fast tier keeps two replicas in one process (test_distribute.py).
@pytest.mark.slow
def test_fit_with_two_workers(tmp_path):
    outputs = finish(start_workers([sys.executable, "-c", FIT_ONE_WORKER], log_dir=tmp_path), timeout=300)
    losses = []
    for code, output in outputs:
        assert code == 0, output[-3000:]
        losses.append(json.loads(output.split("LOSSES", 1)[1].strip().splitlines()[0]))
    # Both workers report the same losses: means over both replicas.
    assert losses[0] == losses[1]
    assert set(losses[0]) >= {"cycle_loss", "disc_a_loss", "gen_ab_loss"}


TRAIN = [
    "train.py",
    "--strategy",
    "multi_worker",
    "--ngf",
    "8",
    "--ndf",
    "8",
    "--generator",
    "resnet_6blocks",
    "--load-size",
    "36",
    "--crop-size",
    "32",
    "--synthetic-count",
    "16",
    "--snapshot-count",
    "1",
    "--pool-size",
    "2",
]


@pytest.mark.slow
def test_train_py_on_two_workers_resumes_after_a_worker_is_killed(tmp_path):
    # 1. A whole run: the chief writes the work directory, worker 1 nothing.
    workdir = tmp_path / "run"
    argv = [sys.executable, *TRAIN, "--n-epochs", "1", "--n-epochs-decay", "1", "--workdir", str(workdir)]
    outputs = finish(start_workers(argv, log_dir=tmp_path), timeout=600)
    for code, output in outputs:
        assert code == 0, output[-3000:]
        assert "Training on 2 replica(s) (CollectiveAllReduceStrategy), global batch 2 " in output
    assert (workdir / "model.keras").is_file()
    assert "Saved the trained model" in outputs[0][1] and "Saved the trained model" not in outputs[1][1]
    assert not list((tmp_path / "tmp").iterdir()), "worker 1 left files in its temporary folder"

    # 2. Killed mid-run: SIGKILL worker 1 once the chief has checkpointed a
    # step; the chief cannot go on alone. Both restart and resume.
    workdir = tmp_path / "killed"
    argv = [
        *[sys.executable, *TRAIN, "--n-epochs", "2", "--n-epochs-decay", "1"],
        *["--checkpoint-every", "2", "--workdir", str(workdir)],
    ]
    processes = start_workers(argv, log_dir=tmp_path)
    state = workdir / "checkpoints" / "checkpoint.json"
    deadline = time.monotonic() + 600
    while not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
        assert time.monotonic() < deadline, "no checkpoint of epoch 2 in time"
        assert all(p.poll() is None for p, _ in processes), "a worker ended before the kill"
        time.sleep(0.5)
    processes[1][0].send_signal(signal.SIGKILL)
    processes[0][0].send_signal(signal.SIGKILL)
    finish(processes, timeout=60)
    saved = json.loads(state.read_text())

    outputs = finish(start_workers(argv, log_dir=tmp_path), timeout=600)
    for code, output in outputs:
        assert code == 0, output[-3000:]
        assert f"Resumed from {workdir / 'checkpoints' / saved['file']}" in output
    assert (workdir / "model.keras").is_file()
