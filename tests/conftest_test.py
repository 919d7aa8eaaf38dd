"""The suite's own scheduling: the modules of long tests exist and are handed out first."""

import os
import pathlib
import subprocess
import sys

import conftest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The collection is read line by line: the caller's PYTEST_ADDOPTS (-v, say) must not change it.
ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}


def test_every_long_module_named_first_exists():
    # A renamed or removed module would silently drop out of the order.
    for path in conftest.LONG_FIRST:
        assert (ROOT / path).is_file(), path


def _collected(*paths: str) -> list[str]:
    """The test ids ``pytest --collect-only -q`` lists for ``paths``, in its order."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert ids, done.stdout
    return ids


def test_the_long_modules_are_collected_before_the_rest_in_their_own_order():
    short = "tests/optim/alias_test.py"
    long_ = list(reversed(conftest.LONG_FIRST[:2]))  # given out of order on the command line
    ids = _collected(short, *long_)
    modules = [i.split("::", 1)[0] for i in ids]
    first_seen = list(dict.fromkeys(modules))
    assert first_seen == [*conftest.LONG_FIRST[:2], short]
    # Each module's tests stay together and in their own order (the sort is stable).
    assert [i for i in ids if i.startswith(short + "::")] == _collected(short)
    assert modules == sorted(modules, key=first_seen.index)
