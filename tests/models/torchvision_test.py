"""torchvision weights in Flax: same logits as a torch AlexNet with torchvision's exact layout.

torchvision does not install beside the CPU build of torch used here, so the reference model is
written out by hand with torchvision's module names and layers (torchvision/models/alexnet.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdjax.models import AlexNet, count_params, from_torchvision


def torchvision_alexnet(torch, num_classes=1000):
    nn = torch.nn

    class TorchvisionAlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
            )
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=0.5),
                nn.Linear(256 * 6 * 6, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(p=0.5),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    return TorchvisionAlexNet()


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


def test_rejects_wrong_shapes(torch_model):
    _, model = torch_model
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    sd["features.3.weight"] = np.zeros((192, 32, 5, 5), np.float32)
    with pytest.raises(
        ValueError,
        match=r"features.3.weight has shape \(192, 32, 5, 5\), expected \(192, 64, 5, 5\)",
    ):
        from_torchvision(sd)
