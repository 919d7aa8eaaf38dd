"""XLA compiler options that make a model's compiled programs faster on the CPU, or faster
to compile.

Each was measured against the program without it in one process (README, "Where the speed
comes from"; the first two on a 2-core AVX-512 Xeon, the third on a 2-core AVX-512 AMD EPYC
Zen 4, jaxlib 0.10):

``"train"`` (a training step that donates its state)
    ``xla_cpu_copy_insertion_use_region_analysis``: without it XLA's copy insertion copies
    every donated parameter that the backward pass reads (a data gradient's kernel, a dense
    layer's weights) into a fresh buffer at the start of the step, so that the in-place update
    cannot overwrite it early — 244 MB per torchvision AlexNet step; with it, XLA proves the
    update comes last and copies nothing (torchvision b32 1.08-1.12x, paper 1.08x; small, whose
    parameters are small, 0.94-1.02x: noise).
``"infer"`` (a forward pass)
    ``xla_cpu_experimental_ynn_fusion_type`` limited to reductions: the dense layers' dots run
    on XLA's own dot emitter instead of YNNPACK, which at a batch of 32 took twice as long for
    fc6/fc7 (inference: torchvision 1.07-1.23x, small 1.05-1.14x, paper 1.07x). Not in
    training: there the same change was 0.91-1.03x. Not either for more than
    ``YNN_ROWS_ON_AVX2`` rows per device on an x86 CPU without AVX-512, when the caller gives
    ``batch_size``: on a 2-core AVX2-only AMD EPYC Zen 3, YNNPACK's dots won there (whole
    inference, torchvision b128 1.14x, small b128 and b512 1.05x and 1.02x, paper b128
    1.00x), while XLA's won at 32 and 64 rows (torchvision 1.23x and 1.03x). On AVX-512 XLA's
    dots stay (level with YNNPACK at torchvision b128, ahead at 32 rows).
``"init"`` (a model's ``init``: its parameters drawn from a key)
    ``xla_backend_optimization_level=1``: LLVM's O1 pipeline instead of O3 for the threefry
    and inverse-CDF loops that draw the parameters. Compiling the init took 1.0-1.8 s instead
    of 1.9-3.0 s (small, paper, torchvision AlexNet), drawing the 61 M parameters of the paper
    and torchvision networks took 0.51-0.57 s either way, and the parameters are the same bits
    (a test checks it on every variant). Not in training: a step compiled 5-15% faster at O1
    and ran no faster.

An option this jaxlib does not know is left out (each is checked once by compiling a trivial
function), so the same call works on every jaxlib; on other backends there are none.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

import jax

from gdjax._checks import is_int

KINDS = ("train", "infer", "init")

# kind -> the options on the CPU (experiments/levers.py times each against the program without).
CPU_OPTIONS = {
    "train": {"xla_cpu_copy_insertion_use_region_analysis": True},
    "infer": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
    "init": {"xla_backend_optimization_level": 1},
}


# Rows per device above which an x86 CPU without AVX-512 keeps YNNPACK's dots in inference.
YNN_ROWS_ON_AVX2 = 64
_YNN = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def _x86_without_avx512() -> bool:
    """Whether this is an x86 CPU that lacks AVX-512F (numpy's own CPU feature probe)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return not features.get("AVX512F", False)


@functools.cache
def _supported(backend: str, name: str, value: Any) -> bool:
    """Whether this jaxlib's compiler for ``backend`` accepts ``name=value``."""
    try:
        device = jax.devices(backend)[0]
        with jax.default_device(device):
            jax.jit(lambda x: x + 1).lower(1.0).compile({name: value})
    except Exception:  # unknown option or value: this jaxlib cannot take it
        return False
    return True


def compiler_options(
    kind: str = "train", backend: str | None = None, *, batch_size: int | None = None
) -> dict[str, Any] | None:
    """XLA compiler options for a program of ``kind`` (``"train"``: a training step that
    donates its state; ``"infer"``: a forward pass; ``"init"``: a model's ``init``) on
    ``backend`` (default: JAX's default backend), or ``None`` where there are none.

    ``batch_size``: the rows each device's program sees, where the caller knows them; it only
    changes ``"infer"`` on an x86 CPU without AVX-512, where above ``YNN_ROWS_ON_AVX2`` rows
    the dense layers stay on YNNPACK (module docstring). ``None``: the choice for small batches.

    Pass them to ``jax.jit(..., compiler_options=...)`` or ``.lower(...).compile(...)``;
    ``gdjax.train`` compiles its steps with them. See the module docstring for what each does
    and what it was measured to bring.

    >>> import jax
    >>> from gdjax.models import compiler_options
    >>> step = jax.jit(lambda p: p - 0.1, donate_argnums=0, compiler_options=compiler_options())
    """
    if kind not in KINDS:
        raise ValueError(f"compiler_options: kind={kind!r}, expected one of {KINDS}")
    if batch_size is not None and not (is_int(batch_size) and batch_size >= 1):
        raise ValueError(
            f"compiler_options: batch_size={batch_size!r}, expected an int >= 1 or None"
        )
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return None
    options = {k: v for k, v in CPU_OPTIONS[kind].items() if _supported(backend, k, v)}
    if batch_size is not None and batch_size > YNN_ROWS_ON_AVX2 and _x86_without_avx512():
        options.pop(_YNN, None)
    return options or None
