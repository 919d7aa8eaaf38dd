"""torchvision weights in Flax: same logits as a torch AlexNet with torchvision's exact layout.

torchvision does not install beside the CPU build of torch used here, so the reference model is
built by hand with torchvision's module names and layers (experiments/torch_reference.py; its
key names and shapes are checked against torchvision's below).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax.models import AlexNet, count_params, from_torchvision

ROOT = pathlib.Path(__file__).resolve().parents[2]


def torchvision_alexnet(torch, num_classes=1000):
    from torch_reference import torch_alexnet

    return torch_alexnet("torchvision", num_classes)


@pytest.fixture(scope="module")
def torch_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torchvision_alexnet(torch, num_classes=100).eval()
    return torch, model


@pytest.mark.parametrize("size", [224, 256])  # 256: the adaptive pool really averages (7 -> 6)
def test_same_logits_as_torch(torch_model, size):
    torch, model = torch_model
    params = from_torchvision(model.state_dict())
    assert count_params(params) == sum(p.numel() for p in model.parameters())
    images = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.tensor(images.transpose(0, 3, 1, 2))).numpy()
    flax_model = AlexNet(num_classes=100, variant="torchvision")
    got = jax.jit(lambda p, x: flax_model.apply({"params": p}, x))(params, jnp.asarray(images))
    assert np.std(want) > 1e-3  # the logits carry signal
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_accepts_numpy_arrays_and_a_dataparallel_prefix(torch_model):
    _, model = torch_model
    sd = {f"module.{k}": v.numpy() for k, v in model.state_dict().items()}
    params = from_torchvision(sd)
    assert params["fc8"]["kernel"].shape == (4096, 100)
    assert params["conv1"]["kernel"].shape == (11, 11, 3, 64)


def test_rejects_a_foreign_state_dict(torch_model):
    _, model = torch_model
    sd = dict(model.state_dict())
    del sd["features.0.bias"]
    sd["features.1.weight"] = sd["features.0.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['features.0.bias'\]"):
        from_torchvision(sd)


def test_a_model_or_a_training_checkpoint_says_what_to_pass(torch_model):
    """The model itself was "AttributeError: 'Net' object has no attribute 'items'"; a
    checkpoint {"state_dict": ..., "epoch": ...} listed all 16 keys as missing."""
    _, model = torch_model
    with pytest.raises(TypeError, match=r"got Net: pass model.state_dict\(\)"):
        from_torchvision(model)
    for key in ("state_dict", "model"):
        checkpoint = {key: model.state_dict(), "epoch": 90, "optimizer": {"lr": 0.01}}
        with pytest.raises(ValueError, match=rf"under '{key}': pass checkpoint\['{key}'\]"):
            from_torchvision(checkpoint)
        assert from_torchvision(checkpoint[key])["fc8"]["kernel"].shape == (4096, 100)


def test_rejects_wrong_shapes(torch_model):
    _, model = torch_model
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    sd["features.3.weight"] = np.zeros((192, 32, 5, 5), np.float32)
    with pytest.raises(
        ValueError,
        match=r"features.3.weight has shape \(192, 32, 5, 5\), expected \(192, 64, 5, 5\)",
    ):
        from_torchvision(sd)


def test_reference_model_has_torchvisions_exact_names_and_shapes(torch_model):
    _, model = torch_model
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "features.0.weight": (64, 3, 11, 11),
        "features.3.weight": (192, 64, 5, 5),
        "features.6.weight": (384, 192, 3, 3),
        "features.8.weight": (256, 384, 3, 3),
        "features.10.weight": (256, 256, 3, 3),
        "classifier.1.weight": (4096, 9216),
        "classifier.4.weight": (4096, 4096),
        "classifier.6.weight": (100, 4096),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape
        assert shapes[key.replace("weight", "bias")] == (shape[0],)
    assert len(shapes) == 16
