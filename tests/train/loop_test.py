"""train_and_evaluate end to end: outputs, exact resume after SIGKILL and SIGTERM, corrupted
checkpoints, non-finite losses, the plateau recipe and config errors."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import warnings

import flax.linen as nn
import jax
import numpy as np
import pytest

from gdjax.cli import _jaxlib_loads_cached_programs_quietly
from gdjax.configs import get_config, override
from gdjax.configs.base import unknown_fields
from gdjax.train import (
    Checkpointer,
    CheckpointUnreadableError,
    ConfigError,
    WorkdirMismatchError,
    build,
    check_config,
    evaluate_checkpoint,
    read_metrics,
    train_and_evaluate,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
# For the tests that read a run's stderr whole. jaxlib 0.8.2 logs a line to stderr for each
# program it loads from a cache (a CPU feature note), so with it they run without the session's
# XLA cache and without the gdjax command's own; a jaxlib that loads them quietly (0.10 on, the
# check the command makes) keeps the session's, and the run reads the programs compiled before.
FOR_A_WHOLE_STDERR = (
    dict(os.environ)
    if _jaxlib_loads_cached_programs_quietly()
    else {
        **{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
        "GDJAX_XLA_CACHE": "0",
    }
)


def quick_config(**overrides):
    c = get_config("default")
    c.batch_size = 32
    c.num_steps = 40
    c.checkpoint_every_steps = 10
    c.log_every_steps = 10
    c.eval_every_epochs = 100.0  # evaluate only at the end
    c.progress = False
    return override(c, **overrides)


def final_params(workdir, config):
    """The params of the newest checkpoint, restored into the run's own template."""
    ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
    try:
        state, _, _ = ckpt.restore_latest(build(config).state)
    finally:
        ckpt.close()
    return int(state.step), jax.device_get(state.params)


def assert_identical(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 40-step run."""
    workdir = tmp_path_factory.mktemp("reference")
    result = train_and_evaluate(quick_config(), str(workdir))
    return workdir, result, final_params(workdir, quick_config())


def test_run_writes_everything_and_learns(reference):
    workdir, result, (step, _) = reference
    assert step == 40 and result["steps"] == 40 and result["steps_this_run"] == 40
    # 40 steps of 32 images sit on the steep part of the curve (0.28-0.4 test accuracy across
    # JAX versions and kernels): twice chance, and a training loss that fell.
    assert result["accuracy"] > 0.2, "40 steps must beat chance (0.1) by far"
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [10, 20, 30, 40]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.1
    assert {"loss", "error", "top5_error", "learning_rate", "images_per_second"} <= train_rows[
        0
    ].keys()
    assert [r["step"] for r in rows if r["split"] == "test"] == [40]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "curves.png").stat().st_size > 1000
    assert json.loads((workdir / "config.json").read_text())["batch_size"] == 32
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        20,
        30,
        40,
    ]


def test_rerun_in_a_finished_workdir_resumes_at_the_end(reference, tmp_path):
    workdir, result, _ = reference
    rows = (workdir / "metrics.jsonl").read_text()
    again = train_and_evaluate(quick_config(), str(workdir))
    assert again["steps"] == 40 and again["steps_this_run"] == 0
    assert again["error"] == pytest.approx(result["error"])
    # the final evaluation of the same checkpoint was logged a second time at step 40
    assert (workdir / "metrics.jsonl").read_text() == rows


def _start(workdir, *extra):
    args = [
        sys.executable, "-m", "gdjax.cli", "train", f"--workdir={workdir}",
        "--config.batch_size=32", "--config.num_steps=40", "--config.checkpoint_every_steps=10",
        "--config.log_every_steps=10", "--config.eval_every_epochs=100", "--config.progress=False",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_checkpoint(workdir, step, proc, timeout=180):
    target = pathlib.Path(workdir) / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not target.is_dir():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before checkpoint {step}:\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint {step} within {timeout} s")
        time.sleep(0.05)


def test_resume_after_sigkill_is_bit_identical(reference, tmp_path):
    _, _, (_, want) = reference
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    result = train_and_evaluate(quick_config(), str(tmp_path))
    step, got = final_params(tmp_path, quick_config())
    assert step == 40 and result["steps"] == 40
    assert_identical(got, want)


def test_sigterm_saves_then_resume_is_bit_identical(reference, tmp_path):
    _, _, (_, want) = reference
    proc = _start(tmp_path, "--config.checkpoint_every_steps=1000")
    # Wait until training runs (the first log line at step 10 means steps are flowing).
    deadline = time.time() + 180
    while not (tmp_path / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    assert "SIGTERM: saved step" in out
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 10 <= saved[0] < 40
    train_and_evaluate(quick_config(), str(tmp_path))
    step, got = final_params(tmp_path, quick_config())
    assert step == 40
    assert_identical(got, want)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path):
    _, _, (_, want) = reference
    proc = _start(tmp_path, "--config.num_steps=30")
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    latest = tmp_path / "checkpoints" / "30"
    for f in latest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 16)
    with pytest.warns(UserWarning, match="checkpoint 30 .* is unreadable"):
        step, _ = final_params(tmp_path, quick_config())
    assert step == 20
    assert (tmp_path / "checkpoints" / "20").is_dir()  # the good one was never touched
    with pytest.warns(UserWarning, match="checkpoint 30"):
        train_and_evaluate(quick_config(), str(tmp_path))
    step, got = final_params(tmp_path, quick_config())
    assert step == 40
    assert_identical(got, want)
    # The rows the first run logged after checkpoint 20 (train 30 and its final test row) are
    # left out: the curves are those of one run, the same as the uninterrupted one's.
    rows = read_metrics(tmp_path / "metrics.jsonl")
    reference_rows = read_metrics(reference[0] / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in rows] == [
        (r["step"], r["split"]) for r in reference_rows
    ]
    for r, ref in zip(rows, reference_rows, strict=True):
        assert r["loss"] == ref["loss"], (r, ref)


@pytest.mark.parametrize("learning_rate", [1e4, 1e6])
def test_nonfinite_loss_names_only_a_finite_checkpoint(tmp_path, learning_rate):
    """Every checkpoint left holds parameters whose loss is finite, and the error names the
    newest of them, or says there is none; the diverged ones are set aside, not deleted."""
    config = quick_config(**{"optimizer.learning_rate": learning_rate, "checkpoint_every_steps": 2})
    # Which comes first, a non-finite loss or non-finite parameters at a save, depends on the
    # rounding of the kernels (with oneDNN and XLA held to AVX2, lr 1e6 gives NaN parameters
    # by the save at step 2; on AVX-512 the loss goes first): either stop must keep the rules.
    stops = r"(non-finite training loss .* at step \d+|parameters became NaN or inf by step \d+)"
    with pytest.raises(FloatingPointError, match=stops) as e:
        train_and_evaluate(config, str(tmp_path))
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    if saved:
        assert f"the newest checkpoint, step {saved[-1]} " in str(e.value)
        step, params = final_params(tmp_path, config)
        assert step == saved[-1]
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
        result = evaluate_checkpoint(config, str(tmp_path))
        assert np.isfinite(result["loss"]), "a named checkpoint must evaluate to a finite loss"
    else:
        assert "no checkpoint with finite parameters was written" in str(e.value)
    refused = re.search(r"by step (\d+) \(not saved\)", str(e.value))
    if refused:  # the save refused the parameters: nothing diverged was written or set aside
        assert all(step < int(refused[1]) for step in saved)
        assert not (tmp_path / "checkpoints.nonfinite").exists()
    else:
        aside = tmp_path / "checkpoints.nonfinite"
        assert aside.is_dir() and any(aside.iterdir()), "the diverged checkpoint is kept aside"


def test_a_diverged_model_is_never_accurate(tmp_path):
    """lr -1 is refused; a model driven to NaN by skipping nothing but evaluated anyway (the
    non-finite-skipping run below keeps going) never scores above chance by ties or NaN."""
    config = quick_config(
        **{"optimizer.learning_rate": 1e6, "optimizer.skip_nonfinite": False, "num_steps": 1}
    )
    # One step: parameters still finite on every instruction set (a second step gave NaN
    # parameters, and so no checkpoint, with the kernels held to AVX2), logits overflowing.
    result = train_and_evaluate(config, str(tmp_path))
    assert not np.isfinite(result["loss"]) or result["loss"] > 1e3
    assert result["accuracy"] <= 0.5
    run = build(config)
    nan_state = run.state.replace(params=jax.tree.map(lambda x: x * np.nan, run.state.params))
    from gdjax.train import evaluate

    metrics = evaluate(run.parallel, nan_state, run.test_src, run.eval_tf, 500)
    assert metrics["error"] == 1.0 and metrics["top5_error"] == 1.0


def test_a_row_without_a_timed_step_has_no_throughput(tmp_path):
    """With a row per step the first row's interval is the compiling step alone, which is not
    timed: it has no images_per_second (it said 0.0, a stalled run); every later row has one."""
    train_and_evaluate(quick_config(log_every_steps=1, num_steps=4), str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert "images_per_second" not in train_rows[0] and "loss" in train_rows[0]
    assert all(r["images_per_second"] > 0 for r in train_rows[1:]), train_rows


def test_skip_nonfinite_keeps_going(tmp_path):
    config = quick_config(
        **{"optimizer.learning_rate": 1e4, "optimizer.skip_nonfinite": True, "num_steps": 12}
    )
    result = train_and_evaluate(config, str(tmp_path))
    assert result["steps"] == 12
    # ... and counts what it skipped (it finished without a word of it before).
    assert 1 <= result["skipped_nonfinite_steps"] <= 12
    assert (
        json.loads((tmp_path / "result.json").read_text())["skipped_nonfinite_steps"]
        == (result["skipped_nonfinite_steps"])
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ((2.0, 3, 1e-4, 0.0), r"factor must be in \(0, 1\], got 2.0"),  # raised the rate
        ((0.1, 0, 1e-4, 0.0), "patience must be an int >= 1, got 0"),
        ((0.1, 3, -1.0, 0.0), "threshold must be a finite number >= 0, got -1.0"),
        ((0.1, 3, 1e-4, float("inf")), "min_lr must be a finite number >= 0, got inf"),
    ],
)
def test_plateau_refuses_what_the_config_refuses(args, message):
    from gdjax.train import Plateau

    with pytest.raises(ValueError, match=f"Plateau: {message}"):
        Plateau(*args)
    plateau = Plateau(0.1, 2, 0.0, 1e-3)
    # two evaluations without improvement, then a drop; never below min_lr
    assert [plateau.update(e, 0.1) for e in (0.5, 0.5, 0.5)] == [None, None, pytest.approx(0.01)]
    assert [plateau.update(0.5, 0.005) for _ in range(2)] == [None, None]


def test_checkpoints_that_are_a_file_say_so(tmp_path):
    """orbax logged "Not a directory" from a thread of its own and the run went on."""
    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"checkpoints: .* is a file, not a folder"):
        Checkpointer(tmp_path / "checkpoints")


def test_plateau_divides_the_learning_rate_by_ten(tmp_path):
    config = quick_config(
        **{
            "schedule.name": "plateau",
            "schedule.patience": 1,
            "schedule.threshold": 10.0,  # no change counts as an improvement: drop every eval
            "eval_every_epochs": 10 / 125,  # every 10 steps (125 steps per epoch at batch 32)
            "log_every_steps": 5,
        }
    )
    train_and_evaluate(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["learning_rate"] for r in rows if r["split"] == "train"}
    # The first evaluation (step 10) sets the best error; each later one fails to improve it.
    assert lrs[5] == lrs[10] == lrs[15] == pytest.approx(0.01)
    assert lrs[25] == pytest.approx(0.001) and lrs[35] == pytest.approx(0.0001)


def test_a_resume_says_what_changed_since_the_run(tmp_path, capsys):
    """A resume under another config went on without a word: a mistyped value, or a
    batch size whose change moves the loader's place in the epoch, passed unseen."""
    train_and_evaluate(quick_config(num_steps=20), str(tmp_path))
    capsys.readouterr()
    train_and_evaluate(quick_config(num_steps=30, batch_size=16), str(tmp_path))
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("resumed")]
    assert line == (
        f"resumed from step 20 in {tmp_path / 'checkpoints'}; changed since that run: "
        "batch_size 32 -> 16, num_steps 20 -> 30 (the loader goes on from the batch count "
        "reached, in batches of the new size: the rest of this epoch is not the examples the "
        "run would have read)"
    )
    train_and_evaluate(quick_config(num_steps=40, batch_size=16), str(tmp_path))
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("resumed")]
    assert line.endswith("; changed since that run: num_steps 30 -> 40")
    train_and_evaluate(quick_config(num_steps=40, batch_size=16), str(tmp_path))
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("resumed")]
    assert line == f"resumed from step 40 in {tmp_path / 'checkpoints'}"


