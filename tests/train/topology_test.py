"""Resume on another topology: a run checkpointed on one mesh or number of processes continues
on another, with the same global sequence of batches (8 fake CPU devices; real processes)."""

import sys

import jax
import numpy as np
import pytest
from processes import run_together, worker_env
from train.loop_test import final_params, quick_config

from gdjax.train import train_and_evaluate

# Six steps; the interrupted run stops (and checkpoints) after three.
STEPS, STOP = 6, 3


# quick_config's fields, as the command line gives them too.
QUICK = {"batch_size": 32, "checkpoint_every_steps": 1000, "log_every_steps": 3,
         "eval_every_epochs": 100.0, "progress": False}  # fmt: skip


def config(**fields):
    return quick_config(**{**QUICK, "num_steps": STEPS, **fields})


def assert_close(got, want):
    """Equal to float32 round-off: the first steps summed the gradients over other devices, in
    another order."""
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), got, want)


@pytest.fixture(scope="module")
def straight_on_one_device(tmp_path_factory):
    """The final parameters of an uninterrupted run on one device."""
    workdir = tmp_path_factory.mktemp("straight")
    train_and_evaluate(config(parallel="none"), str(workdir))
    return final_params(workdir, config(parallel="none"))[1]


def uninterrupted(after, tmp_path, straight_on_one_device):
    if after == {"parallel": "none"}:
        return straight_on_one_device
    train_and_evaluate(config(**after), str(tmp_path / "straight"))
    return final_params(tmp_path / "straight", config(**after))[1]


@pytest.mark.parametrize(
    "before, after",
    [
        ({"parallel": "sharded"}, {"parallel": "none"}),  # 8 devices -> 1
        ({"parallel": "sharded", "model_parallel": 2}, {"parallel": "sharded"}),  # 4x2 -> 8x1
    ],
    ids=["8 devices to 1", "mesh 4x2 to 8x1"],
)
def test_a_run_resumes_on_another_topology(tmp_path, before, after, straight_on_one_device):
    resumed = tmp_path / "resumed"
    first = train_and_evaluate(config(max_steps=STOP, **before), str(resumed))
    assert first["steps"] == STOP
    result = train_and_evaluate(config(**after), str(resumed))
    assert result["steps"] == STEPS
    step, got = final_params(resumed, config(**after))
    assert step == STEPS
    assert_close(got, uninterrupted(after, tmp_path, straight_on_one_device))


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


def test_two_slurm_tasks_checkpoint_and_one_process_resumes(tmp_path, straight_on_one_device):
    """`gdjax train --distributed` as `srun` would start it: two tasks with SLURM's variables
    and no address; jax.distributed.initialize() finds the cluster, and the tasks (2 CPU
    devices each) train on one 2x2 (data x model) mesh, the model axis inside each task, and
    checkpoint after three steps. Then one process finishes the run, equal to one process all
    along."""
    resumed = tmp_path / "resumed"
    job = _free_slurm_job_id()
    env = worker_env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2",
                     JAX_PLATFORMS="cpu", SLURM_JOB_ID=str(job), SLURM_NTASKS="2",
                     SLURM_STEP_NODELIST="127.0.0.1", SLURM_STEP_NUM_NODES="1")  # fmt: skip
    fields = {**QUICK, "num_steps": STEPS, "max_steps": STOP, "parallel": "sharded",
              "model_parallel": 2}  # fmt: skip
    overrides = [f"--config.{k}={v}" for k, v in fields.items()]
    command = [sys.executable, "-m", "gdjax.cli", "train", "--distributed", f"--workdir={resumed}"]
    command += overrides
    tasks = [(command, {**env, "SLURM_PROCID": str(p), "SLURM_LOCALID": str(p)}) for p in (0, 1)]
    for log in run_together(tasks, timeout=300):
        assert f"done: {STOP} steps" in log, log[-3000:]
    result = train_and_evaluate(config(parallel="none"), str(resumed))
    assert result["steps"] == STEPS
    step, got = final_params(resumed, config(parallel="none"))
    assert step == STEPS
    assert_close(got, straight_on_one_device)
