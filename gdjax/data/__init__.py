"""Datasets, AlexNet's augmentations and the grain input pipeline."""

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
from gdjax.data.pipeline import make_loader, split_for_devices
from gdjax.data.sources import (
    ArraySource,
    FolderSource,
    TfdsSource,
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
    "SmallEval",
    "SmallTrain",
    "TfdsSource",
    "center_crop",
    "cifar",
    "compute_stats",
    "digits",
    "folder",
    "load",
    "load_or_compute_stats",
    "make_loader",
    "mnist5k",
    "pad_and_random_crop",
    "pca_color_shift",
    "random_crop",
    "random_flip",
    "split_for_devices",
    "ten_crop",
]
