"""Build, load and register the oneDNN kernels: convolutions (alone, or with the bias and ReLU
fused in), max-pooling and local response normalization (the optional CPU fast path).

The kernels (``_onednn_conv.cc``) are XLA FFI handlers. They are compiled on first use with the
machine's C++ compiler against the oneDNN headers of ``onednn-devel-cpu-gomp`` (the
``gdjax[onednn]`` extra) and JAX's FFI headers, into a cache directory keyed by everything the
binary depends on; later processes load the cached library. Whatever is missing (no compiler,
no oneDNN, not Linux x86-64, jaxlib too old) makes :func:`status` say why, and the kernels
stay XLA's.

Environment:
  ``GDJAX_ONEDNN_ROOT``  a prefix holding ``include/oneapi/dnnl`` and ``lib/libdnnl.so``
                         (default: this Python's prefix, where pip puts the extra)
  ``GDJAX_CACHE_DIR``    where the compiled library goes (default ``~/.cache/gdjax``; where
                         it cannot be written, a temporary folder, removed once loaded)
  ``CXX``                the compiler (default ``c++``)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import jax

from gdjax._cache import cache_dir, written_atomically
from gdjax._checks import did_you_mean
from gdjax._extras import jaxlib_version

logger = logging.getLogger("gdjax")

SOURCE = pathlib.Path(__file__).with_name("_onednn_conv.cc")
TARGETS = {
    "gdjax_conv_fwd": "GdjaxConvFwd",
    "gdjax_conv_bwd_data": "GdjaxConvBwdData",
    "gdjax_conv_bwd_weights": "GdjaxConvBwdWeights",
    "gdjax_conv_bias_relu_fwd": "GdjaxConvBiasReluFwd",
    "gdjax_max_pool_fwd": "GdjaxMaxPoolFwd",
    "gdjax_max_pool_bwd": "GdjaxMaxPoolBwd",
    "gdjax_lrn_fwd": "GdjaxLrnFwd",
    "gdjax_lrn_bwd": "GdjaxLrnBwd",
}

# XLA's CPU thunk runtime in jaxlib 0.6 computed wrong gradients around these custom calls in
# a whole AlexNet step (each call alone was right; jaxlib 0.7, 0.8 and 0.10 are right).
MIN_JAXLIB = (0, 7, 0)

IMPLS = ("auto", "onednn", "xla")

_lock = threading.Lock()
_state: dict[str, object] = {}


def host_supported() -> bool:
    """Whether this machine is one the kernels are built for (Linux x86-64)."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def jaxlib_supported() -> bool:
    """Whether the installed jaxlib is at least :data:`MIN_JAXLIB`."""
    return jaxlib_version() >= MIN_JAXLIB


def _roots() -> list[pathlib.Path]:
    if os.environ.get("GDJAX_ONEDNN_ROOT"):
        return [pathlib.Path(os.environ["GDJAX_ONEDNN_ROOT"])]
    data = pathlib.Path(sysconfig.get_paths()["data"])
    return [data, pathlib.Path(sys.prefix), pathlib.Path("/usr/local"), pathlib.Path("/usr")]


def _find_onednn() -> tuple[pathlib.Path, pathlib.Path]:
    """(include dir, lib dir) of a oneDNN installation with headers and a shared library."""
    for root in dict.fromkeys(_roots()):
        include = root / "include"
        if not (include / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
            continue
        for lib in (root / "lib", root / "lib64", root / "lib" / "x86_64-linux-gnu"):
            if (lib / "libdnnl.so").exists():
                return include, lib
    named = os.environ.get("GDJAX_ONEDNN_ROOT")
    if named:  # the user's own prefix: say that it is the one that lacks them
        raise RuntimeError(
            f"GDJAX_ONEDNN_ROOT={named} holds no oneDNN: expected "
            f"{named}/include/oneapi/dnnl/dnnl.hpp and {named}/lib/libdnnl.so (unset it to use "
            "the installed extra, pip install 'gdjax[onednn]')"
        )
    raise RuntimeError(
        "oneDNN headers and libdnnl.so not found (install the extra: pip install 'gdjax[onednn]',"
        " or set GDJAX_ONEDNN_ROOT to a prefix with include/oneapi/dnnl and lib/libdnnl.so)"
    )


@contextlib.contextmanager
def _built(include: pathlib.Path, lib: pathlib.Path) -> Iterator[pathlib.Path]:
    """Compile the kernels, once per source, compiler, headers and library, into the cache,
    and yield the library's path. Where the cache cannot be written they compile into a
    folder for this process alone, removed when the block ends: load the library inside it
    (the mapping outlives the file)."""
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        raise RuntimeError(f"no C++ compiler found (CXX={os.environ.get('CXX', 'c++')!r})")
    jax_include = pathlib.Path(jax.ffi.include_dir())
    command = [
        cxx,
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-w",
        f"-I{include}",
        f"-I{jax_include}",
        str(SOURCE),
        f"-L{lib}",
        "-ldnnl",
        # DT_RPATH (not RUNPATH) so that libdnnl's own dependencies resolve from its directory.
        f"-Wl,--disable-new-dtags,-rpath,{lib}",
    ]  # the output file is appended when compiling; the cache key is taken without it
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(command).encode())
    for header in (
        include / "oneapi" / "dnnl" / "dnnl_version.h",
        jax_include / "xla/ffi/api/c_api.h",
    ):
        key.update(header.read_bytes())
    key.update(str((lib / "libdnnl.so").resolve()).encode())
    target = cache_dir() / "onednn" / key.hexdigest()[:24] / "libgdjax_onednn.so"
    try:
        cached = _cached(command, target)
    except OSError as err:  # the cache cannot be written: read-only home, a file in the way
        warnings.warn(
            f"cannot write the kernel cache {target.parent.parent} ({err.strerror or err}); "
            "compiling the oneDNN kernels for this process only (a few seconds at each start); "
            "set GDJAX_CACHE_DIR to a writable folder to keep them",
            RuntimeWarning,
            stacklevel=3,
        )
        private = pathlib.Path(tempfile.mkdtemp(prefix="gdjax-onednn-"))
        try:
            _compile(command, private / target.name)
            yield private / target.name
        finally:
            shutil.rmtree(private, ignore_errors=True)
    else:
        yield cached