def test_no_evaluation_batch_is_larger_than_the_split():
    """eval_batch_size=100000 padded every evaluation of mnist5k's 1,000 test images to a
    batch of 100,000 (a 45 s run where 9 s do); the batch is the split's size at most, still
    a multiple of the devices."""
    test_images = len(build(quick_config()).test_src)
    assert build(quick_config(eval_batch_size=100_000)).eval_batch_size == test_images
    assert build(quick_config(eval_batch_size=7)).eval_batch_size == 7


@pytest.mark.parametrize("parallel", ["none", "pmap", "sharded"])
def test_a_second_run_of_an_equal_network_and_optimizer_traces_and_compiles_nothing(
    tmp_path, compile_counter, parallel
):
    """Runs in one process (a notebook cell run again, a sweep over seeds) share the model,
    the optimizer and the steps, so jit finds the first run's traces and programs; the second
    run still trains from its own seed."""
    first = train_and_evaluate(quick_config(num_steps=4, parallel=parallel), str(tmp_path / "a"))
    with compile_counter() as compiles, compile_counter(compile_counter.TRACE) as traces:
        second = train_and_evaluate(
            quick_config(num_steps=6, seed=1, parallel=parallel), str(tmp_path / "b")
        )
    assert (compiles.count, traces.count) == (0, 0)
    assert second["steps_this_run"] == 6 and second["loss"] != first["loss"]


@pytest.mark.parametrize("parallel", ["none", "pmap", "sharded"])
def test_a_run_of_another_optimizer_on_an_equal_network_evaluates_on_the_same_program(
    tmp_path, monkeypatch, parallel
):
    """The eval step reads neither the optimizer nor its state, so a sweep over optimizers
    traces and compiles its evaluation once; each run still scores its own parameters."""
    from gdjax.train import steps

    first = train_and_evaluate(quick_config(num_steps=4, parallel=parallel), str(tmp_path / "a"))
    traced = []  # each step checks its batch when it is traced (pmap names every trace _fun)
    check = steps._check_batch
    monkeypatch.setattr(steps, "_check_batch", lambda fn, b: traced.append(fn) or check(fn, b))
    other = {"num_steps": 4, "parallel": parallel, "optimizer.name": "adam",
             "optimizer.learning_rate": 1e-3}  # fmt: skip
    second = train_and_evaluate(quick_config(**other), str(tmp_path / "b"))
    assert traced == ["train_step"]  # the new optimizer's step, and no evaluation
    assert second["loss"] != first["loss"]
    want = evaluate_checkpoint(quick_config(**other), str(tmp_path / "b"))
    assert (second["loss"], second["error"]) == pytest.approx((want["loss"], want["error"]))


CONSTANT, COSINE = {"schedule.name": "constant"}, {"schedule.name": "cosine"}


@pytest.mark.parametrize(
    ("a", "b", "same_optimizer", "same_model"),
    [
        ({}, {"seed": 3, "num_steps": 8, "eval_batch_size": 7}, True, True),
        ({}, {"optimizer.learning_rate": 0.02}, False, True),
        ({}, {"optimizer.name": "adam"}, False, True),
        ({}, {"batch_size": 16}, False, True),  # the step schedule's drop moves with the epoch
        ({}, {"model.dropout_rate": 0.1}, True, False),
        ({}, {"model.activation": "tanh"}, True, False),
        (CONSTANT, {**CONSTANT, "batch_size": 16}, True, True),
        (COSINE, {**COSINE, "num_steps": 80}, False, True),
    ],
)
def test_equal_networks_and_optimizers_are_shared_between_runs_and_only_they(
    a, b, same_optimizer, same_model
):
    """What differs in the programs (the network, the optimizer, the rate or the step counts
    its schedule reads) is not shared: each run steps with the optimizer its config asks for."""
    one, other = build(quick_config(**a)).state, build(quick_config(**b)).state
    assert (one.tx is other.tx, one.apply_fn == other.apply_fn) == (same_optimizer, same_model)


def test_override_sets_fields_and_says_what_a_section_takes():
    """override(c, optimizer="adam") was ml_collections' "cannot be casted to type <class
    '...ConfigDict'>", and override(c, input={"flip": False}) replaced the section, dropping
    its nine other fields."""
    c = quick_config()
    fields = set(c.input.keys())
    override(c, input={"flip": False}, optimizer={"name": "adam", "hparams": {"b1": 0.8}})
    assert set(c.input.keys()) == fields and c.input.flip is False
    assert c.input.pad == quick_config().input.pad  # the others kept
    assert (c.optimizer.name, c.optimizer.hparams.b1) == ("adam", 0.8)
    assert c.optimizer.learning_rate == quick_config().optimizer.learning_rate
    check_config(c)
    with pytest.raises(
        TypeError, match=r"did you mean override\(c, \*\*\{'optimizer.name': 'sgd'\}\)"
    ):
        override(c, optimizer="sgd")
    with pytest.raises(TypeError, match=r"config.input is a section, not a value: set one of"):
        override(c, input=False)
    with pytest.raises(
        KeyError, match=r"config has no field 'input\.flipp' \(did you mean 'input\.flip'\?\)"
    ):
        override(c, input={"flipp": False})
    with pytest.raises(KeyError, match=r"'batchsize' \(did you mean 'batch_size'\?\)"):
        override(c, batchsize=8)


