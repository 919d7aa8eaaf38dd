"""Argument checks shared by the subpackages (numpy only: the core's imports stay light)."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
    """A Python or numpy integer, and not a bool (``True`` is an int to Python, never a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_positive_int(name: str, value: Any, alternative: str = "") -> None:
    """Raise ``ValueError("{name} must be a positive int{alternative}, got ...")`` unless
    ``value`` is an int >= 1."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int{alternative}, got {value!r}")
