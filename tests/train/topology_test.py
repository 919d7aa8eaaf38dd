"""Resume on another topology: a run checkpointed on one mesh or number of processes continues
on another, with the same global sequence of batches (8 fake CPU devices; real processes)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from processes import run_together, worker_env
from train.loop_test import final_params, quick_config

from gdjax.train import train_and_evaluate
from gdjax.train.loop import build, evaluate_checkpoint

# Six steps; the interrupted run stops (and checkpoints) after three.
STEPS, STOP = 6, 3


# quick_config's fields, as the command line gives them too.
QUICK = {"batch_size": 32, "checkpoint_every_steps": 1000, "log_every_steps": 3,
         "eval_every_epochs": 100.0, "progress": False}  # fmt: skip


def config(**fields):
    return quick_config(**{**QUICK, "num_steps": STEPS, **fields})


# How far a resumed run may lie from the uninterrupted one, per parameter leaf, as a fraction
# of the uninterrupted run's own change from the initialisation: ||got - want|| / ||want - init||.
# Float32 round-off alone keeps runs on two topologies within 1e-5 of their change (measured
# without dropout: 8 devices vs 1, 4.4e-6). With dropout a ReLU near a tie can flip between
# kernels that round differently (oneDNN picks its kernels by the batch each device sees and by
# the instruction set), and the flip carries into every later step: 1.8% after six steps on an
# AVX-512 Xeon (oneDNN vs XLA on one device, every leaf). What a broken resume does is far
# larger (measured): other dropout masks 22-119%, three steps lost 66-116%, another seed 99%+.
RESUME_TOLERANCE = 0.06


@pytest.fixture(scope="module")
def initial():
    """The parameters every run starts from (the same seed on any topology)."""
    return jax.device_get(build(config(parallel="none")).state.params)


def relative_distance(got, want, init):
    """Per leaf, ||got - want|| / ||want - init||."""

    def rel(a, b, i):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b - i))

    return jax.tree.map(rel, got, want, init)


def assert_close(got, want, init):
    """The resumed run made the same updates as the uninterrupted one, up to the rounding
    (and the ReLU flips it can cause) that another topology's kernels and summation order bring
    (RESUME_TOLERANCE)."""
    far = {
        jax.tree_util.keystr(path): d
        for path, d in jax.tree_util.tree_leaves_with_path(relative_distance(got, want, init))
        if not d <= RESUME_TOLERANCE
    }
    assert not far, f"leaves farther than {RESUME_TOLERANCE} of their change: {far}"


def test_the_tolerance_tells_a_broken_resume_from_rounding(
    tmp_path, straight_on_one_device, initial
):
    """A run that stops after three steps (a resume that did nothing) and a run whose dropout
    masks differ (per-device masks under pmap) are both far outside RESUME_TOLERANCE, while
    the same run on eight devices without dropout is within round-off of one device."""
    for broken, fields in {
        "stopped": {"parallel": "none", "max_steps": STOP},
        "other masks": {"parallel": "pmap"},
    }.items():
        train_and_evaluate(config(**fields), str(tmp_path / broken))
        got = final_params(tmp_path / broken, config(**fields))[1]
        d = min(jax.tree.leaves(relative_distance(got, straight_on_one_device, initial)))
        assert d > 2 * RESUME_TOLERANCE, (broken, d)
    without_dropout = {}
    for parallel in ("none", "sharded"):
        c = config(parallel=parallel)
        c.model.dropout_rate = 0.0
        train_and_evaluate(c, str(tmp_path / f"{parallel} no dropout"))
        without_dropout[parallel] = final_params(tmp_path / f"{parallel} no dropout", c)[1]
    d = relative_distance(without_dropout["sharded"], without_dropout["none"], initial)
    assert max(jax.tree.leaves(d)) < 1e-4


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
def test_a_run_resumes_on_another_topology(
    tmp_path, before, after, straight_on_one_device, initial
):
    resumed = tmp_path / "resumed"
    first = train_and_evaluate(config(max_steps=STOP, **before), str(resumed))
    assert first["steps"] == STOP
    result = train_and_evaluate(config(**after), str(resumed))
    assert result["steps"] == STEPS
    step, got = final_params(resumed, config(**after))
    assert step == STEPS
    assert_close(got, uninterrupted(after, tmp_path, straight_on_one_device), initial)


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


def test_two_slurm_tasks_checkpoint_and_one_process_resumes(
    tmp_path, straight_on_one_device, initial
):
    """`gdjax train --distributed` as `srun` would start it: two tasks with SLURM's variables
    and no address; jax.distributed.initialize() finds the cluster, and the tasks (2 CPU
    devices each) train on one 2x2 (data x model) mesh, the model axis inside each task, and
    checkpoint after three steps. Then one process finishes the run, equal to one process all
    along."""
    resumed = tmp_path / "resumed"
    job = _free_slurm_job_id()
    env = worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
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
    assert_close(got, straight_on_one_device, initial)


def test_a_pmap_run_resumes_and_evaluates_on_any_number_of_devices(tmp_path, initial):
    """A pmap run's checkpoint restores onto one device, committed there; pmap refused such
    arrays, so every resume and every `gdjax eval` of a pmap run on several devices failed
    ("Sharding passed to jit does not match"). Now: it resumes on its 8 devices as if never
    stopped, evaluates to the run's own numbers, and resumes and evaluates on 4 and 2."""
    resumed = tmp_path / "resumed"
    assert train_and_evaluate(config(max_steps=STOP, parallel="pmap"), str(resumed))["steps"]
    result = train_and_evaluate(config(parallel="pmap"), str(resumed))
    assert result["steps"] == STEPS
    step, got = final_params(resumed, config(parallel="pmap"))
    assert step == STEPS
    assert_close(got, uninterrupted({"parallel": "pmap"}, tmp_path, None), initial)
    evaluated = evaluate_checkpoint(config(parallel="pmap"), str(resumed))
    assert evaluated["step"] == STEPS
    assert evaluated["accuracy"] == pytest.approx(result["accuracy"])

    def gdjax(command, devices, *fields):
        env = worker_env(
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
        )
        argv = [sys.executable, "-m", "gdjax", command, f"--workdir={resumed}", *fields]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = gdjax("eval", 2)
    assert json.loads(out[out.index("{") :])["accuracy"] == pytest.approx(result["accuracy"])
    fields = [f"--config.{k}={v}" for k, v in {**QUICK, "parallel": "pmap"}.items()]
    out = gdjax("train", 4, *fields, f"--config.num_steps={STEPS + 2}")
    assert f"resumed from step {STEPS}" in out and f"done: {STEPS + 2} steps" in out, out