@pytest.mark.parametrize("count", [0, -2, 1.5])
def test_check_config_names_a_bad_process_count(count):
    with pytest.raises(ValueError, match=f"process_count must be an int >= 1, got {count}"):
        check_config(quick_config(), count)  # 0 was a ZeroDivisionError


def test_a_misspelt_field_is_refused_before_any_data_is_read(tmp_path):
    """`c.batch_sise = 64` in a config file trained at the default batch size without a word."""
    from gdjax.configs import PRESETS

    for name in PRESETS:
        assert unknown_fields(get_config(name)) == [], name
    c = quick_config()
    c.batch_sise = 64
    message = (
        r"config\.batch_sise \(did you mean 'batch_size'\?\) is not a field: the run would "
        r"never read it; the fields are those of gdjax\.configs\.get_config\('default'\)"
    )
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
    c = quick_config()
    c.schedule.warmup = 2.0
    c.model.dropout = 0.1
    with pytest.raises(ValueError, match=r"config\.model\.dropout \(did you mean 'model\.dropout_"):
        check_config(c)
    with pytest.raises(
        ValueError, match=r"config\.schedule\.warmup \(did you mean 'schedule\.warm"
    ):
        check_config(c)
    # An optimizer's hyperparameters keep their own check, which names those it takes.
    c = quick_config()
    c.optimizer.hparams.momentun = 0.9
    with pytest.raises(ValueError, match=r"\['momentun'\] do not apply to 'momentum', which takes"):
        check_config(c)


@pytest.mark.parametrize("restart", ["no", "False", 0, None])
def test_restart_takes_only_true_or_false(tmp_path, restart):
    """restart="no" (any non-empty string) moved the workdir's checkpoints aside."""
    with pytest.raises(TypeError, match=f"restart must be True or False, got {restart!r}"):
        train_and_evaluate(quick_config(), str(tmp_path), restart=restart)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("config", [None, "default", 64])
def test_a_config_that_is_no_configdict_says_so(tmp_path, config):
    """None said "the config lacks dataset, eval_split, model.variant and 58 more"."""
    with pytest.raises(ValueError, match=r"config must be an ml_collections\.ConfigDict, got"):
        train_and_evaluate(config, str(tmp_path))
    with pytest.raises(ValueError, match=r"config must be an ml_collections\.ConfigDict, got"):
        evaluate_checkpoint(config, str(tmp_path))


@pytest.mark.parametrize(
    "name, message",
    [
        ("defualt", r"unknown config preset 'defualt' \(did you mean 'default'\?\); presets are"),
        ("CIFAR10", r"'CIFAR10' \(did you mean 'cifar10'\?\)"),
        ("imagenet", r"unknown config preset 'imagenet'; presets are default, cifar10, paper"),
    ],
)
def test_an_unknown_preset_names_the_near_one(name, message):
    from gdjax.configs import get_config

    with pytest.raises(ValueError, match=message):
        get_config(name)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer.name": "lbfgs"}, r"config.optimizer.name must be one of"),
        ({"optimizer.hparams.b1": 0.5}, r"\['b1'\] do not apply to 'momentum'"),
        ({"schedule.name": "exponential"}, "config.schedule.name must be one of"),
        ({"batch_size": 0}, r"config.batch_size must be >= 1, got 0"),
        ({"optimizer.learning_rate": -1.0}, r"learning_rate must be >= 0, got -1.0"),
        ({"optimizer.hparams.momentum": 1.5}, r"hparams.momentum: .*must be in \[0, 1\), got 1.5"),
        (
            {"optimizer.name": "sgd", "optimizer.hparams.nesterov": True},
            r"config.optimizer.hparams.nesterov: sgd: nesterov needs momentum",
        ),
        ({"label_smoothing": 1.0}, r"config.label_smoothing must be in \[0, 1\)"),
        ({"model.dropout_rate": 1.0}, r"config.model.dropout_rate must be in \[0, 1\)"),
        ({"model.variant": "big"}, r"config.model.variant must be one of"),
        ({"model.groups": 3}, r"config.model.groups=3 does not divide conv2's 32 input channels"),
        # A fraction of an epoch shorter than a step trained 0 steps and said "nothing left to
        # train (the checkpoint had every step)" of a fresh workdir.
        (
            {"num_epochs": 0.001, "num_steps": 0},
            r"config.num_epochs must be at least 1/125 \(one step: an epoch is 125 steps of 32 "
            r"examples\), or num_steps >= 1, got 0.001",
        ),
        # Fewer steps than one accumulation: the run trained without a single update.
        (
            {"optimizer.grad_accum_steps": 1000, "num_epochs": 1.0, "num_steps": 0},
            r"config.optimizer.grad_accum_steps must be at most the run's 125 steps \(the "
            r"optimizer updates once every grad_accum_steps steps: it would never update\)",
        ),
        ({"optimizer.grad_accum_steps": 3_000_000_000}, r"at most the run's 40 steps \(the"),
        # A boundary past the optimizer's int32 count: an OverflowError from inside jit.
        (
            {"schedule.warmup_epochs": 1e9},
            r"config.schedule.warmup_epochs must be within 17,179,869 epochs here \(2\*\*31 - 1 "
            r"optimizer updates, its step count being an int32, at 125 updates an epoch\)",
        ),
        (
            {"schedule.name": "step", "schedule.step_epochs": (1.0, 2e7)},
            r"config.schedule.step_epochs must be within 17,179,869 epochs here .* got \(1.0, 2",
        ),
        # Switches another augmentation ignored without a word.
        (
            {"input.ten_crop": True},
            r"config.input.ten_crop must be False with input.augment='small' \(ten-crop",
        ),
        (
            {"input.flip": True, "input.augment": "alexnet", "input.image_size": 256},
            r"config.input.flip must be False with input.augment='alexnet' .*always mirrors",
        ),
        ({"eval_split": "nosuch"}, r"config.eval_split must be one of"),
        (
            {"dataset": "digits"},
            r"config.dataset='digits' gives 8x8 images; the 'small' AlexNet takes 15 px or more: "
            r"add --config.input.image_size=16",
        ),
        (
            {"model.variant": "paper", "input.image_size": 224},
            r"config.input.image_size=224 makes 224x224 images; the 'paper' AlexNet takes 227 px "
            r".*: set --config.input.image_size=227",
        ),
        # The side comes from the crop: resizing the images would not help.
        (
            {"model.variant": "paper", "input.augment": "alexnet", "input.image_size": 256},
            r"config.input.crop=224 cuts 224x224 crops; the 'paper' AlexNet takes 227 px .*: "
            r"set --config.input.crop=227$",
        ),
        (
            {"input.augment": "alexnet", "input.crop": 10},
            r"config.input.crop=10 cuts 10x10 crops; the 'small' AlexNet takes 15 px or more: "
            r"set --config.input.crop=15$",
        ),
        (
            {"input.augment": "alexnet", "input.crop": 10, "input.image_size": 12},
            r"set --config.input.crop=15 and --config.input.image_size=15$",
        ),
        ({"dataset": "cifar10:/no/such/file"}, r"no such file or folder"),
        ({"batch_size": None}, r"config.batch_size must be set"),
        (
            {"parallel": "pmap", "batch_size": 12},
            "global batch size 12 is not divisible by the 8 devices",
        ),
        ({"model_parallel": 2}, r"config.model_parallel must be 1 with parallel='none'"),
        ({"model_parallel": 0}, r"config.model_parallel must be >= 1, got 0"),
        (
            {"parallel": "sharded", "model_parallel": 3},
            "model_parallel=3 does not divide the 8 devices of each process",
        ),
        (
            {"parallel": "sharded", "model_parallel": 2, "batch_size": 6},
            "global batch size 6 is not divisible by the 4 data-parallel groups",
        ),
        ({"dataset": "mnist"}, "unknown dataset spec"),
        (
            {"schedule.name": "plateau", "schedule.warmup_epochs": 1.0},
            r"config.schedule.warmup_epochs must be 0 with schedule.name='plateau'",
        ),
        ({"optimizer.lr_scaling": "log"}, r"config.optimizer.lr_scaling must be one of linear"),
        ({"optimizer.reference_batch_size": -1}, r"reference_batch_size must be >= 0, got -1"),
        (
            {"schedule.name": "step", "schedule.step_epochs": (30, float("inf"))},
            r"config.schedule.step_epochs must be increasing positive epochs, got \(30, inf\)",
        ),
        ({"num_steps": 0, "num_epochs": float("inf")}, r"num_epochs must be a finite number >= 0"),
        (
            {"optimizer.name": "lars", "optimizer.hparams.trust_coefficient": -0.1},
            r"config.optimizer.hparams.trust_coefficient: .* must be >= 0, got -0.1",
        ),
        ({"seed": -1}, r"config.seed must be in \[0, 2\*\*32 - 1\], got -1"),
        ({"seed": 2**32}, r"config.seed must be in \[0, 2\*\*32 - 1\], got 4294967296"),
        (
            {"input.augment": "alexnet"},
            r"config.input.crop must be at most the side of the images it is cut from "
            r"\(config.dataset='mnist5k' gives 28x28 images; .* --config.input.image_size=256\), "
            r"got 224",
        ),
        (
            {"input.augment": "alexnet", "input.crop": 30, "input.image_size": 20},
            r"\(config.input.image_size=20 makes 20x20 images; resize them with "
            r"--config.input.image_size=30\), got 30",
        ),
    ],
)
def test_config_errors_are_clear_and_early(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(quick_config(**overrides), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer.name": "adamm"}, r"got 'adamm' \(did you mean 'adam'\?\)$"),
        ({"optimizer.name": "SGD"}, r"got 'SGD' \(did you mean 'sgd'\?\)$"),
        ({"model.variant": "Small"}, r"got 'Small' \(did you mean 'small'\?\)$"),
        ({"schedule.name": "cosin"}, r"got 'cosin' \(did you mean 'cosine'\?\)$"),
        ({"optimizer.name": "xyz"}, r"rmsprop, sgd, got 'xyz'$"),
        ({"eval_split": "val"}, r"test for mnist5k, got 'val' \(set --config.eval_split=test\)$"),
    ],
)
def test_a_choice_misspelt_or_in_another_case_names_the_one_meant(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(quick_config(**overrides), str(tmp_path))


def test_learning_rate_recipes():
    from gdjax.train import make_optimizer
    from gdjax.train.recipe import current_learning_rate

    def lrs(**overrides):
        c = quick_config(**overrides)
        tx = make_optimizer(c, steps_per_epoch=10, total_steps=100)
        params = {"w": np.ones(3, np.float32)}
        state = tx.init(params)
        update = jax.jit(tx.update)  # as the trainer runs it (and not 100 eager dispatches)
        out = []
        for _ in range(100):  # the state holds the learning rate its last update used
            _, state = update({"w": np.ones(3, np.float32)}, state, params)
            out.append(current_learning_rate(state))
        return np.asarray(out)

    constant = lrs(**{"schedule.name": "constant"})
    np.testing.assert_allclose(constant, 0.01)
    step = lrs(**{"schedule.name": "step", "schedule.step_epochs": (3, 6)})
    np.testing.assert_allclose(
        step[[0, 29, 30, 59, 60, 99]], [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4], rtol=1e-5
    )
    cosine = lrs(**{"schedule.name": "cosine"})
    want = [0.005 * (1 + np.cos(np.pi * t / 100)) for t in range(100)]
    np.testing.assert_allclose(cosine, want, rtol=1e-4, atol=1e-7)
    warm = lrs(**{"schedule.name": "cosine", "schedule.warmup_epochs": 2.0})
    np.testing.assert_allclose(warm[:21:10], [0.0, 0.005, 0.01], atol=1e-6)
    assert warm[99] < 1e-4
    # The large-batch recipe: learning_rate given for batch 16, run at 64 (x4 linear, x2 sqrt),
    # a linear warm-up over 2 epochs, then the step schedule counted from the run's start.
    big = {"batch_size": 64, "optimizer.reference_batch_size": 16, "schedule.warmup_epochs": 2.0}
    constant_lr = {"schedule.name": "constant"}
    linear = lrs(**big, **{"schedule.name": "step", "schedule.step_epochs": (6,)})
    np.testing.assert_allclose(
        linear[[0, 10, 19, 20, 59, 60, 99]], [0, 0.02, 0.038, 0.04, 0.04, 0.004, 0.004], rtol=1e-5
    )
    sqrt = lrs(**big, **{"optimizer.lr_scaling": "sqrt", "optimizer.name": "lamb"}, **constant_lr)
    np.testing.assert_allclose(sqrt[[0, 10, 20, 99]], [0, 0.01, 0.02, 0.02], rtol=1e-5)
    accumulated = lrs(
        **{**big, "schedule.warmup_epochs": 0.0, "optimizer.grad_accum_steps": 2}, **constant_lr
    )
    np.testing.assert_allclose(accumulated, 0.08, rtol=1e-6)  # global batch 128 = 8 x 16


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_large_batch_optimizers_exempt_biases_from_decay_and_trust_ratio(name):
    """The trainer's LARS exempts biases from weight decay and the trust ratio (a plain
    momentum step), LAMB from weight decay, as the papers' recipes do."""
    from gdjax import optim
    from gdjax.train import make_optimizer

    c = quick_config(
        **{"optimizer.name": name, "optimizer.learning_rate": 0.1, "schedule.name": "constant"},
        **{"optimizer.hparams.weight_decay": 0.01},
    )
    tx = make_optimizer(c, steps_per_epoch=10, total_steps=100)
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 2)), "bias": np.array([2.0, -1.0])}
    grads = {"kernel": rng.normal(size=(3, 2)), "bias": np.array([0.5, 0.25])}
    params, grads = jax.tree.map(lambda x: x.astype(np.float32), (params, grads))
    kernel_only = {"kernel": True, "bias": False}
    if name == "lars":
        want = optim.lars(0.1, 0.01, kernel_only, trust_ratio_mask=kernel_only)
        plain_bias = -0.1 * grads["bias"]  # first step of momentum SGD, lr inside
    else:
        want = optim.lamb(0.1, weight_decay=0.01, mask=kernel_only)
    got, _ = tx.update(grads, tx.init(params), params)
    ref, _ = want.update(grads, want.init(params), params)
    np.testing.assert_allclose(got["kernel"], ref["kernel"], rtol=1e-6)
    np.testing.assert_allclose(got["bias"], ref["bias"], rtol=1e-6)
    if name == "lars":
        np.testing.assert_allclose(got["bias"], plain_bias, rtol=1e-6)
    everything = optim.lars(0.1, 0.01) if name == "lars" else optim.lamb(0.1, weight_decay=0.01)
    other, _ = everything.update(grads, everything.init(params), params)
    assert not np.allclose(other["bias"], got["bias"])  # the mask made a difference


