"""An exported AlexNet carried to another machine: export it here, run it there, compare.

    python experiments/export_check.py save DIR --platforms cpu cuda tpu   # here
    python experiments/export_check.py check DIR                           # there

``save`` builds an AlexNet (``--variant``, random weights, a fixed seed) and exports its
inference with :func:`gdjax.models.export` for all the ``--platforms`` in one artefact, twice:
at each platform's default precision (TF32 products on recent NVIDIA GPUs, bfloat16 passes on
TPUs) and at ``precision="highest"`` (float32 everywhere). It writes both serialised artefacts,
the variables (Flax msgpack), a batch of inputs, the logits the live model computed here and
the versions, machine and platform they came from.

``check`` deserialises both artefacts with whatever JAX is installed on JAX's default device
(no gdjax model code runs), computes the logits and prints each artefact's largest deviation
from the saved ones, relative to their largest magnitude, and whether the predicted classes
agree. It exits 1 when the float32 artefact is off by more than ``--tolerance`` (1e-4: float32
round-off of summing in another order) or predicts another class for any input; the default
precision's deviation is reported, not judged (TF32 keeps 10 bits of mantissa).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
from common import cpu_name, positive_float, positive_int

SIDES = {"small": 32, "torchvision": 224, "paper": 227}
ARTEFACTS = {"default": "model.default.jaxexport", "highest": "model.highest.jaxexport"}


def save(out: pathlib.Path, variant: str, platforms: list[str], batch: int) -> dict:
    """Export the model for ``platforms`` and write the artefacts and the reference logits."""
    from flax import serialization

    from gdjax.models import AlexNet, export

    size = SIDES[variant]
    model = AlexNet(num_classes=1000 if variant != "small" else 10, variant=variant)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x[:1])
    logits = np.asarray(jax.jit(lambda v, i: model.apply(v, i, train=False))(variables, x))
    out.mkdir(parents=True, exist_ok=True)
    for precision, name in ARTEFACTS.items():
        exported = export(
            model,
            variables,
            x,
            platforms=platforms,
            precision=None if precision == "default" else precision,
        )
        (out / name).write_bytes(exported.serialize())
    blob = serialization.msgpack_serialize(jax.device_get(variables))
    (out / "variables.msgpack").write_bytes(blob)
    np.save(out / "inputs.npy", np.asarray(x))
    np.save(out / "logits.npy", logits)
    meta = {
        "variant": variant,
        "platforms": list(platforms),
        "jax": jax.__version__,
        "exported_on": f"{jax.devices()[0].platform}, {cpu_name()}",
        "live_impl": "auto (oneDNN where its kernels load)",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def check(src: pathlib.Path, tolerance: float) -> tuple[bool, dict]:
    """Run both artefacts on JAX's default device against the saved logits."""
    from flax import serialization

    needed = (*ARTEFACTS.values(), "variables.msgpack", "inputs.npy", "logits.npy", "meta.json")
    missing = [n for n in needed if not (src / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: missing {', '.join(missing)} (run 'save' first)")
    variables = serialization.msgpack_restore((src / "variables.msgpack").read_bytes())
    x, expected = np.load(src / "inputs.npy"), np.load(src / "logits.npy")
    scale = float(np.abs(expected).max())
    device = jax.devices()[0]
    report = {
        "device": f"{device.platform} ({device.device_kind})",
        "jax": jax.__version__,
        "saved": json.loads((src / "meta.json").read_text()),
    }
    ok = True
    for precision, name in ARTEFACTS.items():
        exported = jax.export.deserialize(bytearray((src / name).read_bytes()))
        got = np.asarray(exported.call(variables, x))
        deviation = float(np.abs(got - expected).max()) / scale
        same = np.argmax(got, -1).tolist() == np.argmax(expected, -1).tolist()
        report[precision] = {"relative_deviation": deviation, "same_classes": same}
        if precision == "highest":
            ok = ok and same and deviation <= tolerance
    return ok, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="export here")
    s.add_argument("dir", type=pathlib.Path)
    s.add_argument("--variant", choices=tuple(SIDES), default="paper")
    s.add_argument(
        "--platforms", nargs="+", choices=("cpu", "cuda", "rocm", "tpu"), default=["cpu"]
    )
    s.add_argument("--batch", type=positive_int, default=8)
    c = sub.add_parser("check", help="run the artefacts on this machine's default device")
    c.add_argument("dir", type=pathlib.Path)
    c.add_argument("--tolerance", type=positive_float, default=1e-4)
    args = parser.parse_args(argv)
    if args.command == "save":
        print(json.dumps(save(args.dir, args.variant, args.platforms, args.batch), indent=2))
        return 0
    try:
        ok, report = check(args.dir, args.tolerance)
    except FileNotFoundError as e:
        print(f"export_check: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    if not ok:
        print(
            f"export_check: the float32 artefact is off by more than {args.tolerance:g} "
            "or predicts other classes",
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
