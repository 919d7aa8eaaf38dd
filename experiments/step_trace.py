"""Where a compiled step's time goes, op by op, from XLA's own trace (``jax.profiler``).

    python experiments/step_trace.py --case torchvision:224:32 --mode train --steps 3
    python experiments/step_trace.py --case small:32:128 --mode infer --timeline

The step is ``bench.py``'s (the same model, optimizer and compiler options), warmed up, then
``--steps`` of it run under ``jax.profiler.trace``. Each event of XLA's CPU runtime is one op of
the optimised program (a fusion, a dot, a oneDNN custom call, a copy), named as in its HLO; the
HLO gives each name what it is (``gdjax_conv_bwd_data conv4``, ``ynn_fusion fc6 bwd``, ...).
Printed per step: the time ops ran (the union over XLA's threads), the time two or more ran at
once, the time no op was traced, the time by kind of op, and the longest ops.
``onednn_profile.py`` times the oneDNN calls from the inside; this shows what runs around them.

Read with care: an op nested inside another on the same thread (a loop's body) counts once, in
the outer op; and XLA's own dots (``dot``, not YNNPACK's fusions) hand their work to the thread
pool and return, so the trace holds only their launch and their real time falls into "no op
traced", beside the gaps between steps and XLA's allocations.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
from dataclasses import dataclass

KINDS = ("oneDNN (gdjax custom calls)", "YNNPACK fusions", "XLA dots", "copies", "other XLA ops")


@dataclass(frozen=True)
class Op:
    """What the HLO says of one instruction."""

    opcode: str
    target: str  # custom-call target, else ""
    ynn: bool
    op_name: str  # the jaxpr path in the metadata

    @property
    def kind(self) -> str:
        if self.target.startswith("gdjax_"):
            return KINDS[0]
        if self.ynn:
            return KINDS[1]
        if self.opcode == "dot":
            return KINDS[2]
        if self.opcode == "copy" or "copy_fusion" in self.opcode:
            return KINDS[3]
        return KINDS[4]

    @property
    def label(self) -> str:
        layers = re.findall(
            r"/((?:conv|fc)\d+|Dropout_\d+|LocalResponseNorm_\d+)(?=/|$)", self.op_name
        )
        what = self.target or ("ynn_fusion" if self.ynn else self.opcode)
        if self.target or "jvp(" not in self.op_name:  # a custom call says it; an update op
            direction = ""
        else:
            direction = "bwd" if "transpose(" in self.op_name else "fwd"
        where = layers[-1] if layers else ("" if self.target else self.op_name.rsplit("/", 1)[-1])
        return " ".join(filter(None, [what, where, direction]))


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\(")


def parse_hlo(text: str) -> dict[str, Op]:
    """Each instruction of an HLO module's text, by name (the names a trace's events carry)."""
    ops = {}
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        target = re.search(r'custom_call_target="([^"]+)"', line)
        op_name = re.search(r'op_name="([^"]+)"', line)
        ops[m.group(1)] = Op(
            opcode=m.group(2),
            target=target.group(1) if target else "",
            ynn="__ynn_fusion" in line,
            op_name=op_name.group(1) if op_name else "",
        )
    return ops


def _op_events(events: list[dict], ops: dict[str, Op]) -> list[dict]:
    """The trace's complete events that are ops of the program, by their HLO names (the
    runtime's bookkeeping and Python's frames carry other names)."""
    return [e for e in events if e.get("ph") == "X" and e.get("name") in ops]


def _outermost(events: list[dict]) -> list[dict]:
    """The events of one thread that no other event of that thread encloses."""
    kept: list[dict] = []
    end = -1.0
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        if e["ts"] + e["dur"] <= end:
            continue  # inside the last kept event
        kept.append(e)
        end = max(end, e["ts"] + e["dur"])
    return kept


def summarise(events: list[dict], ops: dict[str, Op], steps: int) -> dict:
    """Per-step times (ms) from a Chrome/Perfetto trace's events and the program's HLO, where
    ``steps`` is the number of times the program ran in the trace.

    Returns ``busy`` (some op running), ``overlap`` (two or more at once), ``idle`` (none,
    between the first op's start and the last op's end), ``window``, ``by_kind`` and ``rows``
    (label, instruction name, ms per step, calls per step), longest first.
    """
    threads: dict[tuple, list[dict]] = collections.defaultdict(list)
    for e in _op_events(events, ops):
        threads[e.get("pid"), e.get("tid")].append(e)
    kept = [e for evs in threads.values() for e in _outermost(evs)]
    if not kept:
        raise RuntimeError("the trace holds no op of the program (was it traced on the CPU?)")
    edges = sorted([(e["ts"], 1) for e in kept] + [(e["ts"] + e["dur"], -1) for e in kept])
    busy = overlap = 0.0
    running, last = 0, edges[0][0]
    for t, step in edges:
        if running >= 1:
            busy += t - last
        if running >= 2:
            overlap += t - last
        running, last = running + step, t
    window = edges[-1][0] - edges[0][0]
    per_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in kept:
        per_name[e["name"]].append(e["dur"])
    by_kind = dict.fromkeys(KINDS, 0.0)
    rows = []
    for name, durs in per_name.items():
        op = ops[name]
        by_kind[op.kind] += sum(durs) / steps / 1e3
        rows.append((op.label, name, sum(durs) / steps / 1e3, len(durs) / steps))
    rows.sort(key=lambda r: -r[2])
    ms = 1e-3 / steps
    return {
        "window": window * ms,
        "busy": busy * ms,
        "overlap": overlap * ms,
        "idle": (window - busy) * ms,
        "by_kind": by_kind,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    from common import case_spec, cpu_name, positive_int

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case", type=case_spec, default="torchvision:224:32", help="variant:pixels:batch"
    )
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--top", type=positive_int, default=25, help="ops to print")
    parser.add_argument("--timeline", action="store_true", help="print the last step's ops")
    args = parser.parse_args(argv)
    variant, size, batch = args.case.split(":")
    size_, batch_ = int(size), int(batch)

    import bench
    import jax

    time_train, time_infer, *_ = bench._gdjax_case(variant, size_, batch_, args.steps)
    run = time_train if args.mode == "train" else time_infer
    run()  # warm-up (compiled already; first calls build oneDNN's plans)
    ops = parse_hlo(run.hlo())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            seconds = run()
        (path,) = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    # run() makes an untimed lead call before the ones it times: the trace holds run.calls.
    out = summarise(events, ops, run.calls)
    out["step"] = seconds * 1e3
    print(f"{cpu_name()}; gdjax {args.case} {args.mode}: {out['step']:.1f} ms per step, traced")
    print(
        f"  ops running {out['busy']:.1f} ms, two or more at once {out['overlap']:.1f} ms,"
        f" no op traced {out['idle']:.1f} ms (of {out['window']:.1f} ms per step from first op"
        " to last; XLA's own dots run in there)"
    )
    print("  by kind: " + ", ".join(f"{k} {v:.1f} ms" for k, v in out["by_kind"].items() if v))
    print(f"  {'ms/step':>8s} {'calls':>5s}  {'op':24s} what")
    for label, name, ms, calls in out["rows"][: args.top]:
        print(f"  {ms:8.2f} {calls:5.1f}  {name:24s} {label}")
    if args.timeline:
        _timeline(events, ops)
    return out


def _timeline(events: list[dict], ops: dict[str, Op]) -> None:
    """The last step's ops (over 0.3 ms) in start order: start, end (ms), thread, name. The
    last step starts where the program's first op last started."""
    kept = sorted(_op_events(events, ops), key=lambda e: e["ts"])
    t0 = max(e["ts"] for e in kept if e["name"] == kept[0]["name"])
    tids: dict = {}
    print("  start     end   thread  op                       what")
    for e in kept:
        if e["ts"] < t0 or e["dur"] < 300:
            continue
        tid = tids.setdefault(e.get("tid"), len(tids))
        s = (e["ts"] - t0) / 1e3
        print(
            f"  {s:7.1f} {s + e['dur'] / 1e3:7.1f}  T{tid:<5d} {e['name']:24s}"
            f" {ops[e['name']].label}"
        )


if __name__ == "__main__":
    main()
