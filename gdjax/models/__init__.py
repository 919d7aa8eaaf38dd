"""Flax models: AlexNet's variants, its layers, torchvision weight import and model facts."""

from gdjax.models.alexnet import ACTIVATIONS, VARIANTS, AlexNet, spatial_sizes
from gdjax.models.conv import CONV_IMPLS, conv_bias_relu, conv_general_dilated, onednn_status
from gdjax.models.export import export, portable
from gdjax.models.layers import (
    LocalResponseNorm,
    adaptive_avg_pool,
    local_response_norm,
    max_pool,
    relu,
)
from gdjax.models.stats import count_flops, count_macs, count_params
from gdjax.models.torchvision import from_torchvision
from gdjax.models.xla_options import compiler_options

__all__ = [
    "ACTIVATIONS",
    "CONV_IMPLS",
    "VARIANTS",
    "AlexNet",
    "LocalResponseNorm",
    "adaptive_avg_pool",
    "compiler_options",
    "conv_bias_relu",
    "conv_general_dilated",
    "count_flops",
    "count_macs",
    "count_params",
    "export",
    "from_torchvision",
    "local_response_norm",
    "max_pool",
    "onednn_status",
    "portable",
    "relu",
    "spatial_sizes",
]
