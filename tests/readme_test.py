"""The README's Python examples run as written, and its quickstart commands stay in step with CI."""

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_examples_run(index):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_there_are_examples_and_a_test_command():
    assert BLOCKS
    marker = README.index("<!-- test-command")
    command = re.search(r"```bash\n(.*?)\n```", README[marker:], flags=re.S).group(1)
    assert "pytest" in command and "pip install" in command


def test_the_main_job_command_installs_extras_that_exist_and_runs_the_gdjax_command():
    import shlex
    import tomllib

    pyproject = tomllib.loads(
        (pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    )
    command = re.search(r"```bash\n(.*?)\n```", README).group(1)  # the quickstart's first block
    steps = [shlex.split(step) for step in command.split("&&")]
    installs = [step for step in steps if step[:2] == ["pip", "install"]]
    assert len(installs) == 1, command
    editable = installs[0][installs[0].index("-e") + 1]
    extras = re.fullmatch(r"\.\[(.*)\]", editable).group(1).split(",")
    assert set(extras) <= set(pyproject["project"]["optional-dependencies"]), extras
    assert steps[-1][0] in pyproject["project"]["scripts"], steps[-1]
    assert steps[-1][1:] == ["train"]
