"""The whole config checked before any dataset is read or model built.

:func:`check_config` raises :class:`ConfigError` (a ``ValueError``) naming the field, the value
and what was expected. Optimizer hyperparameters are checked by the optimizer's own rules: the
factory is called once with the config's values, as the run will call it.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import pathlib
from typing import Any

import ml_collections

from gdjax._checks import did_you_mean, is_int
from gdjax.configs.base import (
    FIELDS,
    get_field,
    missing_fields,
    unknown_fields,
    unset_required_fields,
)
from gdjax.models.alexnet import ACTIVATIONS, VARIANTS, grouping_problem, takes_side
from gdjax.models.conv import CONV_IMPLS
from gdjax.train.parallel import MODES
from gdjax.train.recipe import AUGMENTS, LR_SCALINGS, OPTIMIZERS, SCHEDULES

__all__ = ["ConfigError", "changed_network", "check_config", "optimizer_kwargs"]

SPLITS = ("train", "test", "val")
# Image sides of the datasets whose size is known before reading them.
KNOWN_SIZES = {"mnist5k": 28, "digits": 8, "cifar10": 32, "cifar100": 32}


class ConfigError(ValueError):
    """A config field holds a value the run cannot use."""


def fail(field: str, value: Any, expected: str, hint: str = "") -> None:
    raise ConfigError(f"config.{field} must be {expected}, got {value!r}{hint}")


def _at_least(c: ml_collections.ConfigDict, field: str, low: float, strict: bool = False) -> None:
    """``field`` >= ``low`` (> with ``strict``), and finite: an infinite number of epochs or
    steps is no run (it failed converting to an int), nor an infinite warm-up or clip norm."""
    value = get_field(c, field)
    bound = f"{'>' if strict else '>='} {low:g}"
    if not math.isfinite(value):
        fail(field, value, f"a finite number {bound}")
    if not (value > low if strict else value >= low):
        fail(field, value, bound)


def _unit(c: ml_collections.ConfigDict, field: str) -> None:
    value = get_field(c, field)
    if not 0 <= value < 1:
        fail(field, value, "in [0, 1)")


def _one_of(c: ml_collections.ConfigDict, field: str, choices: Any) -> None:
    value = get_field(c, field)
    if value not in choices:
        fail(field, value, f"one of {', '.join(map(str, choices))}", did_you_mean(value, choices))


def optimizer_kwargs(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The optimizer's keyword arguments from ``config.optimizer.hparams`` (unset ones keep the
    optimizer's own defaults); a set field the optimizer does not take is an error."""
    factory = OPTIMIZERS[c.optimizer.name]
    accepted = set(inspect.signature(factory).parameters) - {"learning_rate"}
    given = {k: v for k, v in c.optimizer.hparams.items() if v is not None}
    wrong = sorted(set(given) - accepted)
    if wrong:
        raise ConfigError(
            f"config.optimizer.hparams {wrong} do not apply to {c.optimizer.name!r}, which takes "
            f"{sorted(accepted & set(c.optimizer.hparams))}; unset with "
            f"--config.optimizer.hparams.{wrong[0]}=None"
        )
    return given


def _check_optimizer(c: ml_collections.ConfigDict) -> None:
    _one_of(c, "optimizer.name", sorted(OPTIMIZERS))
    kwargs = optimizer_kwargs(c)
    try:
        OPTIMIZERS[c.optimizer.name](c.optimizer.learning_rate, **kwargs)
    except (TypeError, ValueError) as e:
        # "momentum: momentum must be in [0, 1), got 1.5" -> name the config field.
        arg = next((k for k in ("learning_rate", *kwargs) if str(e).split(": ", 1)[-1]
                    .startswith(f"{k} ")), None)  # fmt: skip
        field = "optimizer.learning_rate" if arg == "learning_rate" else f"optimizer.hparams.{arg}"
        raise ConfigError(f"config.{field}: {e}" if arg else f"config.optimizer: {e}") from None
    _at_least(c, "optimizer.grad_clip_norm", 0)
    _at_least(c, "optimizer.grad_accum_steps", 1)
    _at_least(c, "optimizer.reference_batch_size", 0)
    _one_of(c, "optimizer.lr_scaling", LR_SCALINGS)


def _check_schedule(c: ml_collections.ConfigDict) -> None:
    _one_of(c, "schedule.name", SCHEDULES)
    if not 0 < c.schedule.factor <= 1:
        fail("schedule.factor", c.schedule.factor, "in (0, 1]")
    _at_least(c, "schedule.patience", 1)
    _at_least(c, "schedule.threshold", 0)
    _at_least(c, "schedule.min_learning_rate", 0)
    _at_least(c, "schedule.warmup_epochs", 0)
    if c.schedule.name == "plateau" and c.schedule.warmup_epochs > 0:
        fail(
            "schedule.warmup_epochs",
            c.schedule.warmup_epochs,
            "0 with schedule.name='plateau' (warm up with constant, step or cosine)",
        )
    epochs = list(c.schedule.step_epochs)
    if any(not 0 < e < math.inf for e in epochs) or epochs != sorted(epochs):
        fail("schedule.step_epochs", tuple(epochs), "increasing positive epochs")


