"""Training: the pure steps, their parallel wrappers, checkpoints and the training loop."""

from gdjax.train.checkpoint import Checkpointer
from gdjax.train.loop import evaluate, evaluate_checkpoint, make_optimizer, train_and_evaluate
from gdjax.train.parallel import MODES, Parallel, initialize_distributed
from gdjax.train.steps import (
    TrainState,
    cross_entropy,
    eval_step,
    l2_penalty,
    top_k_error,
    train_step,
)

__all__ = [
    "MODES",
    "Checkpointer",
    "evaluate",
    "evaluate_checkpoint",
    "make_optimizer",
    "train_and_evaluate",
    "Parallel",
    "TrainState",
    "cross_entropy",
    "eval_step",
    "initialize_distributed",
    "l2_penalty",
    "top_k_error",
    "train_step",
]