def test_a_warm_up_as_long_as_the_run_is_warned_of():
    """A warm-up of 20 epochs in a run of 10 never reached the peak rate, without a word."""
    message = (
        r"schedule.warmup_epochs=0.5 is as long as the run \(40 steps, 0.32 epochs\) or "
        r"longer: the learning rate never reaches its peak"
    )
    with pytest.warns(UserWarning, match=message):
        build(quick_config(**{"schedule.warmup_epochs": 0.5}))
    from gdjax.train.loop import _check_lengths

    with pytest.warns(UserWarning, match=r"warmup_epochs=0.32 is as long as the run \(40 st"):
        _check_lengths(quick_config(**{"schedule.warmup_epochs": 0.32}), 125, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_lengths(quick_config(**{"schedule.warmup_epochs": 0.31}), 125, 40)  # 39 steps
        _check_lengths(quick_config(), 125, 40)  # no warm-up


def test_mixed_precision_and_gradient_accumulation(tmp_path):
    config = quick_config(
        **{
            "mixed_precision": True,
            "optimizer.grad_accum_steps": 2,
            "num_steps": 6,
            "checkpoint_every_steps": 3,
        }
    )
    result = train_and_evaluate(config, str(tmp_path))
    assert result["steps"] == 6
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        state, _, _ = ckpt.restore_latest(build(config).state)
    finally:
        ckpt.close()
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))  # f32 master weights
    injected = state.opt_state.inner_opt_state  # MultiSteps -> inject_hyperparams
    assert int(injected.count) == 3, "6 micro-batches in groups of 2 make 3 optimizer updates"


@pytest.mark.parametrize("preset", ["cifar10", "paper"])
def test_the_other_presets_train(tmp_path, preset):
    from data_testing import write_cifar, write_folder

    c = get_config(preset)
    if preset == "cifar10":
        tarball, _, _ = write_cifar(tmp_path / "cifar", per_batch=8)
        c.dataset = f"cifar10:{tarball}"
        c.batch_size = 8
    else:
        root = write_folder(
            tmp_path / "imagenet",
            {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 1}},
            size=(240, 300),
        )
        c.dataset = f"folder:{root}"
        c.batch_size = 4
        c.eval_batch_size = 2
        c.input.worker_count = 0
    c.num_steps = 2
    c.progress = False
    result = train_and_evaluate(c, str(tmp_path / "run"))
    assert result["steps"] == 2 and np.isfinite(result["loss"])


def _unreadable_training_images(tmp_path, train, val):
    """An image folder of ``{class: count}`` splits whose every training file is unreadable."""
    from data_testing import write_folder

    root = write_folder(tmp_path / "imagenet", {"train": train, "val": val})
    for f in (root / "train").rglob("*.jpg"):
        f.write_bytes(b"not a jpeg")
    return root