def _check_data(c: ml_collections.ConfigDict) -> None:
    from gdjax.data.sources import check_spec

    try:
        check_spec(c.dataset)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"config.dataset: {e}") from None
    _one_of(c, "eval_split", SPLITS)
    kind = c.dataset.partition(":")[0]
    if c.eval_split == "val" and kind not in ("folder", "tfds"):
        fail(
            "eval_split",
            c.eval_split,
            f"train or test for {kind}",
            " (set --config.eval_split=test)",
        )
    _one_of(c, "input.augment", AUGMENTS)
    # Switches of one augmentation that another would silently ignore.
    if c.input.ten_crop and c.input.augment != "alexnet":
        fail(
            "input.ten_crop",
            True,
            f"False with input.augment={c.input.augment!r} (ten-crop evaluation belongs to the "
            "alexnet augmentation)",
        )
    if c.input.flip and c.input.augment != "small":
        fail(
            "input.flip",
            True,
            f"False with input.augment={c.input.augment!r} (the small augmentation's mirror; "
            "the alexnet augmentation always mirrors)",
        )
    _at_least(c, "input.image_size", 0)
    _at_least(c, "input.crop", 1)
    _at_least(c, "input.pad", 0)
    _at_least(c, "input.pca_std", 0)
    _at_least(c, "input.worker_count", 0)
    _at_least(c, "input.read_threads", 1)
    side = c.input.image_size or KNOWN_SIZES.get(kind)
    # What sets the side the network sees, and so the field a user changes to fit it.
    if c.input.image_size:
        images = f"config.input.image_size={c.input.image_size} makes"
    else:
        images = f"config.dataset={c.dataset!r} gives"
    variant, overlapping = c.model.variant, c.model.overlapping_pool
    if c.input.augment == "alexnet":
        if side is not None and c.input.crop > side:
            fail(
                "input.crop",
                c.input.crop,
                f"at most the side of the images it is cut from ({images} {side}x{side} "
                f"images; resize them with --config.input.image_size={_resize_for(c.input.crop)})",
            )
        if not takes_side(variant, c.input.crop, overlapping):
            fits = _smallest_side(variant, overlapping)
            resize = (
                f" and --config.input.image_size={_resize_for(fits)}"
                if side is not None and side < fits
                else ""
            )
            raise ConfigError(
                f"config.input.crop={c.input.crop} cuts {c.input.crop}x{c.input.crop} "
                f"crops; the {variant!r} AlexNet takes {_sides(variant, fits)}: set "
                f"--config.input.crop={fits}{resize}"
            )
        return
    if side is not None and not takes_side(variant, side, overlapping):  # the model's own rule
        fits = _smallest_side(variant, overlapping)
        verb = "set" if c.input.image_size else "add"
        raise ConfigError(
            f"{images} {side}x{side} images; the {variant!r} AlexNet takes "
            f"{_sides(variant, fits)}: {verb} --config.input.image_size={max(fits, 16)} to "
            f"resize them"
        )


def _smallest_side(variant: str, overlapping: bool) -> int:
    """The smallest side :func:`takes_side` accepts (the paper's 227; the others' minimum);
    searched only for an error's advice, not on every check."""
    return next(s for s in range(1, 1024) if takes_side(variant, s, overlapping))


def _resize_for(crop: int) -> int:
    """The side to resize images to before cutting ``crop``-pixel crops: the paper's 256 for
    its crops (224, 227), the crop itself otherwise."""
    return 256 if 200 <= crop <= 256 else crop


def _sides(variant: str, fits: int) -> str:
    """The sides a variant takes, in words: the paper's one size, or a smallest one."""
    if variant == "paper":
        return f"{fits} px (its 6x6 last map)"
    return f"{fits} px or more"


def _check_model(c: ml_collections.ConfigDict) -> None:
    _one_of(c, "model.variant", sorted(VARIANTS))
    _one_of(c, "model.activation", sorted(ACTIVATIONS))
    _one_of(c, "model.impl", CONV_IMPLS)
    if c.model.fused_relu and c.model.activation != "relu":
        fail(
            "model.fused_relu", True, f"False or unset with model.activation={c.model.activation!r}"
        )
    _unit(c, "model.dropout_rate")
    _at_least(c, "model.groups", 0)
    if c.model.groups:
        problem = grouping_problem(c.model.variant, c.model.groups)
        if problem:
            raise ConfigError(f"config.model.{problem}")


