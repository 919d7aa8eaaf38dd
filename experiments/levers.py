"""A/B of the CPU speed levers, each against the step without it, in one process.

A lever's effect (a few percent) is smaller than the drift of a shared machine between two
processes, so both variants are compiled in the same process and timed alternately, round after
round; the medians and their ratio are printed. Levers:

``fused_relu``         each convolution's bias and ReLU as oneDNN post-ops, the ReLU mask read
                       off the output in the backward (``AlexNet(fused_relu=True)``, the default
                       of the paper and small variants), against the convolution on oneDNN
                       followed by XLA's bias-add and ReLU (``fused_relu=False``).
``xla_single_thread``  XLA's own work (dense layers, elementwise loops, the update) on one
                       thread (compiler option ``xla_cpu_multi_thread_eigen=False``), so that it
                       never competes with oneDNN's OpenMP threads for the cores.
``region_copies``      XLA's copy insertion with region analysis (compiler option
                       ``xla_cpu_copy_insertion_use_region_analysis``, what
                       ``gdjax.models.compiler_options("train")`` gives on the CPU): no copies
                       of the donated parameters that the backward pass reads.
``plain_dots``         the dense layers' dots on XLA's own emitter, YNNPACK kept for reductions
                       (``xla_cpu_experimental_ynn_fusion_type``, what
                       ``compiler_options("infer")`` gives on the CPU).
``memory_scheduler``   XLA's memory-minimising instruction order instead of the one that
                       maximises concurrency (compiler option
                       ``xla_cpu_enable_concurrency_optimized_scheduler=False``): less of XLA's
                       own work beside each oneDNN call.
``onednn_lrn``         local response normalization on oneDNN's LRN (what ``impl="auto"``
                       gives), against XLA's fusions of the same formula (the window sum as
                       shifted slices), the rest of the step alike.
``packed_relu``        ReLU's derivative kept as a mask of 1 bit per element
                       (``gdjax.models.relu``, what ``AlexNet`` uses), against
                       ``jax.nn.relu``, whose backward pass XLA computes from the saved input
                       (every unfused convolution's float output kept until its gradient).
``gradient_buffer``    the step's gradients returned into a donated buffer of the parameters'
                       shapes (``Parallel(gradient_buffer=...)``, on by default on the CPU), so
                       that XLA writes them into memory mapped since the last step, against
                       gradients among the step's temporaries, which XLA's CPU runtime
                       allocates afresh on every call (fresh pages, faulted in and zeroed).

Every other lever is measured as ``gdjax.train`` runs here: with the gradient buffer where
``gradient_buffer_by_default()`` says so.

Run: ``python experiments/levers.py --cases torchvision:224:32 small:32:128 --rounds 9``
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import statistics
import time
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
from common import case_spec, momentum_training, positive_int

from gdjax.models import AlexNet, alexnet, compiler_options, layers, onednn_status
from gdjax.models.xla_options import CPU_OPTIONS, _supported
from gdjax.train.parallel import gradient_buffer_by_default

# lever -> (AlexNet keyword arguments, XLA compiler options) with the lever; without it, none.
LEVERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "fused_relu": ({"fused_relu": True}, {}),
    "xla_single_thread": ({}, {"xla_cpu_multi_thread_eigen": False}),
    "memory_scheduler": ({}, {"xla_cpu_enable_concurrency_optimized_scheduler": False}),
    "region_copies": ({}, CPU_OPTIONS["train"]),
    "plain_dots": ({}, CPU_OPTIONS["infer"]),
    "onednn_lrn": ({}, {}),  # the default; the step without it has XLA's LRN (below)
    # the step with it returns its gradients (below); both compiled as gdjax.train compiles
    # them (without region analysis XLA's copies of the donated kernels fill the temporaries)
    "gradient_buffer": ({}, CPU_OPTIONS["train"]),
    "packed_relu": ({}, CPU_OPTIONS["train"]),  # the default; without it jax.nn.relu (below)
}
# The model keyword arguments of the step without the lever, where they are not the defaults.
BASELINES: dict[str, dict[str, Any]] = {"fused_relu": {"fused_relu": False}}
# The compiler options of the step without the lever, where it is not compiled without any.
BASELINE_OPTIONS: dict[str, dict[str, Any]] = {
    "gradient_buffer": CPU_OPTIONS["train"],
    "packed_relu": CPU_OPTIONS["train"],
}


def available() -> list[str]:
    """The levers this jaxlib can compile (an older one lacks some compiler options)."""
    return [
        name
        for name, (_, options) in LEVERS.items()
        if all(_supported("cpu", k, v) for k, v in options.items())
    ]


@contextlib.contextmanager
def _lrn_on_xla(on: bool):
    """While tracing: every LRN on XLA's fusions (oneDNN keeps the convolutions, pooling)."""
    if not on:
        yield
        return
    with mock.patch.object(layers, "_onednn_lrn_kernels", lambda *a: (0, "lever off")):
        yield


