"""eval_batches: every process runs the same number of padded, masked steps."""

import math

import jax
import numpy as np
import pytest

from gdjax.data import ArraySource
from gdjax.train import eval_batches


@pytest.mark.parametrize("n, batch", [(9, 8), (359, 40), (8, 8), (1, 4)])
def test_every_process_runs_the_same_steps_and_counts_each_example_once(monkeypatch, n, batch):
    # The labels name the examples (0..n-1), so each can be followed through the batches.
    images = np.zeros((n, 1, 1, 1), np.uint8)
    source = ArraySource(images, np.arange(n), [str(i) for i in range(n)], "toy")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    seen, steps = [], []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        batches = list(eval_batches(source, None, batch))
        steps.append(len(batches))
        for b in batches:
            assert len(b["label"]) == len(b["mask"]) == batch // 2
            seen += b["label"][b["mask"] == 1].tolist()
    assert steps[0] == steps[1] == math.ceil(math.ceil(n / 2) / (batch // 2))
    assert sorted(seen) == list(range(n)), "each example exactly once over the processes"


class _Unreadable:
    """An ArraySource whose examples at ``bad`` come back as a FolderSource returns a file it
    cannot decode: a blank image of the right shape, its own label, mask 0."""

    def __init__(self, source, bad):
        self.source, self.bad, self.name = source, set(bad), "toy-with-unreadable"

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        example = dict(self.source[i], mask=np.float32(i not in self.bad))
        if i in self.bad:
            example["image"] = np.zeros_like(example["image"])
        return example


def test_unreadable_examples_are_left_out_counted_and_never_score_a_split_alone():
    """The masked path had no test; with every example unreadable the error was 0 / max(0, 1):
    a split of unreadable files scored 100% accuracy."""
    import jax.numpy as jnp

    from gdjax import data, sgd
    from gdjax.models import AlexNet
    from gdjax.train import Parallel, TrainState, evaluate

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 1), dtype=np.uint8)
    source = ArraySource(images, rng.integers(0, 3, 12), ["a", "b", "c"], "toy")
    transform = data.SmallEval(data.compute_stats(source))
    model = AlexNet(variant="small", num_classes=3, in_channels=1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    state = TrainState.create(
        apply_fn=model.apply, variables=variables, tx=sgd(0.1), rng=jax.random.key(1)
    )
    parallel = Parallel("none")
    bad = [1, 4, 5, 11]
    readable = ArraySource(
        np.delete(images, bad, 0), np.delete(source.labels, bad), source.class_names, "readable"
    )
    want = evaluate(parallel, state, readable, transform, batch_size=4)
    with pytest.warns(UserWarning, match="test split: 4 unreadable example"):
        got = evaluate(parallel, state, _Unreadable(source, bad), transform, batch_size=4)
    assert got.pop("skipped") == 4
    assert got == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match=r"val split: none of its 12 examples could be read"):
        evaluate(parallel, state, _Unreadable(source, range(12)), transform, 4, split="val")


def test_accuracy_is_the_fraction_right_not_one_minus_the_error():
    """With 1 of 10 examples right the accuracy was ``1 - 0.9``, 0.09999999999999998 (the
    command printed it rounded, ``gdjax eval``'s JSON did not); it is ``right / count``."""
    import jax.numpy as jnp

    from gdjax import data, sgd
    from gdjax.models import AlexNet
    from gdjax.train import Parallel, TrainState, evaluate

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16, 1), dtype=np.uint8)
    model = AlexNet(variant="small", num_classes=3, in_channels=1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    state = TrainState.create(
        apply_fn=model.apply, variables=variables, tx=sgd(0.1), rng=jax.random.key(1)
    )
    probe = ArraySource(images, np.zeros(10, np.int64), ["a", "b", "c"], "toy")
    transform = data.SmallEval(data.compute_stats(probe))
    x = np.stack([transform(probe[i], None)["image"] for i in range(10)])
    predicted = np.asarray(model.apply(variables, x, train=False)).argmax(-1)
    labels = (predicted + 1) % 3  # every example wrong ...
    labels[0] = predicted[0]  # ... but the first
    source = ArraySource(images, labels, ["a", "b", "c"], "toy")
    result = evaluate(Parallel("none"), state, source, transform, batch_size=4)
    assert result["error"] == pytest.approx(0.9)
    assert result["accuracy"] == 0.1  # exactly: 1 - 0.9 is 0.09999999999999998
