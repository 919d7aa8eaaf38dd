"""compiler_options: what each kind asks of XLA on the CPU, that XLA takes it, and that the
programs compute the same thing with it."""

import pathlib
import platform
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_testing import assert_equal, jit_init, normal

import gdjax
from gdjax.models import AlexNet, compiler_options, xla_options

# Every supported jaxlib (>= 0.8.2) has the YNNPACK option (measured: 0.8.0 lacked it; 0.8.1,
# 0.8.2, 0.9.0 and 0.10.2 have it); compiler_options leaves out what a jaxlib lacks (below).
YNN = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def test_each_kind_on_the_cpu_and_none_elsewhere():
    assert compiler_options("train", "cpu") == {"xla_cpu_copy_insertion_use_region_analysis": True}
    assert compiler_options("infer", "cpu") == YNN
    assert compiler_options("init", "cpu") == {"xla_backend_optimization_level": 1}
    assert compiler_options() == compiler_options("train", "cpu")  # the tests run on the CPU
    for backend in ("gpu", "tpu"):
        for kind in ("train", "infer", "init"):
            assert compiler_options(kind, backend) is None


def test_a_bad_kind_is_named():
    with pytest.raises(
        ValueError, match=r"kind='eval', expected one of \('train', 'infer', 'init'\)"
    ):
        compiler_options("eval")


@pytest.mark.parametrize(
    "variant, shape",
    [("small", (1, 28, 28, 1)), ("torchvision", (1, 224, 224, 3)), ("paper", (1, 227, 227, 3))],
)
def test_init_compiled_at_o1_draws_the_same_bits_as_at_o3(variant, shape):
    """The "init" kind changes how long the program takes to compile, not a bit of what it
    draws: every parameter equals XLA's default (O3) program's, bit for bit."""
    model = AlexNet(num_classes=10, variant=variant, in_channels=shape[-1])
    key, x = jax.random.key(3), jnp.zeros(shape)
    want = jax.jit(model.init)(key, x)
    got = jax.jit(model.init, compiler_options=compiler_options("init"))(key, x)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(assert_equal, got, want)


def test_an_option_this_jaxlib_lacks_is_left_out(monkeypatch):
    monkeypatch.setitem(xla_options.CPU_OPTIONS, "infer", {"xla_cpu_no_such_option_anywhere": True})
    assert compiler_options("infer", "cpu") is None


def test_inference_keeps_dense_layers_off_ynnpack_and_gives_the_same_logits():
    model = AlexNet(num_classes=10, variant="small")
    x = normal(0, (8, 32, 32, 3))
    params = jit_init(model)(jax.random.key(1), x[:1])["params"]

    def forward(p):
        return model.apply({"params": p}, x)

    plain = jax.jit(forward).lower(params).compile()
    ours = jax.jit(forward, compiler_options=compiler_options("infer")).lower(params).compile()

    def entry_dots(compiled):  # dots XLA emits itself (not inside a YNNPACK fusion)
        text = compiled.as_text()
        return len(re.findall(r"\bdot\(", text[text.index("ENTRY") :]))

    # fc6, fc7, fc8 on XLA's own emitter. Without the option jaxlib 0.10.2 puts all three
    # inside YNNPACK fusions (0 here); jaxlib 0.10.0 and older emit them themselves.
    assert entry_dots(ours) == 3
    np.testing.assert_allclose(ours(params), plain(params), rtol=1e-5, atol=1e-6)


def test_a_donated_step_with_the_training_options_gives_the_same_state():
    model = AlexNet(num_classes=10, variant="small")
    x = normal(0, (8, 32, 32, 3))
    y = jnp.arange(8) % 10
    params = jit_init(model)(jax.random.key(1), x[:1])["params"]
    tx = gdjax.momentum(0.1)

    def step(p, s):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            model.apply({"params": p}, x), y
        ).mean()
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    want = jax.jit(step)(params, tx.init(params))
    copy = jax.tree.map(jnp.copy, (params, tx.init(params)))
    got = jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options("train"))(*copy)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, want)


@pytest.mark.parametrize("avx2_only", [True, False])
def test_a_large_batch_keeps_ynnpack_only_on_an_x86_without_avx512(monkeypatch, avx2_only):
    """Measured on AVX2 (Zen 3): YNNPACK's dots won above 64 rows, XLA's at 32 and 64; on
    AVX-512 XLA's stay at every size."""
    monkeypatch.setattr(xla_options, "_x86_without_avx512", lambda: avx2_only)
    rows = xla_options.YNN_ROWS_ON_AVX2
    assert compiler_options("infer", "cpu", batch_size=rows) == YNN
    assert compiler_options("infer", "cpu", batch_size=1) == YNN
    assert compiler_options("infer", "cpu") == YNN  # no batch given: the small-batch choice
    large = compiler_options("infer", "cpu", batch_size=rows + 1)
    assert large == (None if avx2_only else YNN)
    assert compiler_options("infer", "cpu", batch_size=np.int64(512)) == large
    for kind in ("train", "init"):  # the other kinds do not depend on the batch
        assert compiler_options(kind, "cpu", batch_size=rows + 1) == compiler_options(kind, "cpu")
    assert compiler_options("infer", "gpu", batch_size=rows + 1) is None


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "128"])
def test_a_bad_batch_size_is_named(bad):
    with pytest.raises(ValueError, match=rf"batch_size={bad!r}, expected an int >= 1 or None"):
        compiler_options("infer", batch_size=bad)


def test_the_cpu_probe_agrees_with_the_kernel():
    """numpy's CPU feature probe against Linux's own list of the CPU's flags."""
    xla_options._x86_without_avx512.cache_clear()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.is_file():
        assert not xla_options._x86_without_avx512()  # not x86: never the AVX2 rule
        return
    flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    assert xla_options._x86_without_avx512() == ("avx512f" not in flags.split())
