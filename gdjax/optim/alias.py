r"""The finished optimizers: short ``optax.chain`` s of the blocks in :mod:`.transforms`.

Notation: :math:`w_t` parameters, :math:`g_t = \nabla L(w_{t-1})` the gradient of the batch fed
at step :math:`t`, :math:`\eta_t` the learning rate (a number or a schedule of the 0-based
step), :math:`\lambda` weight decay. Every optimizer returns updates :math:`u_t` that are
*added* to the parameters (``optax.apply_updates``): :math:`w_t = w_{t-1} + u_t`.

Every argument but ``learning_rate`` has a default: the original paper's where it gives one,
else PyTorch's (each docstring says which). Each numeric hyperparameter also accepts a
schedule, and each optimizer works under ``optax.inject_hyperparams``.
"""

from __future__ import annotations

from typing import Any

import optax

from gdjax.optim import _hparams
from gdjax.optim import transforms as T
from gdjax.optim._hparams import ScalarOrSchedule

__all__ = ["adagrad", "adam", "adamw", "alexnet_sgd", "momentum", "rmsprop", "sgd"]


def _validate(
    owner: str,
    nonnegative: dict[str, Any] | None = None,
    unit: dict[str, Any] | None = None,
    positive: dict[str, Any] | None = None,
) -> None:
    """Check hyperparameters under the names the user passed them by (the blocks rename)."""
    for name, value in (nonnegative or {}).items():
        _hparams.check_range(owner, name, value, low=0.0)
    for name, value in (unit or {}).items():
        _hparams.check_range(owner, name, value, low=0.0, high=1.0)
    for name, value in (positive or {}).items():
        _hparams.check_range(owner, name, value, low=0.0, low_inclusive=False)


def _chain(*blocks: optax.GradientTransformationExtraArgs | None):
    return optax.chain(*(b for b in blocks if b is not None))


def _l2(weight_decay: ScalarOrSchedule) -> optax.GradientTransformationExtraArgs | None:
    """L2 penalty folded into the gradient; omitted when it is the number 0."""
    return None if _hparams.is_zero(weight_decay) else T.add_decayed_weights(weight_decay)


def _validate_adam(owner: str, learning_rate, b1, b2, eps, eps_root, weight_decay) -> None:
    _validate(
        owner,
        nonnegative={"learning_rate": learning_rate, "weight_decay": weight_decay},
        unit={"b1": b1, "b2": b2},
    )
    _hparams.check_range(owner, "eps_root", eps_root, low=0.0)
    # eps may be 0 when eps_root > 0: the root is then never 0.
    _hparams.check_range(owner, "eps", eps, low=0.0, low_inclusive=not _hparams.is_zero(eps_root))


def sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    r"""Plain gradient descent.

    .. math::  u_t = -\eta_t g_t

    Batch, stochastic and mini-batch gradient descent are this same rule; they differ only in
    the data the gradient is computed on (all examples, one example, or a mini-batch).

    PyTorch: ``torch.optim.SGD(params, lr=learning_rate)``.
    """
    _validate("sgd", nonnegative={"learning_rate": learning_rate})
    return _chain(T.scale_by_learning_rate(learning_rate))


