"""Evaluation over a whole split: equal padded batches, the same number in every process.

In a run of ``P`` processes process ``p`` reads examples ``p, p + P, ...`` in batches of
``eval_batch_size / P``. Every process runs ``ceil(ceil(n / P) / (eval_batch_size / P))``
steps (the collectives inside each step need all of them), padding its last batches with
masked copies; the summed metrics therefore count every example exactly once, which is checked.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from gdjax import data
from gdjax.train.parallel import Parallel
from gdjax.train.steps import TrainState

__all__ = ["eval_batches", "evaluate"]


def eval_batches(source: Any, transform: Any, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches of the whole split, in order, each with a ``mask`` (1 for a real
    example, 0 for padding or an unreadable image); the same number in every process."""
    processes, index = jax.process_count(), jax.process_index()
    per_process = batch_size // processes
    steps = math.ceil(math.ceil(len(source) / processes) / per_process)
    loader = data.make_loader(
        source,
        batch_size=batch_size,
        transform=transform,
        shuffle=False,
        drop_remainder=False,
        process_index=index,
        process_count=processes,
    )
    batches = iter(loader)
    last = None
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:  # this process has run out: a fully masked batch of the right shape
            if last is None:  # it had no example at all: the split's first, masked
                example = source[0] if transform is None else transform(source[0], None)
                last = {k: np.stack([np.asarray(v)] * per_process) for k, v in example.items()}
            batch = {k: v for k, v in last.items() if k != "mask"}
            batch["mask"] = np.zeros(per_process, np.float32)
        b = len(batch["label"])
        mask = np.zeros(per_process, np.float32)
        mask[:b] = batch.pop("mask", np.ones(b, np.float32))
        if b < per_process:
            batch = {k: np.concatenate([v, np.repeat(v[-1:], per_process - b, 0)])
                     for k, v in batch.items()}  # fmt: skip
        last = {**batch, "mask": mask}
        yield last


def evaluate(
    parallel: Parallel,
    state: TrainState,
    source: Any,
    transform: Any,
    batch_size: int,
    split: str = "test",
) -> dict[str, float]:
    """Mean loss, error and top-5 error over a whole split, and the accuracy: the fraction of
    examples scored right, ``(count - wrong) / count`` (not ``1 - error``, whose rounding gave
    0.09999999999999998 for 1 in 10).

    Examples a source could not read (an unreadable image in a folder) are left out and
    counted: ``skipped`` in the result, and one warning per pass naming ``split``. A split
    with no readable example is a ``ValueError``, not an error rate of 0.
    """
    totals: dict[str, float] = {}
    for batch in eval_batches(source, transform, batch_size):
        sums = jax.device_get(parallel.eval_step(state, parallel.put_batch(batch)))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count")
    skipped = len(source) - round(count)
    if skipped < 0:
        raise RuntimeError(f"evaluation counted {count:.0f} of the {len(source)} examples")
    if count < 1:  # 0 / max(0, 1) was an error of 0: a split of unreadable files scored 100%
        raise ValueError(
            f"{split} split: none of its {len(source)} examples could be read, nothing to "
            f"evaluate on ({getattr(source, 'name', type(source).__name__)})"
        )
    result = {k: v / count for k, v in totals.items()}
    result["accuracy"] = (count - totals["error"]) / count
    if skipped:
        warnings.warn(
            f"{split} split: {skipped} unreadable example(s) left out of the evaluation",
            stacklevel=2,
        )
        result["skipped"] = float(skipped)
    return result
