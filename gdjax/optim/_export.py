"""Optimizer states through ``jax.export``: serialising a function records the classes of the
pytree nodes it takes and returns, and JAX serialises a ``NamedTuple`` only once it is
registered under a name that the reading process looks up."""

from __future__ import annotations

import jax
import optax
import optax.contrib


def _is_namedtuple(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields")


def register(cls: type, serialized_name: str) -> bool:
    """Register the ``NamedTuple`` ``cls`` for ``jax.export`` as ``serialized_name``; ``False``
    (and nothing changed) when the class or the name is registered already."""
    try:
        jax.export.register_namedtuple_serialization(cls, serialized_name=serialized_name)
    except ValueError as err:
        if "Duplicate serialization registration" not in str(err):
            raise
        return False
    return True


def exportable(cls: type) -> type:
    """Class decorator: register a gdjax state as ``gdjax.optim.<ClassName>``."""
    register(cls, f"gdjax.optim.{cls.__name__}")
    return cls


def register_optax_states() -> tuple[str, ...]:
    """Register optax's state classes for ``jax.export``, so that steps whose optimizer state
    holds them (``optax.masked``, which :func:`~gdjax.optim.lars` and weight-decay masks use,
    ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.chain`` with optax's own
    transformations, ``optax.contrib``) serialise.

    gdjax's own states are registered when :mod:`gdjax.optim` is imported; optax's are optax's
    to register, so this is a call you make, in the process that exports and in the one that
    deserialises. Every public ``NamedTuple`` of ``optax`` and ``optax.contrib`` is registered
    as ``optax.<Name>`` / ``optax.contrib.<Name>`` (public names, which outlive optax's module
    moves); a class or name registered before (by an earlier call, by optax itself or by you)
    is left as it is. Returns the names this call registered.
    """
    done = []
    for module, prefix in ((optax, "optax"), (optax.contrib, "optax.contrib")):
        for name in sorted(dir(module)):
            cls = getattr(module, name)
            if name.startswith("_") or not _is_namedtuple(cls):
                continue
            if register(cls, f"{prefix}.{name}"):
                done.append(f"{prefix}.{name}")
    return tuple(done)
