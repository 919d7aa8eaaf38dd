"""experiments/host_memory.py: three process states, each a fresh child, at a tiny size."""

import importlib
import platform

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)


def test_each_state_runs_in_its_own_process_and_is_compared(capsys):
    pytest.importorskip("torch")  # every child times PyTorch beside gdjax
    host_memory = importlib.import_module("host_memory")
    host_memory.main(["--cases", "small:32:4", "--rounds", "1", "--steps", "1", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "glibc" in lines[0]
    for state in host_memory.STATES:
        row = next(ln for ln in lines if ln.startswith(f"small:32:4 {state:<8} | gdjax train"))
        rates = [float(cell.split()[2]) for cell in row.split(" | ")[1:]]
        assert len(rates) == 4 and all(r > 0 for r in rates), row
        assert any(ln.startswith(f"small:32:4 gdjax / torch, {state} | train") for ln in lines)
    assert any(ln.startswith("small:32:4 retained / default | gdjax train x") for ln in lines)


def test_a_child_that_fails_is_reported_with_its_error(monkeypatch):
    host_memory = importlib.import_module("host_memory")
    with pytest.raises(RuntimeError, match="the default child failed"):
        host_memory._spawn("default", "nosuch:1:1", 1, 1)
