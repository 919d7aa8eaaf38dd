"""AlexNet's augmentations: statistics, crops, flips and the PCA colour shift."""

import re

import numpy as np
import pytest

from gdjax import data
from gdjax.data import augment


class ListSource:
    def __init__(self, images, name="synthetic"):
        self.images, self.name = images, name

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0}


def correlated_images(n=400, size=6, seed=0):
    """RGB pixels with a known, strongly non-diagonal covariance."""
    rng = np.random.default_rng(seed)
    mix = np.array([[30.0, 10, 5], [10, 25, 2], [5, 2, 10]])
    pixels = rng.standard_normal((n, size, size, 3)) @ mix.T + 120
    return np.clip(pixels, 0, 255).astype(np.uint8)


def test_compute_stats_matches_numpy():
    images = correlated_images()
    stats = data.compute_stats(ListSource(images), max_examples=None)
    flat = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats.mean, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.std, flat.std(0), rtol=1e-4)
    np.testing.assert_allclose(stats.mean_image, images.mean(0), rtol=1e-5)
    cov = np.cov(flat.T, bias=True)
    rebuilt = stats.eigvecs @ np.diag(stats.eigvals) @ stats.eigvecs.T
    np.testing.assert_allclose(rebuilt, cov, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(stats.eigvecs.T @ stats.eigvecs, np.eye(3), atol=1e-5)
    assert list(stats.eigvals) == sorted(stats.eigvals, reverse=True)
    assert stats.count == 400


def test_compute_stats_leaves_out_unreadable_images(tmp_path):
    """A folder's unreadable file comes back as a black image with mask 0, and the statistics
    counted it: the mean fell and the spread grew by each one; with none readable the std
    was 1e-6 and every input was scaled a millionfold."""
    from data_testing import write_folder

    root = write_folder(tmp_path / "f", {"train": {"a": 3, "b": 3}})
    good = data.load(f"folder:{root}", image_size=32)
    want = data.compute_stats(good, max_examples=None)
    for f in sorted((root / "train" / "b").iterdir())[:2]:
        f.write_bytes(b"not a jpeg")
    partly = data.load(f"folder:{root}", image_size=32)
    readable = [i for i, p in enumerate(partly.files) if "/b/" not in p or p.endswith("2.jpg")]
    with pytest.warns(UserWarning, match="unreadable image"):
        got = data.compute_stats(partly, max_examples=None)
    flat = np.concatenate([partly[i]["image"].reshape(-1, 3) for i in readable]).astype(float)
    assert got.count == len(readable) == 4 and want.count == 6
    np.testing.assert_allclose(got.mean, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(got.std, flat.std(0), rtol=1e-4)
    images = [partly[i]["image"] for i in readable]
    np.testing.assert_allclose(got.mean_image, np.mean(images, 0), rtol=1e-5, atol=1e-4)
    for f in (root / "train").rglob("*.jpg"):
        f.write_bytes(b"not a jpeg")
    unreadable = pytest.warns(UserWarning, match="unreadable image")
    none = rf"^compute_stats: none of the 6 images read from folder:{re.escape(str(root))}/train "
    with unreadable, pytest.raises(ValueError, match=none + "is readable$"):
        data.compute_stats(data.load(f"folder:{root}", image_size=32), max_examples=None)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "all"])
def test_compute_stats_refuses_a_bad_sample_size(bad):
    """max_examples=0 was an IndexError from numpy, deep inside."""
    with pytest.raises(
        ValueError, match=rf"max_examples must be a positive int or None \(all\), got {bad!r}"
    ):
        data.compute_stats(ListSource(correlated_images(10)), max_examples=bad)
    # a sample of 3 of 10 images: the count says so
    assert data.compute_stats(ListSource(correlated_images(10)), max_examples=3).count == 3


