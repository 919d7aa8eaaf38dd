"""Real processes on localhost for the multi-process tests: start them together, wait for all,
and fail with the log of the first that failed."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker: this checkout importable with pytest's paths (tests/,
    experiments/), the session's caches (conftest), no inherited fake device count (the worker
    sets its own)."""
    path = os.pathsep.join(str(p) for p in (ROOT, ROOT / "tests", ROOT / "experiments"))
    env = {**os.environ, "PYTHONPATH": path, "GDJAX_TESTS": str(ROOT / "tests"), **extra}
    if "XLA_FLAGS" not in extra:
        env.pop("XLA_FLAGS", None)
    return env


def run_together(commands: list[tuple[list[str], dict]], timeout: float = 300) -> list[str]:
    """Start every ``(argv, env)`` at once, wait for all; their logs (stdout and stderr). A
    process that exits non-zero, or a run past ``timeout`` seconds, fails the test."""
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for argv, env in commands
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the {len(procs)} processes did not finish in {timeout:.0f} s")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return logs


def run_workers(n: int, script: str, args: list[str], timeout: float = 300) -> list[str]:
    """``n`` processes running ``python -c script ADDRESS PID *args`` (one coordinator)."""
    address = f"127.0.0.1:{free_port()}"
    env = worker_env()
    argv = [sys.executable, "-c", script, address]
    return run_together([([*argv, str(pid), *args], env) for pid in range(n)], timeout)
