"""Test-wide setup: 8 fake CPU devices, strict JAX, one XLA compilation cache for the session,
and no silently skipped tests in CI.

The XLA flag must be set before jax is imported anywhere, which is why it lives here.
Set ``GDJAX_NO_SKIPS=1`` (``.ci/run`` does) to turn any skipped test into a failed run, so a
missing test dependency (PyTorch for the parity tests) cannot pass unnoticed.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

_OWN_CACHE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """One gdjax cache and one persistent XLA compilation cache for the session, inherited by
    the xdist workers and the processes tests start through the environment.

    gdjax's cache (``GDJAX_CACHE_DIR``, unless set) holds the oneDNN kernels, compiled once for
    the session instead of once per test process, and never in the user's home. The XLA cache
    (``GDJAX_TEST_XLA_CACHE=0`` turns it off) means a program compiled once (the default run's
    step, the eval step) is read back by every later test. JAX keys entries by program, compile
    options, XLA flags and versions."""
    if not os.environ.get("GDJAX_CACHE_DIR"):
        os.environ["GDJAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="gdjax-cache-")
        _OWN_CACHE.append(os.environ["GDJAX_CACHE_DIR"])
    if os.environ.get("GDJAX_TEST_XLA_CACHE") == "0":
        os.environ["GDJAX_XLA_CACHE"] = "0"  # nor the gdjax command's own cache
        return
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gdjax-xla-cache-")
        _OWN_CACHE.append(os.environ["JAX_COMPILATION_CACHE_DIR"])
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _OWN_CACHE:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def x64():
    """Enable float64 for one test, then restore the previous setting."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# Modules of long tests (several processes, whole training runs: 5-25 s each), run first.
# pytest-xdist hands tests out in collection order, which is alphabetical, so these (most of
# them in tests/train) came last, and one worker idled while the other ran the last of them
# (24 s of an 11-minute run, 2026-12-06). Longest first, the workers finish together.
LONG_FIRST = (
    "tests/train/topology_test.py",
    "tests/experiments/host_memory_bench_test.py",
    "tests/experiments/levers_test.py",
    "tests/experiments/experiments_test.py",
    "tests/train/parallel_test.py",
    "tests/train/mesh_test.py",
)


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONG_FIRST.index(path) if path in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the long modules first (``LONG_FIRST``; the sort keeps every other test's order), and
    deselect the oneDNN-path tests where jaxlib is too old for that path (it is refused)."""
    from gdjax.models import _onednn

    items.sort(key=_rank)
    if _onednn.jaxlib_supported():
        return
    keep = [item for item in items if item.get_closest_marker("onednn") is None]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("GDJAX_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(
            f"GDJAX_NO_SKIPS=1: {len(skipped)} test(s) were skipped; failing the run "
            "(install the test extras, including torch, and rerun).",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class CompileCounter:
    """Counts XLA backend compilations while active (``with CompileCounter() as c: ...``), or
    the JAX events named by ``event`` (``CompileCounter(CompileCounter.TRACE)``: traces)."""

    EVENT = "/jax/core/compile/backend_compile_duration"
    TRACE = "/jax/core/compile/jaxpr_trace_duration"

    def __init__(self, event: str = EVENT):
        self.event = event
        self.count = 0

    def _listen(self, event, duration, **kwargs):
        if event == self.event:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is None:  # jax 0.8 has only the private spelling
            from jax._src import monitoring

            unregister = monitoring._unregister_event_duration_listener_by_callback
        unregister(self._listen)


@pytest.fixture
def compile_counter():
    return CompileCounter
