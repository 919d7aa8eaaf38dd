"""The weight gradient as a matrix product: its two XLA forms against autodiff, and a run."""

import importlib

import jax
import numpy as np
import pytest
from jax import lax

from gdjax.models import onednn_status


@pytest.fixture
def wg():
    return importlib.import_module("weight_grad_gemm")


@pytest.mark.parametrize("k, pad", [(3, 1), (5, 2)])
def test_both_xla_forms_are_the_convolutions_weight_gradient(wg, k, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    w = rng.standard_normal((k, k, 3, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 7, 7, 4)).astype(np.float32)

    def conv(w):
        dn = ("NHWC", "HWIO", "NHWC")
        return lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=dn)

    (expected,) = jax.vjp(conv, w)[1](dy)
    for form in (wg.by_shifts, wg.by_im2col):
        got = jax.jit(form, static_argnums=(2, 3))(x, dy, k, pad)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.skipif(not onednn_status()[0], reason="times the oneDNN kernel")
def test_every_way_is_timed_against_the_kernel_and_agrees_with_it(wg, capsys):
    rows = wg.run(batch=1, layers=["conv3"], rounds=1)
    ways = ["kernel", "shifts", "im2col", "dnnl_sgemm cols^T dy", "dnnl_sgemm dy^T cols"]
    assert [r["way"] for r in rows] == [*ways, "numpy matmul"]
    assert all(r["layer"] == "conv3" and r["ms"] > 0 and np.isfinite(r["gflops"]) for r in rows)
    kernel = rows[0]["ms"]
    for r in rows:  # the ratio is the kernel's time over the way's, in the same round
        assert r["vs_kernel"] == pytest.approx(kernel / r["ms"])
    wg.main(["--batch", "1", "--layers", "conv5", "--rounds", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(("(AVX2)", "(AVX-512)", "(AVX-512, AMX)")) and len(out) == 3 + 6
    assert out[3].split()[:2] == ["conv5", "kernel"] and out[-1].split()[1:3] == ["numpy", "matmul"]
