"""Optional dependencies: which extra installs what, and a clear error when one is missing."""

from __future__ import annotations

import importlib.util

__all__ = ["MissingExtraError", "jaxlib_version", "require"]


class MissingExtraError(ModuleNotFoundError):
    """A part of gdjax was used without the extra that installs its dependencies."""


def require(extra: str, feature: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` if any of ``modules`` is not installed.

    Args:
      extra: the pyproject extra that installs the modules (``"train"``, ``"plots"``, ...).
      feature: what needs them, for the message (``"gdjax.train"``).
      modules: top-level import names to look for (found without importing them).
    """
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package is missing or half-installed
            found = False
        if not found:
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"{feature} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'gdjax[{extra}]'",
            name=missing[0],
        )


def jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's release as integers, e.g. ``(0, 10, 2)`` (imports jaxlib's
    version only, not jax)."""
    import jaxlib

    return tuple(int(p) for p in jaxlib.__version__.split(".")[:3] if p.isdigit())
