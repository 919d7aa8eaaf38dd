"""The gradient-descent family as optax ``GradientTransformation`` s written from the equations.

Finished optimizers live in :mod:`gdjax.optim.alias`, the blocks they are chained from in
:mod:`gdjax.optim.transforms`. Both are re-exported here.
"""

from gdjax.optim.alias import adagrad, adam, adamw, alexnet_sgd, momentum, rmsprop, sgd
from gdjax.optim.transforms import (
    AddDecayedWeightsState,
    ScaleByAdagradState,
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByCenteredRmsState,
    ScaleByLearningRateState,
    ScaleByRmsState,
    TraceState,
    add_decayed_weights,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    trace,
)

__all__ = [
    "AddDecayedWeightsState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByCenteredRmsState",
    "ScaleByLearningRateState",
    "ScaleByRmsState",
    "TraceState",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "alexnet_sgd",
    "momentum",
    "rmsprop",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "sgd",
    "trace",
]
