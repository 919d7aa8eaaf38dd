"""Smoke test of the data-pipeline benchmark on a handful of generated JPEGs."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_data", ROOT / "experiments/bench_data.py")
bench_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_data)


def test_runs_and_reports_rates(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench_data.main(
        ["--images", "16", "--batch", "4", "--workers", "0", "--steps", "0", "--json", str(out)]
    )
    assert results["pipeline_images_per_s"][0] > 0
    assert json.loads(out.read_text())["batch"] == 4
    assert "folder pipeline, 0 worker(s)" in capsys.readouterr().out


def test_too_few_images_is_rejected(capsys):
    with pytest.raises(SystemExit):
        bench_data.main(["--images", "4", "--batch", "4"])
    assert "--images must be at least twice --batch" in capsys.readouterr().err
