"""The one cache folder gdjax writes to (dataset statistics, compiled oneDNN kernels), and how
files go into it.

``$GDJAX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/gdjax``, else ``~/.cache/gdjax``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["cache_dir", "written_atomically"]


def cache_dir() -> pathlib.Path:
    if os.environ.get("GDJAX_CACHE_DIR"):
        return pathlib.Path(os.environ["GDJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "gdjax"


@contextlib.contextmanager
def written_atomically(target: pathlib.Path) -> Iterator[str]:
    """A private path beside ``target`` to write; renamed onto ``target`` when the block ends
    without an error, removed otherwise. A reader never sees a half-written file, and writers
    that run at once (the processes of one run) never share a temporary file. A ``target``
    that exists keeps its permissions (the temporary file is made readable by its owner only)."""
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(target):
            shutil.copymode(target, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
