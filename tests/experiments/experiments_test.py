"""Every experiment runs at a tiny size (--quick), writes its plots and numbers, and the numbers
are sane. The full runs and their results are in experiments/README.md, not in CI."""

import importlib
import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def experiments():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        yield lambda name: importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "experiments"))


def run(experiments, name, tmp_path):
    results = experiments(name).main(["--quick", "--out", str(tmp_path)])
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["experiment"] == name and stored["wall_seconds"] >= 0
    assert stored["machine"]["backend"] == "cpu"
    return results, stored


@pytest.mark.parametrize("name", ["gd_variants", "transfer", "large_batch"])
def test_an_unwritable_out_is_one_line_before_any_work(experiments, tmp_path, capsys, name):
    """--out under a file was a traceback from mkdir (or from the first plot)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out, why in ((a_file, "is a file, not a folder"), (a_file / "sub", "cannot make folder")):
        with pytest.raises(SystemExit) as exit_:
            experiments(name).main(["--quick", "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "error: argument --out: " in err and why in err, err
        assert "Traceback" not in err
    made = tmp_path / "new" / "deeper"
    assert experiments("common").output_dir(str(made)) == str(made) and made.is_dir()


def test_gd_variants(experiments, tmp_path):
    results, _ = run(experiments, "gd_variants", tmp_path)
    for png in ("regression.png", "batch_lr.png", "logistic.png"):
        assert (tmp_path / png).stat().st_size > 5000
    # Batch GD run long enough lands on the closed-form least-squares solution.
    assert results["closed_form_vs_batch_gd"]["distance"] < 0.1
    for name, r in results["regression"].items():
        assert r["final_loss_gap"]["mean"] < 5.0, name
    for name, r in results["logistic_digits"].items():
        assert r["test_accuracy"]["mean"] > 0.5, name


def test_landscapes(experiments, tmp_path):
    results, _ = run(experiments, "landscapes", tmp_path)
    assert (tmp_path / "trajectories.png").stat().st_size > 10000
    start = {"quadratic": 0.5 * (16 + 50 * 1.5**2), "rosenbrock": 12.5}
    for problem, per_opt in results.items():
        assert set(per_opt) == {"SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam"}
        for name, r in per_opt.items():
            assert r["final_loss"] < start[problem], (problem, name)


def test_adam_paper(experiments, tmp_path):
    results, _ = run(experiments, "adam_paper", tmp_path)
    assert (tmp_path / "adam_paper.png").is_file()
    for name, r in results["logistic"].items():
        assert r["final_training_loss"]["mean"] < np.log(10), name
    assert len(results["cnn"]) == 2


def test_alexnet_ablations(experiments, tmp_path):
    results, stored = run(experiments, "alexnet_ablations", tmp_path)
    assert (tmp_path / "ablations.png").is_file()
    assert len(results) == 2 and "tanh" in results
    for r in results.values():
        assert 0 <= r["final_test_error"]["mean"] <= 1
    assert "tanh_over_relu_steps_to_25pct" in stored["summary"]


def test_transfer(experiments, tmp_path):
    results, _ = run(experiments, "transfer", tmp_path)
    assert (tmp_path / "transfer.png").is_file()
    for method in ("transfer", "scratch"):
        for r in results[method].values():
            assert 0 <= r["mean"] <= 1


def test_schedules(experiments, tmp_path):
    results, _ = run(experiments, "schedules", tmp_path)
    assert (tmp_path / "schedules.png").is_file()
    assert len(results) == 2


def test_large_batch(experiments, tmp_path):
    results, stored = run(experiments, "large_batch", tmp_path)
    assert (tmp_path / "large_batch.png").stat().st_size > 10000
    assert set(results) == {"momentum SGD", "LARS", "LAMB"}
    for method, per_batch in results.items():
        assert set(per_batch) == {32, 128}
        for r in per_batch.values():
            assert 0 <= r["test_error"]["mean"] <= 1, method
        # the rate is scaled from the reference batch of 64: linearly, or by the square root
        ratio = per_batch[128]["peak_learning_rate"] / per_batch[32]["peak_learning_rate"]
        assert ratio == pytest.approx(2.0 if method == "LAMB" else 4.0)
        assert per_batch[32]["steps"] == 4 * per_batch[128]["steps"]
    assert set(stored["largest_batch_within_1pt_of_batch_32"]) == set(results)


def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("GDJAX_QUICK", "1")
    nb = nbformat.read(ROOT / "experiments" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "backend: cpu" in outputs and "test accuracy" in outputs
    assert (tmp_path / "runs" / "notebook" / "metrics.jsonl").is_file()


def test_scale_model(experiments, tmp_path):
    """The paper preset's collectives on 8 fake devices, by mesh, and the projection's
    arithmetic (the test process has the 8 devices the experiment needs)."""
    results, _ = run(experiments, "scale_model", tmp_path)
    dp, dm = results["modes"]["data parallel (8x1)"], results["modes"]["data x model (4x2)"]
    assert set(dp["by_axis"]) == {"data"} and set(dm["by_axis"]) == {"data", "model"}
    # Data parallel: the gradients of all 60,965,224 parameters (float32) and the step's three
    # scalar metrics, in one ring all-reduce.
    assert dp["param_bytes_per_device"] == 4 * 60_965_224
    assert dp["by_axis"]["data"]["bytes"] == 4 * 60_965_224 + 3 * 4
    assert dp["by_axis"]["data"]["sent"] == pytest.approx(2 * 7 / 8 * (4 * 60_965_224 + 12))
    share = dm["param_bytes_per_device"] / dp["param_bytes_per_device"]
    assert 0.5 < share < 0.55
    assert dm["flops_per_device"] == pytest.approx(dp["flops_per_device"] / 2, rel=0.05)
    for mode in (dp, dm):
        for rows in mode["projection"].values():
            assert [r["chips"] for r in rows] == [8, 64, 256]
            for r in rows:
                assert r["step_ms"] == pytest.approx(r["compute_ms"] + r["communicate_ms"])
