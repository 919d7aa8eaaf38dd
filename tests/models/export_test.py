"""jax.export of the models: the artefact serialises, deserialises and computes the live model's
logits, for the CPU alone and for CPU, TPU and CUDA in one artefact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testing import jit_init, normal, onednn_calls

from gdjax.models import AlexNet, export, onednn_status, portable

SIZES = {"small": 32, "paper": 227}


def _live(variant):
    size = SIZES[variant]
    model = AlexNet(num_classes=10, variant=variant)  # impl="auto": oneDNN where it loads
    x = normal(0, (3, size, size, 3))
    variables = jit_init(model)(jax.random.key(1), x[:1])
    return model, variables, x, np.asarray(jax.jit(model.apply)(variables, x))


def _device_for(platforms):
    """Where this process runs an artefact for ``platforms``, and the live model beside it:
    JAX's default device where the artefact covers it (the CPU in the suite, CUDA when run on
    a GPU machine with JAX_PLATFORMS=cuda,cpu), else the CPU."""
    default = jax.devices()[0]
    name = {"gpu": "cuda"}.get(default.platform, default.platform)
    return default if name in platforms else jax.devices("cpu")[0]


@pytest.mark.parametrize(
    "variant, platforms", [("small", ("cpu",)), ("paper", ("cpu", "tpu", "cuda"))]
)
def test_exported_model_round_trips_and_matches_the_live_model(variant, platforms):
    with jax.default_device(_device_for(platforms)):
        model, variables, x, logits = _live(variant)
        exported = export(model, variables, x, platforms=platforms)
        assert exported.platforms == platforms
        assert not onednn_calls(exported.mlir_module())  # no oneDNN custom call inside
        restored = jax.export.deserialize(exported.serialize())
        out = np.asarray(restored.call(variables, x))
    scale = np.abs(logits).max()
    # oneDNN (live) and XLA (exported) sum in different orders: float32 round-off only.
    np.testing.assert_allclose(out, logits, rtol=0, atol=1e-4 * scale)
    assert np.argmax(out, -1).tolist() == np.argmax(logits, -1).tolist()


def test_polymorphic_batch_serves_any_batch():
    with jax.default_device(_device_for(("cpu",))):
        model, variables, x, logits = _live("small")
        restored = jax.export.deserialize(
            export(model, variables, x, polymorphic_batch=True).serialize()
        )
        outs = [np.asarray(restored.call(variables, x[:n])) for n in (1, 3)]
    scale = np.abs(logits).max()
    for out in outs:
        np.testing.assert_allclose(out, logits[: len(out)], rtol=0, atol=1e-4 * scale)


@pytest.mark.onednn
def test_the_fast_path_is_what_plain_export_refuses():
    """Why the helper exists: with the oneDNN kernels loaded, jax.export of the default model
    refuses the custom calls; the portable model exports."""
    assert onednn_status()[0], onednn_status()[1]
    model = AlexNet(num_classes=10, variant="small")
    x = jnp.zeros((2, 32, 32, 3))
    variables = jit_init(model)(jax.random.key(0), x)

    def apply(m):
        return jax.export.export(jax.jit(lambda v, i: m.apply(v, i)), platforms=("cpu",))

    with pytest.raises(ValueError, match="custom calls whose targets have no compatibility"):
        apply(model)(variables, x)
    assert apply(portable(model))(variables, x).platforms == ("cpu",)
    assert portable(model).impl == "xla" and model.impl == "auto"


def test_precision_is_pinned_in_the_artefact():
    """Without ``precision`` the products keep each platform's default (TF32 on NVIDIA GPUs,
    bfloat16 passes on TPUs); "highest" writes full float32 into every convolution and dot."""
    model = AlexNet(num_classes=10, variant="small")
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    platforms = ("cpu", "cuda", "tpu")

    def products(**kw):
        text = export(model, variables, x, platforms=platforms, **kw).mlir_module()
        ops = ("stablehlo.convolution", "stablehlo.dot_general")
        return [line for line in text.splitlines() if any(op in line for op in ops)]

    plain, pinned = products(), products(precision="highest")
    assert len(pinned) == len(plain) >= 8  # 5 convolutions, 3 dense layers
    assert not any("HIGHEST" in line for line in plain)
    assert all("HIGHEST" in line for line in pinned)


def test_one_platform_name_and_a_nested_list_input_are_taken():
    """``platforms="cpu"`` was read as the platforms 'c', 'p' and 'u'; a list of pixels had
    no ``.shape``."""
    model = AlexNet(num_classes=10, variant="small", in_channels=1)
    x = np.linspace(0, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
    variables = jit_init(model)(jax.random.key(0), x[:1])
    exported = export(model, variables, x.tolist(), platforms="cpu")
    assert exported.platforms == ("cpu",)
    aval = exported.in_avals[-1]
    assert (aval.shape, aval.dtype) == ((2, 16, 16, 1), jnp.float32)
    out = exported.call(variables, x.astype(np.float32))
    live = jax.jit(portable(model).apply)(variables, x.astype(np.float32))
    np.testing.assert_allclose(out, live, rtol=0, atol=1e-5 * float(np.abs(live).max()))


def test_bad_arguments_are_named():
    model = AlexNet(num_classes=10, variant="small")
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"got \('gpu',\) \(a GPU is 'cuda' or 'rocm'\)"):
        export(model, variables, x, platforms=("gpu",))
    with pytest.raises(ValueError, match=r"got \('tpu', 'npu'\)$"):
        export(model, variables, x, platforms=("tpu", "npu"))
    # the parameters alone, the commonest slip (flax said "the collection is empty")
    with pytest.raises(ValueError, match=r"keys \['conv1', .*\(pass \{'params': params\}\)"):
        export(model, variables["params"], x)
    with pytest.raises(ValueError, match=r"x must be an NHWC batch .* \(32, 32, 3\)"):
        export(model, variables, x[0])
    with pytest.raises(ValueError, match=r"precision must be None or one of .*, got 'fp32'"):
        export(model, variables, x, precision="fp32")
    # "no" is a non-empty string: it exported a symbolic batch
    with pytest.raises(TypeError, match=r"polymorphic_batch must be True or False, got 'no'"):
        export(model, variables, x, polymorphic_batch="no")
    with pytest.raises(TypeError, match=r"model must be a flax\.linen\.Module, got function"):
        portable(lambda v, x: x)
