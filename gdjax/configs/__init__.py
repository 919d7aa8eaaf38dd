"""Configuration presets: each module's ``get_config()`` returns an ``ml_collections.ConfigDict``.

=========  ===================================================================================
default    small AlexNet on the embedded ``mnist5k`` (what ``gdjax train`` runs)
cifar10    small AlexNet on CIFAR-10 (``--config.dataset=cifar10:PATH``)
paper      the 2012 paper's ImageNet recipe (``--config.dataset=folder:/data/imagenet``)
=========  ===================================================================================
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Mapping as _Mapping

from gdjax import _extras

_extras.require("train", "gdjax.configs", "ml_collections")

import ml_collections

from gdjax.configs.base import get_field

__all__ = ["PRESETS", "get_config", "get_field", "override", "preset_path"]

PRESETS = ("default", "cifar10", "paper")


def preset_path(name: str) -> pathlib.Path:
    """The file of a preset (what ``--config=NAME`` resolves to)."""
    if name not in PRESETS:
        from gdjax._checks import did_you_mean

        hint = did_you_mean(name, PRESETS)
        raise ValueError(f"unknown config preset {name!r}{hint}; presets are {', '.join(PRESETS)}")
    return pathlib.Path(__file__).with_name(f"{name}.py")


def get_config(name: str = "default") -> ml_collections.ConfigDict:
    """The preset ``name`` as a ConfigDict."""
    preset_path(name)
    return importlib.import_module(f"gdjax.configs.{name}").get_config()


def override(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """Set dotted fields in place (``override(c, **{"optimizer.learning_rate": 0.1})``), like
    ``--config.optimizer.learning_rate=0.1`` on the command line; an unknown field is a KeyError
    (``ConfigDict.update_from_flattened_dict`` would ignore it). A mapping given to a section
    sets those of its fields (``override(c, input={"flip": False})``); any other value given to
    a section is a TypeError."""
    for key, value in fields.items():
        parent, _, last = key.rpartition(".")
        node = get_field(config, parent) if parent else config
        if last not in node:
            from gdjax._checks import did_you_mean
            from gdjax.configs.base import FIELDS

            raise KeyError(
                f"config has no field {key!r}{did_you_mean(key, [p for p, _, _ in FIELDS])}"
            )
        current = node[last]
        if isinstance(current, ml_collections.ConfigDict) and isinstance(value, _Mapping):
            # a section's fields, each set in place (assigning the mapping dropped the others)
            override(config, **{f"{key}.{name}": v for name, v in value.items()})
            continue
        if isinstance(current, ml_collections.ConfigDict):
            from gdjax.configs.base import SECTION_CHOICES

            # ml_collections said "cannot be casted to type <class '...ConfigDict'>"
            choice = SECTION_CHOICES.get(key)
            hint = (
                f"did you mean override(c, **{{{f'{key}.{choice}'!r}: {value!r}}})?"
                if choice
                else f"set one of its fields ({', '.join(current.keys())})"
            )
            raise TypeError(f"config.{key} is a section, not a value: {hint}")
        node[last] = value
    return config
