"""Fields shared by every preset, with their defaults and help; presets override what differs.

Durations are given in epochs (``num_epochs``) or, when ``num_steps`` is set, in optimizer
steps; ``gdjax.train`` converts between them in one place (``steps_per_epoch =
len(train) // batch_size``). ``max_steps`` caps a run (smoke tests, quick looks).

:data:`FIELDS` is the one table of every field: its default and what it does. ``gdjax
--help`` prints it; ``base_config()`` builds the ConfigDict from it.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections.config_dict import FieldReference, placeholder

__all__ = [
    "FIELDS",
    "SECTION_CHOICES",
    "base_config",
    "get_field",
    "nullable_fields",
    "unset_required_fields",
]

# The field of each section that chooses among its kinds: a value given to the section itself
# (--config.optimizer=adam, override(c, optimizer="adam")) meant this field.
SECTION_CHOICES = {"optimizer": "name", "schedule": "name", "model": "variant"}

# (dotted field, default, help). A default of placeholder(T) is "None: unset" with type T.
FIELDS: list[tuple[str, Any, str]] = [
    ("dataset", "mnist5k", "mnist5k | digits | cifar10:PATH | cifar100:PATH | folder:PATH | "
     "tfds:NAME (see the README's Data section)"),
    ("eval_split", "test", "split evaluated during and after training: test | val | train"),
    ("model.variant", "small", "AlexNet variant: paper | torchvision | small"),
    ("model.dropout_rate", 0.5, "dropout before the hidden fully connected layers, in [0, 1)"),
    ("model.activation", "relu", "relu | tanh | sigmoid"),
    ("model.groups", 0, "convolution groups of conv2/4/5; 0 takes the variant's own (2 for "
     "paper, 1 otherwise)"),
    ("model.lrn", True, "local response normalisation after conv1 and conv2"),
    ("model.overlapping_pool", True, "3/2 max-pooling (the paper's); False: 2/2"),
    ("model.impl", "auto", "where convolutions and pooling run: auto (oneDNN for float32 on "
     "the CPU when its kernels load, else XLA) | onednn | xla"),
    ("model.fused_relu", placeholder(bool), "each convolution's bias and ReLU as post-ops of "
     "oneDNN's call (needs activation relu); unset: on for the variants with LRN (paper, "
     "small), off for torchvision, as measured fastest"),
    ("input.augment", "small", "training augmentation: small (pad and crop) | alexnet (the "
     "paper's crops, flips and PCA colour shift) | none"),
    ("input.image_size", 0, "resize every image to this side before augmentation; 0 keeps the "
     "source's own (256 for folders, as stored otherwise)"),
    ("input.crop", 224, "alexnet augmentation: side of the training crop (224 or 227)"),
    ("input.pad", 2, "small augmentation: pad-and-crop margin in pixels"),
    ("input.flip", False, "small augmentation: random horizontal mirror (not for digits)"),
    ("input.pca_std", 0.1, "alexnet augmentation: std of the PCA colour shift's alphas"),
    ("input.per_pixel_mean", True, "alexnet augmentation: subtract the mean image (False: the "
     "per-channel mean)"),
    ("input.ten_crop", False, "alexnet augmentation: evaluate on ten crops (gdjax eval does)"),
    ("input.worker_count", 0, "grain worker processes that decode and augment (0: in process)"),
    ("input.read_threads", 1, "grain threads that read examples"),
    ("batch_size", 128, "global training batch, over all devices and processes"),
    ("eval_batch_size", 500, "global evaluation batch"),
    ("num_epochs", 10.0, "training length in epochs (ignored when num_steps > 0)"),
    ("num_steps", 0, "training length in optimizer steps; > 0 overrides num_epochs"),
    ("max_steps", 0, "> 0 caps the run at this many steps (smoke tests)"),
    ("optimizer.name", "momentum", "sgd | momentum | alexnet_sgd | adagrad | rmsprop | adam | "
     "adamw | lars | lamb (both exempt biases from weight decay, lars also from its trust ratio)"),
    ("optimizer.learning_rate", 0.01, "the learning rate (the peak of a schedule), >= 0; with "
     "reference_batch_size, the rate for that batch size"),
    ("optimizer.reference_batch_size", 0, "> 0: learning_rate is given for this global batch "
     "and scaled to batch_size (times grad_accum_steps) by lr_scaling; 0: used as given"),
    ("optimizer.lr_scaling", "linear", "how the rate follows the batch: linear (Goyal et al. "
     "2017, for SGD and LARS) | sqrt (You et al. 2020, for LAMB)"),
    ("optimizer.hparams.momentum", placeholder(float), "momentum, in [0, 1)"),
    ("optimizer.hparams.nesterov", placeholder(bool), "Nesterov momentum"),
    ("optimizer.hparams.weight_decay", placeholder(float), "weight decay, >= 0"),
    ("optimizer.hparams.b1", placeholder(float), "adam/adamw/lamb: first-moment decay, in "
     "[0, 1)"),
    ("optimizer.hparams.b2", placeholder(float), "adam/adamw/lamb: second-moment decay, in "
     "[0, 1)"),
    ("optimizer.hparams.eps", placeholder(float), "the denominator's epsilon (> 0; lars: >= 0)"),
    ("optimizer.hparams.trust_coefficient", placeholder(float), "lars: c in the layer's rate "
     "c |w| / |g + weight_decay w|, >= 0 (default 0.001)"),
    ("optimizer.hparams.decay", placeholder(float), "rmsprop: the squares' decay, in [0, 1)"),
    ("optimizer.hparams.centered", placeholder(bool), "rmsprop: centred variant"),
    ("optimizer.hparams.amsgrad", placeholder(bool), "adam/adamw: AMSGrad maximum"),
    ("optimizer.hparams.initial_accumulator_value", placeholder(float),
     "adagrad: starting sum of squares, >= 0"),
    ("optimizer.grad_clip_norm", 0.0, "> 0: clip the gradient's global norm to this first"),
    ("optimizer.grad_accum_steps", 1, "> 1: accumulate this many batches per update "
     "(optax.MultiSteps)"),
    ("optimizer.skip_nonfinite", False, "skip updates with NaN/inf gradients "
     "(optax.apply_if_finite) instead of stopping the run"),
    ("schedule.name", "constant", "learning-rate schedule: constant | plateau (divide by 10 "
     "when the test error stops improving) | step | cosine"),
    ("schedule.factor", 0.1, "plateau, step: multiplier at each drop, in (0, 1]"),
    ("schedule.patience", 1, "plateau: evaluations without improvement before a drop"),
    ("schedule.threshold", 1e-3, "plateau: the smallest fall of test error that counts"),
    ("schedule.min_learning_rate", 0.0, "plateau: no drop below this"),
    ("schedule.step_epochs", (30, 60, 90), "step: epochs at which the rate drops"),
    ("schedule.warmup_epochs", 0.0, "constant, step, cosine: linear warm-up from 0 to the "
     "(scaled) rate over this many epochs"),
    ("label_smoothing", 0.0, "label smoothing of the training loss, in [0, 1)"),
    ("l2", 0.0, "weight decay through the loss (l2/2 |w|^2 over kernels), >= 0"),
    ("mixed_precision", False, "bfloat16 compute with float32 parameters and optimizer state"),
    ("parallel", "none", "none (one device) | pmap (local devices) | sharded (every device "
     "of every process); several processes need pmap or sharded"),
    ("model_parallel", 1, "sharded: devices that split each layer between them (the mesh's "
     "'model' axis; 2 is the paper's two-GPU split); the 'data' axis takes the rest"),
    ("seed", 0, "seed of the initialisation, dropout and data order"),
    ("log_every_steps", 50, "log training metrics every this many steps"),
    ("eval_every_epochs", 1.0, "evaluate every this many epochs (and at the end)"),
    ("checkpoint_every_steps", 500, "save a checkpoint every this many steps (and at the end)"),
    ("keep_checkpoints", 3, "how many of the newest checkpoints to keep"),
    ("progress", True, "show a progress bar"),
]  # fmt: skip


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for path, default, _ in FIELDS:
        *parents, name = path.split(".")
        node = c
        for part in parents:
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
        # A fresh placeholder per config: a shared FieldReference would link every config.
        fresh = placeholder(default.get_type()) if isinstance(default, FieldReference) else default
        node[name] = fresh
    return c


def get_field(config: ml_collections.ConfigDict, path: str) -> Any:
    """The value of dotted field ``path`` (``"optimizer.learning_rate"``); KeyError if none."""
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def nullable_fields() -> dict[str, type]:
    """The fields that may be None ("unset"), with the type of their values when set."""
    return {p: d.get_type() for p, d, _ in FIELDS if isinstance(d, FieldReference)}


def missing_fields(c: Any) -> list[str]:
    """The fields of the full config that ``c`` lacks (a hand-made or partial config)."""
    missing = []
    for p, _, _ in FIELDS:
        try:
            get_field(c, p)
        except (KeyError, AttributeError, TypeError):
            missing.append(p)
    return missing


def unknown_fields(c: ml_collections.ConfigDict) -> list[str]:
    """Dotted names of the fields ``c`` has that the full config does not (a misspelt
    ``c.batch_sise = 64`` in a config file), which the run would never read. The optimizer's
    hyperparameters are left to its own check, which names those the optimizer takes."""
    known = {p for p, _, _ in FIELDS}
    parents = {p.rsplit(".", i)[0] for p in known for i in range(1, p.count(".") + 1)}

    def walk(node: Any, prefix: str) -> list[str]:
        found = []
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path == "optimizer.hparams":
                continue
            if path in parents and isinstance(value, ml_collections.ConfigDict):
                found += walk(value, path + ".")
            elif path not in known:
                found.append(path)
        return found

    return walk(c, "")


def unset_required_fields(c: ml_collections.ConfigDict) -> list[str]:
    """Fields set to None that need a value."""
    nullable = nullable_fields()
    return [p for p, _, _ in FIELDS if get_field(c, p) is None and p not in nullable]
