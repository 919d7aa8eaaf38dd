"""gdjax: the gradient-descent family as optax transformations, and AlexNet trained the 2012 way.

The public API is exactly ``__all__``: the optimizers (also under :mod:`gdjax.optim`, with
their building blocks), the AlexNet model and the subpackages (``data``, ``models``, ``optim``).
"""

from gdjax import data, models, optim
from gdjax.models import AlexNet
from gdjax.optim import adagrad, adam, adamw, alexnet_sgd, momentum, rmsprop, sgd

__version__ = "0.1.0"

__all__ = [
    "AlexNet",
    "adagrad",
    "adam",
    "adamw",
    "alexnet_sgd",
    "data",
    "models",
    "momentum",
    "optim",
    "rmsprop",
    "sgd",
]
