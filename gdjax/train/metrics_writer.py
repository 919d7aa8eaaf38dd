"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard event files and a PNG of the curves."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

import numpy as np

from gdjax._extras import require

__all__ = ["MetricsWriter", "plot_curves", "read_metrics"]


class MetricsWriter:
    """Append ``{"step", "split", **metrics}`` lines to ``workdir/metrics.jsonl`` and write
    the same scalars to TensorBoard under ``workdir/tensorboard`` (``split/name`` tags).

    Only process 0 of a multi-host run writes; the others get a writer that does nothing.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            SummaryWriter = _summary_writer()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(logdir=str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        for name, value in clean.items():
            self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _summary_writer() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    At import tensorboardX imports ``torch`` if it is installed (to accept torch tensors),
    which took 3.2-4.0 s per run here, against 0.2 s without; gdjax writes plain floats. So,
    unless this process has imported torch already, ``torch`` is hidden for that one import
    (``sys.modules[name] = None`` makes ``import name`` raise ImportError, which tensorboardX
    expects) and then unhidden: a later ``import torch`` works as usual.
    """
    hide = "tensorboardX" not in sys.modules and "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> pathlib.Path:
    """Training and evaluation loss and error against steps, from ``metrics.jsonl``, as a PNG.

    Draws on its own figure and canvas, not through ``pyplot``: the caller's backend (a
    notebook's inline one) and open figures are left alone.
    """
    require("plots", "plot_curves", "matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workdir = pathlib.Path(workdir)
    rows = read_metrics(workdir / "metrics.jsonl")
    out = pathlib.Path(out) if out is not None else workdir / "curves.png"
    evaluated = sorted({r["split"] for r in rows} - {"train"})  # test, val or train_eval
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("loss", "error"), strict=True):
        for split in ("train", *evaluated):
            points = [(r["step"], r[name]) for r in rows if r["split"] == split and name in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "-" if split == "train" else "o-", label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    if any(np.any(np.asarray(line.get_ydata()) > 0) for line in axes[1].get_lines()):
        axes[1].set_yscale("log")
    fig.suptitle(workdir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out
