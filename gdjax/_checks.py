"""Argument checks shared by the subpackages (numpy only: the core's imports stay light)."""

from __future__ import annotations

import math
import numbers
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


def check_finite(name: str, value: Any, low: float = 0.0, *, strict: bool = False) -> None:
    """Raise ``ValueError("{name} must be a finite number >= {low}, got ...")`` (``>`` with
    ``strict``) unless ``value`` is a real number (not a bool), finite and within the bound (a
    NaN fails every comparison, so ``value < low`` alone lets it through; an infinite rate or
    scale is never meant)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if not (real and math.isfinite(value) and (value > low if strict else value >= low)):
        raise ValueError(
            f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}"
        )


def closest(value: str, names: Any) -> str | None:
    """The one of ``names`` that ``value`` most likely meant: the same but for case, else the
    closest spelling (``difflib``, its default cutoff 0.6); None when none is close."""
    import difflib

    names = [str(name) for name in names]
    same = {name.lower(): name for name in names}.get(value.lower())
    return same or next(iter(difflib.get_close_matches(value.lower(), names, n=1)), None)


def did_you_mean(value: Any, choices: Any) -> str:
    """``" (did you mean 'adam'?)"`` for a string :func:`closest` to one of ``choices``; ``""``
    when none is (or ``value`` is not a string)."""
    near = closest(value, choices) if isinstance(value, str) else None
    return f" (did you mean {near!r}?)" if near else ""


def check_flag(name: str, value: Any) -> None:
    """Raise ``TypeError("{name} must be True or False, got ...")`` unless ``value`` is a bool
    (Python's or numpy's): a string such as ``"no"`` is truthy and would switch it on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_one_of(name: str, value: Any, choices: Any) -> None:
    """Raise ``ValueError("{name} must be one of {choices}, got ...")``, with
    :func:`did_you_mean`'s hint (``'Small'``: did you mean ``'small'``?), unless ``value`` is
    one of ``choices``."""
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}{hint}")
