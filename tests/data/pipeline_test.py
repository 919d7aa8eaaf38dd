"""The grain pipeline: sampling strategies, determinism, exact resume, per-host sharding."""

import itertools

import numpy as np
import pytest

from gdjax import data


class IndexSource:
    """Example i carries i, so tests can see which examples a batch holds."""

    name = "index"

    def __init__(self, n=20):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full((2, 2, 1), i % 256, np.uint8), "label": i % 3, "index": i}


def flatten(lists):
    return list(itertools.chain.from_iterable(lists))


def indices(loader, count=None):
    return [b["index"].tolist() for b in itertools.islice(loader, count)]


def test_full_batch_is_the_whole_dataset_every_step():
    batches = indices(data.make_loader(IndexSource(12), batch_size="full", num_epochs=3))
    assert len(batches) == 3
    for b in batches:
        assert sorted(b) == list(range(12))
    assert batches[0] != batches[1]  # reshuffled each epoch (order only; same examples)


def test_stochastic_is_one_example_at_a_time_covering_each_epoch():
    batches = indices(data.make_loader(IndexSource(10), batch_size=1, num_epochs=2))
    assert len(batches) == 20 and all(len(b) == 1 for b in batches)
    epochs = [sorted(flatten(batches[i : i + 10])) for i in (0, 10)]
    assert epochs == [list(range(10))] * 2


def test_minibatches_without_shuffling_keep_the_source_order():
    batches = indices(data.make_loader(IndexSource(10), batch_size=4, shuffle=False, num_epochs=2))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]


def test_minibatches_with_shuffling_permute_each_epoch_afresh():
    flat = flatten(indices(data.make_loader(IndexSource(20), batch_size=5, num_epochs=3)))
    epochs = [flat[i : i + 20] for i in (0, 20, 40)]
    for e in epochs:
        assert sorted(e) == list(range(20))
    assert epochs[0] != epochs[1] != epochs[2]


def test_same_seed_same_batches_different_seed_different():
    src = data.load("mnist5k")
    stats = data.compute_stats(src, max_examples=500)
    tf = data.SmallTrain(stats, pad=2, flip=True)

    def first_batches(seed):
        loader = data.make_loader(src, batch_size=32, transform=tf, seed=seed)
        return [b["image"] for b in itertools.islice(loader, 3)]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_augmentation_depends_on_the_example_not_the_batch_size():
    src = data.load("digits")
    stats = data.compute_stats(src)
    tf = data.SmallTrain(stats, pad=1, flip=True)
    small = next(iter(data.make_loader(src, batch_size=4, transform=tf, seed=3)))
    large = next(iter(data.make_loader(src, batch_size=16, transform=tf, seed=3)))
    np.testing.assert_array_equal(small["image"], large["image"][:4])


@pytest.mark.parametrize("worker_count", [0, 1])
def test_exact_resume(worker_count):
    src = data.load("digits")
    stats = data.compute_stats(src)
    make = lambda: data.make_loader(  # noqa: E731
        src,
        batch_size=64,
        transform=data.SmallTrain(stats, pad=1),
        seed=7,
        num_epochs=None,
        worker_count=worker_count,
    )
    it = iter(make())
    for _ in range(25):  # crosses an epoch boundary (1438 / 64 = 22.5 batches)
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(5)]
    resumed = iter(make())
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_hosts_together_read_exactly_the_single_host_global_batches():
    src = IndexSource(24)
    single = indices(data.make_loader(src, batch_size=8, seed=1, num_epochs=2))
    per_host = [
        indices(
            data.make_loader(
                src, batch_size=8, seed=1, num_epochs=2, process_index=p, process_count=4
            )
        )
        for p in range(4)
    ]
    assert all(len(h) == len(single) for h in per_host)
    for step, global_batch in enumerate(single):
        parts = [h[step] for h in per_host]
        assert all(len(p) == 2 for p in parts)
        # In process order the parts are the single-host batch, example for example (so each
        # example gets the same dropout row on any number of hosts).
        assert list(flatten(parts)) == list(global_batch)
    assert not set(per_host[0][0]) & set(per_host[1][0])  # each host reads its own slice


