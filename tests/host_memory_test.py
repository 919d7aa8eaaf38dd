"""gdjax.host_memory: XLA's per-call buffers reused instead of faulted in afresh (glibc only)."""

import json
import platform
import subprocess
import sys

import pytest

from gdjax import cli, host_memory

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)

# A program whose temporary (a 8192 x 4096 float32 product, 128 MiB) is above glibc's mmap
# threshold; minor page faults per call in each block of 10 calls, in a fresh interpreter.
FAULTS = """
import json, resource, sys
if sys.argv[1] == "retain":
    from gdjax.host_memory import retain_host_memory
    assert retain_host_memory()
import jax, jax.numpy as jnp
a, b = jnp.ones((32, 8192)), jnp.ones((32, 4096))
f = jax.jit(lambda a, b: jnp.dot(a.T, b).max(axis=0))
blocks = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        f(a, b).block_until_ready()
    blocks.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
print(json.dumps(blocks))
"""


def _faults_per_call(mode: str) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_retained_memory_is_not_faulted_in_again():
    default, retained = _faults_per_call("default"), _faults_per_call("retain")
    # 128 MiB of fresh 4 KiB pages is ~32 k faults a call, every call; kept for reuse, next to
    # none once the heap has grown to the program's needs (within a few blocks; glibc's heap
    # may grow again once or twice before it settles, so the steady state is the best block).
    assert min(default) > 16_000, default
    assert min(retained[2:]) < 0.02 * min(default), (retained, default)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300
    )


@glibc
def test_after_jax_started_it_changes_nothing_and_says_why():
    code = (
        "import jax; jax.devices()\n"
        "from gdjax import host_memory as h\n"
        "print(h.retain_host_memory(), h._retained)"
    )
    done = _run(code)
    assert done.stdout.split() == ["False", "False"], done
    assert "came after JAX started its backend" in done.stderr
    assert "before importing numpy or jax" in done.stderr


@glibc
def test_threads_that_run_already_are_named_in_a_warning():
    code = (
        "import threading; e = threading.Event()\n"
        "t = threading.Thread(target=e.wait); t.start()\n"
        "from gdjax.host_memory import retain_host_memory\n"
        "print(retain_host_memory()); e.set()"
    )
    done = _run(code)
    assert done.stdout.split() == ["True"], done
    assert "other thread(s) already run" in done.stderr


def test_without_glibc_it_changes_nothing(monkeypatch):
    monkeypatch.setattr(host_memory, "_retained", False)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))

    def no_libc(*_):
        raise AssertionError("mallopt must not be called without glibc")

    monkeypatch.setattr(host_memory.ctypes, "CDLL", no_libc)
    assert host_memory.retain_host_memory() is False


@glibc
def test_the_command_makes_the_setting_before_numpy_loads():
    code = (
        "import atexit, sys\n"
        "from gdjax import cli, host_memory\n"
        "retain = host_memory.retain_host_memory\n"
        "def spy(**kw):\n"
        "    print('numpy loaded:', 'numpy' in sys.modules, 'jax loaded:', 'jax' in sys.modules)\n"
        "    return retain(**kw)\n"
        "host_memory.retain_host_memory = spy\n"
        "atexit.register(lambda: print('retained:', host_memory._retained))\n"
        "sys.argv = ['gdjax', '--version']\n"
        "cli.entry_point()"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "numpy loaded: False jax loaded: False", done.stdout
    assert lines[-1] == "retained: True", done.stdout


@pytest.mark.parametrize(("value", "called"), [(None, True), ("1", True), ("0", False)])
def test_the_variable_turns_it_off(monkeypatch, value, called):
    calls = []
    monkeypatch.setattr(host_memory, "retain_host_memory", lambda **kw: calls.append(kw) or True)
    monkeypatch.setattr(cli, "main", lambda: 0)
    if value is None:
        monkeypatch.delenv(cli.HOST_MEMORY_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(cli.HOST_MEMORY_VARIABLE, value)
    with pytest.raises(SystemExit) as exit_:
        cli.entry_point()
    assert exit_.value.code == 0
    assert calls == ([{"warn": False}] if called else [])
