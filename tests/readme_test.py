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
