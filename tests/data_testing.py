"""Helpers that write small datasets in the real on-disk formats (CIFAR pickles, JPEG folders)."""

from __future__ import annotations

import io
import pathlib
import pickle
import tarfile

import numpy as np


def cifar_batch(images_hwc: np.ndarray, labels: list[int], labels_key: bytes) -> bytes:
    """One CIFAR python batch: b'data' rows are CHW-flattened uint8, plus the labels."""
    data = images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1)
    return pickle.dumps({b"data": data, labels_key: labels, b"batch_label": b"test batch"})


def write_cifar(root: pathlib.Path, num_classes: int = 10, per_batch: int = 3, seed: int = 0):
    """Write a tiny CIFAR-10/100 release: the extracted folder and the .tar.gz beside it.

    Returns (tarball path, folder path, {split: (images, labels)}).
    """
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        folder_name, train_files, test_files = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
        )
        meta_name, names_key, labels_key = "batches.meta", b"label_names", b"labels"
    else:
        folder_name, train_files, test_files = "cifar-100-python", ["train"], ["test"]
        meta_name, names_key, labels_key = "meta", b"fine_label_names", b"fine_labels"
    folder = root / folder_name
    folder.mkdir(parents=True)
    truth = {}
    for split, files in (("train", train_files), ("test", test_files)):
        all_images, all_labels = [], []
        for name in files:
            images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            labels = [int(x) for x in rng.integers(0, num_classes, per_batch)]
            (folder / name).write_bytes(cifar_batch(images, labels, labels_key))
            all_images.append(images)
            all_labels += labels
        truth[split] = (np.concatenate(all_images), np.asarray(all_labels))
    names = [f"class_{i}".encode() for i in range(num_classes)]
    (folder / meta_name).write_bytes(pickle.dumps({names_key: names}))
    tarball = root / f"{folder_name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname=folder_name)
    return tarball, folder, truth


def jpeg_bytes(shape: tuple[int, int], seed: int, mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = shape
    # Smooth gradients plus noise: compressible, like photographs, and not constant.
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode != "RGBA" else "PNG", quality=90)
    return buf.getvalue()


def write_folder(root: pathlib.Path, layout: dict[str, dict[str, int]], size=(40, 60)):
    """root/<split>/<class>/<i>.jpg for {split: {class: count}}; returns the root."""
    seed = 0
    for split, classes in layout.items():
        for cls, count in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (d / f"img_{i:03d}.jpg").write_bytes(jpeg_bytes(size, seed))
                seed += 1
    return root
