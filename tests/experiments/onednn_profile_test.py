"""The per-primitive profile: oneDNN's verbose lines parsed, and a real (tiny) step profiled."""

import importlib

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

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


def _useful_flops_by_convolving_ones(mb, g, ic, oc, ih, oh, kh, sh, dh, ph, iw, ow, kw, sw, dw, pw):
    """2x the multiply-adds that read an input element inside the image: each output element
    of a convolution of ones with ones counts its own (zero padding adds nothing)."""
    dilated = ((kh - 1) * (dh + 1) + 1, (kw - 1) * (dw + 1) + 1)
    bottom = (oh - 1) * sh + dilated[0] - ih - ph  # oneDNN's problem names only the low pads
    right = (ow - 1) * sw + dilated[1] - iw - pw
    out = lax.conv_general_dilated(
        jnp.ones((mb, ih, iw, ic), jnp.float32),
        jnp.ones((kh, kw, ic // g, oc), jnp.float32),
        (sh, sw),
        ((ph, bottom), (pw, right)),
        rhs_dilation=(dh + 1, dw + 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=g,
    )
    assert out.shape == (mb, oh, ow, oc)
    return 2.0 * np.asarray(out, np.float64).sum()


@pytest.mark.parametrize(
    "problem, sizes",
    [
        # AlexNet's layers as gdjax's kernels print them (torchvision conv1, conv2, conv3)
        (
            "mb2_ic3oc64_ih224oh55kh11sh4dh0ph2_iw224ow55kw11sw4dw0pw2",
            (2, 1, 3, 64, 224, 55, 11, 4, 0, 2, 224, 55, 11, 4, 0, 2),
        ),
        (
            "mb2_ic64oc192_ih27oh27kh5sh1dh0ph2_iw27ow27kw5sw1dw0pw2",
            (2, 1, 64, 192, 27, 27, 5, 1, 0, 2, 27, 27, 5, 1, 0, 2),
        ),
        (
            "mb1_ic192oc384_ih13oh13kh3sh1dh0ph1_iw13ow13kw3sw1dw0pw1",
            (1, 1, 192, 384, 13, 13, 3, 1, 0, 1, 13, 13, 3, 1, 0, 1),
        ),
        # two groups, strided, unequal pads (oneDNN 3.2 puts g first; others after mb)
        (
            "g2mb2_ic8oc6_ih9oh4kh3sh2dh0ph1_iw9ow5kw3sw2dw0pw1",
            (2, 2, 8, 6, 9, 4, 3, 2, 0, 1, 9, 5, 3, 2, 0, 1),
        ),
        (
            "mb2_g2ic8oc6_ih9oh4kh3sh2dh0ph1_iw9ow5kw3sw2dw0pw1",
            (2, 2, 8, 6, 9, 4, 3, 2, 0, 1, 9, 5, 3, 2, 0, 1),
        ),
        # dilated (oneDNN counts the gaps), padded past the kernel's reach, no padding
        (
            "mb3_ic4oc5_ih10oh10kh3sh1dh1ph2_iw10ow12kw3sw1dw2pw4",
            (3, 1, 4, 5, 10, 10, 3, 1, 1, 2, 10, 12, 3, 1, 2, 4),
        ),
        (
            "mb1_ic2oc3_ih5oh7kh1sh1dh0ph1_iw5ow5kw1sw1dw0pw0",
            (1, 1, 2, 3, 5, 7, 1, 1, 0, 1, 5, 5, 1, 1, 0, 0),
        ),
        (
            "mb4_ic3oc2_ih8oh6kh3sh1dh0ph0_iw8ow6kw3sw1dw0pw0",
            (4, 1, 3, 2, 8, 6, 3, 1, 0, 0, 8, 6, 3, 1, 0, 0),
        ),
    ],
)
def test_a_convolutions_useful_flops_are_its_multiply_adds_inside_the_image(
    profile, problem, sizes
):
    expected = _useful_flops_by_convolving_ones(*sizes)
    assert profile.conv_flops(problem) == expected
    mb, g, ic, oc, _, oh, kh, sh, dh, ph, _, ow, kw, sw, dw, pw = sizes
    if (sh, sw, dh, dw, ph, pw) == (1, 1, 0, 0, 0, 0):  # unpadded: every tap is useful
        assert expected == 2.0 * mb * oc * (ic // g) * oh * ow * kh * kw


def test_problems_that_are_not_2d_convolutions_have_no_flops(profile):
    assert profile.conv_flops("mb2ic8_ih8oh4kh3sh2dh0ph0_iw8ow4kw3sw2dw0pw0") is None  # pooling
    assert (
        profile.conv_flops("mb2_ic3oc8_id4od4kd3sd1dd0pd1_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1")
        is None
    )
    assert profile.conv_flops("504x128:128x3072") is None


@pytest.mark.skipif(not onednn_status()[0], reason="profiles the oneDNN kernels")
def test_a_real_step_shows_its_convolutions(profile, capsys):
    out = profile.main(["--case", "small:32:4", "--steps", "1", "--top", "5", "--peak", "100"])
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
    printed = capsys.readouterr().out
    assert "of which oneDNN" in printed
    # Every convolution of the step is a 2-D problem whose FLOPs are counted, and the summary
    # line is their sum over the time they took.
    convs = {key: ms for key, ms in out["rows"].items() if key[0] == "convolution"}
    assert all(profile.conv_flops(key[2]) for key in convs)
    gflop = sum(profile.conv_flops(key[2]) * out["calls"][key] for key in convs) / 1e9
    assert out["conv_gflop"] == pytest.approx(gflop)
    assert out["conv_ms"] == pytest.approx(sum(convs.values()))
    rate = out["conv_gflop"] / out["conv_ms"] * 1e3
    assert f"{rate:.1f} GFLOP/s = {rate:.1f}% of 100;" in printed