def _cached(command: list[str], target: pathlib.Path) -> pathlib.Path:
    """``target`` (the cache's library), compiled first unless a process already did."""
    import fcntl  # POSIX only, like the kernels (Linux x86-64)

    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: the processes of a multi-process run on one host start together,
    # and all but the first wait for its library instead of each compiling its own.
    with open(target.parent.with_name(target.parent.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            _compile(command, target)
    return target


def _compile(command: list[str], target: pathlib.Path) -> None:
    """Run ``command -o <private name>`` beside ``target``, then rename it onto ``target``."""
    with written_atomically(target) as tmp:
        logger.info("gdjax: compiling the oneDNN kernels into %s", target.parent)
        done = subprocess.run([*command, "-o", tmp], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{done.stderr[-4000:]}")


def _load() -> str:
    if not host_supported():
        raise RuntimeError(
            f"the oneDNN path is built for Linux x86-64, not {sys.platform} {platform.machine()}"
        )
    if not jaxlib_supported():
        import jaxlib

        raise RuntimeError(
            f"jaxlib {jaxlib.__version__} is older than "
            f"{'.'.join(map(str, MIN_JAXLIB))}, whose CPU runtime the oneDNN path needs"
        )
    include, lib = _find_onednn()
    # PyPI's oneDNN runs its CPU engine on the SYCL runtime, which finds the CPU device through
    # the OpenCL ICD loader: point that at the CPU runtime installed beside it.
    icd = lib / "libintelocl.so"
    if icd.is_file() and "OCL_ICD_FILENAMES" not in os.environ:
        os.environ["OCL_ICD_FILENAMES"] = str(icd)
    with _built(include, lib) as path:
        handle = ctypes.CDLL(str(path))
    message = ctypes.create_string_buffer(1024)
    if handle.GdjaxOnednnCheck(message, ctypes.c_size_t(len(message))) != 0:
        raise RuntimeError(f"oneDNN could not set up a CPU convolution: {message.value.decode()}")
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(
            name, jax.ffi.pycapsule(getattr(handle, symbol)), platform="cpu"
        )
    handle.GdjaxOnednnVersion.restype = ctypes.c_char_p
    handle.GdjaxLrnKernels.restype = ctypes.c_int
    handle.GdjaxLrnKernels.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_double] * 3
    _state["handle"] = handle  # the registered handlers live in this library: keep it loaded
    return f"oneDNN {handle.GdjaxOnednnVersion().decode()} ({path})"


def status() -> tuple[bool, str]:
    """(whether the oneDNN kernels are registered, what was loaded or why not); cached."""
    with _lock:
        if "status" not in _state:
            try:
                _state["status"] = (True, _load())
            except Exception as e:  # any failure means "use XLA", with the reason
                _state["status"] = (False, str(e))
                logger.info("gdjax: convolutions, max-pooling and LRN stay on XLA: %s", e)
        return _state["status"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the oneDNN kernels are built, loaded and registered with XLA."""
    return status()[0]


def ffi(target: str, result_shapes: Any, *args: jax.Array, **attrs: Any) -> Any:
    """``jax.ffi.ffi_call(target, result_shapes)(*args, **attrs)``, typed like an XLA op.

    Inside ``shard_map`` a result varies over the mesh axes its operands vary over (XLA's own
    ops are typed so; an FFI call's results would otherwise count as the same on every device,
    and ``platform_dependent`` refuses branches that disagree).
    """
    out = jax.ffi.ffi_call(target, result_shapes, vmap_method="sequential")(*args, **attrs)
    pcast = getattr(jax.lax, "pcast", None)
    if pcast is None:  # jax < 0.8 types nothing this way
        return out
    varying = set().union(*(_varying(a) for a in args))

    def vary(y: jax.Array) -> jax.Array:
        missing = tuple(sorted(varying - _varying(y)))
        return pcast(y, missing, to="varying") if missing else y

    return jax.tree.map(vary, out)


def cotangent_like(ct: jax.Array, primal: jax.Array) -> jax.Array:
    """Inside ``shard_map``, the cotangent ``ct`` summed over the mesh axes it varies over and
    ``primal`` does not (as JAX's own transposes do): e.g. a kernel's gradient over the data
    axis, when the kernel is the same on every data shard."""
    extra = tuple(sorted(_varying(ct) - _varying(primal)))
    return jax.lax.psum(ct, extra) if extra else ct


def _varying(x: jax.Array) -> set[str]:
    """The manual mesh axes ``x`` varies over (inside ``shard_map``; empty elsewhere)."""
    aval = jax.typeof(x)
    if hasattr(aval, "vma"):  # jax 0.6 - 0.9
        return set(aval.vma)
    kind = getattr(aval, "manual_axis_type", None)
    return set(getattr(kind, "varying", ()))


@functools.lru_cache(maxsize=256)
def lrn_kernels(rows: int, c: int, size: int, alpha: float, beta: float, k: float) -> int:
    """Which LRN passes oneDNN runs on a jit kernel here (bit 0: forward, bit 1: backward; 0
    when only its reference loops, slower than XLA's fusion, would; -1 when it refuses).
    Needs the kernels loaded (:func:`available`)."""
    handle = _state["handle"]
    return handle.GdjaxLrnKernels(rows, c, size, alpha, beta, k)  # type: ignore[attr-defined]


def check_impl(caller: str, impl: str) -> None:
    """Raise ``ValueError`` naming ``caller`` unless ``impl`` is one of :data:`IMPLS`."""
    if impl not in IMPLS:
        hint = did_you_mean(impl, IMPLS)
        raise ValueError(f"{caller}: impl={impl!r}, expected one of {IMPLS}{hint}")


def why_not(impl: str, *arrays: jax.Array) -> str | None:
    """Why a call with these operands cannot take the oneDNN path (``None``: it can).

    Checks what every kernel shares: ``impl`` (already valid, see :func:`check_impl`), the
    default backend, float32 operands, and that the kernels load.
    """
    if impl == "xla":
        return "impl='xla'"
    if jax.default_backend() != "cpu":
        return f"the default backend is {jax.default_backend()!r}, not the CPU"
    dtypes = {str(a.dtype) for a in arrays}
    if dtypes != {"float32"}:
        return f"dtypes {sorted(dtypes)}, not float32"
    if (beyond := _beyond_first_order_reverse(arrays)) is not None:
        return f"{beyond} (the oneDNN kernels have first-order reverse-mode derivatives only)"
    if not available():
        return status()[1]
    return None


def _beyond_first_order_reverse(arrays: Sequence[Any]) -> str | None:
    """The differentiation the operands are traced under, when the kernels' derivatives (a
    ``custom_vjp``: ``jax.grad``, ``jax.vjp``) do not cover it; ``None`` otherwise.

    Read off the chain of tracers around each operand: a ``JVPTracer`` is forward mode
    (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``, a Hessian-vector product) and two
    ``LinearizeTracer`` levels are a derivative of a derivative. Reverse mode is traced by
    ``LinearizeTracer`` when JAX linearizes directly (the default of every JAX gdjax supports); with
    ``jax_use_direct_linearize`` off it is traced by ``JVPTracer`` too, so nothing is read
    then. A function staged by ``jax.jit``, ``jax.checkpoint`` or ``lax.scan`` inside the
    transformation is traced apart from it and cannot be seen here (build the model with
    ``impl="xla"`` for that).
    """
    direct = getattr(jax.config, "jax_use_direct_linearize", True)
    for a in arrays:
        kinds, x = [], a
        while isinstance(x, jax.core.Tracer):
            kinds.append(type(x).__name__)
            x = getattr(x, "primal", getattr(x, "val", None))
        if direct and "JVPTracer" in kinds:
            return "forward-mode differentiation (jax.jvp, jax.jacfwd, jax.hessian)"
        if kinds.count("LinearizeTracer") > 1:
            return "a derivative of a derivative"
    return None
