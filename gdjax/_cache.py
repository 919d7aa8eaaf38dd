"""The one cache folder gdjax writes to (dataset statistics, compiled oneDNN kernels).

``$GDJAX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/gdjax``, else ``~/.cache/gdjax``.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["cache_dir"]


def cache_dir() -> pathlib.Path:
    if os.environ.get("GDJAX_CACHE_DIR"):
        return pathlib.Path(os.environ["GDJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "gdjax"
