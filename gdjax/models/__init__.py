"""Flax models: AlexNet's variants, its layers, torchvision weight import and model facts."""

from gdjax.models.alexnet import ACTIVATIONS, VARIANTS, AlexNet, spatial_sizes
from gdjax.models.layers import LocalResponseNorm, adaptive_avg_pool, local_response_norm, max_pool
from gdjax.models.stats import count_flops, count_macs, count_params
from gdjax.models.torchvision import from_torchvision

__all__ = [
    "ACTIVATIONS",
    "VARIANTS",
    "AlexNet",
    "LocalResponseNorm",
    "adaptive_avg_pool",
    "count_flops",
    "count_macs",
    "count_params",
    "from_torchvision",
    "local_response_norm",
    "max_pool",
    "spatial_sizes",
]
