"""Training: the pure steps, their parallel wrappers, the optimizer recipe, evaluation,
checkpoints, config checks and the training loop (the ``train`` extra)."""

from gdjax import _extras

_extras.require(
    "train", "gdjax.train", "orbax.checkpoint", "ml_collections", "tensorboardX", "tqdm", "grain"
)

from gdjax.train.checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    CheckpointUnreadableError,
    CheckpointWriteError,
    NonFiniteStateError,
)
from gdjax.train.collectives import Collective, collectives
from gdjax.train.evaluation import eval_batches, evaluate
from gdjax.train.loop import (
    Run,
    WorkdirBusyError,
    WorkdirMismatchError,
    build,
    due,
    evaluate_checkpoint,
    train_and_evaluate,
)
from gdjax.train.metrics_writer import read_metrics
from gdjax.train.parallel import MESH_AXES, MODES, RULES, Parallel, initialize_distributed
from gdjax.train.recipe import OPTIMIZERS, Plateau, make_optimizer
from gdjax.train.steps import (
    TrainState,
    cross_entropy,
    eval_step,
    l2_penalty,
    top_k_error,
    train_step,
)
from gdjax.train.validation import ConfigError, changed_network, check_config

__all__ = [
    "MESH_AXES",
    "MODES",
    "OPTIMIZERS",
    "CheckpointMismatchError",
    "CheckpointUnreadableError",
    "CheckpointWriteError",
    "Checkpointer",
    "Collective",
    "ConfigError",
    "NonFiniteStateError",
    "Parallel",
    "Plateau",
    "RULES",
    "Run",
    "TrainState",
    "WorkdirBusyError",
    "WorkdirMismatchError",
    "build",
    "changed_network",
    "check_config",
    "collectives",
    "cross_entropy",
    "due",
    "eval_batches",
    "eval_step",
    "evaluate",
    "evaluate_checkpoint",
    "initialize_distributed",
    "l2_penalty",
    "make_optimizer",
    "read_metrics",
    "top_k_error",
    "train_and_evaluate",
    "train_step",
]
