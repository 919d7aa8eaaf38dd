"""Load a torchvision AlexNet ``state_dict`` into the Flax ``AlexNet(variant="torchvision")``.

torchvision stores convolution kernels as OIHW and linear weights as (out, in), and flattens
the 256×6×6 feature map channel-first (NCHW) before ``classifier.1``; Flax uses HWIO kernels,
(in, out) dense weights and flattens channel-last (NHWC). :func:`from_torchvision` converts all
three, so the two models give the same logits on the same images (tested to 1e-4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["TORCHVISION_NAMES", "from_torchvision"]

# torchvision key prefix -> Flax module name
TORCHVISION_NAMES = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}

_SHAPES = {  # expected torch weight shapes; fc8's first dimension is the class count
    "features.0": (64, 3, 11, 11),
    "features.3": (192, 64, 5, 5),
    "features.6": (384, 192, 3, 3),
    "features.8": (256, 384, 3, 3),
    "features.10": (256, 256, 3, 3),
    "classifier.1": (4096, 256 * 6 * 6),
    "classifier.4": (4096, 4096),
    "classifier.6": (None, 4096),
}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def from_torchvision(state_dict: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Flax ``params`` for ``AlexNet(variant="torchvision", num_classes=...)``.

    Args:
      state_dict: ``torchvision.models.alexnet().state_dict()`` or the same mapping of numpy
        arrays; a ``module.`` prefix (``DataParallel``) is accepted. The class count is read
        from ``classifier.6.weight``.

    Returns:
      ``{"conv1": {"kernel", "bias"}, ..., "fc8": {...}}``, to use as
      ``model.apply({"params": params}, images)``.
    """
    if not isinstance(state_dict, Mapping):
        hint = ": pass model.state_dict()" if hasattr(state_dict, "state_dict") else ""
        raise TypeError(
            f"from_torchvision: state_dict must be a mapping of parameter names to arrays, got "
            f"{type(state_dict).__name__}{hint}"
        )
    expected = {f"{p}.{s}" for p in TORCHVISION_NAMES for s in ("weight", "bias")}
    # A training checkpoint holds the state_dict under a key of its own (torch.save of
    # {"state_dict": ..., "epoch": ...}, or "model" in torchvision's reference scripts).
    nested = [
        k
        for k, v in state_dict.items()
        if isinstance(v, Mapping) and expected <= {str(n).removeprefix("module.") for n in v}
    ]
    if nested and not expected & set(state_dict.keys()):
        raise ValueError(
            f"from_torchvision: this looks like a training checkpoint, holding the weights "
            f"under {nested[0]!r}: pass checkpoint[{nested[0]!r}]"
        )
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    missing, unexpected = sorted(expected - sd.keys()), sorted(sd.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            "from_torchvision: not a torchvision AlexNet state_dict; "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    params: dict[str, dict[str, np.ndarray]] = {}
    for prefix, name in TORCHVISION_NAMES.items():
        w, b = _to_numpy(sd[f"{prefix}.weight"]), _to_numpy(sd[f"{prefix}.bias"])
        want = _SHAPES[prefix]
        if w.ndim != len(want) or any(
            e is not None and e != g for e, g in zip(want, w.shape, strict=True)
        ):
            raise ValueError(
                f"from_torchvision: {prefix}.weight has shape {w.shape}, expected "
                f"{tuple('num_classes' if e is None else e for e in want)}"
            )
        if b.shape != (w.shape[0],):
            raise ValueError(
                f"from_torchvision: {prefix}.bias has shape {b.shape}, expected ({w.shape[0]},)"
            )
        if w.ndim == 4:  # OIHW -> HWIO
            kernel = w.transpose(2, 3, 1, 0)
        elif prefix == "classifier.1":  # rows flattened as (C, H, W) -> (H, W, C)
            kernel = w.reshape(w.shape[0], 256, 6, 6).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
        else:
            kernel = w.T
        params[name] = {"kernel": np.ascontiguousarray(kernel), "bias": b}
    return params
