"""gdjax vs PyTorch on the same machine: training step, inference and optimizer update.

    python experiments/bench.py                     # the default table (CPU: ~12 min)
    python experiments/bench.py --cases small:32:128 torchvision:224:32 --rounds 5
    python experiments/bench.py --torch-compile --json bench.json --loop-overhead

Each case is ``variant:image_size:batch``. For every case the training step (forward, backward,
SGD-with-momentum update) and inference are timed for gdjax (``jax.jit``, donated buffers, and
on the CPU the gradient buffer ``gdjax.train`` keeps, see ``gdjax.train.parallel``) and for the
same network in PyTorch (eager, channels-last, which is PyTorch's fastest CPU setting here;
``torch.compile`` too with ``--torch-compile``), in alternating rounds so that the machine's
drift hits both; each round starts with one untimed step (the first step after the other
framework's round ran up to 150 ms slower, for either), and compile time is reported apart from
steady-state time (two untimed rounds come first). The optimizer rows time one update of 61.1 M
parameters for gdjax, optax and ``torch.optim`` (foreach and fused), with the implied memory
traffic as a fraction of the machine's measured copy bandwidth. On a GPU or TPU the model-FLOPs
utilisation is printed too (training FLOPs per image, 3 × the forward count of
``gdjax.models.count_flops``, times images/s over the chip's peak). PyTorch runs on the device
JAX runs on (:func:`torch_device`): on an NVIDIA GPU it runs on CUDA, with TF32 allowed in its
matrix products and cuDNN autotuning on, as XLA does by default, and its timers wait for the
GPU. PyTorch rows are skipped, with a note, when torch is not installed or cannot reach JAX's
device.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import case_spec, momentum_training, positive_int

from gdjax.models import AlexNet, compiler_options, count_flops
from gdjax.train.parallel import gradient_buffer_by_default

try:
    import torch
except ImportError:  # pragma: no cover - the note is printed instead
    torch = None


def torch_device(jax_platform: str, cuda_available: bool) -> str | None:
    """The PyTorch device to race on JAX's platform: ``"cpu"`` beside JAX's CPU, ``"cuda"``
    beside its GPU when PyTorch has CUDA, ``None`` when PyTorch cannot run where JAX does
    (a CPU PyTorch beside a JAX GPU, or a TPU) — there its rows would compare two machines."""
    if jax_platform == "cpu":
        return "cpu"
    if jax_platform == "gpu" and cuda_available:
        return "cuda"
    return None


def _synchronize(device: str) -> None:
    """Wait for PyTorch's queued work on ``device`` (a no-op on the CPU, which runs eagerly)."""
    if device == "cuda":
        torch.cuda.synchronize()


# Dense bf16 peak FLOP/s of common accelerators, matched against jax's device_kind.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "v5p": 459e12,
    "v5 lite": 197e12,
    "v4": 275e12,
}