def test_stats_are_stored_and_not_recomputed(tmp_path, monkeypatch):
    src = ListSource(correlated_images(50))
    first = data.load_or_compute_stats(src, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("stats-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr(augment, "compute_stats", fail)
    second = data.load_or_compute_stats(src, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.eigvecs, second.eigvecs)
    np.testing.assert_array_equal(first.mean_image, second.mean_image)


def test_a_cache_that_cannot_be_written_warns_and_still_gives_the_statistics(tmp_path):
    (tmp_path / "a-file").write_text("")
    src = ListSource(correlated_images(50))
    with pytest.warns(RuntimeWarning, match=r"cannot cache the statistics .* GDJAX_CACHE_DIR"):
        got = data.load_or_compute_stats(src, cache_dir=tmp_path / "a-file" / "cache")
    want = data.load_or_compute_stats(src, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(got.mean_image, want.mean_image)
    (stored,) = (tmp_path / "cache").iterdir()  # and no temporary file left beside it
    assert stored.name.startswith("stats-") and stored.name.endswith(".npz"), stored.name
    assert ".tmp" not in stored.name


def test_two_copies_with_one_name_do_not_share_statistics(tmp_path, monkeypatch):
    """The cache is keyed by content: two CIFAR-like sets with the same name and length get
    their own statistics; the folder comes from GDJAX_CACHE_DIR, the one cache variable."""
    monkeypatch.setenv("GDJAX_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    labels = np.zeros(20, np.int64)
    dark = data.ArraySource(rng.integers(0, 60, (20, 8, 8, 3), np.uint8), labels, ["a"], "c/train")
    light = data.ArraySource(
        rng.integers(190, 255, (20, 8, 8, 3), np.uint8), labels, ["a"], "c/train"
    )
    a, b = data.load_or_compute_stats(dark), data.load_or_compute_stats(light)
    assert len(list(tmp_path.glob("stats-*.npz"))) == 2
    assert a.mean.max() < 60 < 190 < b.mean.min()
    again = data.load_or_compute_stats(dark)  # same content: the cached file
    np.testing.assert_array_equal(again.mean, a.mean)
    assert len(list(tmp_path.glob("stats-*.npz"))) == 2


def test_folder_fingerprint_follows_its_files(tmp_path):
    from data_testing import write_folder

    root = write_folder(tmp_path / "set", {"train": {"a": 2, "b": 2}}, size=(20, 20))
    before = data.load(f"folder:{root}", "train").fingerprint()
    assert data.load(f"folder:{root}", "train").fingerprint() == before
    victim = sorted((root / "train" / "a").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # same name, new content
    assert data.load(f"folder:{root}", "train").fingerprint() != before


def test_pca_shift_has_the_stated_variance_along_each_eigenvector():
    stats = data.compute_stats(ListSource(correlated_images()), max_examples=None)
    rng = np.random.default_rng(0)
    shifts = np.stack([data.pca_color_shift(stats, 0.1, rng) for _ in range(20000)])
    projections = shifts @ stats.eigvecs  # coordinates along p_1, p_2, p_3
    np.testing.assert_allclose(projections.std(0), 0.1 * stats.eigvals, rtol=0.03)
    np.testing.assert_allclose(projections.mean(0), 0, atol=0.003 * stats.eigvals[0])
    corr = np.corrcoef(projections.T)
    np.testing.assert_allclose(corr, np.eye(3), atol=0.03)  # independent alphas


def test_crops_have_the_right_sizes_and_content():
    image = np.arange(10 * 12 * 2).reshape(10, 12, 2)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        crop = data.random_crop(image, 7, rng)
        assert crop.shape == (7, 7, 2)
        top, left = divmod(int(crop[0, 0, 0]) // 2, 12)
        np.testing.assert_array_equal(crop, image[top : top + 7, left : left + 7])
        seen.add((top, left))
    assert len(seen) > 10  # positions really vary
    np.testing.assert_array_equal(data.center_crop(image, 4), image[3:7, 4:8])
    with pytest.raises(ValueError, match="crop size 11 exceeds"):
        data.random_crop(image, 11, rng)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_a_crop_size_must_be_a_positive_int(size):
    """center_crop(image, 0) returned a 0x0 image and -1 a 0x0 one too, silently."""
    image, rng = np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0)
    for crop in (
        lambda: data.center_crop(image, size),
        lambda: data.random_crop(image, size, rng),
        lambda: data.ten_crop(image, size),
    ):
        with pytest.raises(ValueError, match=rf"crop size must be a positive int, got {size!r}"):
            crop()


def test_pad_must_be_a_non_negative_int():
    # numpy's "high <= 0" before
    with pytest.raises(ValueError, match=r"pad must be an int >= 0, got -1"):
        data.pad_and_random_crop(np.zeros((8, 8, 1)), -1, np.random.default_rng(0))


def test_ten_crop_returns_corners_centre_and_mirrors():
    image = np.random.default_rng(1).integers(0, 255, (9, 11, 3))
    views = data.ten_crop(image, 5)
    assert views.shape == (10, 5, 5, 3)
    np.testing.assert_array_equal(views[0], image[:5, :5])
    np.testing.assert_array_equal(views[3], image[4:, 6:])
    np.testing.assert_array_equal(views[4], data.center_crop(image, 5))
    for i in range(5):
        np.testing.assert_array_equal(views[5 + i], views[i][:, ::-1])


def test_flip_happens_half_the_time():
    image = np.arange(6).reshape(1, 6, 1)
    rng = np.random.default_rng(0)
    flips = [data.random_flip(image, rng)[0, 0, 0] == 5 for _ in range(2000)]
    assert 0.45 < np.mean(flips) < 0.55


def test_pad_and_crop_keeps_size_and_shifts_content():
    image = np.full((8, 8, 1), 200, np.uint8)
    rng = np.random.default_rng(0)
    outs = [data.pad_and_random_crop(image, 2, rng) for _ in range(30)]
    assert all(o.shape == (8, 8, 1) for o in outs)
    assert any((o == 0).any() for o in outs)  # zero padding shows up at the borders


@pytest.mark.parametrize("pad", [1, 2, 4, 9, 40])
def test_pad_and_crop_equals_crop_of_the_zero_padded_image(pad):
    image = np.random.default_rng(1).integers(1, 256, (8, 9, 3)).astype(np.uint8)
    for seed in range(60):
        rng = np.random.default_rng(seed)
        top, left = rng.integers(0, 2 * pad + 1), rng.integers(0, 2 * pad + 1)
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        expected = padded[top : top + 8, left : left + 9]
        got = data.pad_and_random_crop(image, pad, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, expected)


def test_alexnet_train_and_eval_transforms():
    images = np.random.default_rng(2).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    stats = data.compute_stats(ListSource(images), max_examples=None)
    train = data.AlexNetTrain(stats, crop=28)
    ex = {"image": images[0], "label": 3}
    a = train(ex, np.random.default_rng(5))
    b = train(ex, np.random.default_rng(5))
    c = train(ex, np.random.default_rng(6))
    assert a["image"].shape == (28, 28, 3) and a["image"].dtype == np.float32
    assert a["label"] == 3
    np.testing.assert_array_equal(a["image"], b["image"])  # deterministic given the rng
    assert not np.array_equal(a["image"], c["image"])
    # Without randomness left (no flip, no PCA) a crop is the mean-subtracted image's window.
    plain = data.AlexNetTrain(stats, crop=32, flip=False, pca_std=0.0)(ex, np.random.default_rng(0))
    np.testing.assert_allclose(plain["image"], images[0] - stats.mean_image, rtol=1e-6)
    tens = data.AlexNetEval(stats, crop=28, ten_crop=True)(ex)
    assert tens["image"].shape == (10, 28, 28, 3)
    centre = data.AlexNetEval(stats, crop=28, per_pixel_mean=False)(ex)
    np.testing.assert_allclose(
        centre["image"], data.center_crop(images[0] - stats.mean, 28), rtol=1e-6
    )


def test_per_pixel_mean_needs_uniform_sizes():
    stats = data.compute_stats(
        ListSource([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)])
    )
    assert stats.mean_image is None
    with pytest.raises(ValueError, match="per-pixel mean"):
        data.AlexNetEval(stats, crop=2)({"image": np.zeros((4, 4, 3), np.uint8), "label": 0})


def test_small_transforms_standardise():
    train_src = data.load("mnist5k")
    stats = data.compute_stats(train_src, max_examples=None)
    outs = np.stack([data.SmallEval(stats)(train_src[i])["image"] for i in range(0, 4000, 4)])
    assert abs(outs.mean()) < 0.05 and abs(outs.std() - 1) < 0.05
    out = data.SmallTrain(stats, pad=2, flip=False)(train_src[0], np.random.default_rng(0))
    assert out["image"].shape == (28, 28, 1) and out["image"].dtype == np.float32


@pytest.mark.parametrize(
    "make, error, message",
    [
        # flip="no" is truthy: it flipped
        (lambda s: data.SmallTrain(s, flip="no"), TypeError, "SmallTrain: flip must be True or"),
        (lambda s: data.SmallTrain(s, pad=-1), ValueError, "SmallTrain: pad must be an int >= 0"),
        # these failed on the first image, in a loader's worker, or gave NaN images
        (lambda s: data.AlexNetTrain(s, pca_std=float("nan")), ValueError, "pca_std must be a"),
        (lambda s: data.AlexNetTrain(s, pca_std=-0.1), ValueError, "finite number >= 0, got -0.1"),
        (
            lambda s: data.AlexNetTrain(s, scale=0.0),
            ValueError,
            "scale must be a finite number > 0",
        ),
        (lambda s: data.AlexNetTrain(s, crop=2.5), ValueError, "AlexNetTrain: crop must be a"),
        (lambda s: data.AlexNetEval(s, ten_crop=1), TypeError, "ten_crop must be True or False"),
        (lambda s: data.SmallEval(None), TypeError, "SmallEval: stats must be a DatasetStats"),
        (
            lambda s: data.pca_color_shift(s, float("nan"), np.random.default_rng(0)),
            ValueError,
            "pca_color_shift: std must be a finite number >= 0, got nan",
        ),
    ],
)
def test_a_transform_refuses_bad_settings_where_it_is_made(make, error, message):
    stats = data.compute_stats(ListSource(correlated_images(8)), max_examples=None)
    with pytest.raises(error, match=re.escape(message)):
        make(stats)
    # numpy's own numbers and booleans are numbers and booleans
    data.AlexNetEval(stats, crop=4, ten_crop=np.bool_(True), scale=np.float32(0.5))
