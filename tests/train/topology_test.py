"""Resume on another topology: a run checkpointed on one mesh or number of processes continues
on another, with the same global sequence of batches (8 fake CPU devices; real processes)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from train.loop_test import final_params, quick_config
from train.parallel_test import free_port

from gdjax.train import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Six steps; the interrupted run stops (and checkpoints) after three.
STEPS, STOP = 6, 3


def config(**fields):
    return quick_config(num_steps=STEPS, checkpoint_every_steps=1000, log_every_steps=3, **fields)


def assert_close(got, want):
    """Equal to float32 round-off: the first steps summed the gradients over other devices, in
    another order."""
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), got, want)


@pytest.mark.parametrize(
    "before, after",
    [
        ({"parallel": "sharded"}, {"parallel": "none"}),  # 8 devices -> 1
        ({"parallel": "sharded", "model_parallel": 2}, {"parallel": "sharded"}),  # 4x2 -> 8x1
        ({"parallel": "none"}, {"parallel": "sharded", "model_parallel": 2}),  # 1 -> 4x2
    ],
    ids=["8 devices to 1", "mesh 4x2 to 8x1", "1 device to mesh 4x2"],
)
def test_a_run_resumes_on_another_topology(tmp_path, before, after):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    first = train_and_evaluate(config(max_steps=STOP, **before), str(resumed))
    assert first["steps"] == STOP
    result = train_and_evaluate(config(**after), str(resumed))
    assert result["steps"] == STEPS
    train_and_evaluate(config(**after), str(straight))
    step, got = final_params(resumed, config(**after))
    _, want = final_params(straight, config(**after))
    assert step == STEPS
    assert_close(got, want)


WORKER = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
from gdjax.train import initialize_distributed, train_and_evaluate

address, pid, workdir, fields = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
initialize_distributed(address, num_processes=2, process_id=pid)
assert jax.process_count() == 2 and jax.device_count() == 4
sys.path.insert(0, os.environ["GDJAX_TESTS"])
from train.topology_test import config

result = train_and_evaluate(config(**json.loads(fields)), workdir)
print("done", pid, result["steps"], flush=True)
"""


def run_processes(n, script, args, tmp_path, timeout=300):
    """``n`` processes on localhost running ``script`` with ``address pid *args``."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "GDJAX_TESTS": str(ROOT / "tests"),
        "PYTHONPATH": str(ROOT),
        "GDJAX_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, address, str(pid), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in range(n)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the {n}-process run did not finish in {timeout} s")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return logs


def test_two_processes_resume_as_one(tmp_path):
    """2 processes x 2 devices (mesh 2x2, the model axis inside each process) checkpoint after
    three steps; one process finishes the run. Equal to one process all along."""
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    fields = {"parallel": "sharded", "model_parallel": 2, "max_steps": STOP}
    logs = run_processes(2, WORKER, [str(resumed), json.dumps(fields)], tmp_path)
    assert all(f"done {pid} {STOP}" in log for pid, log in enumerate(logs)), logs
    result = train_and_evaluate(config(parallel="none"), str(resumed))
    assert result["steps"] == STEPS
    train_and_evaluate(config(parallel="none"), str(straight))
    step, got = final_params(resumed, config(parallel="none"))
    _, want = final_params(straight, config(parallel="none"))
    assert step == STEPS
    assert_close(got, want)


def _free_slurm_job_id():
    """A SLURM_JOB_ID whose coordinator port (JAX: 61440 + id % 4096) is free here."""
    import socket

    for job in range(4096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 61440 + job))
            except OSError:
                continue
            return job
    pytest.skip("no free port in 61440-65535")


def test_the_command_finds_a_slurm_cluster_with_distributed(tmp_path):
    """`gdjax train --distributed` as `srun` would start it: two tasks, SLURM's variables,
    no address given. jax.distributed.initialize() finds the cluster; the tasks form one
    2x2 (data x model) mesh and train together."""
    job = _free_slurm_job_id()
    base = {**os.environ, "PYTHONPATH": str(ROOT), "GDJAX_CACHE_DIR": str(tmp_path / "cache"),
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
            "SLURM_JOB_ID": str(job), "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "127.0.0.1",
            "SLURM_STEP_NUM_NODES": "1"}  # fmt: skip
    command = [
        sys.executable, "-m", "gdjax.cli", "train", "--distributed",
        f"--workdir={tmp_path / 'run'}",
        "--config.parallel=sharded", "--config.model_parallel=2", "--config.num_steps=3",
        "--config.batch_size=32", "--config.progress=False",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            command,
            env={**base, "SLURM_PROCID": str(p), "SLURM_LOCALID": str(p)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in (0, 1)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two SLURM tasks did not finish in 300 s")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
        assert "done: 3 steps" in log, log[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