@pytest.mark.filterwarnings("ignore:folder.*unreadable image:UserWarning")
def test_a_training_interval_of_unreadable_images_logs_no_error(tmp_path, monkeypatch):
    """Unreadable images are masked out of the step; an interval whose every example was one
    logged loss 0 and error 0 (a perfect score) for the steps that saw no image. Now the
    rows weigh each step by its real examples, and a row with none has no error."""
    from gdjax import data

    root = _unreadable_training_images(tmp_path, {"a": 2, "b": 2}, {"a": 1, "b": 1})
    c = get_config("paper")
    c.dataset, c.batch_size, c.eval_batch_size = f"folder:{root}", 4, 2
    c.input.worker_count, c.num_steps, c.log_every_steps, c.progress = 0, 2, 1, False
    # No statistics come from a training split without a readable image (the next test): take
    # the validation split's.
    val_stats = data.compute_stats(data.load(c.dataset, "val"))
    monkeypatch.setattr(data, "load_or_compute_stats", lambda source: val_stats)
    with pytest.warns(UserWarning, match="every training example of a logging interval was"):
        result = train_and_evaluate(c, str(tmp_path / "run"))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all("error" not in r and "top5_error" not in r for r in train), train
    assert {r["split"] for r in rows if "error" in r} == {"val"}
    assert 0 <= result["error"] <= 1


def test_a_training_row_weighs_each_step_by_its_real_examples():
    from gdjax.train.loop import _mean_over_examples

    steps = [
        {"loss": 2.0, "error": 0.5, "top5_error": 0.1, "count": 30.0, "learning_rate": 0.1},
        {"loss": 0.0, "error": 0.0, "top5_error": 0.0, "count": 0.0, "learning_rate": 0.1},
        {"loss": 1.0, "error": 0.25, "top5_error": 0.0, "count": 10.0, "learning_rate": 0.1},
    ]
    got = _mean_over_examples(steps)
    assert got == pytest.approx({"loss": 70 / 40, "error": 17.5 / 40, "top5_error": 3 / 40})
    with pytest.warns(UserWarning, match="masked .* has the loss .* but no error"):
        assert _mean_over_examples(steps[1:2]) == {"loss": 0.0}