def test_two_pmap_processes_checkpoint_and_resume(tmp_path):
    """`gdjax train --distributed --config.parallel=pmap` on two processes: each process's
    copy of the state is local to it, which orbax refused to write ("Cannot serialize host
    local jax.Array"), so no checkpoint of such a run was ever written. Now it checkpoints,
    and the two processes resume from it."""
    workdir = tmp_path / "run"
    job = _free_slurm_job_id()
    env = worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                     JAX_PLATFORMS="cpu", SLURM_JOB_ID=str(job), SLURM_NTASKS="2",
                     SLURM_STEP_NODELIST="127.0.0.1", SLURM_STEP_NUM_NODES="1")  # fmt: skip
    command = [sys.executable, "-m", "gdjax", "train", "--distributed", f"--workdir={workdir}"]
    command += [f"--config.{k}={v}" for k, v in {**QUICK, "parallel": "pmap"}.items()]
    tasks = [{**env, "SLURM_PROCID": str(p), "SLURM_LOCALID": str(p)} for p in (0, 1)]
    for max_steps in (STOP, STEPS):
        argv = [*command, f"--config.num_steps={STEPS}", f"--config.max_steps={max_steps}"]
        for log in run_together([(argv, t) for t in tasks], timeout=300):
            assert f"done: {max_steps} steps" in log, log[-3000:]
            assert max_steps == STOP or f"resumed from step {STOP}" in log, log[-3000:]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [STOP, STEPS]
    step, params = final_params(workdir, config(parallel="pmap"))
    assert step == STEPS
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
