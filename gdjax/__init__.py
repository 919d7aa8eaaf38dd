"""gdjax: the gradient-descent family as optax transformations, and AlexNet trained the 2012 way.

The public API is exactly ``__all__``: the optimizers (also under :mod:`gdjax.optim`, with
their building blocks), the AlexNet model, ``train_and_evaluate`` and the subpackages
(``data``, ``models``, ``optim``, ``train``).
"""

from gdjax import data, models, optim, train
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
