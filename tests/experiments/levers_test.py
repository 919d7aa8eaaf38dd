"""The speed levers' A/B harness, at a tiny size; the oneDNN layout microbenchmark builds; the
FMA peak probe builds and runs."""

import importlib
import json
import os
import pathlib
import platform
import shutil
import subprocess

import jax
import pytest

from gdjax.models import _onednn, onednn_status

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def levers():
    return importlib.import_module("levers")


@pytest.mark.skipif(not onednn_status()[0], reason="the levers are the oneDNN path's")
def test_each_lever_is_timed_against_the_step_without_it(levers, tmp_path, capsys, monkeypatch):
    out = tmp_path / "levers.json"
    compiled = []
    compile_ = levers._compile
    monkeypatch.setattr(levers, "_compile", lambda *a: compiled.append(repr(a)) or compile_(*a))
    rows = levers.main(
        ["--cases", "small:32:4", "--rounds", "2", "--steps", "1", "--json", str(out)]
    )
    assert [r["lever"] for r in rows] == levers.available()
    # The step without a lever (and the one with region analysis) recurs from lever to lever:
    # each program is compiled once, fewer than a pair per lever.
    assert len(compiled) == len(set(compiled)) < 2 * len(rows)
    assert not levers._COMPILED  # nothing held once the run is over
    for row in rows:
        for mode in ("train", "infer"):
            assert row[f"{mode}_img_s"] > 0 and row[f"{mode}_img_s_without"] > 0
            ratio = row[f"{mode}_img_s"] / row[f"{mode}_img_s_without"]
            assert row[f"{mode}_speedup"] == pytest.approx(ratio)
    assert json.loads(out.read_text()) == rows
    printed = capsys.readouterr().out
    assert "fused_relu" in printed and "xla_single_thread" in printed


def test_the_same_programs_are_compiled_once_while_among_the_last_few(levers, monkeypatch):
    compiled = []
    monkeypatch.setattr(levers, "_compile", lambda *a: compiled.append(a) or (object(),) * 3)
    monkeypatch.setattr(levers, "_COMPILED", type(levers._COMPILED)())
    first = levers._programs("small", 32, 2, {"fused_relu": True}, {})
    assert levers._programs("small", 32, 2, {"fused_relu": True}, {}) is first
    assert levers._programs("small", 32, 2, {"fused_relu": False}, {}) is not first
    assert levers._programs("small", 32, 2, {"fused_relu": True}, {}, buffered=True) is not first
    assert len(compiled) == 3
    for batch in range(3, 3 + levers._KEEP):  # pushes the first out
        levers._programs("small", 32, batch, {}, {})
    assert levers._programs("small", 32, 2, {"fused_relu": True}, {}) is not first
    assert len(compiled) == 4 + levers._KEEP


def test_a_lever_changes_the_compiled_program(levers):
    """Each lever's variant is another program (the A/B compares something). Where the lever
    puts custom calls or operations in or out, the lowered step shows it; copies and aliasing
    are the compiler's, so those steps are compiled (the step alone, not the inference)."""
    if not onednn_status()[0]:
        pytest.skip(onednn_status()[1])

    def lowered(model_kwargs, **kwargs):
        return levers._lower("small", 32, 2, model_kwargs, **kwargs)[0].as_text()

    fused = lowered(levers.LEVERS["fused_relu"][0])
    unfused = lowered(levers.BASELINES["fused_relu"])
    assert "gdjax_conv_bias_relu_fwd" in fused and "gdjax_conv_bias_relu_fwd" not in unfused
    step = levers._lower("small", 32, 2, {})[0]
    plain = step.compile()
    assert "gdjax_conv_bias_relu_fwd" in plain.as_text()  # small fuses by default
    # XLA's thread count leaves no trace in the compiled program's text (the two texts differed
    # only in source-line metadata), so for that lever: this jaxlib takes the option.
    assert "xla_single_thread" in levers.available()
    region = levers.LEVERS["region_copies"][1]
    assert region == {"xla_cpu_copy_insertion_use_region_analysis": True}
    unbuffered = step.compile(region)
    assert " copy(%state__p_" in plain.as_text()
    assert " copy(%state__p_" not in unbuffered.as_text()
    # The gradient buffer: the step with it aliases one more output (the gradients) to one
    # more donated argument, of the parameters' size.
    options = levers.LEVERS["gradient_buffer"][1]
    assert options == levers.BASELINE_OPTIONS["gradient_buffer"] == region
    buffered_step, _, state = levers._lower("small", 32, 2, {}, buffered=True)
    buffered = buffered_step.compile(options)
    size = sum(x.nbytes for x in jax.tree.leaves(state["p"]))
    extra = (
        buffered.memory_analysis().alias_size_in_bytes
        - unbuffered.memory_analysis().alias_size_in_bytes
    )
    assert extra == size
    # The packed ReLU mask: the step with it shifts bits into bytes (and back) that the step with
    # jax.nn.relu does not (its only shifts are the dropout's random bits).
    # (The unfused step above has the packed mask: it is the one compared.)
    plain_relu = lowered(levers.BASELINES["fused_relu"], plain_relu=True)
    assert unfused.count("stablehlo.shift_left") > plain_relu.count("stablehlo.shift_left") > 0


@pytest.mark.skipif(not onednn_status()[0], reason="needs the oneDNN headers and a compiler")
def test_the_weight_gradient_microbenchmark_builds(tmp_path):
    include, lib = _onednn._find_onednn()
    done = subprocess.run(
        [
            shutil.which("c++") or "c++",
            "-O2",
            "-std=c++17",
            f"-I{include}",
            str(ROOT / "experiments" / "onednn_weight_grad.cc"),
            f"-L{lib}",
            "-ldnnl",
            "-o",
            str(tmp_path / "weight_grad"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "weight_grad").is_file()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 intrinsics")
def test_the_fma_peak_probe_builds_and_measures_each_instruction_set(tmp_path):
    compiler = shutil.which("c++")
    if compiler is None:
        pytest.skip("needs a C++ compiler")
    binary = tmp_path / "fma_peak"
    source = ROOT / "experiments" / "fma_peak.cc"
    flags = ["-O2", "-std=c++17", "-mavx2", "-mfma", "-pthread"]  # as its header says
    done = subprocess.run(
        [compiler, *flags, str(source), "-o", str(binary)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ran = subprocess.run([str(binary), "200000", "2"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "threads 2"
    avx2 = float(lines[1].removeprefix("AVX2 256-bit FMA: ").removesuffix(" GFLOP/s"))
    assert avx2 > 0
    if "avx512f" in pathlib.Path("/proc/cpuinfo").read_text():
        avx512 = float(lines[2].removeprefix("AVX-512 512-bit FMA: ").removesuffix(" GFLOP/s"))
        assert avx512 > 0
    else:
        assert lines[2] == "AVX-512 512-bit FMA: not on this CPU"
    # Without an argument it uses every core; bad arguments are refused with the usage line.
    every_core = subprocess.run([str(binary), "1000"], capture_output=True, text=True, timeout=60)
    assert every_core.stdout.startswith(f"threads {os.cpu_count()}\n")
    for bad in (["0"], ["1000", "0"], ["1000", "2", "extra"]):
        refused = subprocess.run([str(binary), *bad], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "usage:" in refused.stderr, bad