def _median_alternating(fns: dict[str, Any], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each timer over ``rounds`` alternating rounds, after ``warmup`` untimed
    ones (the first ten or so steps of a freshly compiled torchvision step ran 20-65% slower
    than the rest, while the process's allocator settled)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(fns[name]())
    return {k: statistics.median(v) for k, v in times.items()}


def _gdjax_case(variant: str, size: int, batch: int, steps: int, channels: int = 3):
    model = AlexNet(
        num_classes=1000 if variant != "small" else 10, variant=variant, in_channels=channels
    )
    shape = (batch, size, size, channels)
    x = jax.random.normal(jax.random.key(0), shape)
    y = jnp.zeros((batch,), jnp.int32)
    params = jax.jit(model.init, compiler_options=compiler_options("init"))(
        jax.random.key(1), x[:1]
    )["params"]
    # As gdjax.train runs it here: with the gradient buffer where gradient_buffer_by_default says.
    train, state = momentum_training(model, x, y, params, gradient_buffer_by_default())

    # Compiled as gdjax.train compiles its steps (gdjax.models.compiler_options).
    train = jax.jit(
        train, donate_argnums=0, keep_unused=True, compiler_options=compiler_options("train")
    )
    infer = jax.jit(
        lambda p, x: model.apply({"params": p}, x),
        compiler_options=compiler_options("infer", batch_size=batch),
    )
    t0 = time.perf_counter()
    state.update(train(dict(state), jax.random.key(2)))
    jax.block_until_ready(state["p"])
    compile_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(infer(state["p"], x))
    compile_infer = time.perf_counter() - t0

    def time_train():
        state.update(train(dict(state), jax.random.key(steps)))
        jax.block_until_ready(state["p"])  # untimed: the step after the other framework's
        t = time.perf_counter()
        for i in range(steps):
            state.update(train(dict(state), jax.random.key(i)))
        jax.block_until_ready(state["p"])
        return (time.perf_counter() - t) / steps

    def time_infer():
        jax.block_until_ready(infer(state["p"], x))  # untimed, as in time_train
        t = time.perf_counter()
        for _ in range(steps):
            out = infer(state["p"], x)
        jax.block_until_ready(out)
        return (time.perf_counter() - t) / steps

    # What one call of a timer runs: its untimed lead step and the `steps` it times. Tools that
    # profile a whole call (step_trace.py, onednn_profile.py) divide by this, not by `steps`.
    time_train.calls = time_infer.calls = steps + 1
    # The optimised programs (HLO text), for tools that name what a trace shows (step_trace.py).
    time_train.hlo = lambda: train.lower(dict(state), jax.random.key(0)).compile().as_text()
    time_infer.hlo = lambda: infer.lower(state["p"], x).compile().as_text()
    flops = count_flops(model, (1, size, size, channels))
    return time_train, time_infer, {"train": compile_train, "infer": compile_infer}, flops


def _torch_case(
    variant: str,
    size: int,
    batch: int,
    steps: int,
    compiled: bool,
    channels: int = 3,
    backend: Any = "inductor",
    device: str = "cpu",
):
    from torch_reference import torch_alexnet

    if device == "cuda":  # XLA's defaults on the GPU: TF32 products, autotuned convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = torch_alexnet(variant, 1000 if variant != "small" else 10, channels, size)
    model = model.to(device=device, memory_format=torch.channels_last)
    x = torch.randn(batch, channels, size, size, device=device)
    x = x.to(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    if compiled:
        # Every case compiles afresh, for its own shapes. Dynamo caches compiled frames per code
        # object, and every network shares torch_reference's ``forward``: without the reset the
        # second case's new shapes recompiled the frame with dynamic shapes, and a few cases
        # later dynamo hit its recompile limit and ran the rest eagerly, unreported.
        torch._dynamo.reset()
        forward = torch.compile(model, dynamic=False, backend=backend)
    else:
        forward = model
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(forward(x), y).backward()
        opt.step()

    t0 = time.perf_counter()
    model.train()
    step()
    _synchronize(device)
    compile_train = time.perf_counter() - t0

    def time_train():
        model.train()
        step()  # untimed, as in gdjax's timers
        _synchronize(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
        return (time.perf_counter() - t) / steps

    def time_infer():
        model.eval()
        with torch.no_grad():
            forward(x)  # untimed
            _synchronize(device)
            t = time.perf_counter()
            for _ in range(steps):
                forward(x)
            _synchronize(device)
            return (time.perf_counter() - t) / steps

    time_train.calls = time_infer.calls = steps + 1  # as gdjax's timers: the untimed lead step
    return time_train, time_infer, {"train": compile_train}


def copy_bandwidth(gigabytes: float = 0.5) -> float:
    """GB/s moved by XLA reading one large array and writing another (``x + 1``, donated
    input, all threads), the ceiling for memory-bound updates."""
    x = jnp.ones(int(gigabytes * 2**30 / 4), jnp.float32)
    f = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    x = f(x).block_until_ready()
    best, calls = float("inf"), 10  # back to back: a GPU copies 0.5 GB in about the time of
    for _ in range(5):  # one dispatch and wait
        t = time.perf_counter()
        for _ in range(calls):
            x = f(x)
        x.block_until_ready()
        best = min(best, (time.perf_counter() - t) / calls)
    return 2 * x.nbytes / best / 1e9


def optimizer_rows(rounds: int, steps: int, scale: float, device: str | None = "cpu") -> list[dict]:
    """One update of an AlexNet-sized pytree: gdjax vs optax vs torch.optim on ``device``
    (``None``: no torch.optim rows)."""
    import bench_optim

    params = bench_optim.alexnet_tree(scale)
    grads = jax.tree.map(lambda p: p * 0.1 + 0.01, params)
    rows = []
    for name, torch_cls, torch_kw in (("momentum", "SGD", {"momentum": 0.9}), ("adam", "Adam", {})):
        ours_f, theirs_f = bench_optim.PAIRS[name]
        ours = bench_optim.Contender(ours_f(), params, grads)
        theirs = bench_optim.Contender(theirs_f(), params, grads)
        fns = {"gdjax": lambda o=ours: o.run(steps), "optax": lambda t=theirs: t.run(steps)}
        if torch is not None and device is not None:
            tensors = [torch.from_numpy(np.array(p)).to(device) for p in jax.tree.leaves(params)]
            for p, g in zip(tensors, jax.tree.leaves(grads), strict=True):
                p.grad = torch.from_numpy(np.array(g)).to(device)
            for impl in ("foreach", "fused"):
                try:
                    opt = getattr(torch.optim, torch_cls)(
                        tensors, lr=1e-3, **{impl: True}, **torch_kw
                    )
                    opt.step()
                except (RuntimeError, TypeError):
                    continue

                def run(o=opt):
                    _synchronize(device)
                    t = time.perf_counter()
                    for _ in range(steps):
                        o.step()
                    _synchronize(device)
                    return (time.perf_counter() - t) / steps

                fns[f"torch {impl}"] = run
        med = _median_alternating(fns, rounds)
        traffic = ours.traffic
        rows.append(
            {
                "optimizer": name,
                "ms": {k: v * 1e3 for k, v in med.items()},
                "traffic_bytes": traffic,
            }
        )
    return rows


def loop_overhead(steps: int = 150, rounds: int = 2) -> dict[str, float]:
    """The default run's training loop (data, metrics, logging) against its bare jitted step.

    Both train the default preset's model on batches of its shape; the loop's rate is read
    from its own ``images_per_second`` log (intervals after the first, which compiles). The
    bare step is timed before and after each of ``rounds`` loop runs (medians of both), so
    that the machine's drift hits both.
    """
    import tempfile

    from gdjax.configs import get_config
    from gdjax.train import build, read_metrics, train_and_evaluate

    c = get_config("default")
    # Six log intervals whatever the length (25 steps at the default 150).
    c.progress, c.num_steps, c.log_every_steps = False, steps, max(1, steps // 6)
    c.eval_every_epochs, c.checkpoint_every_steps = 1e6, 10**9

    def loop_rate() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            train_and_evaluate(c, tmp)
            rows = read_metrics(pathlib.Path(tmp) / "metrics.jsonl")
        rates = [r["images_per_second"] for r in rows if "images_per_second" in r]
        return statistics.median(rates[1:])

    # The bare step is the loop's own: same model, optimizer state and jitted step function.
    run = build(c)
    par, state = run.parallel, {"s": run.state}
    example = run.train_tf(run.train_src[0], np.random.default_rng(0))
    batch = par.put_batch(
        {
            "image": np.stack([example["image"]] * c.batch_size),
            "label": np.zeros(c.batch_size, np.int32),
        }
    )
    state["s"], m = par.train_step(state["s"], batch)
    jax.block_until_ready(m)

    def bare_rate() -> float:
        t = time.perf_counter()
        for _ in range(steps):
            state["s"], m = par.train_step(state["s"], batch)
        jax.block_until_ready(m)
        return steps * c.batch_size / (time.perf_counter() - t)

    bare, loop = [bare_rate()], []
    for _ in range(rounds):
        loop.append(loop_rate())
        bare.append(bare_rate())
    loop_median, bare_median = statistics.median(loop), statistics.median(bare)
    return {
        "loop_images_per_s": loop_median,
        "bare_step_images_per_s": bare_median,
        "overhead": 1 - loop_median / bare_median,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        nargs="*",
        type=case_spec,
        metavar="VARIANT:PIXELS:BATCH",
        default=[
            "small:32:128",
            "small:32:512",
            "torchvision:224:32",
            "torchvision:224:128",
            "paper:227:32",
        ],
    )
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=2)
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument(
        "--optimizer-scale", type=float, default=1.0, help="fraction of the 61 M params"
    )
    parser.add_argument("--skip-optimizers", action="store_true")
    parser.add_argument(
        "--loop-overhead", action="store_true", help="measure the default run's loop cost"
    )
    parser.add_argument(
        "--loop-rounds",
        type=positive_int,
        default=5,
        help="loop runs (bare-step timings around each)",
    )
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not 0 < args.optimizer_scale <= 1:
        parser.error(f"--optimizer-scale must be in (0, 1], got {args.optimizer_scale}")
    device = jax.devices()[0]
    peak = next((v for k, v in PEAK_FLOPS.items() if k.lower() in device.device_kind.lower()), None)
    torch_version = torch.__version__ if torch else "absent"
    race_on = torch_device(device.platform, torch.cuda.is_available()) if torch else None
    print(
        f"jax {jax.__version__} on {device.platform} ({device.device_kind}); torch {torch_version}"
        + (f" on {race_on}" if race_on else "")
        + f"; gdjax gradient buffer {'on' if gradient_buffer_by_default() else 'off'}"
    )
    if torch is None:
        print("note: PyTorch is not installed; its rows are skipped")
    elif race_on is None:
        print(f"note: PyTorch cannot run on JAX's {device.platform}; its rows are skipped")
    results: dict = {
        "device": f"{device.platform} {device.device_kind}",
        "torch_device": race_on,
        "gradient_buffer": gradient_buffer_by_default(),
        "cases": [],
        "optimizers": [],
    }
    if args.loop_overhead:  # first, before PyTorch has run in this process
        results["loop"] = loop_overhead(rounds=args.loop_rounds)
        lo = results["loop"]
        print(
            f"training loop of the default run: {lo['loop_images_per_s']:.0f} img/s vs bare step "
            f"{lo['bare_step_images_per_s']:.0f} img/s: overhead {lo['overhead']:.1%}\n"
        )
    print(
        f"{'case':<22}{'mode':<7}{'gdjax img/s':>12}{'torch img/s':>12}{'ratio':>8}"
        f"{'gdjax compile s':>17}"
    )
    for case in args.cases:
        variant, size, batch = case.split(":")
        size, batch = int(size), int(batch)
        channels = 1 if variant == "small" and size == 28 else 3
        g_train, g_infer, g_compile, flops = _gdjax_case(variant, size, batch, args.steps, channels)
        fns_train, fns_infer = {"gdjax": g_train}, {"gdjax": g_infer}
        torch_compile_s = {}
        if race_on:
            t_train, t_infer, t_compile = _torch_case(
                variant, size, batch, args.steps, False, channels, device=race_on
            )
            fns_train["torch"], fns_infer["torch"] = t_train, t_infer
            if args.torch_compile:
                try:
                    c_train, c_infer, c_compile = _torch_case(
                        variant, size, batch, args.steps, True, channels, device=race_on
                    )
                    fns_train["torch.compile"], fns_infer["torch.compile"] = c_train, c_infer
                    torch_compile_s = c_compile
                except Exception as e:  # torch.compile needs a C++ toolchain and may fail
                    print(f"note: torch.compile failed for {case}: {type(e).__name__}")
            torch_compile_s = {
                **t_compile,
                **{f"compile_{k}": v for k, v in torch_compile_s.items()},
            }
        for mode, fns in (("train", fns_train), ("infer", fns_infer)):
            med = _median_alternating(fns, args.rounds)
            rates = {k: batch / v for k, v in med.items()}
            best_torch = max((v for k, v in rates.items() if k != "gdjax"), default=None)
            row = {
                "case": case,
                "mode": mode,
                "images_per_second": rates,
                "ratio_vs_fastest_torch": rates["gdjax"] / best_torch if best_torch else None,
                "gdjax_compile_s": g_compile[mode],
                "torch_first_step_s": torch_compile_s,
            }
            if peak:
                row["mfu"] = (3 if mode == "train" else 1) * flops * rates["gdjax"] / peak
            results["cases"].append(row)
            ratio = f"{row['ratio_vs_fastest_torch']:.2f}" if best_torch else "-"
            torch_rate = f"{best_torch:.1f}" if best_torch else "-"
            extra = f"  MFU {row['mfu']:.1%}" if peak else ""
            print(
                f"{case:<22}{mode:<7}{rates['gdjax']:>12.1f}{torch_rate:>12}{ratio:>8}{g_compile[mode]:>17.1f}{extra}",
                flush=True,
            )
    if not args.skip_optimizers:
        bandwidth = copy_bandwidth()
        results["copy_bandwidth_GBps"] = bandwidth
        print(
            f"\noptimizer update, {args.optimizer_scale:g} x 61.1 M params; "
            f"copy bandwidth {bandwidth:.1f} GB/s"
        )
        rows = optimizer_rows(args.rounds, args.steps, args.optimizer_scale, race_on)
        for row in rows:
            frac = row["traffic_bytes"] / (row["ms"]["gdjax"] / 1e3) / 1e9 / bandwidth
            row["gdjax_traffic_fraction_of_copy_bandwidth"] = frac
            timings = "  ".join(f"{k} {v:.3g} ms" for k, v in row["ms"].items())
            print(
                f"{row['optimizer']:<10}{timings}  (gdjax at {frac:.0%} of copy bandwidth)",
                flush=True,
            )
            results["optimizers"].append(row)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return results


if __name__ == "__main__":
    main()
