"""What the process's malloc setting brings to gdjax and to PyTorch: one child process per state.

    python experiments/host_memory.py --cases torchvision:224:32 paper:227:32 --rounds 5

glibc's malloc hands out a block of 32 MiB or more (XLA's temporaries of a step, a PyTorch
gradient) as fresh pages and gives them back on ``free``, so every step faults them in again.
Three states of a whole process, each a fresh child, alternated round after round (a setting of
the process cannot be switched back and forth inside one):

``default``   glibc as it comes.
``retained``  ``gdjax.host_memory.retain_host_memory()`` first thing (what the ``gdjax`` command
              does): freed memory kept in the heap for reuse.
``thp``       ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: glibc asks for transparent huge pages
              (``madvise``), so fresh memory faults in 2 MiB at a time; memory is still returned.

Each child times gdjax's and PyTorch's training and inference steps (``bench.py``'s) and reports
img/s, minor page faults per step and its peak resident memory; printed: the medians per state,
each state against ``default``, and gdjax's ratio to PyTorch in each.
"""

from __future__ import annotations

import sys

# A child's setting comes before numpy, jax or torch load.
if __name__ == "__main__" and sys.argv[1:3] == ["--child", "retained"]:
    from gdjax.host_memory import retain_host_memory

    if not retain_host_memory():
        sys.exit("retain_host_memory() did not take effect")

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess

import gdjax  # the standard library only (its subpackages load on first use)

GDJAX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gdjax.__file__)))
STATES = ("default", "retained", "thp")
FRAMEWORKS = ("gdjax", "torch")
MODES = ("train", "infer")


def _child(case: str, steps: int, repeats: int) -> None:
    from common import case_spec

    case = case_spec(case)  # a bad case fails here, before PyTorch and the trainer load
    import bench

    variant, size, batch = case.split(":")
    size, batch = int(size), int(batch)
    runs = {
        "gdjax": bench._gdjax_case(variant, size, batch, steps)[:2],
        "torch": bench._torch_case(variant, size, batch, steps, compiled=False)[:2],
    }
    out = {}
    for framework, (train, infer) in runs.items():
        for mode, run in (("train", train), ("infer", infer)):
            run()
            run()  # warm: plans built, the heap grown
            rates, faults = [], []
            for _ in range(repeats):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                rates.append(batch / run())
                faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
            out[f"{framework} {mode}"] = [statistics.median(rates), statistics.median(faults)]
    out["peak MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(state: str, case: str, steps: int, repeats: int) -> dict:
    env = dict(os.environ)
    if state == "thp":
        tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
        env["GLIBC_TUNABLES"] = ":".join([*tunables, "glibc.malloc.hugetlb=1"])
    here = os.path.dirname(os.path.abspath(__file__))
    # The children import the gdjax this process imports (a checkout, say).
    env["PYTHONPATH"] = os.pathsep.join([GDJAX_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    args = [sys.executable, __file__, "--child", state, case, str(steps), str(repeats)]
    done = subprocess.run(args, env=env, cwd=here, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"the {state} child failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def measure(case: str, rounds: int, steps: int, repeats: int) -> list[str]:
    got: dict[str, list[dict]] = {s: [] for s in STATES}
    for _ in range(rounds):
        for state in STATES:
            got[state].append(_spawn(state, case, steps, repeats))

    def median(state: str, key: str, index: int) -> float:
        return statistics.median(r[key][index] if index >= 0 else r[key] for r in got[state])

    lines = []
    for state in STATES:
        cells = [
            f"{fw} {mode} {median(state, f'{fw} {mode}', 0):7.1f} img/s "
            f"({median(state, f'{fw} {mode}', 1):6.0f} faults/step)"
            for mode in MODES
            for fw in FRAMEWORKS
        ]
        lines.append(f"{case} {state:<8} | " + " | ".join(cells))
        lines.append(f"{case} {state:<8} | peak resident {median(state, 'peak MB', -1):.0f} MB")
    for state in STATES[1:]:
        cells = []
        for mode in MODES:
            for fw in FRAMEWORKS:
                gain = median(state, f"{fw} {mode}", 0) / median("default", f"{fw} {mode}", 0)
                cells.append(f"{fw} {mode} x{gain:.3f}")
        lines.append(f"{case} {state} / default | " + " | ".join(cells))
    for state in STATES:
        cells = [
            f"{mode} {median(state, f'gdjax {mode}', 0) / median(state, f'torch {mode}', 0):.3f}"
            for mode in MODES
        ]
        lines.append(f"{case} gdjax / torch, {state} | " + " | ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> None:
    from common import case_spec, cpu_name, positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", type=case_spec, default=["torchvision:224:32"])
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=2, help="steps per timing")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timings per child")
    args = parser.parse_args(argv)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        sys.exit("host_memory.py: needs Linux with glibc")
    print(f"{cpu_name()}; glibc {platform.libc_ver()[1]}; rounds {args.rounds}", flush=True)
    for case in args.cases:
        for line in measure(case, args.rounds, args.steps, args.repeats):
            print(line, flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
