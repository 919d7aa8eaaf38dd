"""The gradient-descent family as optax ``GradientTransformation`` s written from the equations.

Finished optimizers live in :mod:`gdjax.optim.alias`, the blocks they are chained from in
:mod:`gdjax.optim.transforms`. Both are re-exported here.
"""

from gdjax.optim._export import register_optax_states
from gdjax.optim.alias import (
    adagrad,
    adam,
    adamw,
    alexnet_sgd,
    lamb,
    lars,
    momentum,
    rmsprop,
    sgd,
)
from gdjax.optim.transforms import (
    AddDecayedWeightsState,
    ScaleByAdagradState,
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByLearningRateState,
    ScaleByRmsState,
    ScaleByStddevState,
    ScaleByTrustRatioState,
    TraceState,
    add_decayed_weights,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_amsgrad,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_stddev,
    scale_by_trust_ratio,
    trace,
)

__all__ = [
    "AddDecayedWeightsState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByLearningRateState",
    "ScaleByRmsState",
    "ScaleByStddevState",
    "ScaleByTrustRatioState",
    "TraceState",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "alexnet_sgd",
    "lamb",
    "lars",
    "momentum",
    "register_optax_states",
    "rmsprop",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_amsgrad",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "sgd",
    "trace",
]