@contextlib.contextmanager
def _plain_relu(on: bool):
    """While tracing: AlexNet's ReLU is jax.nn.relu (the mask not packed)."""
    if not on:
        yield
        return
    with mock.patch.dict(alexnet.ACTIVATIONS, {"relu": jax.nn.relu}):
        yield


# The last few (train step, inference, state) compiled, by their arguments: the step without a
# lever is the same program for five levers (no keyword arguments, no options), and the step
# with CPU_OPTIONS["train"] recurs for three, so they are not compiled again for each lever
# (the state trains on from lever to lever; a step's speed does not depend on the values).
# Every lever on one case compiles 10 programs instead of 16; on two cases (the default), 22
# instead of 32, each case's step without a lever still kept from lever to lever. No more than
# four, because each holds its state: 0.5 GB for torchvision's parameters and momentum, 0.7
# with the gradient buffer. main() empties it when it starts and when it ends.
_COMPILED: collections.OrderedDict[str, tuple] = collections.OrderedDict()
_KEEP = 4


def _programs(
    variant: str,
    size: int,
    batch: int,
    model_kwargs: dict,
    options: dict,
    xla_lrn: bool = False,
    buffered: bool = False,
    plain_relu: bool = False,
):
    """Compiled (train step, inference) of one AlexNet, and the training state (with the
    gradient buffer ``"g"`` where ``buffered``); the same objects for the same arguments while
    they are among the last ``_KEEP`` asked for (the timers update the state in place)."""
    key = repr((variant, size, batch, sorted(model_kwargs.items()), sorted(options.items()),
                xla_lrn, buffered, plain_relu))  # fmt: skip
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    _COMPILED[key] = _compile(
        variant, size, batch, model_kwargs, options, xla_lrn, buffered, plain_relu
    )
    while len(_COMPILED) > _KEEP:
        _COMPILED.popitem(last=False)
    return _COMPILED[key]


def _lower(variant, size, batch, model_kwargs, xla_lrn=False, buffered=False, plain_relu=False):
    """The lowered (train step, inference) of one AlexNet, and the training state: what
    ``_compile`` compiles (the custom calls a lever puts in or takes out show here already)."""
    model = AlexNet(num_classes=10 if variant == "small" else 1000, variant=variant, **model_kwargs)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    y = jnp.zeros((batch,), jnp.int32)
    params = jax.jit(model.init, compiler_options=compiler_options("init"))(
        jax.random.key(1), x[:1]
    )["params"]
    train, state = momentum_training(model, x, y, params, buffered)
    with _lrn_on_xla(xla_lrn), _plain_relu(plain_relu):
        train_l = jax.jit(train, donate_argnums=0, keep_unused=True).lower(state, jax.random.key(2))
        infer_l = jax.jit(lambda p: model.apply({"params": p}, x)).lower(params)
    return train_l, infer_l, state


