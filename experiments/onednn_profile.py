"""Where a training step's or an inference's time goes, per oneDNN primitive, from oneDNN's
own timings (``ONEDNN_VERBOSE=1``), for gdjax and for PyTorch (whose bundled oneDNN prints the
same lines).

    python experiments/onednn_profile.py --case torchvision:224:32 --mode train --steps 4
    python experiments/onednn_profile.py --framework torch --case torchvision:224:32
    python experiments/onednn_profile.py --case torchvision:224:128 --peak 250

The step is built by ``bench.py``'s harness, run once to warm up (and compile), then timed
between two markers (``--steps`` steps after one untimed lead step, as ``bench.py`` times them);
the oneDNN lines between the markers are grouped by primitive kind, propagation and problem
(e.g. ``convolution backward_weights mb32_ic64oc192_ih27...``) and printed as ms and calls per
step with the implementation oneDNN chose (``jit:avx512_core``, ``gemm:jit``, ...). gdjax's
process holds two oneDNN builds: the kernels' (convolutions, pooling) and the one inside XLA
that runs dense layers (``gemm_api`` / ``matmul`` lines); both are counted.

Each convolution's rate is printed in useful GFLOP/s: 2 FLOPs per multiply-add of an input
element that exists, so the taps that fall on the zero padding (which oneDNN's direct kernels
skip) are not counted (:func:`conv_flops`). ``--peak`` (GFLOP/s, e.g. what
``experiments/fma_peak.cc`` measures for the instruction set the kernels run) adds each one's
share of it, and the convolutions' total time at that peak.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import subprocess
import sys

from common import case_spec, positive_float, positive_int

MARK = "gdjax-onednn-profile-mark"


def _child(framework: str, case: str, mode: str, steps: int) -> None:
    """Runs inside the profiled process (ONEDNN_VERBOSE set by the parent)."""
    import bench

    variant, size, batch = case.split(":")
    if framework == "gdjax":
        time_train, time_infer, *_ = bench._gdjax_case(variant, int(size), int(batch), steps)
    else:
        time_train, time_infer, *_ = bench._torch_case(
            variant, int(size), int(batch), steps, compiled=False
        )
    run = time_train if mode == "train" else time_infer
    run()  # warm-up: first calls build oneDNN's plans
    print(MARK, flush=True)
    seconds = run()
    # run() makes an untimed lead call before the `steps` it times: the lines between the
    # markers come from run.calls steps.
    print(MARK, seconds, run.calls, flush=True)


Key = tuple[str, str, str, str]  # (kind, propagation, problem, implementation)


def parse(lines: list[str]) -> tuple[dict[Key, float], dict[Key, float], float]:
    """(ms per step and executions per step of each primitive, the step's seconds), over the
    number of steps the closing marker names."""
    marks = [i for i, line in enumerate(lines) if line.startswith(MARK)]
    if len(marks) != 2:
        raise RuntimeError("the profiled process did not print both markers:\n" + "".join(lines))
    _, seconds_text, calls_text = lines[marks[1]].split()
    seconds, steps = float(seconds_text), int(calls_text)
    totals: dict[Key, float] = collections.defaultdict(float)
    counts: dict[Key, float] = collections.defaultdict(float)
    for line in lines[marks[0] + 1 : marks[1]]:
        fields = line.strip().split(",")
        if not fields[0].startswith("onednn_verbose") or "exec" not in fields:
            continue
        at = fields.index("exec")
        kind, impl, prop = fields[at + 2], fields[at + 3], fields[at + 4]
        problem = fields[-2]
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        totals[kind, prop, problem, impl] += ms / steps
        counts[kind, prop, problem, impl] += 1 / steps
    return dict(totals), dict(counts), seconds


_CONV = re.compile(
    r"(?:g(\d+))?mb(\d+)_(?:g(\d+))?ic(\d+)oc(\d+)_"
    r"ih(\d+)oh(\d+)kh(\d+)sh(\d+)dh(\d+)ph(\d+)_"
    r"iw(\d+)ow(\d+)kw(\d+)sw(\d+)dw(\d+)pw(\d+)"
)


def _taps(size: int, out: int, kernel: int, stride: int, dilation: int, pad: int) -> int:
    """Pairs (output position, kernel tap) along one axis whose input position exists."""
    step = dilation + 1  # oneDNN's dilation counts the gaps: 0 is a dense kernel
    return sum(
        sum(0 <= o * stride - pad + k * step < size for k in range(kernel)) for o in range(out)
    )


def conv_flops(problem: str) -> float | None:
    """Useful FLOPs of one call of a 2-D convolution in oneDNN's verbose notation
    (``g2mb32_ic96oc256_ih27oh27kh5sh1dh0ph2_iw27ow27kw5sw1dw0pw2``; ``g`` absent for one
    group, or after ``mb`` in other versions), else ``None``.

    ``2 * mb * oc * (ic / g) * taps_h * taps_w``, where ``taps_h`` counts the pairs (output
    row, kernel row) that read an input row inside the image (padding rows read nothing). The
    same multiply-adds make the forward pass, the data gradient and the weight gradient.
    """
    match = _CONV.fullmatch(problem)
    if match is None:
        return None
    g_first, mb, g_after, *sizes = match.groups()
    g = int(g_first or g_after or 1)
    ic, oc, ih, oh, kh, sh, dh, ph, iw, ow, kw, sw, dw, pw = (int(v) for v in sizes)
    mb = int(mb)
    rows = _taps(ih, oh, kh, sh, dh, ph)
    cols = _taps(iw, ow, kw, sw, dw, pw)
    return 2.0 * mb * oc * (ic // g) * rows * cols


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("gdjax", "torch"), default="gdjax")
    parser.add_argument("--case", type=case_spec, default="torchvision:224:32")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--steps", type=positive_int, default=4)
    parser.add_argument("--top", type=positive_int, default=40, help="rows to print")
    parser.add_argument(
        "--peak",
        type=positive_float,
        default=None,
        help="the cores' FMA peak in GFLOP/s (experiments/fma_peak.cc): each convolution's share",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.framework, args.case, args.mode, args.steps)
        return {}
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    command = [sys.executable, os.path.abspath(__file__), "--child", "--framework"]
    command += [args.framework, "--case", args.case, "--mode", args.mode]
    command += ["--steps", str(args.steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the profiled process failed:\n{done.stderr[-4000:]}")
    totals, counts, seconds = parse(done.stdout.splitlines(keepends=True))
    total = sum(totals.values())
    print(
        f"{platform.processor() or platform.machine()}; {args.framework} {args.case} {args.mode}:"
        f" step {seconds * 1e3:.1f} ms, of which oneDNN {total:.1f} ms (calls may overlap)"
    )
    peak = f" {'% peak':>6s}" if args.peak else ""
    print(f"{'ms/step':>8s} {'calls':>5s} {'GFLOP/s':>7s}{peak}  primitive")
    flops = {key: conv_flops(key[2]) for key in totals if key[0] == "convolution"}
    flops = {key: f for key, f in flops.items() if f is not None}  # 2-D convolutions
    conv_ms = sum(totals[key] for key in flops)
    conv_gflop = sum(f * counts[key] for key, f in flops.items()) / 1e9
    for key, ms in sorted(totals.items(), key=lambda kv: -kv[1])[: args.top]:
        kind, prop, problem, impl = key
        rate = flops[key] * counts[key] / ms / 1e6 if key in flops and ms > 0 else None
        cells = f"{rate:7.1f}" if rate is not None else f"{'':7s}"
        if args.peak:
            cells += f" {100 * rate / args.peak:6.1f}" if rate is not None else f" {'':6s}"
        print(f"{ms:8.2f} {counts[key]:5.1f} {cells}  {kind:12s} {prop:18s} {impl:22s} {problem}")
    if conv_ms > 0:
        line = (
            f"convolutions: {conv_ms:.1f} ms per step, {conv_gflop:.1f} useful GFLOP,"
            f" {conv_gflop / conv_ms * 1e3:.1f} GFLOP/s"
        )
        if args.peak:
            at_peak = conv_gflop / args.peak * 1e3
            line += (
                f" = {100 * conv_gflop / conv_ms * 1e3 / args.peak:.1f}% of {args.peak:g};"
                f" {at_peak:.1f} ms at the peak"
            )
        print(line)
    return {
        "step_ms": seconds * 1e3,
        "onednn_ms": total,
        "conv_ms": conv_ms,
        "conv_gflop": conv_gflop,
        "rows": totals,
        "calls": counts,
    }


if __name__ == "__main__":
    main()
