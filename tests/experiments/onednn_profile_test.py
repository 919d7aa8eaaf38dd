"""The per-primitive profile: oneDNN's verbose lines parsed, and a real (tiny) step profiled."""

import importlib

import pytest

from gdjax.models import onednn_status


@pytest.fixture
def profile():
    return importlib.import_module("onednn_profile")


def test_verbose_lines_between_the_markers_are_summed_per_primitive(profile):
    mark = profile.MARK
    conv = (
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,forward_training,"
        "src:f32::blocked:acdb::f0 wei:f32::blocked:Acdb16a::f0,attr-scratchpad:user,"
        "alg:convolution_direct,mb2_ic3oc8_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1,{ms}\n"
    )
    old_style = (
        "onednn_verbose,exec,cpu,pooling,jit:avx2,forward_training,src:f32,,mb2ic8_ih8,1.5\n"
    )
    lines = [
        conv.format(ms=100.0),  # warm-up: before the first marker, not counted
        f"{mark}\n",
        conv.format(ms=3.0),
        "some other output\n",
        conv.format(ms=5.0),
        old_style,
        "onednn_verbose,primitive,create:cache_miss,cpu,convolution,jit,forward,,,mb2,0.2\n",
        f"{mark} 0.25 2\n",  # the timed step's seconds, and the steps run between the marks
    ]
    totals, counts, seconds = profile.parse(lines)
    assert seconds == 0.25
    key = ("convolution", "forward_training", "mb2_ic3oc8_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1")
    assert totals[(*key, "jit:avx512_core")] == pytest.approx(4.0)  # (3 + 5) ms over 2 steps
    assert counts[(*key, "jit:avx512_core")] == pytest.approx(1.0)
    pool = ("pooling", "forward_training", "mb2ic8_ih8", "jit:avx2")
    assert totals[pool] == pytest.approx(0.75) and counts[pool] == pytest.approx(0.5)
    assert len(totals) == 2  # creation lines and other output are not executions
    with pytest.raises(RuntimeError, match="markers"):
        profile.parse(lines[:3])


@pytest.mark.skipif(not onednn_status()[0], reason="profiles the oneDNN kernels")
def test_a_real_step_shows_its_convolutions(profile, capsys):
    out = profile.main(["--case", "small:32:4", "--steps", "1", "--top", "5"])
    kinds = {(kind, prop) for kind, prop, _, _ in out["rows"]}
    assert {
        ("convolution", "forward_training"),
        ("convolution", "backward_data"),
        ("convolution", "backward_weights"),
        ("pooling", "forward_training"),
    } <= kinds
    assert out["onednn_ms"] > 0 and out["step_ms"] > 0
    # Per step, not per timed step: each convolution of the step ran once (the harness's
    # untimed lead step made it 2 per step with --steps 1).
    for (kind, prop, _, _), calls in out["calls"].items():
        if kind == "convolution":
            assert calls == pytest.approx(1.0), (prop, calls)
    assert "of which oneDNN" in capsys.readouterr().out