def momentum(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule = 0.0,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent with heavy-ball (Polyak, 1964) or Nesterov momentum.

    .. math::
       \tilde g_t = g_t + \lambda w_{t-1}, \qquad v_t = \mu v_{t-1} + \tilde g_t, \\
       u_t = -\eta_t v_t \quad\text{or, Nesterov (Sutskever et al., 2013),}\quad
       u_t = -\eta_t (\tilde g_t + \mu v_t)

    The learning rate is *outside* the velocity (the PyTorch and optax convention): changing
    :math:`\eta` rescales the whole step at once, old velocity included. Weight decay is an L2
    term added to the gradient. Defaults: :math:`\mu = 0.9`, the value used throughout the
    momentum literature (Sutskever et al., 2013); :math:`\lambda = 0`.

    PyTorch: ``torch.optim.SGD(params, lr=learning_rate, momentum=momentum,
    nesterov=nesterov, weight_decay=weight_decay)`` (with ``dampening=0``).
    """
    _validate(
        "momentum",
        nonnegative={"learning_rate": learning_rate, "weight_decay": weight_decay},
        unit={"momentum": momentum},
    )
    return _chain(
        _l2(weight_decay),
        T.trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
        T.scale_by_learning_rate(learning_rate),
    )


def alexnet_sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    weight_decay: ScalarOrSchedule = 5e-4,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The update rule of AlexNet (Krizhevsky, Sutskever & Hinton, 2012, §5), exactly.

    .. math::
       v_t = \mu v_{t-1} - \lambda \eta_t w_{t-1} - \eta_t g_t, \qquad w_t = w_{t-1} + v_t

    with :math:`\mu = 0.9`, :math:`\lambda = 0.0005` (the paper's values). The learning rate
    is *inside* the velocity: when :math:`\eta` is divided by 10 the velocity already built up
    keeps its size and decays away, rather than being rescaled at once as in :func:`momentum`.
    With a constant learning rate the two rules give the same trajectory.

    PyTorch has no built-in equivalent; ``SGD(momentum=0.9, weight_decay=5e-4)`` matches it
    only while the learning rate is constant.
    """
    _validate(
        "alexnet_sgd",
        nonnegative={"learning_rate": learning_rate, "weight_decay": weight_decay},
        unit={"momentum": momentum},
    )
    return _chain(
        _l2(weight_decay),
        T.scale_by_learning_rate(learning_rate),
        T.trace(momentum, accumulator_dtype=accumulator_dtype),
    )


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.0,
    eps: ScalarOrSchedule = 1e-10,
    eps_in_sqrt: bool = False,
    weight_decay: ScalarOrSchedule = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaGrad (Duchi, Hazan & Singer, 2011), diagonal version.

    .. math::
       \tilde g_t = g_t + \lambda w_{t-1}, \qquad G_t = G_{t-1} + \tilde g_t^2, \qquad
       u_t = -\eta_t \frac{\tilde g_t}{\sqrt{G_t} + \epsilon}

    :math:`G_0` = ``initial_accumulator_value`` (0, the paper's), :math:`\epsilon = 10^{-10}`
    (PyTorch's; the paper's :math:`\delta` has no value). ``eps_in_sqrt=True`` uses
    :math:`\sqrt{G_t + \epsilon}` instead, which is optax's ``adagrad`` (whose defaults are
    ``initial_accumulator_value=0.1, eps=1e-7``).

    PyTorch: ``torch.optim.Adagrad(params, lr, lr_decay=0, weight_decay,
    initial_accumulator_value, eps)``; its ``lr_decay`` is the schedule
    ``lambda t: lr / (1 + t * lr_decay)``.
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
    return _chain(
        _l2(weight_decay),
        T.scale_by_adagrad(initial_accumulator_value, eps=eps, eps_in_sqrt=eps_in_sqrt),
        T.scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    centered: bool = False,
    momentum: ScalarOrSchedule = 0.0,
    eps_in_sqrt: bool = False,
    initial_scale: float = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp (Tieleman & Hinton, 2012, lecture 6e), plain or centered (Graves, 2013).

    .. math::
       \tilde g_t = g_t + \lambda w_{t-1}, \qquad
       \nu_t = \rho \nu_{t-1} + (1-\rho)\tilde g_t^2, \qquad
       m_t = \rho m_{t-1} + (1-\rho)\tilde g_t \ \text{(centered)}, \\
       d_t = \frac{\tilde g_t}{\sqrt{\nu_t [- m_t^2]} + \epsilon}, \qquad
       b_t = \beta b_{t-1} + d_t, \qquad u_t = -\eta_t b_t

    The momentum buffer :math:`b` (:math:`\beta` = ``momentum``, off by default) keeps the
    learning rate *outside*, as PyTorch does. :math:`\rho = 0.9` is the lecture's value;
    :math:`\epsilon = 10^{-8}` is PyTorch's.

    PyTorch: ``torch.optim.RMSprop(params, lr, alpha=decay, eps, weight_decay, momentum,
    centered)`` (PyTorch's default ``alpha`` is 0.99). optax: ``optax.rmsprop(...)`` equals
    this with ``eps_in_sqrt=True`` when ``momentum=0``; with momentum optax scales by the
    learning rate *inside* the buffer, so the two agree only at a constant learning rate.
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
    )
    return _chain(
        _l2(weight_decay),
        T.scale_by_rms(
            decay, eps=eps, eps_in_sqrt=eps_in_sqrt, centered=centered, initial_scale=initial_scale
        ),
        None
        if _hparams.is_zero(momentum)
        else T.trace(momentum, accumulator_dtype=accumulator_dtype),
        T.scale_by_learning_rate(learning_rate),
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    amsgrad: bool = False,
    weight_decay: ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam (Kingma & Ba, 2015, Algorithm 1) with bias correction; optional AMSGrad.

    .. math::
       \tilde g_t = g_t + \lambda w_{t-1}, \qquad
       m_t = \beta_1 m_{t-1} + (1-\beta_1)\tilde g_t, \qquad
       v_t = \beta_2 v_{t-1} + (1-\beta_2)\tilde g_t^2, \\
       u_t = -\eta_t \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}}
       + \epsilon}

    Defaults are the paper's (:math:`\beta_1=0.9, \beta_2=0.999, \epsilon=10^{-8}`).
    ``weight_decay`` is an L2 term in the gradient (PyTorch's ``Adam(weight_decay=...)``); for
    decoupled decay use :func:`adamw`. With ``amsgrad`` (Reddi et al., 2018) the running
    maximum of :math:`v_t` is used, as in PyTorch (see :func:`~.transforms.scale_by_adam`).

    PyTorch: ``torch.optim.Adam(params, lr, betas=(b1, b2), eps, weight_decay, amsgrad)``.
    optax: ``optax.adam(learning_rate, b1, b2, eps, eps_root, mu_dtype=...)``.
    """
    _validate_adam("adam", learning_rate, b1, b2, eps, eps_root, weight_decay)
    return _chain(
        _l2(weight_decay),
        T.scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, amsgrad=amsgrad),
        T.scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-2,
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
    :math:`\lambda = 10^{-2}` is PyTorch's default (the paper gives no single value; optax's
    default is 1e-4). ``mask`` (a pytree of booleans or a function of the params) limits the
    decay to some leaves, e.g. excluding biases.

    PyTorch: ``torch.optim.AdamW(params, lr, betas=(b1, b2), eps, weight_decay, amsgrad)``.
    optax: ``optax.adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask)``.
    """
    _validate_adam("adamw", learning_rate, b1, b2, eps, eps_root, weight_decay)
    return _chain(
        T.scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, amsgrad=amsgrad),
        None if _hparams.is_zero(weight_decay) else T.add_decayed_weights(weight_decay, mask),
        T.scale_by_learning_rate(learning_rate),
    )
