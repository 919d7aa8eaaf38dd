"""experiments/export_check.py: an artefact saved by one process is checked by another, which
runs it with no gdjax model code; a wrong artefact or a missing file fails plainly."""

import importlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _check(directory):
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "export_check.py"), "check", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    meta = importlib.import_module("export_check").save(out, "small", ["cpu", "cuda", "tpu"], 4)
    assert meta["platforms"] == ["cpu", "cuda", "tpu"]
    return out


def test_another_process_runs_the_artefacts_to_float32_round_off(saved):
    done = _check(saved)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["device"].startswith("cpu")
    for precision in ("default", "highest"):  # on the CPU both are float32
        assert report[precision]["same_classes"] is True
        assert report[precision]["relative_deviation"] <= 1e-4


def test_logits_that_disagree_fail_the_check(saved, tmp_path):
    for f in saved.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    logits = np.load(saved / "logits.npy")
    logits[0, 0] += 0.01 * np.abs(logits).max()  # 1% off in one logit
    np.save(tmp_path / "logits.npy", logits)
    done = _check(tmp_path)
    assert done.returncode == 1
    assert "the float32 artefact is off by more than 0.0001" in done.stderr
    assert json.loads(done.stdout)["highest"]["relative_deviation"] >= 0.009


def test_a_missing_file_is_one_line_and_exit_2(saved, tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    done = _check(tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"export_check: {tmp_path}: missing model.default.jaxexport")
    assert len(done.stderr.strip().splitlines()) == 1
