r"""The finished optimizers: short ``optax.chain`` s of the blocks in :mod:`.transforms`.

Notation: :math:`w_t` parameters, :math:`g_t = \nabla L(w_{t-1})` the gradient of the batch fed
at step :math:`t`, :math:`\eta_t` the learning rate (a number or a schedule of the 0-based
step), :math:`\lambda` weight decay. Every optimizer returns updates :math:`u_t` that are
*added* to the parameters (``optax.apply_updates``): :math:`w_t = w_{t-1} + u_t`.

Every argument but ``learning_rate`` has a default: the original paper's where it gives one,
else PyTorch's (each docstring says which). Each numeric hyperparameter also accepts a
schedule or an array. The chain an optimizer builds depends only on its static arguments
(booleans, dtypes, masks, and ``None`` for "off"), never on a numeric value, so
``optax.inject_hyperparams(opt)(...)`` is the same optimizer as ``opt(...)``: same state
structure, same state values, same updates. ``weight_decay=None`` (the default where the
paper has none) leaves the decay block out; ``weight_decay=0.0`` keeps a block that adds
nothing, which a schedule or ``inject_hyperparams`` may later turn on.
"""

from __future__ import annotations

from typing import Any

import optax

from gdjax.optim import _hparams
from gdjax.optim import transforms as T
from gdjax.optim._hparams import ScalarOrSchedule

__all__ = [
    "adagrad",
    "adam",
    "adamw",
    "alexnet_sgd",
    "lamb",
    "lars",
    "momentum",
    "rmsprop",
    "sgd",
]


def _validate(
    owner: str,
    nonnegative: dict[str, Any] | None = None,
    unit: dict[str, Any] | None = None,
    positive: dict[str, Any] | None = None,
    optional: tuple[str, ...] = ("weight_decay",),
) -> None:
    """Check hyperparameters under the names the user passed them by (the blocks rename).

    ``None`` ("off") passes for the ``optional`` arguments only; for any other it is the
    owner's error, not a block's (``trace: decay`` for ``momentum=None``).
    """
    for name, value in (nonnegative or {}).items():
        if value is not None or name not in optional:
            _hparams.check_range(owner, name, value, low=0.0)
    for name, value in (unit or {}).items():
        if value is not None or name not in optional:
            _hparams.check_range(owner, name, value, low=0.0, high=1.0)
    for name, value in (positive or {}).items():
        if value is not None or name not in optional:
            _hparams.check_range(owner, name, value, low=0.0, low_inclusive=False)


_check_flag = T._check_flag  # one rule for every switch, the blocks' and the optimizers'


def _chain(*blocks: optax.GradientTransformationExtraArgs | None):
    """``optax.chain`` of the blocks that are present (``None``: an argument switched off)."""
    return optax.chain(*(b for b in blocks if b is not None))


def _decay(weight_decay: ScalarOrSchedule | None, mask: Any = None):
    """The weight-decay block, left out only when ``weight_decay`` is None."""
    return None if weight_decay is None else T.add_decayed_weights(weight_decay, mask)


def _validate_adam(owner: str, learning_rate, b1, b2, eps, eps_root, weight_decay) -> None:
    _validate(
        owner,
        nonnegative={"learning_rate": learning_rate, "weight_decay": weight_decay},
        unit={"b1": b1, "b2": b2},
    )
    _hparams.check_range(owner, "eps_root", eps_root, low=0.0)
    # eps may be 0 unless eps_root is known to be 0: the root is then never 0.
    _hparams.check_range(
        owner, "eps", eps, low=0.0, low_inclusive=not _hparams.known_zero(eps_root)
    )


