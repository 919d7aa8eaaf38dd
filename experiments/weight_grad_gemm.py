"""The convolution weight gradient as a matrix product, against gdjax's oneDNN kernel.

For a stride-1 layer, ``dw[a, b, i, o] = sum over n, h, w of xp[n, h + a, w + b, i] dy[n, h, w, o]``
(``xp``: ``x`` zero-padded): one contraction over ``(n, h, w)`` per shift ``(a, b)``, or one
matrix product ``cols^T dy`` of the ``k * k`` shifted windows laid side by side (im2col,
``(N OH OW) x (k k C)``) with ``dy`` seen as ``(N OH OW) x O``. Timed, alternated, medians:

* ``kernel``  gdjax's ``gdjax_conv_bwd_weights`` custom call (oneDNN's weight-gradient primitive);
* ``shifts``  XLA's own dot, one per shift, in one jitted program;
* ``im2col``  XLA's own dot over the concatenated windows, in one jitted program;

and the matrix product alone (the im2col copy, 150-600 MB at b128, not counted), on the same
two arrays: oneDNN's ``dnnl_sgemm`` for ``cols^T dy`` and for ``dy^T cols`` (the other order
of the operands), through ctypes on the extra's ``libdnnl.so``, and numpy's ``matmul`` (its
bundled BLAS). Every result is checked against the kernel's.

    python experiments/weight_grad_gemm.py                       # torchvision conv2-5, b128
    python experiments/weight_grad_gemm.py --batch 32 --layers conv3 conv4
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

# torchvision AlexNet's stride-1 layers: input side, input maps, output maps, kernel, padding.
LAYERS = {
    "conv2": (27, 64, 192, 5, 2),
    "conv3": (13, 192, 384, 3, 1),
    "conv4": (13, 384, 256, 3, 1),
    "conv5": (13, 256, 256, 3, 1),
}


def _windows(x: jax.Array, k: int, pad: int) -> list[jax.Array]:
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    side = x.shape[1]  # stride 1, "same" padding: the output's side is the input's
    return [xp[:, a : a + side, b : b + side, :] for a in range(k) for b in range(k)]


def by_shifts(x: jax.Array, dy: jax.Array, k: int, pad: int) -> jax.Array:
    rows = [jnp.einsum("nhwi,nhwo->io", win, dy) for win in _windows(x, k, pad)]
    return jnp.stack(rows).reshape(k, k, x.shape[-1], dy.shape[-1])


def by_im2col(x: jax.Array, dy: jax.Array, k: int, pad: int) -> jax.Array:
    cols = jnp.concatenate(_windows(x, k, pad), axis=-1)
    return jnp.einsum("nhwc,nhwo->co", cols, dy).reshape(k, k, x.shape[-1], dy.shape[-1])


def _sgemm() -> ctypes._CFuncPtr:
    """oneDNN's row-major ``dnnl_sgemm(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta,
    C, ldc)`` from the library the kernels link."""
    from gdjax.models import _onednn

    _, lib = _onednn._find_onednn()
    fn = ctypes.CDLL(str(lib / "libdnnl.so")).dnnl_sgemm
    dim, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    fn.argtypes = [ctypes.c_char, ctypes.c_char, dim, dim, dim, f32, ptr, dim, ptr, dim, f32]
    fn.argtypes += [ptr, dim]
    fn.restype = ctypes.c_int
    return fn


def _median_ms(fns: dict, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():  # alternated: a drift of the host hits every way alike
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def run(batch: int, layers: list[str], rounds: int, seed: int = 0) -> list[dict]:
    """Time every way on each layer; rows of ``{"layer", "way", "ms", "gflops", "vs_kernel"}``."""
    from gdjax.models import _onednn, onednn_status

    if not _onednn.available():
        raise SystemExit(f"weight_grad_gemm: the oneDNN kernels are unavailable: {onednn_status()}")
    sgemm, rng = _sgemm(), np.random.default_rng(seed)
    return [row for layer in layers for row in _time_layer(layer, batch, rounds, rng, sgemm)]


def _time_layer(layer: str, batch: int, rounds: int, rng, sgemm) -> list[dict]:
    from gdjax.models import conv as C

    side, c_in, c_out, k, pad = LAYERS[layer]
    x = jnp.asarray(rng.standard_normal((batch, side, side, c_in), np.float32))
    dy = jnp.asarray(rng.standard_normal((batch, side, side, c_out), np.float32))

    def kernel(x, dy):
        pads = ((pad, pad), (pad, pad))
        return C._call("gdjax_conv_bwd_weights", (k, k, c_in, c_out), x, dy, (1, 1), pads, 1)

    compiled = {
        name: jax.jit(lambda x, dy, f=f: f(x, dy, k, pad)).lower(x, dy).compile()
        for name, f in (("shifts", by_shifts), ("im2col", by_im2col))
    }
    compiled = {"kernel": jax.jit(kernel).lower(x, dy).compile(), **compiled}
    # The GEMM's operands, made once: cols (K x M) and dy (K x N), row-major.
    cols = np.asarray(jax.jit(lambda x: jnp.concatenate(_windows(x, k, pad), -1))(x))
    big_k, m, n = batch * side * side, k * k * c_in, c_out
    cols = np.ascontiguousarray(cols.reshape(big_k, m))
    dy_2d = np.ascontiguousarray(np.asarray(dy).reshape(big_k, n))
    out_mn, out_nm = np.empty((m, n), np.float32), np.empty((n, m), np.float32)

    def gemm_cols_t_dy():  # (M x N) = cols^T dy
        sgemm(b"T", b"N", m, n, big_k, 1.0, cols.ctypes.data, m, dy_2d.ctypes.data, n, 0.0,
              out_mn.ctypes.data, n)  # fmt: skip
        return out_mn

    def gemm_dy_t_cols():  # (N x M) = dy^T cols, the transpose of the same product
        sgemm(b"T", b"N", n, m, big_k, 1.0, dy_2d.ctypes.data, n, cols.ctypes.data, m, 0.0,
              out_nm.ctypes.data, m)  # fmt: skip
        return out_nm

    ways = {name: functools.partial(f, x, dy) for name, f in compiled.items()}
    ways["dnnl_sgemm cols^T dy"] = gemm_cols_t_dy
    ways["dnnl_sgemm dy^T cols"] = gemm_dy_t_cols
    ways["numpy matmul"] = lambda: cols.T @ dy_2d
    reference = np.asarray(ways["kernel"]()).reshape(m, n)
    scale = float(np.abs(reference).max())
    for name, fn in ways.items():  # each way warmed up, and checked against the kernel
        got = np.asarray(fn())
        got = got.T if name == "dnnl_sgemm dy^T cols" else got.reshape(m, n)
        error = float(np.abs(got - reference).max()) / scale
        if not error < 1e-4:
            raise AssertionError(f"{layer} {name}: off the kernel's by {error:.2e} of its scale")
    ms = _median_ms(ways, rounds)
    flops = 2 * big_k * m * n
    return [
        {
            "layer": layer,
            "way": name,
            "ms": t,
            "gflops": flops / t / 1e6,
            "vs_kernel": ms["kernel"] / t,
        }
        for name, t in ms.items()
    ]


def main(argv: list[str] | None = None) -> None:
    from common import positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--rounds", type=positive_int, default=5)
    args = parser.parse_args(argv)
    from common import cpu_name

    print(cpu_name())
    print(f"batch {args.batch}, medians of {args.rounds} alternated rounds")
    print(f"{'layer':6} {'way':22} {'ms':>9} {'GFLOP/s':>8} {'vs kernel':>9}")
    for r in run(args.batch, args.layers, args.rounds):
        print(
            f"{r['layer']:6} {r['way']:22} {r['ms']:9.1f} {r['gflops']:8.1f} {r['vs_kernel']:8.2f}x"
        )


if __name__ == "__main__":
    main()
