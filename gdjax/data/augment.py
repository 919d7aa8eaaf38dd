r"""AlexNet's augmentations (Krizhevsky et al. 2012, §2 and §4.1) and their small-image kin.

All functions take and return numpy arrays in HWC layout and are deterministic given the
``numpy.random.Generator`` they are handed. The transforms at the bottom map an example
``{"image": uint8 HWC, "label": int}`` and a generator to a float32 example; the pipeline
(:func:`gdjax.data.make_loader`) hands each example the generator
:func:`gdjax.data.example_rng` ``(seed, epoch, example_index)``, so augmentation depends only on
the seed and the example — not on batch size, worker count or host count — and a resumed run
sees exactly the same inputs.

The recipe:

* **Preprocessing** (§2): resize the short side to 256 and centre-crop 256×256 (done by the
  folder source), subtract the training-set mean — per pixel (the paper) or per channel.
* **Training** (§4.1): a random 224×224 (or 227×227) crop and a horizontal flip with
  probability ½; **PCA colour augmentation**: with :math:`p_i, \lambda_i` the eigenvectors and
  eigenvalues of the 3×3 covariance of RGB pixel values over the training set, add
  :math:`[p_1, p_2, p_3][\alpha_1\lambda_1, \alpha_2\lambda_2, \alpha_3\lambda_3]^T` to every
  pixel, :math:`\alpha_i \sim N(0, 0.1^2)` drawn once per image.
* **Evaluation** (§4.1): the centre crop, or the ten crops (four corners and centre, and their
  mirror images) whose softmax outputs are averaged.
* **Small images** (28–32 px): pad by a few pixels and take a random crop of the original size,
  flip where mirror images are still valid examples (CIFAR, not digits), standardise.

The statistics are computed once per dataset by :func:`compute_stats` and stored
(:meth:`DatasetStats.save`), never recomputed every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import warnings
from typing import Any

import numpy as np

from gdjax._checks import check_finite, check_flag, check_positive_int, is_int

__all__ = [
    "AlexNetEval",
    "AlexNetTrain",
    "DatasetStats",
    "SmallEval",
    "SmallTrain",
    "center_crop",
    "compute_stats",
    "load_or_compute_stats",
    "pad_and_random_crop",
    "pca_color_shift",
    "random_crop",
    "random_flip",
    "ten_crop",
]


@dataclasses.dataclass(frozen=True)
class DatasetStats:
    """Training-set statistics in the 0–255 pixel scale.

    Attributes:
      mean: per-channel mean, shape ``(C,)``.
      std: per-channel standard deviation, ``(C,)``.
      mean_image: per-pixel mean ``(H, W, C)`` (the paper's "mean activity"), or ``None`` when
        images differ in size.
      eigvals: eigenvalues of the channel covariance, descending, ``(C,)``.
      eigvecs: matching unit eigenvectors as columns, ``(C, C)``.
      count: number of images the statistics were computed from.
    """

    mean: np.ndarray
    std: np.ndarray
    mean_image: np.ndarray | None
    eigvals: np.ndarray
    eigvecs: np.ndarray
    count: int

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (``.npz``) atomically: a temporary file of this writer's own, then
        a rename (processes that start together may write the same statistics at once)."""
        from gdjax._cache import written_atomically

        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        with written_atomically(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetStats:
        with np.load(path) as z:
            return cls(
                mean=z["mean"],
                std=z["std"],
                mean_image=z.get("mean_image"),
                eigvals=z["eigvals"],
                eigvecs=z["eigvecs"],
                count=int(z["count"]),
            )


def compute_stats(source: Any, max_examples: int | None = 10_000, seed: int = 0) -> DatasetStats:
    """Channel mean/std, per-pixel mean and RGB covariance eigenpairs of (a sample of) a source.

    With ``max_examples`` below ``len(source)``, a seeded random sample is used (the covariance
    of 10,000 images is accurate to well under 1%). Unreadable images (``mask`` 0, a blank
    stand-in) are left out; ``count`` is the number of images used.
    """
    if max_examples is not None:
        check_positive_int("compute_stats: max_examples", max_examples, " or None (all)")
    n = len(source)
    if n == 0:
        raise ValueError("compute_stats: the source is empty")
    order = np.arange(n)
    if max_examples is not None and max_examples < n:
        order = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
    total = outer = image_sum = None
    pixels = used = 0
    same_size = True
    for i in order:
        example = source[int(i)]
        if float(example.get("mask", 1)) == 0:  # an unreadable file's blank stand-in
            continue
        img = np.asarray(example["image"], np.float64)
        flat = img.reshape(-1, img.shape[-1])
        if total is None:
            c = flat.shape[-1]
            total, outer, image_sum = np.zeros(c), np.zeros((c, c)), np.zeros(img.shape)
        total += flat.sum(0)
        outer += flat.T @ flat
        pixels += len(flat)
        used += 1
        if same_size and img.shape == image_sum.shape:
            image_sum += img
        else:
            same_size = False
    if not used:
        name = getattr(source, "name", "the source")
        raise ValueError(
            f"compute_stats: none of the {len(order)} images read from {name} is readable"
        )
    mean = total / pixels
    cov = outer / pixels - np.outer(mean, mean)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order_desc = np.argsort(eigvals)[::-1]
    return DatasetStats(
        mean=mean.astype(np.float32),
        std=np.sqrt(np.maximum(np.diag(cov), 1e-12)).astype(np.float32),
        mean_image=(image_sum / used).astype(np.float32) if same_size else None,
        eigvals=np.maximum(eigvals[order_desc], 0).astype(np.float32),
        eigvecs=eigvecs[:, order_desc].astype(np.float32),
        count=used,
    )


def load_or_compute_stats(
    source: Any, cache_dir: str | os.PathLike | None = None, max_examples: int | None = 10_000
) -> DatasetStats:
    """The source's statistics from the cache, computing and storing them the first time.

    The cache key is the source's content (``source.fingerprint()``: the arrays of an
    in-memory set, the paths, sizes and modification times of a folder's files), so two
    different copies of "the same" dataset never share statistics; a source without
    ``fingerprint`` is keyed by its name and length. The directory is ``cache_dir``, else
    gdjax's cache folder (``$GDJAX_CACHE_DIR``, else ``~/.cache/gdjax``).
    """
    from gdjax._cache import cache_dir as default_cache_dir

    content = source.fingerprint() if hasattr(source, "fingerprint") else source.name
    key = hashlib.sha1(f"{content}|{len(source)}|{max_examples}".encode()).hexdigest()[:16]
    path = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"stats-{key}.npz"
    if path.is_file():
        try:
            return DatasetStats.load(path)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: recompute and overwrite it
    stats = compute_stats(source, max_examples)
    try:
        stats.save(path)
    except OSError as err:  # a read-only cache is no reason to fail, but costs each start
        name = getattr(source, "name", "the dataset")
        warnings.warn(
            f"cannot cache the statistics of {name} in {path.parent} ({err.strerror or err}); "
            "they are computed again at each start; set GDJAX_CACHE_DIR to a writable folder "
            "to keep them",
            RuntimeWarning,
            stacklevel=2,
        )
    return stats


# ---------------------------------------------------------------------------------------------
# Array operations (HWC)


def _check_crop(image: np.ndarray, size: int) -> tuple[int, int]:
    """The image's (height, width), once ``size`` is known to be a crop side that fits."""
    check_positive_int("crop size", size)
    if np.ndim(image) not in (2, 3):
        raise ValueError(f"expected an HW or HWC image, got shape {np.shape(image)}")
    h, w = image.shape[:2]
    if size > min(h, w):
        raise ValueError(f"crop size {size} exceeds the image ({h}x{w})")
    return h, w


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size × size`` crop at a uniformly random position."""
    h, w = _check_crop(image, size)
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top : top + size, left : left + size]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = _check_crop(image, size)
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def ten_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The paper's ten views: four corners and the centre, then their mirror images.

    Returns ``(10, size, size, C)``.
    """
    h, w = _check_crop(image, size)
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    crops = [image[top : top + size, left : left + size] for top, left in corners]
    crops.append(center_crop(image, size))
    crops += [c[:, ::-1] for c in crops]
    return np.stack(crops)


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror left-right with probability ½."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def pca_color_shift(stats: DatasetStats, std: float, rng: np.random.Generator) -> np.ndarray:
    r"""The per-image colour shift :math:`\sum_i \alpha_i \lambda_i p_i`, :math:`\alpha_i \sim
    N(0, \mathrm{std}^2)`."""
    check_finite("pca_color_shift: std", std)
    alpha = rng.normal(0.0, std, size=stats.eigvals.shape)
    return (stats.eigvecs @ (alpha * stats.eigvals)).astype(np.float32)


def _check_transform(t: Any) -> None:
    """The fields of a transform, checked where it is made (a bad one failed on the first
    image in a loader's worker, or never: flip="no" flipped)."""
    name = type(t).__name__
    for field in dataclasses.fields(t):
        if not field.init or field.name == "stats":
            continue
        value = getattr(t, field.name)
        if field.name == "crop":
            check_positive_int(f"{name}: crop", value)
        elif field.name == "pad" and not (is_int(value) and value >= 0):
            raise ValueError(f"{name}: pad must be an int >= 0, got {value!r}")
        elif field.name == "pca_std":
            check_finite(f"{name}: pca_std", value)
        elif field.name == "scale":
            check_finite(f"{name}: scale", value, strict=True)
        elif field.type in (bool, "bool"):
            check_flag(f"{name}: {field.name}", value)
    if not isinstance(t.stats, DatasetStats):
        raise TypeError(
            f"{name}: stats must be a DatasetStats (gdjax.data.compute_stats), got "
            f"{type(t.stats).__name__}"
        )


def pad_and_random_crop(image: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by ``pad`` on each side, then crop back to the original size at random."""
    if not is_int(pad) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    h, w = image.shape[:2]
    top, left = int(rng.integers(0, 2 * pad + 1)), int(rng.integers(0, 2 * pad + 1))
    # The window [top, top + h) of the padded image is rows [top - pad, top - pad + h) of the
    # image: copy the overlap into zeros instead of building the padded image.
    dy, dx = top - pad, left - pad
    r0, r1, c0, c1 = max(0, dy), min(h, h + dy), max(0, dx), min(w, w + dx)
    out = np.zeros_like(image)
    if r0 < r1 and c0 < c1:
        out[r0 - dy : r1 - dy, c0 - dx : c1 - dx] = image[r0:r1, c0:c1]
    return out


# ---------------------------------------------------------------------------------------------
# Example transforms: ({"image": uint8 HWC, "label": int}, rng) -> float32 image, int32 label


def _subtract_mean(image: np.ndarray, stats: DatasetStats, per_pixel: bool) -> np.ndarray:
    img = image.astype(np.float32)
    if per_pixel:
        if stats.mean_image is None or stats.mean_image.shape != img.shape:
            raise ValueError("per-pixel mean needs images of one size and stats.mean_image")
        return img - stats.mean_image
    return img - stats.mean


def _standardize(image: np.ndarray, stats: DatasetStats) -> np.ndarray:
    return (image.astype(np.float32) - stats.mean) / stats.std


def _example(image: np.ndarray, label: Any) -> dict:
    return {"image": np.ascontiguousarray(image, dtype=np.float32), "label": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class AlexNetTrain:
    """Mean subtraction, random crop, flip and PCA colour shift (the paper's training input).

    Output pixels are in the 0–255 scale minus the mean (the paper feeds these directly);
    ``scale`` multiplies them (e.g. 1/255 or 1/std for networks initialised otherwise).
    """

    stats: DatasetStats
    crop: int = 224
    pca_std: float = 0.1
    flip: bool = True
    per_pixel_mean: bool = True
    scale: float = 1.0
    random: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self) -> None:
        _check_transform(self)

    def __call__(self, element: dict, rng: np.random.Generator) -> dict:
        img = _subtract_mean(element["image"], self.stats, self.per_pixel_mean)
        img = random_crop(img, self.crop, rng)
        if self.flip:
            img = random_flip(img, rng)
        if self.pca_std > 0:
            img = img + pca_color_shift(self.stats, self.pca_std, rng)
        return _example(img * self.scale, element["label"])


@dataclasses.dataclass(frozen=True)
class AlexNetEval:
    """Mean subtraction and the centre crop, or the ten crops ``(10, crop, crop, C)``."""

    stats: DatasetStats
    crop: int = 224
    ten_crop: bool = False
    per_pixel_mean: bool = True
    scale: float = 1.0
    random: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        _check_transform(self)

    def __call__(self, element: dict, rng: np.random.Generator | None = None) -> dict:
        img = _subtract_mean(element["image"], self.stats, self.per_pixel_mean)
        img = ten_crop(img, self.crop) if self.ten_crop else center_crop(img, self.crop)
        return _example(img * self.scale, element["label"])


@dataclasses.dataclass(frozen=True)
class SmallTrain:
    """Small images: pad-and-crop, optional flip, per-channel standardisation."""

    stats: DatasetStats
    pad: int = 4
    flip: bool = True
    random: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self) -> None:
        _check_transform(self)

    def __call__(self, element: dict, rng: np.random.Generator) -> dict:
        img = element["image"]
        if self.pad:
            img = pad_and_random_crop(img, self.pad, rng)
        if self.flip:
            img = random_flip(img, rng)
        return _example(_standardize(img, self.stats), element["label"])


@dataclasses.dataclass(frozen=True)
class SmallEval:
    """Small images at evaluation: per-channel standardisation only."""

    stats: DatasetStats
    random: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        _check_transform(self)

    def __call__(self, element: dict, rng: np.random.Generator | None = None) -> dict:
        return _example(_standardize(element["image"], self.stats), element["label"])
