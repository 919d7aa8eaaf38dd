"""The metrics writer: metrics.jsonl and TensorBoard event files, without importing PyTorch."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import pytest

from gdjax.train.metrics_writer import MetricsWriter, plot_curves, read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _scalars(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under ``logdir``, read from their TFRecord frames
    (u64 length, u32 crc, the Event proto, u32 crc) with tensorboardX's own protos."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh Python that imports gdjax from this checkout; it must succeed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done


def test_event_files_hold_the_scalars_and_torch_is_not_imported(tmp_path):
    """tensorboardX imports torch when it is installed (3-4 s a run); the writer hides it for
    that import, and a later ``import torch`` still works."""
    pytest.importorskip("torch")  # what is tested: torch installed, yet not imported
    code = (
        "import sys\n"
        "from gdjax.train.metrics_writer import MetricsWriter\n"
        f"w = MetricsWriter({str(tmp_path)!r})\n"
        "w.write(10, 'train', {'loss': 0.5, 'error': 0.25})\n"
        "w.write(20, 'train', {'loss': 0.125})\n"
        "w.close()\n"
        "print('torch' in sys.modules)\n"
        "import torch\n"
        "print(torch.ones(2).sum().item())\n"
    )
    done = _python(code)
    assert done.stdout.split() == ["False", "2.0"]
    assert _scalars(tmp_path / "tensorboard") == {
        "train/loss": [(10, 0.5), (20, 0.125)],
        "train/error": [(10, 0.25)],
    }
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20]


def test_a_nonfinite_scalar_is_written_without_tensorboardxs_line(tmp_path):
    """tensorboardX logged "NaN or Inf found in input tensor." to stderr, a line of its own
    before the command's one-line error about the diverged run."""
    code = (
        "from gdjax.train.metrics_writer import MetricsWriter\n"
        f"w = MetricsWriter({str(tmp_path)!r})\n"
        "w.write(30, 'train', {'loss': float('nan'), 'error': 0.5})\n"
        "w.close()\n"
        "import logging; logging.getLogger('tensorboardX.x2num').warning('other news')\n"
    )
    done = _python(code)
    assert "NaN or Inf" not in done.stderr and "other news" in done.stderr, done.stderr
    scalars = _scalars(tmp_path / "tensorboard")
    assert scalars["train/error"] == [(30, 0.5)]
    ((step, loss),) = scalars["train/loss"]
    assert step == 30 and loss != loss  # NaN, still written


def test_writes_when_torch_is_already_imported(tmp_path):
    torch = pytest.importorskip("torch")
    w = MetricsWriter(tmp_path)
    w.write(3, "test", {"loss": 1.5})
    w.close()
    assert sys.modules["torch"] is torch
    assert _scalars(tmp_path / "tensorboard") == {"test/loss": [(3, 1.5)]}
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 3,
        "split": "test",
        "loss": 1.5,
    }


def test_a_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(tmp_path / "w", enabled=False)
    w.write(1, "train", {"loss": 1.0})
    w.close()
    assert not (tmp_path / "w").exists()


def test_plot_curves_leaves_the_callers_matplotlib_alone(tmp_path):
    """plot_curves switched pyplot to Agg (matplotlib.use), which in a notebook turns off the
    inline backend for every later plot; it now draws on its own canvas."""
    import matplotlib
    import matplotlib.pyplot as plt

    writer = MetricsWriter(tmp_path)
    for step in (10, 20, 30):
        writer.write(step, "train", {"loss": 2.0 / step, "error": 0.5 / step})
    writer.write(30, "val", {"loss": 0.1, "error": 0.02})
    writer.close()
    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for a notebook's inline backend
    try:
        plt.figure()  # the caller's open figure
        figures = plt.get_fignums()
        out = plot_curves(tmp_path)
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
    finally:
        plt.close("all")
        matplotlib.use(previous)
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1000, 400)


@pytest.mark.parametrize("train_rows", [1, 3])
def test_every_split_of_the_curves_is_visible_however_short(train_rows):
    """A run that logged its training metrics once drew them as a line of one point, which is
    nothing at all: such a split is a marked point; a longer one stays a plain line."""
    from gdjax.train.metrics_writer import _curves_figure

    rows = [{"step": 10 * (i + 1), "split": "train", "loss": 2.0 / (i + 1), "error": 0.5}
            for i in range(train_rows)]  # fmt: skip
    rows.append({"step": 10 * train_rows, "split": "test", "loss": 1.5, "error": 0.4})
    for ax in _curves_figure(rows, "run").axes:
        train, test = ax.get_lines()
        assert (train.get_label(), test.get_label()) == ("train", "test")
        assert len(train.get_xdata()) == train_rows and test.get_marker() == "o"
        assert train.get_marker() == ("o" if train_rows == 1 else "None")


def _session_starts(logdir: pathlib.Path) -> list[int]:
    """The steps of the SessionLog START events, which TensorBoard purges from (purge_step)."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    starts = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                starts.append(event.step)
    return starts


def test_a_resumed_writer_leaves_out_what_the_earlier_run_logged_past_its_checkpoint(tmp_path):
    """A run killed at step 30 whose newest checkpoint was 20 left rows 30 behind: the resumed
    run logged 30 again, and curves.png went back and forth. A line cut short by the kill made
    read_metrics (so plot_curves, at the end of the resumed run) raise JSONDecodeError."""
    first = MetricsWriter(tmp_path)
    for step in (10, 20, 30):
        first.write(step, "train", {"loss": 1.0 / step})
    first.write(20, "test", {"loss": 0.5})
    first.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 40, "split": "tr')  # the kill, mid-line
    with pytest.warns(UserWarning, match=r"left out line\(s\) 5, which are not metric rows"):
        assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 30, 20]

    (tmp_path / "metrics.jsonl").chmod(0o640)
    resumed = MetricsWriter(tmp_path, start_step=20)
    assert resumed.left_out == {"rows_after_start": 1, "unreadable_lines": 1}
    resumed.write(20, "test", {"loss": 0.5})  # already there: not written twice
    resumed.write(30, "train", {"loss": 0.25})
    resumed.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in rows] == [
        (10, "train"), (20, "train"), (20, "test"), (30, "train")
    ]  # fmt: skip
    assert rows[-1]["loss"] == 0.25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == 0o640  # the rewrite keeps it
    assert _session_starts(tmp_path / "tensorboard") == [21]  # TensorBoard purges 30 too


def test_a_writer_that_starts_on_a_clean_file_rewrites_nothing(tmp_path):
    first = MetricsWriter(tmp_path)
    first.write(10, "train", {"loss": 1.0})
    first.close()
    before = (tmp_path / "metrics.jsonl").stat().st_mtime_ns
    again = MetricsWriter(tmp_path, start_step=10)
    assert again.left_out == {"rows_after_start": 0, "unreadable_lines": 0}
    again.close()
    assert (tmp_path / "metrics.jsonl").stat().st_mtime_ns == before
    fresh = MetricsWriter(tmp_path / "new", start_step=0)
    fresh.write(1, "train", {"loss": 1.0})
    fresh.close()
    assert _session_starts(tmp_path / "new" / "tensorboard") == []  # nothing to purge
