"""Helpers shared by the experiments: output folders, the machine's description, JSON, plots."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import time
from typing import Any

import jax
import numpy as np


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    here = pathlib.Path(__file__).resolve().parent
    p.add_argument(
        "--out",
        type=output_dir,
        default=str(here / "results" / default_out),
        help="output folder (made if missing)",
    )
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke tests, CI)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per comparison")
    return p


def _at_least(text: str, convert: type, least: float, name: str, strict: bool = False):
    """``convert(text)`` if it is >= ``least`` (> with ``strict``), else argparse's error."""
    expected = f"expected {name} {'>' if strict else '>='} {least:g}"
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if not (value > least if strict else value >= least):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{expected}, got {value}")
    return value


def output_dir(text: str) -> str:
    """argparse type: a folder the run can write in, made if missing (an unwritable --out was
    a traceback at the first plot, or at its mkdir)."""
    path = pathlib.Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot make folder {text!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {text!r}")
    return str(path)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (so that a typo is one line from argparse, exit 2)."""
    return _at_least(text, int, 1, "an integer")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a count where 0 means "skip")."""
    return _at_least(text, int, 0, "an integer")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _at_least(text, float, 0, "a number", strict=True)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def case_spec(text: str) -> str:
    """argparse type for a benchmark case ``variant:pixels:batch`` (e.g. ``small:32:128``)."""
    from gdjax.models.alexnet import VARIANTS, min_input_size, takes_side

    parts = text.split(":")
    form = "variant:pixels:batch, e.g. small:32:128"
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected {form}; got {text!r}")
    if parts[0] not in VARIANTS:
        raise argparse.ArgumentTypeError(
            f"unknown variant {parts[0]!r} in {text!r}; expected one of {', '.join(VARIANTS)}"
        )
    for name, value in zip(("pixels", "batch"), parts[1:], strict=True):
        if not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= 1 in {text!r} ({form})")
    variant, pixels = parts[0], int(parts[1])
    if not takes_side(variant, pixels):  # the model's own rule (AlexNet checks its input by it)
        need = "227" if variant == "paper" else f"at least {min_input_size(variant)}"
        raise argparse.ArgumentTypeError(f"{variant} takes {need} pixels, got {text!r}")
    return text


def momentum_training(model: Any, x: jax.Array, y: jax.Array, params: Any, buffered: bool):
    """The training step ``bench.py`` and ``levers.py`` time: ``(train, state)`` with
    ``train(state, key) -> state`` (forward with dropout, cross-entropy on ``x, y``, backward,
    ``gdjax.momentum(0.01)``) on ``state = {"p": params, "s": optimizer state}``. Where
    ``buffered`` (as ``gdjax.train`` does on the CPU, ``gdjax.train.parallel``), ``state["g"]``
    is a gradient buffer the step returns its gradients into: jit it with ``donate_argnums=0,
    keep_unused=True`` so that XLA writes them there."""
    import optax

    import gdjax

    tx = gdjax.momentum(0.01)

    def loss(p, key):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train(state, key):
        p = state["p"]
        g = jax.grad(loss)(p, key)
        u, s = tx.update(g, state["s"], p)
        return {"p": optax.apply_updates(p, u), "s": s, **({"g": g} if buffered else {})}

    state = {"p": params, "s": tx.init(params)}
    if buffered:
        state["g"] = jax.tree.map(jax.numpy.zeros_like, params)
    return train, state


def cpu_name() -> str:
    """The CPU's model name and its widest vector extensions (AVX2, AVX-512, AMX), for a result's
    first line."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if "flags" in info else set()
    isa = [n for n, f in (("AVX-512", "avx512f"), ("AMX", "amx_tile")) if f in flags]
    isa = isa or (["AVX2"] if "avx2" in flags else [])
    return f"{model.group(1).strip() if model else platform.machine()} ({', '.join(isa) or '?'})"


def machine() -> dict[str, Any]:
    """What ran the experiment: JAX backend and device, CPU count, platform."""
    device = jax.devices()[0]
    return {
        "backend": device.platform,
        "device": device.device_kind,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
    }


def to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def write_results(out: pathlib.Path, name: str, results: dict, started: float) -> pathlib.Path:
    """``out/results.json`` with the numbers, the wall time and the machine."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "experiment": name,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        **to_jsonable(results),
    }
    path = out / "results.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "runs": len(a),
    }


def small_alexnet_config(quick: bool, **overrides):
    """The default preset (small AlexNet, mnist5k), shortened, with dotted-key overrides."""
    from gdjax.configs import get_config, override

    c = get_config("default")
    c.progress = False
    c.log_every_steps = 5
    c.checkpoint_every_steps = 10**9  # only the final checkpoint
    if quick:
        c.num_steps = 6
        c.batch_size = 32
    return override(c, **overrides)


def train_run(config, workdir: pathlib.Path) -> tuple[dict, list[dict]]:
    """``train_and_evaluate`` in a fresh workdir; returns its result and its metric rows."""
    import shutil

    from gdjax.train import train_and_evaluate
    from gdjax.train.metrics_writer import read_metrics

    shutil.rmtree(workdir, ignore_errors=True)
    result = train_and_evaluate(config, str(workdir))
    return result, read_metrics(workdir / "metrics.jsonl")


def curve(rows: list[dict], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    s, v = zip(*pts, strict=True)
    return np.asarray(s), np.asarray(v)
