"""The public API is exactly what ``__all__`` lists, at the top level and in each subpackage."""

import importlib
import types

import optax
import pytest

import gdjax

PACKAGES = [
    "gdjax",
    "gdjax.optim",
    "gdjax.optim.alias",
    "gdjax.optim.transforms",
    "gdjax.models",
    "gdjax.models.alexnet",
    "gdjax.models.layers",
    "gdjax.models.stats",
    "gdjax.models.torchvision",
    "gdjax.data",
    "gdjax.data.augment",
    "gdjax.data.pipeline",
    "gdjax.data.sources",
    "gdjax.train",
    "gdjax.train.checkpoint",
    "gdjax.train.loop",
    "gdjax.train.metrics_writer",
    "gdjax.train.parallel",
    "gdjax.train.steps",
    "gdjax.configs",
    "gdjax.cli",
    "gdjax.host_memory",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_import_and_nothing_else_is_advertised(name):
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert len(exported) == len(module.__all__), "duplicate names in __all__"
    for item in exported:
        assert getattr(module, item) is not None
    # A package advertises every gdjax object it holds; a module, those it defines.
    is_package = hasattr(module, "__path__")

    def ours(value) -> bool:
        origin = getattr(value, "__module__", None) or ""
        return origin.startswith("gdjax") if is_package else origin == name

    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and ours(v)
    }
    modules = {n for n, v in vars(module).items() if isinstance(v, types.ModuleType)}
    assert modules & exported <= {"optim", "models", "data", "train", "host_memory"}
    assert public - exported == set(), f"public but not in __all__: {sorted(public - exported)}"


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from gdjax import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(gdjax.__all__)


@pytest.mark.parametrize(
    "name", ["sgd", "momentum", "alexnet_sgd", "adagrad", "rmsprop", "adam", "adamw"]
)
def test_optimizers_are_optax_transformations_with_a_learning_rate(name):
    tx = getattr(gdjax, name)(0.1)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    assert getattr(gdjax, name) is getattr(gdjax.optim, name)
    doc = getattr(gdjax, name).__doc__
    assert "PyTorch" in doc and ".. math::" in doc, "docstrings state the maths and the mapping"


def test_config_override_sets_fields_and_rejects_unknown_ones():
    from gdjax.configs import get_config, override

    c = override(get_config("default"), **{"optimizer.learning_rate": 0.5, "model.lrn": False})
    assert c.optimizer.learning_rate == 0.5 and c.model.lrn is False
    with pytest.raises(KeyError, match=r"optimizer\.nope"):
        override(c, **{"optimizer.nope": 1})