def test_a_training_split_without_a_readable_image_is_one_line(tmp_path):
    """Its statistics were computed from the blank stand-ins: mean 0, std 1e-6."""
    root = _unreadable_training_images(tmp_path, {"a": 2, "b": 1}, {"a": 1})
    done = subprocess.run(
        [sys.executable, "-m", "gdjax.cli", "train", f"--workdir={tmp_path / 'run'}",
         "--config=paper", f"--config.dataset=folder:{root}", "--config.num_steps=1"],
        env={**FOR_A_WHOLE_STDERR, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == (
        f"gdjax train: compute_stats: none of the 3 images read from folder:{root}/train is "
        "readable"
    )


@pytest.mark.parametrize("mode", ["none", "pmap", "sharded"])
def test_every_mode_keeps_the_oneDNN_kernels(mode):
    """pmap and one device run the oneDNN calls per device; a sharded run too, since the model
    runs its convolutions and poolings per device there (shard_map), with its parameters
    partitioned (Flax boxes, removed from the state)."""
    c = get_config("default")
    c.parallel, c.eval_batch_size = mode, 512
    run = build(c)
    model = run.state.apply_fn.__self__
    assert model.impl == "auto"
    assert model.partitioned == (mode == "sharded")
    assert (run.shardings is not None) == (mode == "sharded")
    assert not any(isinstance(x, nn.meta.AxisMetadata) for x in jax.tree.leaves(
        run.state, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)))  # fmt: skip
    c.model.impl = "bogus"
    with pytest.raises(ValueError, match="impl must be one of"):
        build(c)


def test_fused_relu_reaches_the_model_and_is_checked():
    c = get_config("default")
    c.model.fused_relu = True
    model = build(c).state.apply_fn.__self__
    assert model.fused_relu
    c.model.activation = "tanh"
    need = r"config.model.fused_relu must be False or unset with model.activation='tanh'"
    with pytest.raises(ConfigError, match=need):
        check_config(c)


def _steps(directory):
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _truncate_biggest_array(checkpoint):
    """Damage a checkpoint as a full disk or a kill mid-copy does: its biggest array file cut
    to 100 bytes."""
    arrays = sorted(checkpoint.rglob("ocdbt.process_0/d/*"))
    with open(max(arrays, key=lambda p: p.stat().st_size), "r+b") as f:
        f.truncate(100)


def test_a_truncated_newest_checkpoint_is_replaced_not_kept(tmp_path):
    """A damaged newest step: the rerun falls back, retrains to that step and writes it anew
    (the damaged one moved aside), so the next run and gdjax eval read the new one."""
    config = quick_config(num_steps=6, checkpoint_every_steps=2)
    train_and_evaluate(config, str(tmp_path))
    _truncate_biggest_array(tmp_path / "checkpoints" / "6")
    with pytest.warns(UserWarning, match=r"checkpoint 6 .* is unreadable \(damaged"):
        train_and_evaluate(config, str(tmp_path))
    assert _steps(tmp_path / "checkpoints")[-1] == 6
    assert len(list((tmp_path / "checkpoints.unreadable").iterdir())) == 1
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        state, _, _ = ckpt.restore_latest(build(config).state)  # no warning: it reads
    finally:
        ckpt.close()
    assert int(state.step) == 6 and not ckpt.unreadable


def test_eval_of_a_chosen_step_scores_that_checkpoint_and_never_another(tmp_path):
    """evaluate_checkpoint (and gdjax eval) scored only the newest checkpoint; ``step`` picks
    one the workdir keeps. It scores what the run logged when it evaluated at that step; a step
    not kept, or one whose files are damaged, is an error naming it, not another step's score."""
    config = quick_config(num_steps=6, checkpoint_every_steps=2, eval_every_epochs=1e-6)
    train_and_evaluate(config, str(tmp_path))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    logged = {r["step"]: r for r in rows if r["split"] == "test"}
    assert _steps(tmp_path / "checkpoints") == [2, 4, 6]
    for step in (2, 4, 6, np.int64(4)):
        result = evaluate_checkpoint(config, str(tmp_path), step)
        assert result["step"] == step
        for key in ("loss", "error", "top5_error"):
            assert result[key] == pytest.approx(logged[int(step)][key], rel=1e-6), (step, key)
    assert logged[2]["loss"] != logged[6]["loss"]  # the steps are told apart
    assert evaluate_checkpoint(config, str(tmp_path))["step"] == 6
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3 .*keeps steps: 2, 4, 6"):
        evaluate_checkpoint(config, str(tmp_path), 3)
    for bad in (-1, 2.0, "2", True):
        with pytest.raises(
            ValueError, match=rf"step must be .*integer >= 0, got {re.escape(repr(bad))}"
        ):
            evaluate_checkpoint(config, str(tmp_path), bad)
    for bad in (True, 2.0, -2):  # the checkpointer itself too (2.0 == 2 restored step 2)
        with pytest.raises(ValueError, match=rf"step must be an integer >= 0, got {bad!r}"):
            Checkpointer(tmp_path / "checkpoints").restore_step(None, bad)
    _truncate_biggest_array(tmp_path / "checkpoints" / "4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no warning: the error says it
        with pytest.raises(CheckpointUnreadableError, match=r"checkpoint 4 in .* is unreadable"):
            evaluate_checkpoint(config, str(tmp_path), 4)
    assert _steps(tmp_path / "checkpoints") == [2, 4, 6]  # eval writes nothing, moves nothing
    assert evaluate_checkpoint(config, str(tmp_path), 2)["step"] == 2


def test_a_truncated_newest_checkpoint_costs_the_command_two_lines(tmp_path):
    """The rerun said what it did in two lines, then, in about one run of three here, 3 to 37
    tracebacks of about 60 lines each ("Exception ignored in: <coroutine object
    _read_array_index_and_device_put>"): orbax's other reads of the damaged checkpoint, closed
    unfinished whenever the garbage collector found them (the next test makes it happen)."""
    flags = {"num_steps": 6, "checkpoint_every_steps": 2, "progress": False}
    train_and_evaluate(override(get_config("default"), **flags), str(tmp_path))
    _truncate_biggest_array(tmp_path / "checkpoints" / "6")
    done = subprocess.run(
        [sys.executable, "-m", "gdjax.cli", "train", f"--workdir={tmp_path}",
         *(f"--config.{k}={v}" for k, v in flags.items())],
        env={**FOR_A_WHOLE_STDERR, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr[-3000:]
    assert lines[0] == (
        f"gdjax train: warning: checkpoint 6 in {tmp_path / 'checkpoints'} is unreadable "
        "(damaged or incomplete files: Exception); trying an older one"
    )
    assert lines[1].startswith("gdjax train: warning: unreadable checkpoint 6 moved to ")
    assert "resumed from step 4" in done.stdout


def test_orbax_reads_abandoned_in_a_failed_folder_print_nothing(monkeypatch, tmp_path):
    """What the garbage collector does to each of them, on purpose: orbax's read coroutine
    turns the GeneratorExit of its closing into an Exception naming the array's folder, which
    Python prints as "Exception ignored in". From a failure on, the hook drops those of the
    folders that failed, and passes on everything else."""
    from gdjax.train import checkpoint

    class Suspend:
        def __await__(self):
            yield

    async def read(folder):  # as orbax's _read_array_index_and_device_put
        try:
            await Suspend()
        except BaseException as e:
            raise Exception(f"error while reading array index: 'path': '{folder}/30/'") from e

    async def fails(folder):
        try:
            await Suspend()
        finally:
            raise ValueError(f"another error in {folder}")  # not orbax's conversion

    seen = []
    hook = checkpoint._without_late_wakeups(seen.append)
    failed, elsewhere = str(tmp_path / "checkpoints"), str(tmp_path / "other")
    monkeypatch.setattr(checkpoint, "_FAILED_IN", {failed})

    def collect(coroutine):
        coroutine.send(None)  # suspended, as orbax leaves them
        monkeypatch.setattr(sys, "unraisablehook", hook)
        del coroutine  # the last reference: Python closes it now
        monkeypatch.undo()
        monkeypatch.setattr(checkpoint, "_FAILED_IN", {failed})

    collect(read(failed))
    assert seen == []
    collect(read(elsewhere))
    assert len(seen) == 1 and elsewhere in str(seen[0].exc_value)
    collect(fails(failed))
    assert len(seen) == 2 and "another error" in str(seen[1].exc_value)


def test_orbax_errors_about_a_given_up_write_print_nothing(monkeypatch, tmp_path):
    """After a second Ctrl-C gave up a write, orbax's metadata thread went on and logged an
    ERROR with a 30-line traceback once it found the folder gone (seen pressing Ctrl-C twice
    at a `gdjax train`). absl's logger drops, from a failure on, the errors that name a folder
    that failed, and only those."""
    import logging

    from gdjax.train import checkpoint

    failed, elsewhere = str(tmp_path / "checkpoints"), str(tmp_path / "other")
    monkeypatch.setattr(checkpoint, "_FAILED_IN", {failed})
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    absl = logging.getLogger("absl")
    keep = Keep(logging.DEBUG)
    absl.addHandler(keep)
    level = absl.level
    absl.setLevel(logging.DEBUG)
    try:
        with (
            pytest.raises(checkpoint.CheckpointWriteError),
            checkpoint._orbax_failures(tmp_path / "checkpoints") as failures,
        ):
            failures.append("interrupted")  # what the given-up write reports
            raise checkpoint.CheckpointWriteError("given up")
        gone = f"No ArrayMetadata found in the checkpoint directory: {failed}/79.orbax-tmp/state"
        try:
            raise ValueError(gone)
        except ValueError:  # as orbax's thread logs it: the error and its traceback
            absl.error("_SignalingThread.run() raised an exception: %s", gone, exc_info=True)
        absl.error("a write failed in %s", elsewhere)  # another folder: shown
        absl.warning("a warning about %s", failed)  # below ERROR: shown
    finally:
        absl.removeHandler(keep)
        absl.setLevel(level)
    # Only this test's records: orbax threads left by earlier tests in this worker may log to
    # absl meanwhile (about their own folders), which once failed this test under xdist.
    ours = [r.getMessage() for r in seen if str(tmp_path) in r.getMessage()]
    assert ours == [f"a write failed in {elsewhere}", f"a warning about {failed}"]


FULL_DISK = """
import resource, signal, sys
from gdjax import cli
from gdjax.train import checkpoint

# After the first checkpoint, no file may grow past 64 kB (the logs stay below that, the
# checkpoint's array files do not): the kernel refuses the write with EFBIG, as a full disk
# refuses it with ENOSPC.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
save = checkpoint.Checkpointer.save


def save_then_fill_the_disk(self, *args, **kwargs):
    written = save(self, *args, **kwargs)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    return written


checkpoint.Checkpointer.save = save_then_fill_the_disk
sys.exit(cli.main(["gdjax", "train", *sys.argv[1:]]))
"""


def test_a_checkpoint_the_disk_refuses_is_one_line_and_the_older_one_resumes(tmp_path):
    """It was 331 lines (orbax's threads logging the write error, "Event loop is closed"
    tracebacks), exit status 2 as if the config were wrong, and the partial checkpoint folder
    left on the full disk."""
    flags = [f"--workdir={tmp_path}", "--config.max_steps=6", "--config.progress=False"]
    flags += ["--config.batch_size=32", "--config.checkpoint_every_steps=2"]
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *flags],
        env=FOR_A_WHOLE_STDERR,
        capture_output=True,
        text=True,
    )
    want = (
        f"gdjax train: checkpoint 4 could not be written in {tmp_path / 'checkpoints'} "
        "(File too large); its partial files were removed and checkpoint 2 is kept"
    )
    assert done.returncode == 1 and done.stderr.strip() == want, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    # With room again, the run resumes from the checkpoint kept.
    config = override(
        get_config("default"),
        **{"max_steps": 6, "progress": False, "batch_size": 32, "checkpoint_every_steps": 2},
    )
    assert train_and_evaluate(config, str(tmp_path))["steps_this_run"] == 4
    assert _steps(tmp_path / "checkpoints") == [2, 4, 6]


LATE_WAKEUPS = """
import asyncio, os, pathlib, sys, threading
import tensorstore as ts
from gdjax.train import checkpoint


def a_write_finishing_after_its_loop_closed():
    # As orbax's writes do after a failure: a loop awaits a tensorstore future, the loop is
    # closed, and the future completes later on another thread.
    promise, future = ts.Promise.new()
    loop = asyncio.new_event_loop()

    async def wait():
        return await future

    task = loop.create_task(wait())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    thread = threading.Thread(target=promise.set_result, args=(1,))
    thread.start()
    thread.join()
    return task


class Loud:
    def __del__(self):
        raise ValueError("an error of the user's own")


held = [a_write_finishing_after_its_loop_closed()]
print("-- failure --", file=sys.stderr)
with checkpoint._orbax_failures(pathlib.Path(sys.argv[1])) as failed:
    failed.append("No space left on device")
held += [a_write_finishing_after_its_loop_closed() for _ in range(3)]
Loud()
sys.stderr.flush()
os._exit(0)
"""


def test_writes_finishing_after_a_reported_failure_print_nothing(tmp_path):
    """After a failed write, tensorstore finished orbax's other writes on a closed event loop,
    each printing an "Event loop is closed" traceback under the one-line report (a flaky
    failure of the test above, under load). From the first reported failure on these are
    dropped; before it, and any other error, still print."""
    done = subprocess.run(
        [sys.executable, "-c", LATE_WAKEUPS, str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    before, after = done.stderr.split("-- failure --")
    assert before.count("RuntimeError: Event loop is closed") == 1, done.stderr
    assert "Event loop is closed" not in after, done.stderr
    assert "ValueError: an error of the user's own" in after, done.stderr


CTRL_C_DURING_A_SAVE = """
import os, signal, sys
import orbax.checkpoint as ocp
from gdjax import cli

# Ctrl-C once orbax has begun writing checkpoint 20.
save = ocp.CheckpointManager.save


def save_and_press_ctrl_c(self, step, *args, **kwargs):
    if step == 20:
        os.kill(os.getpid(), signal.SIGINT)
    return save(self, step, *args, **kwargs)


ocp.CheckpointManager.save = save_and_press_ctrl_c
sys.argv = ["gdjax", "train", *sys.argv[1:]]
cli.entry_point()  # the console script's own path out, os._exit included
"""


def test_ctrl_c_during_a_save_completes_it_and_says_what_resumes(tmp_path):
    """Ctrl-C while a checkpoint was being written left orbax's threads writing as the
    interpreter shut down: "cannot schedule new futures after shutdown" and "Event loop is
    closed" tracebacks under the one line, and the half-written folder; a Ctrl-C during a
    compilation crashed the process at exit (SIGSEGV). The line did not say what was kept."""
    flags = [f"--workdir={tmp_path}", "--config.max_steps=30", "--config.progress=False"]
    flags += ["--config.batch_size=32", "--config.checkpoint_every_steps=10"]
    command = [sys.executable, "-c", CTRL_C_DURING_A_SAVE, *flags]
    done = subprocess.run(command, env=FOR_A_WHOLE_STDERR, capture_output=True, text=True)
    want = (
        f"gdjax train: interrupted at step 20; checkpoint 20 is kept in "
        f"{tmp_path / 'checkpoints'}, and a run with the same workdir ({tmp_path}) resumes from it"
    )
    assert done.returncode == 130 and done.stderr.strip() == want, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "20"]
    config = override(
        get_config("default"),
        **{"max_steps": 30, "progress": False, "batch_size": 32, "checkpoint_every_steps": 10},
    )
    assert train_and_evaluate(config, str(tmp_path))["steps_this_run"] == 10


def test_a_terminals_ctrl_c_stops_the_loader_workers_quietly(tmp_path):
    """A terminal's Ctrl-C reaches every process of its foreground group: each grain worker
    printed a KeyboardInterrupt traceback under the one line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gdjax.cli", "train", f"--workdir={tmp_path}",
         "--config.batch_size=32", "--config.num_steps=100000",
         "--config.checkpoint_every_steps=10", "--config.eval_every_epochs=1000",
         "--config.progress=False", "--config.input.worker_count=2"],
        env={**FOR_A_WHOLE_STDERR, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    _wait_for_checkpoint(tmp_path, 20, proc)
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: the run and its workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    said = re.findall(r"^gdjax train: interrupted at step \d+; checkpoint \d+ is kept", err, re.M)
    assert len(said) == 1, err[-3000:]
    # (Python's resource tracker may add a line about grain's shared memory it cleans up:
    # no longer the ~50 batches grain's deleter had queued, but batches still in flight
    # between the stopped workers and the main process, 0 to about 20 of them.)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    deadline = time.time() + 30  # and no process of the run is left behind
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("processes of the interrupted run were still running 30 s later")


SHARED_BATCHES = """
import gc
import os
import numpy as np
try:
    from grain._src.python.ipc import shared_memory_array as shm
except ImportError:  # grain 0.2.15 keeps it outside ipc
    from grain._src.python import shared_memory_array as shm
from gdjax import cli

# As the main process holds them: batches a worker handed over, unlinked when dropped, by a
# thread pool of one thread (which grain's multiprocess prefetch enables).
shm.SharedMemoryArray.enable_async_del(1)
# A collection at every allocation, in every thread: the interleavings of a loaded machine, where
# grain's thread and ours closing at once left an unlink undone (1 to 3 left, 6 runs in 40 here).
gc.set_threshold(1)


def handed_over():  # as a worker writes a batch and the main process opens it (grain's steps)
    made = shm.SharedMemoryArray((4096,), np.float64)
    made[:] = 1.0
    metadata = made.metadata
    del made  # the worker's handle: closed, not unlinked
    batch = shm.SharedMemoryArray.from_metadata(metadata)
    batch.unlink_on_del()  # the main process unlinks it when it drops it
    return batch


batches = [handed_over() for _ in range(60)]
names = ["/dev/shm/" + b.shm.name.lstrip("/") for b in batches]
assert all(os.path.exists(n) for n in names)
held = [batches]
held.append(held)  # a cycle: only the collector lets go of them
del batches, held
cli._unlink_shared_batches()
print(sum(os.path.exists(n) for n in names), "left")
os._exit(0)  # as the command's path out after a Ctrl-C: no teardown
"""


def test_a_ctrl_c_unlinks_the_loaders_shared_batches_before_the_quick_exit():
    """After a Ctrl-C the command skips the interpreter's teardown; the batches grain's
    workers had handed over in shared memory were left for multiprocessing's resource
    tracker, which printed "There appear to be 52 leaked shared_memory objects"."""
    for _ in range(4):
        done = subprocess.run(
            [sys.executable, "-c", SHARED_BATCHES], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split() == ["0", "left"], (done.stdout, done.stderr[-3000:])
        assert "leaked shared_memory" not in done.stderr, done.stderr


def test_closing_the_loader_is_bounded_when_grains_close_blocks():
    """grain's close() joined its prefetch thread, which a Ctrl-C inside grain's iterator can
    leave blocked on a full buffer for good (a CI run hung so, read off the live process's
    thread stacks). The trainer gives close() a deadline and says so when it passes."""
    import threading

    from gdjax.train import loop

    class Closing:
        def __init__(self, blocks):
            self.blocks, self.calls = blocks, 0

        def close(self):
            self.calls += 1
            if self.blocks:
                threading.Event().wait()  # never returns

    quick = Closing(blocks=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop._close_batches(quick)  # a close that returns: no warning
    assert quick.calls == 1
    stuck = Closing(blocks=True)
    with pytest.warns(UserWarning, match=r"did not stop within 0 s \(grain's prefetch thread"):
        loop._close_batches(stuck, timeout=0.2)
    assert stuck.calls == 1


HANGING_EXIT = """
import atexit, sys, threading
from gdjax import cli

cli.EXIT_GRACE_SECONDS = 2.0
cli.main = lambda: (print("gdjax train: interrupted", file=sys.stderr), cli.INTERRUPTED)[1]
atexit.register(threading.Event().wait)  # an exit function that never returns
sys.argv = ["gdjax"]
cli.entry_point()
"""


def test_an_interrupted_run_leaves_even_if_its_clean_up_hangs():
    """The quick exit after a Ctrl-C runs the exit functions (and waits for grain's deleter):
    one that never returned kept the stopped run alive (seen twice in CI, a run that had
    printed its interrupted line and did not exit within 120 s). Past a deadline the
    process now leaves anyway, with the same status."""
    done = subprocess.run(  # without the deadline: a hang, and the timeout fails the test
        [sys.executable, "-c", HANGING_EXIT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.strip() == "gdjax train: interrupted", done.stderr[-3000:]


PRESSED_AGAIN = """
import atexit, os, signal, sys, time
from gdjax import cli

cli.EXIT_GRACE_SECONDS = 600.0
cli.main = lambda: (print("gdjax train: interrupted", file=sys.stderr), cli.INTERRUPTED)[1]


def slow_clean_up():  # the user presses Ctrl-C again while the stopped run cleans up
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(300)


atexit.register(slow_clean_up)
sys.argv = ["gdjax"]
cli.entry_point()
"""


def test_a_second_ctrl_c_during_the_clean_up_leaves_at_once_and_quietly():
    """A second Ctrl-C after the one line raised KeyboardInterrupt wherever the clean-up was:
    a traceback followed the line ("Exception ignored in: <function _xla_gc_callback ...>",
    found by pressing Ctrl-C twice at a `gdjax train`). It now ends the clean-up at once."""
    done = subprocess.run(  # without leaving at once: a 300 s wait, and the timeout fails it
        [sys.executable, "-c", PRESSED_AGAIN], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.strip() == "gdjax train: interrupted", done.stderr[-3000:]


# The abandoned write leaves orbax's coroutine unawaited and its event loop to the collector:
# what giving up a save in the middle means, in this process only.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_second_ctrl_c_abandons_the_save_and_keeps_the_older_checkpoint(tmp_path, monkeypatch):
    """The first Ctrl-C waits for the write; a second one gives it up at once. Either way no
    partial folder is left, and the checkpoint before is untouched. A killed write's
    temporary folder was never removed (it stayed, the size of a checkpoint, unless a later
    run saved the same step)."""
    import threading

    import orbax.checkpoint as ocp

    config = quick_config(num_steps=10)
    train_and_evaluate(config, str(tmp_path))
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        state, data_state, meta = ckpt.restore_latest(build(config).state)
        save = ocp.CheckpointManager.save

        def press_twice(self, step, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # held back until the write is complete
            threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGINT)).start()
            return save(self, step, *args, **kwargs)

        monkeypatch.setattr(ocp.CheckpointManager, "save", press_twice)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save(20, state.replace(step=state.step + 10), data_state, meta)
            time.sleep(5)  # a second Ctrl-C that came after the write still interrupts
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        ckpt.close()
    # What a process killed in the middle of a write (SIGKILL, the OOM killer) leaves.
    killed = tmp_path / "checkpoints" / "25.orbax-checkpoint-tmp-1764900000"
    (killed / "state").mkdir(parents=True)
    (killed / "state" / "part").write_bytes(b"\0" * 4096)
    again = Checkpointer(tmp_path / "checkpoints")  # as the next run opens it
    try:
        restored, data_state, meta = again.restore_latest(build(config).state)
        assert int(restored.step) in (10, 20)
        assert again.save(30, restored.replace(step=30), data_state, meta)
        # Neither what orbax's threads went on writing after the second Ctrl-C nor the killed
        # write's folder is left.
        names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
        assert names == sorted({"10", str(int(restored.step)), "30"}), names
    finally:
        again.close()


def test_a_second_run_in_the_same_workdir_stops_at_once(tmp_path):
    """Two runs in one workdir trained side by side, each overwriting the other's checkpoints,
    until one read a checkpoint folder the other had just replaced: "[Errno 2] No such file or
    directory: '.../checkpoints/150'" (exit 2, as for a bad config)."""
    from gdjax.train import WorkdirBusyError

    first = _start(tmp_path, "--config.num_steps=100000")
    try:
        _wait_for_checkpoint(tmp_path, 10, first)
        with pytest.raises(WorkdirBusyError, match=rf"^{re.escape(str(tmp_path))} is in use by"):
            train_and_evaluate(quick_config(), str(tmp_path))
        second = subprocess.run(
            [sys.executable, "-m", "gdjax.cli", "train", f"--workdir={tmp_path}"],
            env={**FOR_A_WHOLE_STDERR, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )
        assert second.returncode == 1, second.stderr[-3000:]
        assert second.stderr.strip() == (
            f"gdjax train: {tmp_path} is in use by another run (a gdjax process training there "
            "holds it); wait for that run to end, stop it, or choose another workdir"
        )
        assert first.poll() is None, "the first run goes on"
        # Past this config's 40 steps before it is stopped (on a loaded machine it may still be
        # short of 40 here, and the resume below would then rightly train the rest).
        _wait_for_checkpoint(tmp_path, 50, first)
    finally:
        first.send_signal(signal.SIGTERM)  # saves and exits
        first.communicate(timeout=120)
    assert first.returncode == 143
    # Once it has ended the workdir is free: the next run resumes there (from the step the
    # first one saved at SIGTERM, at least 50, past this config's 40).
    assert train_and_evaluate(quick_config(), str(tmp_path))["steps_this_run"] == 0


def test_a_run_that_fails_before_writing_leaves_no_new_folder(tmp_path, monkeypatch):
    import gdjax.train.loop as loop

    def no_data(c):
        raise FileNotFoundError("the data went away")

    monkeypatch.setattr(loop, "build", no_data)
    with pytest.raises(FileNotFoundError, match="went away"):
        train_and_evaluate(quick_config(), str(tmp_path / "new" / "run"))
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_during_a_failed_write_still_reports_it_and_cleans_up(tmp_path, monkeypatch):
    """A Ctrl-C held back during a write that then failed was raised as the write's block
    ended, before the failure was handled: the partial folder stayed and the write error was
    lost."""
    import errno

    import orbax.checkpoint as ocp

    from gdjax.train import CheckpointWriteError

    config = quick_config(num_steps=10)
    train_and_evaluate(config, str(tmp_path))
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        state, data_state, meta = ckpt.restore_latest(build(config).state)

        def press_then_fail(self, step, *args, **kwargs):
            (tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-1").mkdir()
            os.kill(os.getpid(), signal.SIGINT)  # held back until the write is over
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(ocp.CheckpointManager, "save", press_then_fail)
        with pytest.raises(
            CheckpointWriteError, match=r"\(No space left on device\); .* 10 is kept"
        ):
            ckpt.save(20, state.replace(step=20), data_state, meta)
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        ckpt.close()


def test_another_config_on_a_workdir_stops_before_writing(tmp_path):
    train_and_evaluate(quick_config(num_steps=20), str(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    changed = quick_config(**{"num_steps": 20, "optimizer.name": "rmsprop"})
    with pytest.raises(WorkdirMismatchError, match=r"changed: optimizer.name\).*--restart") as e:
        train_and_evaluate(changed, str(tmp_path))
    assert str(tmp_path) in str(e.value)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "nothing in the workdir may change"
    # gdjax eval has neither --restart nor a workdir to choose: it says what it can do.
    with pytest.raises(WorkdirMismatchError, match=r"changed: optimizer.name\).*") as e:
        evaluate_checkpoint(changed, str(tmp_path))
    assert "its config.json (gdjax eval reads it when --config is left out)" in str(e.value)
    assert "--restart" not in str(e.value) and "new --workdir" not in str(e.value)
    # The explicit way to start over keeps the old checkpoints, moved aside.
    old_rows = (tmp_path / "metrics.jsonl").read_text()
    result = train_and_evaluate(changed, str(tmp_path), restart=True)
    assert result["steps"] == 20
    (old,) = tmp_path.glob("checkpoints.before-restart-*")
    assert _steps(old) == [10, 20]
    # ... and its logs beside them: the new run's metrics.jsonl ran on from the old one's
    stamp = old.name.removeprefix("checkpoints.before-restart-")
    assert (tmp_path / f"metrics.before-restart-{stamp}.jsonl").read_text() == old_rows
    for name in (f"tensorboard.before-restart-{stamp}", f"curves.before-restart-{stamp}.png"):
        assert (tmp_path / name).exists(), name
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in rows] == [(10, "train"), (20, "train"), (20, "test")]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["name"] == "rmsprop"


def test_restarts_in_the_same_second_keep_each_others_logs(tmp_path, monkeypatch):
    """A second --restart within the second renamed its metrics.jsonl onto the first's."""
    from gdjax.train import loop

    monkeypatch.setattr(loop.time, "strftime", lambda fmt: "20261206-120000")
    for n, text in enumerate(("first", "second"), 1):
        (tmp_path / "metrics.jsonl").write_text(text)
        stamp = loop._free_stamp(tmp_path)
        assert stamp == ("20261206-120000" if n == 1 else "20261206-120000-2")
        loop._move_logs_aside(tmp_path, stamp)
    assert (tmp_path / "metrics.before-restart-20261206-120000.jsonl").read_text() == "first"
    assert (tmp_path / "metrics.before-restart-20261206-120000-2.jsonl").read_text() == "second"


def test_a_changed_network_is_refused_on_resume_and_in_eval(reference, tmp_path):
    """Same shapes, another function: the checkpoint restores, so this used to resume (or
    evaluate) the weights as a different network and overwrite config.json."""
    import shutil

    from gdjax.train import changed_network

    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    for field, value, shown in [
        ("model.activation", "tanh", "model.activation: 'relu' -> 'tanh'"),
        ("model.lrn", False, "model.lrn: True -> False"),
    ]:
        c = quick_config(**{field: value, "num_steps": 60})
        with pytest.raises(ConfigError, match=rf"another network \(changed: {shown}\)"):
            evaluate_checkpoint(c, str(workdir))
        with pytest.raises(WorkdirMismatchError, match=rf"changed: {shown}\).*--restart"):
            train_and_evaluate(c, str(workdir))
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    assert after == before, "nothing in the workdir may change"
    # the same network, spelled otherwise or run on other kernels, is not a change
    same = quick_config(**{"model.groups": 1, "model.impl": "xla", "model.dropout_rate": 0.1})
    assert changed_network(workdir, same) == []
    # a config.json from an older gdjax, without some of the fields, compares what it has
    (workdir / "config.json").write_text(json.dumps({"model": {"activation": "relu"}}))
    assert changed_network(workdir, quick_config()) == []
    assert changed_network(workdir, quick_config(**{"model.activation": "tanh"})) == [
        "model.activation: 'relu' -> 'tanh'"
    ]


def test_evaluation_rows_are_named_by_the_split_evaluated(tmp_path):
    """They were all "test" (and "test/..." in TensorBoard), whatever eval_split said; an
    evaluation of the training split is "train_eval", apart from the running "train" rows."""
    config = quick_config(num_steps=4, eval_split="train", log_every_steps=2)
    train_and_evaluate(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [
        (2, "train"),
        (4, "train"),
        (4, "train_eval"),
    ]
    assert rows[-1]["error"] < 1.0


def test_a_partial_config_or_no_workdir_is_named(tmp_path):
    """A hand-made dict failed with KeyError: 'dataset'; workdir=None with a TypeError from
    pathlib."""
    with pytest.raises(
        ConfigError, match=r"lacks dataset, eval_split, .*configs.get_config\('default'\)"
    ):
        train_and_evaluate({"batch_size": 32}, str(tmp_path))
    for workdir in (None, "", 3):
        with pytest.raises(
            ConfigError, match=rf"workdir must be a folder's path .*got {workdir!r}"
        ):
            train_and_evaluate(quick_config(), workdir)
        with pytest.raises(
            ConfigError, match=rf"workdir must be a folder's path .*got {workdir!r}"
        ):
            evaluate_checkpoint(quick_config(), workdir)
    assert list(tmp_path.iterdir()) == []


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train_and_evaluate(quick_config(), str(target))
    with pytest.raises(ConfigError, match=f"under {target}, which is a file, not a folder"):
        train_and_evaluate(quick_config(), str(target / "run" / "a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_workdir_that_cannot_be_made_is_refused_before_the_data(tmp_path, monkeypatch):
    """The check makes and removes an empty folder where the workdir would go; a folder where
    that fails stops the run before anything is read or compiled (``build`` is never called)."""
    from gdjax.train import loop

    class PastTheCheckError(Exception):
        pass

    def build(config):
        raise PastTheCheckError

    monkeypatch.setattr(loop, "build", build)
    with pytest.raises(ConfigError, match=r"--workdir /proc/gdjax-run: cannot write in /proc"):
        train_and_evaluate(quick_config(), "/proc/gdjax-run")
    with pytest.raises(PastTheCheckError):
        train_and_evaluate(quick_config(), str(tmp_path / "new" / "run"))
    assert list(tmp_path.iterdir()) == [], "the check left something behind"


def test_several_processes_need_a_mode_that_spans_them():
    from gdjax.train import check_config

    with pytest.raises(ValueError, match=r"parallel must be pmap or sharded in a run of 2"):
        check_config(quick_config(), process_count=2)
    check_config(quick_config(parallel="sharded"), process_count=2)


def test_digits_train_when_resized(tmp_path):
    config = quick_config(**{"dataset": "digits", "input.image_size": 16, "num_steps": 4})
    config.eval_batch_size = 100
    result = train_and_evaluate(config, str(tmp_path))
    assert result["steps"] == 4 and np.isfinite(result["loss"])
