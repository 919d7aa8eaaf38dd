"""Fields shared by every preset, with their defaults; presets override what differs.

Durations are given in epochs (``num_epochs``) or, when ``num_steps`` is set, in optimizer
steps; ``gdjax.train.loop`` converts between them in one place (``steps_per_epoch =
len(train) // batch_size``). ``max_steps`` caps a run (smoke tests, quick looks).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

__all__ = ["base_config"]


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "mnist5k"  # any gdjax.data spec: digits, cifar10:PATH, folder:PATH, tfds:NAME
    c.eval_split = "test"

    c.model = ml_collections.ConfigDict()
    c.model.variant = "small"  # paper | torchvision | small
    c.model.dropout_rate = 0.5
    c.model.activation = "relu"  # relu | tanh | sigmoid
    c.model.groups = 0  # 0: the variant's default (2 for paper, 1 otherwise)
    c.model.lrn = True
    c.model.overlapping_pool = True
    # Where convolutions and max-pooling run: auto (oneDNN for float32 on the CPU when its
    # kernels load, else XLA) | onednn | xla. parallel="sharded" over several devices uses xla.
    c.model.impl = "auto"

    c.input = ml_collections.ConfigDict()
    c.input.augment = "small"  # small | alexnet | none
    c.input.crop = 224  # alexnet: the training crop (224 or 227)
    c.input.pad = 2  # small: pad-and-crop margin
    c.input.flip = False  # small: mirror images (not for digits)
    c.input.pca_std = 0.1  # alexnet: std of the PCA colour shift's alphas
    c.input.per_pixel_mean = True  # alexnet: subtract the mean image (else per channel)
    c.input.ten_crop = False  # alexnet: evaluate on the ten crops
    c.input.worker_count = 0  # grain worker processes
    c.input.read_threads = 1

    c.batch_size = 128  # global, over all devices and hosts
    c.eval_batch_size = 500
    c.num_epochs = 10.0
    c.num_steps = 0  # > 0 overrides num_epochs
    c.max_steps = 0  # > 0 caps the run

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "momentum"  # sgd | momentum | alexnet_sgd | adagrad | rmsprop | adam | adamw
    c.optimizer.learning_rate = 0.01
    # The optimizer's keyword arguments; None (unset) keeps the optimizer's own default, and a
    # set field the chosen optimizer does not take is an error.
    c.optimizer.hparams = ml_collections.ConfigDict(
        {
            "momentum": placeholder(float),
            "nesterov": placeholder(bool),
            "weight_decay": placeholder(float),
            "b1": placeholder(float),
            "b2": placeholder(float),
            "eps": placeholder(float),
            "decay": placeholder(float),
            "centered": placeholder(bool),
            "amsgrad": placeholder(bool),
            "initial_accumulator_value": placeholder(float),
        }
    )
    c.optimizer.grad_clip_norm = 0.0  # > 0: optax.clip_by_global_norm first
    c.optimizer.grad_accum_steps = 1  # > 1: optax.MultiSteps over this many micro-batches
    c.optimizer.skip_nonfinite = False  # True: optax.apply_if_finite skips NaN/inf steps

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"  # constant | plateau | step | cosine
    c.schedule.factor = 0.1  # plateau, step: the multiplier at each drop
    c.schedule.patience = 1  # plateau: evaluations without improvement before a drop
    c.schedule.threshold = 1e-3  # plateau: the smallest change of test error that counts
    c.schedule.min_learning_rate = 0.0  # plateau: no drops below this
    c.schedule.step_epochs = (30, 60, 90)  # step: epochs at which to drop
    c.schedule.warmup_epochs = 0.0  # cosine: linear warm-up

    c.label_smoothing = 0.0
    c.l2 = 0.0  # weight decay through the loss (lambda/2 |w|^2), for optimizers without it
    c.mixed_precision = False  # bfloat16 compute, float32 params and optimizer state

    c.parallel = "none"  # none | pmap | sharded
    c.seed = 0
    c.log_every_steps = 50
    c.eval_every_epochs = 1.0
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.progress = True
    return c
