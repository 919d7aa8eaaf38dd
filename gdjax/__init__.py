"""gdjax: the gradient-descent family as optax transformations, and AlexNet trained the 2012 way.

The public API is exactly ``__all__``: the optimizers (also under :mod:`gdjax.optim`, with
their building blocks), the AlexNet model, ``train_and_evaluate``, the subpackages
(``data``, ``models``, ``optim``, ``train``) and ``host_memory`` (standard library only: a
malloc setting to make before numpy and jax are imported).

Names are imported on first use (PEP 562), so ``import gdjax.optim`` loads the optimizers and
the core (jax, optax, chex, numpy) and nothing else; ``gdjax.models`` adds flax; ``gdjax.data``
needs the ``data`` extra and ``gdjax.train`` the ``train`` extra (``pip install 'gdjax[train]'``
installs both).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and editors
    from gdjax import data, host_memory, models, optim, train
    from gdjax.models import AlexNet
    from gdjax.optim import adagrad, adam, adamw, alexnet_sgd, lamb, lars, momentum, rmsprop, sgd
    from gdjax.train import train_and_evaluate

__version__ = "0.1.0"

__all__ = [
    "AlexNet",
    "adagrad",
    "adam",
    "adamw",
    "alexnet_sgd",
    "data",
    "host_memory",
    "lamb",
    "lars",
    "models",
    "momentum",
    "optim",
    "rmsprop",
    "sgd",
    "train",
    "train_and_evaluate",
]

_SUBPACKAGES = ("data", "host_memory", "models", "optim", "train")
# Where the other public names live; the rest of __all__ are the optimizers of gdjax.optim.
_HOME = {"AlexNet": "gdjax.models", "train_and_evaluate": "gdjax.train"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"gdjax.{name}")
    elif name in __all__:
        value = getattr(importlib.import_module(_HOME.get(name, "gdjax.optim")), name)
    else:
        raise AttributeError(f"module 'gdjax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