def _compile(variant, size, batch, model_kwargs, options, xla_lrn, buffered, plain_relu):
    train_l, infer_l, state = _lower(
        variant, size, batch, model_kwargs, xla_lrn, buffered, plain_relu
    )
    options = options or None
    return train_l.compile(options), infer_l.compile(options), state


def _timer(train_c, infer_c, state, steps: int):
    def time_train() -> float:
        t = time.perf_counter()
        for i in range(steps):
            state.update(train_c(dict(state), jax.random.key(i)))
        jax.block_until_ready(state["p"])
        return (time.perf_counter() - t) / steps

    def time_infer() -> float:
        t = time.perf_counter()
        for _ in range(steps):
            out = infer_c(state["p"])
        jax.block_until_ready(out)
        return (time.perf_counter() - t) / steps

    return time_train, time_infer


def measure(lever: str, case: str, rounds: int, steps: int) -> dict:
    variant, size, batch = case.split(":")
    size, batch = int(size), int(batch)
    buffered = gradient_buffer_by_default()
    with_ = _timer(
        *_programs(
            variant, size, batch, *LEVERS[lever], buffered=buffered or lever == "gradient_buffer"
        ),
        steps,
    )
    baseline = _programs(
        variant,
        size,
        batch,
        BASELINES.get(lever, {}),
        BASELINE_OPTIONS.get(lever, {}),
        xla_lrn=lever == "onednn_lrn",
        buffered=buffered and lever != "gradient_buffer",
        plain_relu=lever == "packed_relu",
    )
    without = _timer(*baseline, steps)
    times: dict[str, list[float]] = {k: [] for k in ("train", "train0", "infer", "infer0")}
    for fn in (*with_, *without):  # warm-up
        fn()
    for r in range(rounds):  # alternate which goes first
        pairs = [(with_, ""), (without, "0")] if r % 2 == 0 else [(without, "0"), (with_, "")]
        for (t_train, t_infer), suffix in pairs:
            times["train" + suffix].append(t_train())
            times["infer" + suffix].append(t_infer())
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"lever": lever, "case": case, "rounds": rounds, "steps": steps}
    for mode in ("train", "infer"):
        row[f"{mode}_img_s"] = batch / med[mode]
        row[f"{mode}_img_s_without"] = batch / med[mode + "0"]
        row[f"{mode}_speedup"] = med[mode + "0"] / med[mode]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", nargs="*", default=None, choices=list(LEVERS))
    parser.add_argument(
        "--cases", nargs="*", type=case_spec, default=["torchvision:224:32", "small:32:128"]
    )
    parser.add_argument("--rounds", type=positive_int, default=9)
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    ok, detail = onednn_status()
    print(f"{platform.processor() or platform.machine()}; jax {jax.__version__}; {detail}")
    if not ok:
        raise SystemExit("the levers are oneDNN's: install the onednn extra")
    here = available()
    if args.levers is None:
        args.levers = here
        if len(here) < len(LEVERS):
            left = ", ".join(n for n in LEVERS if n not in here)
            print(f"left out (compiler options jaxlib {jax.lib.__version__} lacks): {left}")
    elif missing := [n for n in args.levers if n not in here]:
        raise SystemExit(
            f"--levers {' '.join(missing)}: jaxlib {jax.lib.__version__} lacks the compiler "
            "options they set"
        )
    rows = []
    _COMPILED.clear()  # the programs (and their states) live for this run only
    try:
        for lever in args.levers:
            for case in args.cases:
                row = measure(lever, case, args.rounds, args.steps)
                rows.append(row)
                print(
                    f"{lever:12s} {case:20s} train {row['train_img_s']:8.1f} img/s "
                    f"(without {row['train_img_s_without']:8.1f}, x{row['train_speedup']:.3f})  "
                    f"infer {row['infer_img_s']:8.1f} img/s "
                    f"(without {row['infer_img_s_without']:8.1f}, x{row['infer_speedup']:.3f})",
                    flush=True,
                )
    finally:
        _COMPILED.clear()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
