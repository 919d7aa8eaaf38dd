"""Datasets, AlexNet's augmentations and the grain input pipeline (the ``data`` extra)."""

from gdjax import _extras

_extras.require("data", "gdjax.data", "grain", "absl", "PIL")

from gdjax.data.augment import (
    AlexNetEval,
    AlexNetTrain,
    DatasetStats,
    SmallEval,
    SmallTrain,
    center_crop,
    compute_stats,
    load_or_compute_stats,
    pad_and_random_crop,
    pca_color_shift,
    random_crop,
    random_flip,
    ten_crop,
)
from gdjax.data.pipeline import example_rng, make_loader, split_for_devices
from gdjax.data.sources import (
    ArraySource,
    FolderSource,
    ResizedSource,
    TfdsSource,
    check_spec,
    cifar,
    digits,
    folder,
    load,
    mnist5k,
)

__all__ = [
    "AlexNetEval",
    "AlexNetTrain",
    "ArraySource",
    "DatasetStats",
    "FolderSource",
    "ResizedSource",
    "SmallEval",
    "SmallTrain",
    "TfdsSource",
    "center_crop",
    "check_spec",
    "cifar",
    "compute_stats",
    "digits",
    "folder",
    "load",
    "load_or_compute_stats",
    "example_rng",
    "make_loader",
    "mnist5k",
    "pad_and_random_crop",
    "pca_color_shift",
    "random_crop",
    "random_flip",
    "split_for_devices",
    "ten_crop",
]
