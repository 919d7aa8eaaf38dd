"""Smoke test of the gdjax-vs-PyTorch harness at a tiny size."""

import importlib
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def bench():
    return importlib.import_module("bench")


def test_harness_times_both_and_writes_json(bench, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    results = bench.main(
        [
            "--cases",
            "small:32:8",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--optimizer-scale",
            "0.001",
            "--json",
            str(out),
        ]
    )
    modes = {(r["case"], r["mode"]) for r in results["cases"]}
    assert modes == {("small:32:8", "train"), ("small:32:8", "infer")}
    for row in results["cases"]:
        assert row["images_per_second"]["gdjax"] > 0 and row["images_per_second"]["torch"] > 0
        assert row["ratio_vs_fastest_torch"] == pytest.approx(
            row["images_per_second"]["gdjax"] / row["images_per_second"]["torch"]
        )
        assert row["gdjax_compile_s"] > 0
    names = {r["optimizer"]: r["ms"] for r in results["optimizers"]}
    assert set(names) == {"momentum", "adam"}
    assert {"gdjax", "optax", "torch foreach"} <= set(names["adam"])
    assert results["copy_bandwidth_GBps"] > 0
    written = json.loads(out.read_text())
    assert written["device"].startswith("cpu") and written["torch_device"] == "cpu"
    assert "ratio" in capsys.readouterr().out


@pytest.mark.parametrize(
    "platform, cuda, expected",
    [
        ("cpu", False, "cpu"),
        ("cpu", True, "cpu"),  # JAX on the CPU: PyTorch on the CPU, whatever GPU it sees
        ("gpu", True, "cuda"),
        ("gpu", False, None),  # a CPU PyTorch beside a JAX GPU would race two machines
        ("tpu", True, None),
    ],
)
def test_torch_races_on_the_device_jax_runs_on(bench, platform, cuda, expected):
    assert bench.torch_device(platform, cuda) == expected


def test_torch_rows_are_skipped_with_a_note_where_torch_cannot_follow_jax(
    bench, monkeypatch, capsys
):
    pytest.importorskip("torch")
    monkeypatch.setattr(bench, "torch_device", lambda platform, cuda: None)
    results = bench.main(
        ["--cases", "small:32:8", "--rounds", "1", "--steps", "1", "--optimizer-scale", "0.001"]
    )
    assert "note: PyTorch cannot run on JAX's cpu; its rows are skipped" in capsys.readouterr().out
    assert results["torch_device"] is None
    for row in results["cases"]:
        assert set(row["images_per_second"]) == {"gdjax"} and row["ratio_vs_fastest_torch"] is None
    for row in results["optimizers"]:
        assert set(row["ms"]) == {"gdjax", "optax"}


@pytest.mark.parametrize(
    "script, argv, says",
    [
        ("bench", ["--cases", "small:32"], "argument --cases: expected variant:pixels:batch"),
        ("bench", ["--cases", "alex:32:8"], "unknown variant 'alex'"),
        ("bench", ["--cases", "small:32:0"], "batch must be an integer >= 1"),
        ("bench", ["--cases", "small:5:8"], "small takes at least 15 pixels"),
        ("bench", ["--cases", "paper:224:8"], "paper takes 227 pixels, got 'paper:224:8'"),
        ("bench", ["--rounds", "0"], "argument --rounds: expected an integer >= 1, got 0"),
        ("bench", ["--steps", "two"], "argument --steps: expected an integer >= 1, got 'two'"),
        ("bench", ["--optimizer-scale", "2"], "--optimizer-scale must be in (0, 1], got 2.0"),
        ("levers", ["--cases", "tv:224:32"], "unknown variant 'tv'"),
        ("levers", ["--rounds", "-1"], "argument --rounds: expected an integer >= 1"),
        ("bench_optim", ["--rounds", "0"], "argument --rounds: expected an integer >= 1, got 0"),
        ("bench_optim", ["--scale", "nan"], "argument --scale: expected a number > 0, got nan"),
        ("bench_data", ["--batch", "0"], "argument --batch: expected an integer >= 1, got 0"),
        ("bench_data", ["--workers", "1", "-1"], "argument --workers: expected an integer >= 0"),
        ("bench_data", ["--steps", "-2"], "argument --steps: expected an integer >= 0, got -2"),
        ("onednn_profile", ["--case", "small:32"], "argument --case: expected variant:pixels"),
        ("onednn_profile", ["--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
        ("onednn_profile", ["--peak", "0"], "argument --peak: expected a number > 0, got 0.0"),
        (
            "onednn_profile",
            ["--peak", "GFLOPS"],
            "argument --peak: expected a number > 0, got 'GFLOPS'",
        ),
        ("large_batch", ["--epochs", "0"], "argument --epochs: expected a number > 0, got 0.0"),
        ("large_batch", ["--epochs", "inf"], "expected a finite number > 0, got 'inf'"),
        ("gd_variants", ["--seeds", "0"], "argument --seeds: expected an integer >= 1, got 0"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(script, argv, says, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_rounds_alternate_after_untimed_warmup_rounds(bench):
    calls = []

    def timer(name):
        def run():
            calls.append(name)
            return float(len(calls))  # a "time" that tells when the call came

        return run

    med = bench._median_alternating({"a": timer("a"), "b": timer("b")}, rounds=3, warmup=2)
    # two untimed rounds (calls 1-4), then a b | b a | a b: a timed at calls 5, 8, 9
    assert calls == ["a", "b"] * 2 + ["a", "b", "b", "a", "a", "b"]
    assert med == {"a": 8.0, "b": 7.0}


def test_each_torch_compile_case_compiles_for_its_own_static_shapes(bench):
    # Dynamo caches compiled frames per code object and every reference network shares one
    # ``forward``: without a fresh start per case, the second batch size recompiled the frame
    # with a symbolic batch and later cases fell back to eager at dynamo's recompile limit, so
    # the torch.compile column timed something slower than what a user compiles.
    torch = pytest.importorskip("torch")
    graphs = []

    def capture(gm, example_inputs):  # a dynamo backend that records what it was given
        graphs.append([a for a in example_inputs if not isinstance(a, torch.Tensor)])
        return gm.forward

    for batch in (4, 6, 8):
        first = len(graphs)
        train, infer, _ = bench._torch_case("small", 32, batch, 1, True, backend=capture)
        for _ in range(2):
            train()
            infer()
        # one graph for training and one for inference, neither with symbolic sizes
        assert len(graphs) - first == 2, (batch, graphs[first:])
        assert graphs[first:] == [[], []], (batch, graphs[first:])


def test_torch_reference_matches_the_flax_layer_table(bench):
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp
    from torch_reference import torch_alexnet

    from gdjax.models import AlexNet, count_params

    for variant, size in (("paper", 227), ("small", 32)):
        model = torch_alexnet(variant, 10, 3, size)
        flax_params = jax.eval_shape(
            AlexNet(num_classes=10, variant=variant).init,
            jax.random.key(0),
            jnp.zeros((1, size, size, 3)),
        )
        assert sum(p.numel() for p in model.parameters()) == count_params(flax_params["params"]), (
            variant
        )
        out = model.eval()(torch.zeros(2, 3, size, size))
        assert tuple(out.shape) == (2, 10)


def test_loop_overhead_is_measured(bench):
    result = bench.loop_overhead(steps=12, rounds=1)
    assert result["loop_images_per_s"] > 0 and result["bare_step_images_per_s"] > 0
    assert result["overhead"] == pytest.approx(
        1 - result["loop_images_per_s"] / result["bare_step_images_per_s"]
    )


def test_the_bench_script_runs_from_a_checkout(tmp_path):
    """``python experiments/bench.py`` is the one command (the library has no benchmark)."""
    argv = ["--cases", "small:32:4", "--rounds", "1", "--steps", "1", "--skip-optimizers"]
    script = tmp_path / "script.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench.py"), *argv, "--json", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(script.read_text())["cases"]
    assert {r["mode"] for r in rows} == {"train", "infer"}
    assert rows[0]["case"] == "small:32:4"
