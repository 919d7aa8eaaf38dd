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