def test_a_loader_resumes_on_another_number_of_hosts():
    """Two hosts stop after three batches; one host with the saved position (process 0's)
    continues the same global sequence, and so do four hosts."""
    src = IndexSource(20)

    def loader(p, n):
        return iter(data.make_loader(src, batch_size=8, seed=2, num_epochs=None,
                                     process_index=p, process_count=n))  # fmt: skip

    single = loader(0, 1)
    want = [list(np.asarray(next(single)["index"])) for _ in range(7)]
    two = [loader(p, 2) for p in (0, 1)]
    for _ in range(3):
        for it in two:
            next(it)
    state = two[0].get_state()
    one = loader(0, 1)
    one.set_state(state)
    assert [list(np.asarray(next(one)["index"])) for _ in range(4)] == want[3:]
    four = [loader(p, 4) for p in range(4)]
    for it in four:
        it.set_state(state)
    got = [flatten([list(np.asarray(next(it)["index"])) for it in four]) for _ in range(4)]
    assert [list(g) for g in got] == want[3:]


def test_batch_not_divisible_by_processes_is_an_error():
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        data.make_loader(IndexSource(), batch_size=8, process_index=0, process_count=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"batch_size": "all"}, r"batch_size must be a positive int or 'full', got 'all'$"),
        ({"batch_size": "Full"}, r"got 'Full' \(did you mean 'full'\?\)"),
        ({"batch_size": " full"}, r"got ' full' \(did you mean 'full'\?\)"),
        ({"batch_size": 50}, "exceeds the 20 examples"),
        ({"batch_size": 4, "num_epochs": 0}, "num_epochs must be"),
        ({"batch_size": 4, "worker_count": -1}, "worker_count must be >= 0"),
        (
            {"batch_size": 4, "process_index": 2, "process_count": 2},
            r"process_index must be in \[0, 2\)",
        ),
        # these failed later (grain's seed message, a non-callable called at the first batch)
        # or were taken as truthy ("no" shuffled)
        ({"batch_size": 4, "seed": -1}, r"seed must be an int in \[0, 2\*\*32 - 1\], got -1"),
        ({"batch_size": 4, "seed": 0.5}, r"seed must be an int .* got 0.5"),
        ({"batch_size": 4, "shuffle": "no"}, "shuffle must be True or False, got 'no'"),
        ({"batch_size": 4, "drop_remainder": 1}, "drop_remainder must be True or False, got 1"),
        ({"batch_size": 4, "transform": 3}, r"transform must be callable .* got 3"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        data.make_loader(IndexSource(), **kwargs)


def test_split_for_devices():
    batch = {"image": np.zeros((16, 4, 4, 1)), "label": np.arange(16)}
    split = data.split_for_devices(batch, 8)
    assert split["image"].shape == (8, 2, 4, 4, 1)
    np.testing.assert_array_equal(split["label"][3], [6, 7])
    with pytest.raises(ValueError, match="not divisible by the 3 local devices"):
        data.split_for_devices(batch, 3)


def test_example_rng_is_philox_keyed_by_seed_epoch_index():
    import threading

    from gdjax.data import example_rng

    def fresh(seed, epoch, index):
        key = np.array([seed % 2**64, epoch * 2**32 + index], np.uint64)
        return np.random.Generator(np.random.Philox(key=key))

    for seed, epoch, index in [(0, 0, 0), (7, 3, 11), (2**63 + 5, 2**32 - 1, 2**32 - 1)]:
        np.testing.assert_array_equal(
            example_rng(seed, epoch, index).random(6), fresh(seed, epoch, index).random(6)
        )
    # Re-keying resets everything: drawing different amounts first changes nothing.
    example_rng(1, 1, 1).integers(0, 9, size=3)
    np.testing.assert_array_equal(
        example_rng(1, 1, 2).normal(size=4), fresh(1, 1, 2).normal(size=4)
    )
    with pytest.raises(ValueError, match="index=4294967296"):
        example_rng(0, 0, 2**32)
    # Each thread has its own generator object.
    seen = []
    thread = threading.Thread(target=lambda: seen.append(example_rng(0, 0, 0)))
    thread.start()
    thread.join()
    assert seen[0] is not example_rng(0, 0, 0)
