"""AlexNet in PyTorch, built from the same layer table as ``gdjax.models.AlexNet`` (needs torch).

The reference for the benchmarks (and the torchvision-layout model of the parity tests):
``torch_alexnet("torchvision")`` has torchvision's exact module names and layout
(``features.0`` ... ``classifier.6``), so ``gdjax.models.from_torchvision`` loads its
``state_dict``. torchvision itself does not import beside the CPU build of torch used here.
"""

from __future__ import annotations

from typing import Any


def torch_alexnet(
    variant: str = "torchvision",
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
) -> Any:
    """``torch.nn.Module`` with the layers of ``gdjax.models.VARIANTS[variant]`` (NCHW input of
    ``image_size`` pixels; only the fc6 width depends on it, and not for torchvision)."""
    import torch
    from torch import nn

    from gdjax.models import VARIANTS, spatial_sizes

    spec = VARIANTS[variant]
    groups = spec.default_groups
    layers: list[nn.Module] = []
    c_in = in_channels
    for conv in spec.convs:
        g = groups if conv.grouped else 1
        layers += [
            nn.Conv2d(c_in, conv.features, conv.kernel, conv.stride, conv.padding, groups=g),
            nn.ReLU(inplace=True),
        ]
        if conv.lrn:
            # Paper's alpha multiplies the plain sum; torch divides alpha by size.
            layers.append(nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0))
        if conv.pool:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        c_in = conv.features

    class Net(nn.Module):
        def __init__(self, hidden_in: int):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = (
                nn.AdaptiveAvgPool2d(spec.adaptive_pool) if spec.adaptive_pool else nn.Identity()
            )
            head: list[nn.Module] = []
            width_in = hidden_in
            for width in spec.hidden:
                if spec.dropout_before_fc:
                    head.append(nn.Dropout(0.5))
                head += [nn.Linear(width_in, width), nn.ReLU(inplace=True)]
                if not spec.dropout_before_fc:
                    head.append(nn.Dropout(0.5))
                width_in = width
            head.append(nn.Linear(width_in, num_classes))
            self.classifier = nn.Sequential(*head)

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    side = spec.adaptive_pool[0] if spec.adaptive_pool else spatial_sizes(variant, image_size)[-1]
    return Net(c_in * side * side)