def _heavy_ball(
    owner: str,
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule,
    nesterov: bool,
    weight_decay: ScalarOrSchedule | None,
    accumulator_dtype: Any,
) -> optax.GradientTransformationExtraArgs:
    """:func:`momentum`'s chain, its arguments checked in the name of ``owner``."""
    _validate(
        owner,
        nonnegative={"learning_rate": learning_rate, "weight_decay": weight_decay},
        unit={"momentum": momentum},
    )
    _check_flag(owner, "nesterov", nesterov)
    _hparams.check_dtype(owner, "accumulator_dtype", accumulator_dtype)
    return _chain(
        _decay(weight_decay),
        T.trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
        T.scale_by_learning_rate(learning_rate),
    )


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Plain gradient descent; with ``momentum``, :func:`momentum` (optax's ``sgd`` signature).

    .. math::  u_t = -\eta_t g_t

    Batch, stochastic and mini-batch gradient descent are this same rule; they differ only in
    the data the gradient is computed on (all examples, one example, or a mini-batch).

    PyTorch: ``torch.optim.SGD(params, lr=learning_rate)``. optax: ``optax.sgd(learning_rate)``.
    ``sgd(learning_rate, momentum=0.9, nesterov=True)`` is
    ``momentum(learning_rate, 0.9, nesterov=True)``, as ``optax.sgd`` and ``torch.optim.SGD``
    take it (``nesterov=True`` without ``momentum`` is an error, not ignored as in optax).

    Args:
      learning_rate: :math:`\eta \ge 0`, a number, an array or a schedule of the 0-based step.
      momentum: None for plain gradient descent, else :math:`\mu \in [0, 1)` (see
        :func:`momentum`).
      nesterov: with ``momentum``, Nesterov's look-ahead.
      accumulator_dtype: with ``momentum``, the velocity's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``chain(scale_by_learning_rate)``, or
      :func:`momentum`'s chain.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import sgd
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = sgd(learning_rate=0.1)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      1.5032
    """
    if momentum is not None:
        return _heavy_ball("sgd", learning_rate, momentum, nesterov, None, accumulator_dtype)
    _validate("sgd", nonnegative={"learning_rate": learning_rate})
    _check_flag("sgd", "nesterov", nesterov)
    if nesterov:
        raise ValueError("sgd: nesterov needs momentum (e.g. 0.9), got True with momentum=None")
    if accumulator_dtype is not None:
        raise ValueError(
            f"sgd: accumulator_dtype needs momentum (plain gradient descent keeps no "
            f"accumulator), got {accumulator_dtype!r} with momentum=None"
        )
    return _chain(T.scale_by_learning_rate(learning_rate))


def momentum(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent with heavy-ball (Polyak, 1964) or Nesterov momentum.

    .. math::
       \tilde g_t = g_t + \lambda w_{t-1}, \qquad v_t = \mu v_{t-1} + \tilde g_t, \\
       u_t = -\eta_t v_t \quad\text{or, Nesterov (Sutskever et al., 2013),}\quad
       u_t = -\eta_t (\tilde g_t + \mu v_t)

    The learning rate is *outside* the velocity (the PyTorch and optax convention): changing
    :math:`\eta` rescales the whole step at once, old velocity included. Weight decay is an L2
    term added to the gradient.

    PyTorch: ``torch.optim.SGD(params, lr=learning_rate, momentum=momentum,
    nesterov=nesterov, weight_decay=weight_decay or 0)`` (with ``dampening=0``). optax:
    ``optax.sgd(learning_rate, momentum, nesterov)``.

    Args:
      learning_rate: :math:`\eta \ge 0`, a number, an array or a schedule.
      momentum: :math:`\mu \in [0, 1)`; 0.9 is the value used throughout the momentum
        literature (Sutskever et al., 2013).
      nesterov: use Nesterov's look-ahead.
      weight_decay: :math:`\lambda \ge 0`, or None (the default) for no decay block.
      accumulator_dtype: dtype of the velocity (e.g. ``jnp.bfloat16``); None keeps each
        parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs``:
      ``chain([add_decayed_weights,] trace, scale_by_learning_rate)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import momentum
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = momentum(learning_rate=0.1, momentum=0.9, nesterov=True)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      2.4195
    """
    return _heavy_ball(
        "momentum", learning_rate, momentum, nesterov, weight_decay, accumulator_dtype
    )


def alexnet_sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    weight_decay: ScalarOrSchedule | None = 5e-4,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The update rule of AlexNet (Krizhevsky, Sutskever & Hinton, 2012, §5), exactly.

    .. math::
       v_t = \mu v_{t-1} - \lambda \eta_t w_{t-1} - \eta_t g_t, \qquad w_t = w_{t-1} + v_t

    The learning rate is *inside* the velocity: when :math:`\eta` is divided by 10 the
    velocity already built up keeps its size and decays away, rather than being rescaled at
    once as in :func:`momentum`. With a constant learning rate the two rules give the same
    trajectory.

    PyTorch has no built-in equivalent; ``SGD(momentum=0.9, weight_decay=5e-4)`` matches it
    only while the learning rate is constant. optax: ``chain(add_decayed_weights(5e-4),
    scale_by_learning_rate(lr), trace(0.9))``.

    Args:
      learning_rate: :math:`\eta \ge 0`, a number, an array or a schedule.
      momentum: :math:`\mu \in [0, 1)` (paper: 0.9).
      weight_decay: :math:`\lambda \ge 0` (paper: 0.0005), or None for no decay block.
      accumulator_dtype: dtype of the velocity; None keeps each parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs``:
      ``chain([add_decayed_weights,] scale_by_learning_rate, trace)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import alexnet_sgd
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = alexnet_sgd(learning_rate=0.1)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      4.7193
    """
    _validate(
        "alexnet_sgd",
        nonnegative={"learning_rate": learning_rate, "weight_decay": weight_decay},
        unit={"momentum": momentum},
    )
    _hparams.check_dtype("alexnet_sgd", "accumulator_dtype", accumulator_dtype)
    return _chain(
        _decay(weight_decay),
        T.scale_by_learning_rate(learning_rate),
        T.trace(momentum, accumulator_dtype=accumulator_dtype),
    )


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: ScalarOrSchedule = 0.0,
    eps: ScalarOrSchedule = 1e-10,
    eps_in_sqrt: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaGrad (Duchi, Hazan & Singer, 2011), diagonal version.

    .. math::
       \tilde g_t = g_t + \lambda w_{t-1}, \qquad G_t = G_{t-1} + \tilde g_t^2, \qquad
       u_t = -\eta_t \frac{\tilde g_t}{\sqrt{G_t} + \epsilon}

    ``eps_in_sqrt=True`` uses :math:`\sqrt{G_t + \epsilon}` instead, which is optax's
    ``adagrad`` (whose defaults are ``initial_accumulator_value=0.1, eps=1e-7``).

    PyTorch: ``torch.optim.Adagrad(params, lr, lr_decay=0, weight_decay,
    initial_accumulator_value, eps)``; its ``lr_decay`` is the schedule
    ``lambda t: lr / (1 + t * lr_decay)``.

    Args:
      learning_rate: :math:`\eta \ge 0`, a number, an array or a schedule.
      initial_accumulator_value: :math:`G_0 \ge 0` (the paper's 0).
      eps: :math:`\epsilon > 0` (PyTorch's 1e-10; the paper's :math:`\delta` has no value).
      eps_in_sqrt: add ``eps`` under the square root instead of after it.
      weight_decay: :math:`\lambda \ge 0`, or None (the default) for no decay block.

    Returns:
      An ``optax.GradientTransformationExtraArgs``:
      ``chain([add_decayed_weights,] scale_by_adagrad, scale_by_learning_rate)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import adagrad
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = adagrad(learning_rate=0.5)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      2.9326
    """
    _validate(
        "adagrad",
        nonnegative={
            "learning_rate": learning_rate,
            "initial_accumulator_value": initial_accumulator_value,
            "weight_decay": weight_decay,
        },
        positive={"eps": eps},
    )
    _check_flag("adagrad", "eps_in_sqrt", eps_in_sqrt)
    return _chain(
        _decay(weight_decay),
        T.scale_by_adagrad(initial_accumulator_value, eps=eps, eps_in_sqrt=eps_in_sqrt),
        T.scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    centered: bool = False,
    momentum: ScalarOrSchedule | None = None,
    eps_in_sqrt: bool = False,
    initial_scale: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule | None = None,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp (Tieleman & Hinton, 2012, lecture 6e), plain or centered (Graves, 2013).

    .. math::
       \tilde g_t = g_t + \lambda w_{t-1}, \qquad
       \nu_t = \rho \nu_{t-1} + (1-\rho)\tilde g_t^2, \qquad
       m_t = \rho m_{t-1} + (1-\rho)\tilde g_t \ \text{(centered)}, \\
       d_t = \frac{\tilde g_t}{\sqrt{\nu_t [- m_t^2]} + \epsilon}, \qquad
       b_t = \beta b_{t-1} + d_t, \qquad u_t = -\eta_t b_t

    The momentum buffer :math:`b` keeps the learning rate *outside*, as PyTorch does.

    PyTorch: ``torch.optim.RMSprop(params, lr, alpha=decay, eps, weight_decay, momentum,
    centered)`` (PyTorch's default ``alpha`` is 0.99). optax: ``optax.rmsprop(...)`` equals
    this with ``eps_in_sqrt=True`` when ``momentum`` is None; with momentum optax scales by
    the learning rate *inside* the buffer, so the two agree only at a constant learning rate.

    Args:
      learning_rate: :math:`\eta \ge 0`, a number, an array or a schedule.
      decay: :math:`\rho \in [0, 1)`; 0.9 is the lecture's value.
      eps: :math:`\epsilon > 0` (PyTorch's 1e-8).
      centered: divide by an estimate of the standard deviation (:func:`scale_by_stddev`)
        instead of the RMS (:func:`scale_by_rms`).
      momentum: :math:`\beta \in [0, 1)`, or None (the default) for no momentum buffer.
      eps_in_sqrt: add ``eps`` under the square root instead of after it.
      initial_scale: :math:`\nu_0 \ge 0`.
      weight_decay: :math:`\lambda \ge 0`, or None (the default) for no decay block.
      accumulator_dtype: dtype of the momentum buffer; None keeps each parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``chain([add_decayed_weights,]
      scale_by_rms | scale_by_stddev, [trace,] scale_by_learning_rate)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import rmsprop
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = rmsprop(learning_rate=0.1, centered=True, momentum=0.5)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      1.5658
    """
    _validate(
        "rmsprop",
        nonnegative={
            "learning_rate": learning_rate,
            "initial_scale": initial_scale,
            "weight_decay": weight_decay,
        },
        unit={"decay": decay, "momentum": momentum},
        positive={"eps": eps},
        optional=("weight_decay", "momentum"),
    )
    _check_flag("rmsprop", "centered", centered)
    _check_flag("rmsprop", "eps_in_sqrt", eps_in_sqrt)
    _hparams.check_dtype("rmsprop", "accumulator_dtype", accumulator_dtype)
    if accumulator_dtype is not None and momentum is None:  # it was dropped without a word
        raise ValueError(
            f"rmsprop: accumulator_dtype is the momentum buffer's dtype and needs momentum, "
            f"got {accumulator_dtype!r} with momentum=None"
        )
    scale = T.scale_by_stddev if centered else T.scale_by_rms
    return _chain(
        _decay(weight_decay),
        scale(decay, eps=eps, eps_in_sqrt=eps_in_sqrt, initial_scale=initial_scale),
        None if momentum is None else T.trace(momentum, accumulator_dtype=accumulator_dtype),
        T.scale_by_learning_rate(learning_rate),
    )


def _adam_block(b1, b2, eps, eps_root, mu_dtype, amsgrad: bool):
    scale = T.scale_by_amsgrad if amsgrad else T.scale_by_adam
    return scale(b1, b2, eps, eps_root, mu_dtype=mu_dtype)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    amsgrad: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam (Kingma & Ba, 2015, Algorithm 1) with bias correction; optional AMSGrad.

    .. math::
       \tilde g_t = g_t + \lambda w_{t-1}, \qquad
       m_t = \beta_1 m_{t-1} + (1-\beta_1)\tilde g_t, \qquad
       v_t = \beta_2 v_{t-1} + (1-\beta_2)\tilde g_t^2, \\
       u_t = -\eta_t \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}}
       + \epsilon}

    ``weight_decay`` is an L2 term in the gradient (PyTorch's ``Adam(weight_decay=...)``);
    for decoupled decay use :func:`adamw`. With ``amsgrad`` (Reddi et al., 2018) the running
    maximum of :math:`v_t` is used, as in PyTorch (:func:`~.transforms.scale_by_amsgrad`).

    PyTorch: ``torch.optim.Adam(params, lr, betas=(b1, b2), eps, weight_decay, amsgrad)``.
    optax: ``optax.adam(learning_rate, b1, b2, eps, eps_root, mu_dtype=...)``.

    Args:
      learning_rate: :math:`\eta \ge 0`, a number, an array or a schedule.
      b1: :math:`\beta_1 \in [0, 1)` (paper: 0.9).
      b2: :math:`\beta_2 \in [0, 1)` (paper: 0.999).
      eps: :math:`\epsilon` (paper: 1e-8); > 0, or >= 0 when ``eps_root`` > 0.
      eps_root: :math:`\epsilon_{root} \ge 0` under the root.
      amsgrad: use AMSGrad's running maximum.
      weight_decay: :math:`\lambda \ge 0`, or None (the default) for no decay block.
      mu_dtype: dtype of the first moment; None keeps each parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``chain([add_decayed_weights,]
      scale_by_adam | scale_by_amsgrad, scale_by_learning_rate)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import adam
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = adam(learning_rate=0.1)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      8.7758
    """
    _validate_adam("adam", learning_rate, b1, b2, eps, eps_root, weight_decay)
    _check_flag("adam", "amsgrad", amsgrad)
    _hparams.check_dtype("adam", "mu_dtype", mu_dtype)
    return _chain(
        _decay(weight_decay),
        _adam_block(b1, b2, eps, eps_root, mu_dtype, amsgrad),
        T.scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule | None = 1e-2,
    eps_root: ScalarOrSchedule = 0.0,
    amsgrad: bool = False,
    mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    .. math::
       u_t = -\eta_t \left( \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
       + \lambda w_{t-1} \right)

    with :math:`\hat m_t, \hat v_t` Adam's bias-corrected moments of the *raw* gradient. The
    decay is scaled by the learning rate (schedule included), as in PyTorch and optax.

    PyTorch: ``torch.optim.AdamW(params, lr, betas=(b1, b2), eps, weight_decay, amsgrad)``.
    optax: ``optax.adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask)``.

    Args:
      learning_rate: :math:`\eta \ge 0`, a number, an array or a schedule.
      b1, b2, eps, eps_root, amsgrad, mu_dtype: as for :func:`adam`.
      weight_decay: :math:`\lambda \ge 0`; 1e-2 is PyTorch's default (the paper gives no
        single value; optax's is 1e-4). None leaves the decay block out.
      mask: a pytree of booleans (or a function ``params -> pytree``) choosing the leaves
        that decay, e.g. excluding biases; None decays every leaf.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``chain(scale_by_adam |
      scale_by_amsgrad, [add_decayed_weights,] scale_by_learning_rate)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import adamw
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = adamw(learning_rate=0.1, weight_decay=0.1)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      7.8192
    """
    _validate_adam("adamw", learning_rate, b1, b2, eps, eps_root, weight_decay)
    _check_flag("adamw", "amsgrad", amsgrad)
    _hparams.check_dtype("adamw", "mu_dtype", mu_dtype)
    return _chain(
        _adam_block(b1, b2, eps, eps_root, mu_dtype, amsgrad),
        _decay(weight_decay, mask),
        T.scale_by_learning_rate(learning_rate),
    )


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: ScalarOrSchedule = 0.001,
    eps: ScalarOrSchedule = 0.0,
    trust_ratio_mask: Any = True,
    momentum: ScalarOrSchedule = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg, 2017, Algorithm 1).

    For each layer (each leaf) :math:`l`:

    .. math::
       d^l_t = g^l_t + \lambda w^l_{t-1}, \qquad
       r^l_t = \frac{c\,\lVert w^l_{t-1} \rVert}{\lVert d^l_t \rVert + \epsilon}, \\
       v^l_t = \mu v^l_{t-1} + \eta_t\, r^l_t\, d^l_t, \qquad u^l_t = -v^l_t

    (Nesterov: :math:`u_t = -(\eta_t r_t d_t + \mu v_t)`). The learning rate is *inside* the
    velocity, as in the paper. :math:`r = 1` where either norm is 0 (zero-initialised biases);
    the masks choose the leaves that decay and the leaves that get a trust ratio (the paper
    exempts biases and batch-norm parameters from both; the defaults, like optax's, apply
    both to every leaf). The paper's ratio has :math:`\lVert g \rVert + \lambda \lVert w
    \rVert` in the denominator; this one (optax's) has the norm of the decayed gradient
    :math:`\lVert g + \lambda w \rVert`, which is the same when :math:`\lambda = 0` and never
    larger otherwise.

    Drop-in for ``optax.lars`` (same argument names, order and defaults). PyTorch has no
    ``torch.optim.LARS``; the reference is the paper's Algorithm 1.

    Args:
      learning_rate: :math:`\eta \ge 0` (the global rate; the paper decays it polynomially).
      weight_decay: :math:`\lambda \ge 0`, or None for no decay block.
      weight_decay_mask: pytree of booleans (or function of the params), or True (or None) for all.
      trust_coefficient: :math:`c \ge 0` (the paper's :math:`\eta`, 0.001).
      eps: :math:`\epsilon \ge 0` in the ratio's denominator.
      trust_ratio_mask: pytree of booleans (or function of the params), or True (or None) for all.
      momentum: :math:`\mu \in [0, 1)`.
      nesterov: use Nesterov's look-ahead.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``chain(masked(add_decayed_weights),
      masked(scale_by_trust_ratio), scale_by_learning_rate, trace)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import lars
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = lars(learning_rate=50.0)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      2.4363
    """
    _validate(
        "lars",
        nonnegative={
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
        },
        unit={"momentum": momentum},
    )
    _check_flag("lars", "nesterov", nesterov)
    trust_ratio = T.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    return _chain(
        _decay(weight_decay, weight_decay_mask),
        optax.masked(trust_ratio, True if trust_ratio_mask is None else trust_ratio_mask),
        T.scale_by_learning_rate(learning_rate),
        T.trace(momentum, nesterov=nesterov),
    )


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-6,
    eps_root: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LAMB: layer-wise adaptive moments (You et al., 2020, Algorithm 2).

    For each layer (each leaf) :math:`l`, with Adam's bias-corrected moments
    :math:`\hat m_t, \hat v_t` of the raw gradient:

    .. math::
       d^l_t = \frac{\hat m^l_t}{\sqrt{\hat v^l_t + \epsilon_{root}} + \epsilon}
               + \lambda w^l_{t-1}, \qquad
       u^l_t = -\eta_t \frac{\lVert w^l_{t-1} \rVert}{\lVert d^l_t \rVert}\, d^l_t

    (the paper's :math:`\phi` is the identity; the ratio is 1 where either norm is 0). The
    trust ratio applies to every leaf; ``mask`` limits the decay (the paper exempts biases
    and layer-norm parameters).

    Drop-in for ``optax.lamb`` (same argument names, order and defaults). PyTorch has no
    ``torch.optim.LAMB``; the reference is the paper's Algorithm 2.

    Args:
      learning_rate: :math:`\eta \ge 0`, a number, an array or a schedule.
      b1: :math:`\beta_1 \in [0, 1)`.
      b2: :math:`\beta_2 \in [0, 1)`.
      eps: :math:`\epsilon` (1e-6, the paper's); > 0, or >= 0 when ``eps_root`` > 0.
      eps_root: :math:`\epsilon_{root} \ge 0` under the root.
      weight_decay: :math:`\lambda \ge 0` (decoupled, inside the trust ratio), or None for no
        decay block.
      mask: pytree of booleans (or function of the params) choosing the leaves that decay;
        None decays every leaf.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``chain(scale_by_adam,
      add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from gdjax.optim import lamb
      >>> f = lambda w: jnp.sum(w**2)
      >>> w = jnp.array([1.0, -2.0, 3.0])
      >>> tx = lamb(learning_rate=0.1)
      >>> state = tx.init(w)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(f"{f(w):.4f}")
      5.5428
    """
    _validate_adam("lamb", learning_rate, b1, b2, eps, eps_root, weight_decay)
    return _chain(
        T.scale_by_adam(b1, b2, eps, eps_root),
        _decay(weight_decay, mask),
        T.scale_by_trust_ratio(),
        T.scale_by_learning_rate(learning_rate),
    )