def check_config(c: ml_collections.ConfigDict, process_count: int = 1) -> None:
    """Raise :class:`ConfigError` on the first field the run cannot use.

    ``process_count`` is the number of JAX processes the run will span: ``parallel="none"``
    trains one replica per process, so it is refused when there are several.
    """
    if not is_int(process_count) or process_count < 1:  # 0 was a ZeroDivisionError below
        raise ValueError(f"check_config: process_count must be an int >= 1, got {process_count!r}")
    missing = missing_fields(c)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(
            f"the config lacks {', '.join(missing[:3])}{more}: start from a preset, "
            "gdjax.configs.get_config('default'), and change fields with override(c, ...)"
        )
    unknown = unknown_fields(c)
    if unknown:  # a misspelt field in a config file was silently never read
        known = [p for p, _, _ in FIELDS]
        names = ", ".join(f"config.{u}{did_you_mean(u, known)}" for u in unknown)
        one = len(unknown) == 1
        raise ConfigError(
            f"{names} {'is not a field' if one else 'are not fields'}: the run would never "
            f"read {'it' if one else 'them'}; the fields are those of "
            "gdjax.configs.get_config('default') (gdjax --help lists them)"
        )
    for field in unset_required_fields(c):
        fail(field, None, "set (only optimizer hyperparameters may be None)")
    _check_model(c)
    _check_data(c)
    _check_optimizer(c)
    _check_schedule(c)
    _at_least(c, "batch_size", 1)
    _at_least(c, "eval_batch_size", 1)
    _at_least(c, "num_epochs", 0)
    _at_least(c, "num_steps", 0)
    _at_least(c, "max_steps", 0)
    if c.num_epochs <= 0 and c.num_steps <= 0:
        fail("num_epochs", c.num_epochs, "> 0 (or num_steps > 0)")
    _unit(c, "label_smoothing")
    _at_least(c, "l2", 0)
    _one_of(c, "parallel", MODES)
    _at_least(c, "model_parallel", 1)
    if c.model_parallel > 1 and c.parallel != "sharded":
        fail(
            "model_parallel",
            c.model_parallel,
            f"1 with parallel={c.parallel!r} (a model axis needs parallel='sharded')",
        )
    if process_count > 1 and c.parallel == "none":
        fail(
            "parallel",
            c.parallel,
            f"pmap or sharded in a run of {process_count} processes ('none' would train "
            f"{process_count} independent replicas)",
        )
    for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        _at_least(c, field, 1)
    _at_least(c, "eval_every_epochs", 0, strict=True)
    if not 0 <= c.seed < 2**32:
        fail("seed", c.seed, "in [0, 2**32 - 1]")
    for field in ("batch_size", "eval_batch_size"):
        if get_field(c, field) % process_count:
            fail(field, get_field(c, field), f"a multiple of the {process_count} processes")


def differing_fields(
    saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict
) -> list[str]:
    """Dotted names of the fields whose values differ between two configs."""
    return [name for name, _, _ in field_changes(saved, current)]


def field_changes(
    saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict
) -> list[tuple[str, Any, Any]]:
    """``(dotted name, saved value, current value)`` of each field that differs, by name."""
    a, b = _flat(saved.to_dict()), _flat(current.to_dict())
    names = sorted(k for k in a.keys() | b.keys() if _norm(a.get(k)) != _norm(b.get(k)))
    return [(k, a.get(k), b.get(k)) for k in names]


# Fields that define the function the checkpointed parameters compute. Changing one keeps
# every shape (so the checkpoint restores) but makes another network of the same weights.
NETWORK_FIELDS = (
    "model.variant",
    "model.activation",
    "model.groups",
    "model.lrn",
    "model.overlapping_pool",
)


def _network(flat: dict[str, Any]) -> dict[str, Any]:
    net = {k: flat.get(k) for k in NETWORK_FIELDS}
    if not net["model.groups"] and net["model.variant"] in VARIANTS:  # 0: the variant's own
        net["model.groups"] = VARIANTS[net["model.variant"]].default_groups
    return net


def saved_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict | None:
    """The config the workdir's run saved (its ``config.json``); None if it has no readable
    one."""
    try:
        saved = json.loads((pathlib.Path(workdir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return ml_collections.ConfigDict(saved) if isinstance(saved, dict) else None


def changed_network(workdir: str | os.PathLike, c: ml_collections.ConfigDict) -> list[str]:
    """``field: saved -> given`` for each network-defining field in which ``c`` differs from
    the workdir's ``config.json`` (none if it has no readable one)."""
    saved = saved_config(workdir)
    if saved is None:
        return []
    flat = _flat(saved.to_dict())
    before, now = _network(flat), _network(_flat(c.to_dict()))
    # A field the saved config lacks (written by an older gdjax) cannot be compared.
    known = [k for k in NETWORK_FIELDS if k in flat]
    return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in known if before[k] != now[k]]


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
