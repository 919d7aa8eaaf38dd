"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard event files and a PNG of the curves."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import warnings
from typing import Any

import numpy as np

from gdjax._cache import written_atomically
from gdjax._extras import require

__all__ = ["MetricsWriter", "plot_curves", "read_metrics"]


class MetricsWriter:
    """Append ``{"step", "split", **metrics}`` lines to ``workdir/metrics.jsonl`` and write
    the same scalars to TensorBoard under ``workdir/tensorboard`` (``split/name`` tags).

    Only process 0 of a multi-host run writes; the others get a writer that does nothing.

    ``start_step``, for a run that starts (or resumes) at that step in a workdir that may hold
    an earlier run's logs: rows after it are left out of ``metrics.jsonl`` (they belong to the
    part of the earlier run after its last checkpoint, which this run does again), as are
    unreadable lines (a run stopped mid-write); the file is rewritten atomically. TensorBoard
    purges its events after ``start_step`` in the same way (``purge_step``). A row for a
    ``(step, split)`` the file already holds is not written again (the final evaluation of a
    run that had nothing left to train). :attr:`left_out` counts what was left out.
    """

    def __init__(
        self, workdir: str | os.PathLike, enabled: bool = True, start_step: int | None = None
    ):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.left_out = {"rows_after_start": 0, "unreadable_lines": 0}
        self._written: set[tuple[int, str]] = set()
        self._tb = None
        if enabled:
            SummaryWriter = _summary_writer()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tb_dir = pathlib.Path(workdir) / "tensorboard"
            purge = None
            if start_step is not None:
                self._keep_rows_up_to(int(start_step))
                purge = int(start_step) + 1 if tb_dir.is_dir() else None
            self._tb = SummaryWriter(logdir=str(tb_dir), purge_step=purge)

    def _keep_rows_up_to(self, start: int) -> None:
        if not self.path.is_file():
            return
        text = self.path.read_text()
        kept = []
        for line in text.splitlines():
            if not line.strip():
                continue
            row = _parse(line)
            if row is None:
                self.left_out["unreadable_lines"] += 1
            elif row["step"] > start:
                self.left_out["rows_after_start"] += 1
            else:
                kept.append(line + "\n")
                self._written.add((row["step"], row["split"]))
        if any(self.left_out.values()) or (not text.endswith("\n") and text):
            with written_atomically(self.path) as tmp:
                pathlib.Path(tmp).write_text("".join(kept))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled or (int(step), split) in self._written:
            return
        self._written.add((int(step), split))
        clean = {k: float(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        for name, value in clean.items():
            self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _parse(line: str) -> dict[str, Any] | None:
    """A row of ``metrics.jsonl``, or None for a line that is not one (cut short, edited)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(row, dict) and isinstance(row.get("step"), int) and "split" in row
    return row if ok else None


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
    # tensorboardX logs "NaN or Inf found in input tensor." for every such scalar: a line of its
    # own in the command's output before gdjax's, which says the step and what to change (the
    # value is still written).
    logger = logging.getLogger("tensorboardX.x2num")
    if _nonfinite_note not in logger.filters:
        logger.addFilter(_nonfinite_note)
    return SummaryWriter


def _nonfinite_note(record: logging.LogRecord) -> bool:
    return "NaN or Inf found" not in record.getMessage()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (none if there is no file). A line that is not a row,
    such as the last one of a run killed while writing it, is left out with a warning."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    rows, bad = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            row = _parse(line)
            if row is None:
                bad.append(number)
            else:
                rows.append(row)
    if bad:
        warnings.warn(
            f"{path}: left out line(s) {', '.join(map(str, bad[:5]))}"
            f"{' ...' if len(bad) > 5 else ''}, which are not metric rows (cut short when a "
            "run stopped while writing?)",
            stacklevel=2,
        )
    return rows


def plot_curves(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> pathlib.Path:
    """Training and evaluation loss and error against steps, from ``metrics.jsonl``, as a PNG.

    Draws on its own figure and canvas, not through ``pyplot``: the caller's backend (a
    notebook's inline one) and open figures are left alone.
    """
    require("plots", "plot_curves", "matplotlib")
    workdir = pathlib.Path(workdir)
    rows = read_metrics(workdir / "metrics.jsonl")
    out = pathlib.Path(out) if out is not None else workdir / "curves.png"
    _curves_figure(rows, workdir.name).savefig(out, dpi=100)
    return out


def _curves_figure(rows: list[dict], title: str) -> Any:
    """The figure :func:`plot_curves` saves: loss and error against steps, one line per split
    (the training rows a line, an evaluated split's points marked; a split of one row, as in
    a run with a single log, a marked point, which a line alone would not show)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evaluated = sorted({r["split"] for r in rows} - {"train"})  # test, val or train_eval
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("loss", "error"), strict=True):
        for split in ("train", *evaluated):
            points = [(r["step"], r[name]) for r in rows if r["split"] == split and name in r]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "-" if split == "train" and len(xs) > 1 else "o-"
                ax.plot(xs, ys, style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    if any(np.any(np.asarray(line.get_ydata()) > 0) for line in axes[1].get_lines()):
        axes[1].set_yscale("log")
    fig.suptitle(title)
    # Fixed margins that fit the labels of this layout (tight_layout measured every tick
    # label's text to find them: 0.15 s of the 0.43 s a plot took, at the end of every run).
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.88, wspace=0.3)
    return fig
