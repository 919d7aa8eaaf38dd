r"""Building blocks of the gradient-descent family.

Each function returns an :class:`optax.GradientTransformationExtraArgs`: a pair of pure
functions ``init(params) -> state`` and ``update(updates, state, params=None, **extra) ->
(updates, state)``. The finished optimizers in :mod:`gdjax.optim.alias` are short
``optax.chain`` s of these blocks, and the blocks compose with any other optax transformation.

Conventions shared by every block:

* State is a ``NamedTuple`` whose first field is an int32 ``count`` (updates applied so far);
  parameter-shaped state is built with ``jax.tree.map`` over ``params``, so ``optax.masked``,
  ``optax.multi_transform`` and ``optax.tree_map_params`` see it.
* Every numeric hyperparameter may be a number, an array or a schedule ``count -> value``
  (optax's schedules are the intended source); a schedule is evaluated at the 0-based step.
* Each leaf is computed in at least float32 and cast back: updates keep the gradients'
  dtype, state keeps its own (``None`` leaves and empty pytrees pass through).
* A block that keeps parameter-shaped state refuses integer and boolean parameters at
  ``init`` (``TypeError`` naming the leaf): their state would round every step. Leave such
  leaves out with ``optax.masked``.
* Complex leaves: every square is the squared modulus :math:`|g|^2 = g\bar g` and every norm
  :math:`\sqrt{\sum |x|^2}`, as in optax, so second moments stay real (stored in the
  parameter's complex dtype, as optax stores them). ``torch.optim`` instead treats the real
  and imaginary parts as two real parameters, each with its own second moment.
* ``update`` accepts and ignores unknown keyword arguments (``value=`` for
  ``reduce_on_plateau`` and the like).
* Every state class is registered for ``jax.export`` under ``gdjax.optim.<ClassName>``, so a
  function taking or returning these states (an update, a training step) serialises; the
  process that deserialises it must have imported :mod:`gdjax.optim` (optax's own states,
  as in ``optax.masked``, need :func:`gdjax.optim.register_optax_states`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gdjax.optim import _hparams
from gdjax.optim._export import exportable
from gdjax.optim._hparams import ScalarOrSchedule

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
    "add_decayed_weights",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_amsgrad",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "trace",
]


def _zeros(count_dtype: Any = jnp.int32) -> jax.Array:
    return jnp.zeros([], count_dtype)


def _increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping to negative."""
    return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


def _abs_sq(x: jax.Array) -> jax.Array:
    """:math:`|x|^2` elementwise, real: ``x * x`` for real ``x``, ``x * conj(x)`` for complex."""
    if jnp.iscomplexobj(x):
        return jnp.real(x * jnp.conj(x))
    return x * x


def _real_part(x: jax.Array, dtype: Any) -> jax.Array:
    """A real-valued state leaf (stored complex for complex parameters) as ``dtype``'s real type."""
    real = jnp.finfo(dtype).dtype
    return (jnp.real(x) if jnp.iscomplexobj(x) else x).astype(real)


def _real_hparam(h: Any, dtype: Any) -> jax.Array:
    """A hyperparameter's value in ``dtype``'s real type (``inject_hyperparams`` hands it over in
    the parameters' dtype, so complex for complex parameters: its real part is the value)."""
    return jnp.asarray(jnp.real(h) if jnp.iscomplexobj(h) else h, jnp.finfo(dtype).dtype)


def _tree_zeros(owner: str, params: Any, dtype: Any = None, fill: ScalarOrSchedule = 0.0) -> Any:
    """Parameter-shaped state filled with ``fill``, in each parameter's dtype or ``dtype``.

    An integer or boolean state leaf is refused: it would round every accumulated step to
    an integer (a velocity of 0.5 stored as 0), silently.
    """
    fill = _hparams.value_at(fill, _zeros())  # a schedule is read at step 0

    def make(path: Any, p: Any) -> jax.Array:
        dt = jnp.result_type(p) if dtype is None else jnp.dtype(dtype)
        if not jnp.issubdtype(dt, jnp.inexact):
            raise TypeError(
                f"{owner}: parameter params{jax.tree_util.keystr(path)} has dtype {dt}, and its "
                "state would be rounded to integers; gradient descent needs floating-point (or "
                "complex) parameters. Leave integer leaves out of the optimizer with "
                "optax.masked or optax.multi_transform (optax.set_to_zero())."
            )
        return jnp.full(jnp.shape(p), fill, dtype=dt)

    return jax.tree_util.tree_map_with_path(make, params)


def _arrays(owner: str, updates: Any) -> Any:
    """The updates as JAX arrays, as optax's blocks take them: a Python float leaf, or a NumPy
    float64 one without ``jax_enable_x64``, becomes the array ``jnp.asarray`` makes of it
    (``.astype`` failed on the first and warned of a truncation on every step for the second).
    Integer updates are refused: each block returns updates in their own dtype, so a step of
    0.3 would be 0 and the parameters would never move."""

    def array(path: Any, u: Any) -> jax.Array:
        u = jnp.asarray(u)
        if not jnp.issubdtype(u.dtype, jnp.inexact):
            raise TypeError(
                f"{owner}: update() got updates{jax.tree_util.keystr(path)} of dtype "
                f"{u.dtype}; gradients must be floating point (or complex)"
            )
        return u

    return jax.tree_util.tree_map_with_path(array, updates)


def _check_like(
    owner: str, updates: Any, tree: Any, what: str = "the state init() built from the parameters"
) -> Any:
    """Refuse ``updates`` whose pytree structure or leaf shapes differ from ``tree`` (a state
    that ``init`` built from the parameters, or the parameters), naming the first difference;
    ``jax.tree.map`` would fail with a pytree or broadcasting error, or broadcast silently.
    Runs when ``update`` is traced, not in the compiled step. Returns :func:`_arrays` of them
    (integer updates refused)."""
    updates = _arrays(owner, updates)
    u_def, t_def = jax.tree.structure(updates), jax.tree.structure(tree)
    if u_def == t_def:
        for (path, u), t in zip(
            jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(tree), strict=True
        ):
            if jnp.shape(u) != jnp.shape(t):
                raise ValueError(
                    f"{owner}: update() got updates{jax.tree_util.keystr(path)} of shape "
                    f"{jnp.shape(u)}, where {what} has shape {jnp.shape(t)}"
                )
        return updates
    paths = [
        {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(x)[0]}
        for x in (updates, tree)
    ]
    missing, extra = sorted(paths[1] - paths[0]), sorted(paths[0] - paths[1])
    differences = [f"{len(missing)} missing ({', '.join(missing[:3])})"] if missing else []
    differences += [f"{len(extra)} not in it ({', '.join(extra[:3])})"] if extra else []
    if not differences:
        differences = [f"its structure {t_def} against the updates' {u_def}"[:300]]
    raise ValueError(
        f"{owner}: update() got updates of another tree structure than {what}: "
        f"{'; '.join(differences)}"
    )


@exportable
class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate`: the step counter that drives schedules."""

    count: jax.Array


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> optax.GradientTransformationExtraArgs:
    r"""Multiply updates by the learning rate (negated, so that the result is a descent step).

    .. math::  u_t = -\eta_t\, g_t

    Args:
      learning_rate: :math:`\eta \ge 0`, a number or a schedule of the 0-based step.
      flip_sign: negate (the default) so that ``optax.apply_updates`` descends.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByLearningRateState`.
    """
    _hparams.check_range("scale_by_learning_rate", "learning_rate", learning_rate, low=0.0)
    sign = -1.0 if flip_sign else 1.0

    def init_fn(params: Any) -> ScaleByLearningRateState:
        del params
        return ScaleByLearningRateState(count=_zeros())

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        lr = _hparams.value_at(learning_rate, state.count)

        def leaf(g: jax.Array) -> jax.Array:
            dt = _hparams.compute_dtype(g)
            return (sign * jnp.asarray(lr, dt) * g.astype(dt)).astype(g.dtype)

        updates = jax.tree.map(leaf, _arrays("scale_by_learning_rate", updates))
        return updates, ScaleByLearningRateState(count=_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@exportable
class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights`: the step counter that drives schedules."""

    count: jax.Array


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: Any = None
) -> optax.GradientTransformationExtraArgs:
    r"""Add the weights, scaled by ``weight_decay``, to the updates.

    .. math::  u_t = g_t + \lambda_t\, w_t

    Placed before a rescaling block this is an L2 penalty folded into the gradient (PyTorch's
    ``weight_decay`` in ``SGD``/``Adam``); placed after it, decoupled weight decay (AdamW).

    Args:
      weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
      mask: optional pytree of booleans (or a function ``params -> pytree``) choosing the
        leaves that decay, applied with ``optax.masked``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`AddDecayedWeightsState`
      (inside ``optax.MaskedState`` when ``mask`` is given).
    """
    _hparams.check_range("add_decayed_weights", "weight_decay", weight_decay, low=0.0)

    def init_fn(params: Any) -> AddDecayedWeightsState:
        del params
        return AddDecayedWeightsState(count=_zeros())

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "add_decayed_weights: update() needs params, the weights it decays (call "
                "update(grads, state, params)); the weight decay of adamw, alexnet_sgd, lars and "
                "lamb is this block, which weight_decay=None leaves out"
            )
        wd = _hparams.value_at(weight_decay, state.count)

        def leaf(g: jax.Array, p: jax.Array) -> jax.Array:
            dt = _hparams.compute_dtype(g, p)
            return (g.astype(dt) + jnp.asarray(wd, dt) * jnp.asarray(p).astype(dt)).astype(g.dtype)

        updates = _check_like("add_decayed_weights", updates, params, "params")
        updates = jax.tree.map(leaf, updates, params)
        return updates, AddDecayedWeightsState(count=_increment(state.count))

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return tx if mask is None else optax.masked(tx, mask)


@exportable
class TraceState(NamedTuple):
    """State of :func:`trace`: step counter and the velocity (momentum buffer)."""

    count: jax.Array
    trace: Any


def _check_flag(owner: str, name: str, value: Any) -> None:
    """A switch is True or False: a string such as "no" is truthy and would switch it on."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")


def trace(
    decay: ScalarOrSchedule,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Accumulate a velocity (heavy-ball momentum), optionally with Nesterov's look-ahead.

    .. math::
       v_t = \mu_t\, v_{t-1} + g_t, \qquad
       u_t = \begin{cases} g_t + \mu_t v_t & \text{Nesterov} \\ v_t & \text{otherwise}\end{cases}

    with :math:`v_0 = 0`. This is PyTorch's ``SGD`` buffer with ``dampening=0`` and optax's
    ``trace``. Whether the learning rate sits inside the velocity depends only on whether
    :func:`scale_by_learning_rate` comes before this block (inside, as in the AlexNet paper)
    or after it (outside, as in PyTorch and optax).

    Args:
      decay: :math:`\mu \in [0, 1)`, a number or a schedule.
      nesterov: use Nesterov's momentum (Sutskever et al., 2013).
      accumulator_dtype: dtype of the velocity (e.g. ``jnp.bfloat16`` on a TPU); ``None``
        keeps each parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`TraceState`.
    """
    _hparams.check_range("trace", "decay", decay, low=0.0, high=1.0)
    _check_flag("trace", "nesterov", nesterov)
    _hparams.check_dtype("trace", "accumulator_dtype", accumulator_dtype)

    def init_fn(params: Any) -> TraceState:
        return TraceState(count=_zeros(), trace=_tree_zeros("trace", params, accumulator_dtype))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = _hparams.value_at(decay, state.count)

        def leaf(g: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
            dt = _hparams.compute_dtype(g, v)
            m, g32 = jnp.asarray(mu, dt), g.astype(dt)
            v_new = g32 + m * v.astype(dt)
            u = g32 + m * v_new if nesterov else v_new
            return u.astype(g.dtype), v_new.astype(v.dtype)

        updates = _check_like("trace", updates, state.trace)
        pairs = jax.tree.map(leaf, updates, state.trace)
        new_updates, new_trace = _unzip(pairs, updates)
        return new_updates, TraceState(count=_increment(state.count), trace=new_trace)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@exportable
class ScaleByAdagradState(NamedTuple):
    """State of :func:`scale_by_adagrad`: step counter and the running sum of squares."""

    count: jax.Array
    sum_of_squares: Any


def scale_by_adagrad(
    initial_accumulator_value: ScalarOrSchedule = 0.0,
    eps: ScalarOrSchedule = 1e-10,
    eps_in_sqrt: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescale by the root of the running sum of squared gradients (Duchi et al., 2011).

    .. math::
       G_t = G_{t-1} + g_t^2, \qquad
       u_t = \frac{g_t}{\sqrt{G_t} + \epsilon}
       \quad\text{or, with ``eps_in_sqrt``,}\quad u_t = \frac{g_t}{\sqrt{G_t + \epsilon}}

    with :math:`G_0` = ``initial_accumulator_value``. The default (``eps`` outside the root,
    :math:`G_0 = 0`) is the paper's diagonal update and PyTorch's ``Adagrad``; optax's
    ``adagrad`` puts ``eps`` inside the root (``eps_in_sqrt=True``).

    Args:
      initial_accumulator_value: :math:`G_0 \ge 0`.
      eps: :math:`\epsilon > 0` (PyTorch's default; the paper leaves it unspecified).
      eps_in_sqrt: add ``eps`` under the square root instead of after it.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByAdagradState`.
    """
    _hparams.check_range(
        "scale_by_adagrad", "initial_accumulator_value", initial_accumulator_value, low=0.0
    )
    _hparams.check_range("scale_by_adagrad", "eps", eps, low=0.0, low_inclusive=False)
    _check_flag("scale_by_adagrad", "eps_in_sqrt", eps_in_sqrt)

    def init_fn(params: Any) -> ScaleByAdagradState:
        return ScaleByAdagradState(
            count=_zeros(),
            sum_of_squares=_tree_zeros("scale_by_adagrad", params, fill=initial_accumulator_value),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        e = _hparams.value_at(eps, state.count)

        def leaf(g: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
            dt = _hparams.compute_dtype(g, s)
            g32, e32 = g.astype(dt), _real_hparam(e, dt)
            s_new = _real_part(s, dt) + _abs_sq(g32)
            u = g32 * jax.lax.rsqrt(s_new + e32) if eps_in_sqrt else g32 / (jnp.sqrt(s_new) + e32)
            return u.astype(g.dtype), s_new.astype(s.dtype)

        updates = _check_like("scale_by_adagrad", updates, state.sum_of_squares)
        new_updates, new_sum = _unzip(jax.tree.map(leaf, updates, state.sum_of_squares), updates)
        return new_updates, ScaleByAdagradState(
            count=_increment(state.count), sum_of_squares=new_sum
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@exportable
class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`: step counter and the average of squared gradients."""

    count: jax.Array
    nu: Any


@exportable
class ScaleByStddevState(NamedTuple):
    """State of :func:`scale_by_stddev`: step counter, average gradient and average square."""

    count: jax.Array
    mu: Any
    nu: Any


def _check_rms(owner: str, decay: Any, eps: Any, initial_scale: Any) -> None:
    _hparams.check_range(owner, "decay", decay, low=0.0, high=1.0)
    _hparams.check_range(owner, "eps", eps, low=0.0, low_inclusive=False)
    _hparams.check_range(owner, "initial_scale", initial_scale, low=0.0)


def _rms_leaf(g, n, m, rho, e, eps_in_sqrt: bool):
    """One leaf of RMSProp: new update, new ``nu`` and, centered (``m`` given), new ``mu``."""
    dt = _hparams.compute_dtype(g, n, *(() if m is None else (m,)))
    g32, r, e32 = g.astype(dt), _real_hparam(rho, dt), _real_hparam(e, dt)
    n_new = r * _real_part(n, dt) + (1 - r) * _abs_sq(g32)
    s, m_new = n_new, None
    if m is not None:
        m_new = r * m.astype(dt) + (1 - r) * g32
        s = jnp.maximum(n_new - _abs_sq(m_new), 0)  # clip round-off below zero
    u = g32 * jax.lax.rsqrt(s + e32) if eps_in_sqrt else g32 / (jnp.sqrt(s) + e32)
    return u.astype(g.dtype), n_new.astype(n.dtype), None if m is None else m_new.astype(m.dtype)


def scale_by_rms(
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    eps_in_sqrt: bool = False,
    initial_scale: ScalarOrSchedule = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescale by a moving root mean square of the gradients (RMSProp; Tieleman & Hinton, 2012).

    .. math::
       \nu_t = \rho\,\nu_{t-1} + (1-\rho)\, g_t^2, \qquad
       u_t = \frac{g_t}{\sqrt{\nu_t} + \epsilon}
       \ \text{or, with ``eps_in_sqrt``,}\ \frac{g_t}{\sqrt{\nu_t + \epsilon}}

    with :math:`\nu_0` = ``initial_scale``. ``eps`` outside the root is PyTorch's ``RMSprop``;
    optax's ``scale_by_rms`` puts it inside (``eps_in_sqrt=True``). The centered variant is
    its own block, :func:`scale_by_stddev`.

    Args:
      decay: :math:`\rho \in [0, 1)`; 0.9 is the lecture's value (PyTorch uses 0.99).
      eps: :math:`\epsilon > 0` (PyTorch's default 1e-8).
      eps_in_sqrt: add ``eps`` under the square root instead of after it.
      initial_scale: :math:`\nu_0 \ge 0` (read once, by ``init``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByRmsState`.
    """
    _check_rms("scale_by_rms", decay, eps, initial_scale)
    _check_flag("scale_by_rms", "eps_in_sqrt", eps_in_sqrt)

    def init_fn(params: Any) -> ScaleByRmsState:
        return ScaleByRmsState(
            count=_zeros(), nu=_tree_zeros("scale_by_rms", params, fill=initial_scale)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        rho, e = _hparams.value_at(decay, state.count), _hparams.value_at(eps, state.count)

        def leaf(g, n):
            return _rms_leaf(g, n, None, rho, e, eps_in_sqrt)[:2]

        updates = _check_like("scale_by_rms", updates, state.nu)
        new_updates, new_nu = _unzip(jax.tree.map(leaf, updates, state.nu), updates)
        return new_updates, ScaleByRmsState(count=_increment(state.count), nu=new_nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_stddev(
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    eps_in_sqrt: bool = False,
    initial_scale: ScalarOrSchedule = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescale by a moving estimate of the gradients' standard deviation (centered RMSProp).

    .. math::
       \nu_t = \rho\,\nu_{t-1} + (1-\rho)\, g_t^2, \qquad
       m_t = \rho\, m_{t-1} + (1-\rho)\, g_t, \\
       s_t = \max(\nu_t - m_t^2, 0), \qquad
       u_t = \frac{g_t}{\sqrt{s_t} + \epsilon}
       \ \text{or, with ``eps_in_sqrt``,}\ \frac{g_t}{\sqrt{s_t + \epsilon}}

    with :math:`\nu_0` = ``initial_scale`` and :math:`m_0 = 0` (Graves, 2013, eq. 38-41; the
    max clips round-off below zero). PyTorch: ``RMSprop(centered=True)``; optax:
    ``scale_by_stddev`` (``eps_in_sqrt=True``).

    Args:
      decay: :math:`\rho \in [0, 1)`.
      eps: :math:`\epsilon > 0`.
      eps_in_sqrt: add ``eps`` under the square root instead of after it.
      initial_scale: :math:`\nu_0 \ge 0` (read once, by ``init``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByStddevState`.
    """
    _check_rms("scale_by_stddev", decay, eps, initial_scale)
    _check_flag("scale_by_stddev", "eps_in_sqrt", eps_in_sqrt)

    def init_fn(params: Any) -> ScaleByStddevState:
        owner = "scale_by_stddev"
        nu = _tree_zeros(owner, params, fill=initial_scale)
        return ScaleByStddevState(count=_zeros(), mu=_tree_zeros(owner, params), nu=nu)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        rho, e = _hparams.value_at(decay, state.count), _hparams.value_at(eps, state.count)

        def leaf(g, n, m):
            return _rms_leaf(g, n, m, rho, e, eps_in_sqrt)

        updates = _check_like("scale_by_stddev", updates, state.nu)
        triples = jax.tree.map(leaf, updates, state.nu, state.mu)
        new_updates, new_nu, new_mu = _unzip(triples, updates, n=3)
        count = _increment(state.count)
        return new_updates, ScaleByStddevState(count=count, mu=new_mu, nu=new_nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@exportable
class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`: step counter, first and second moment estimates."""

    count: jax.Array
    mu: Any
    nu: Any


@exportable
class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`: Adam's, plus the running maximum of ``nu``."""

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def _check_adam(owner: str, b1: Any, b2: Any, eps: Any, eps_root: Any) -> None:
    _hparams.check_range(owner, "b1", b1, low=0.0, high=1.0)
    _hparams.check_range(owner, "b2", b2, low=0.0, high=1.0)
    _hparams.check_range(owner, "eps_root", eps_root, low=0.0)
    # eps may be 0 unless eps_root is known to be 0: the root is then never 0.
    _hparams.check_range(
        owner, "eps", eps, low=0.0, low_inclusive=not _hparams.known_zero(eps_root)
    )


def _adam_leaf(g, m, v, vmax, hp, t):
    """One leaf of Adam (``vmax`` None) or AMSGrad: update, new ``mu``, ``nu``, ``nu_max``."""
    dt = _hparams.compute_dtype(g, m, v)
    beta1, beta2, e, e_root = (_real_hparam(h, dt) for h in hp)
    g32, step = g.astype(dt), t.astype(jnp.finfo(dt).dtype)
    m_new = beta1 * m.astype(dt) + (1 - beta1) * g32
    v_new = beta2 * _real_part(v, dt) + (1 - beta2) * _abs_sq(g32)
    vmax_new = v_new if vmax is None else jnp.maximum(_real_part(vmax, dt), v_new)
    m_hat = m_new / (1 - beta1**step)
    v_hat = vmax_new / (1 - beta2**step)
    u = m_hat / (jnp.sqrt(v_hat + e_root) + e)
    return (
        u.astype(g.dtype),
        m_new.astype(m.dtype),
        v_new.astype(v.dtype),
        None if vmax is None else vmax_new.astype(vmax.dtype),
    )


def scale_by_adam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescale by Adam's bias-corrected moment estimates (Kingma & Ba, 2015, Algorithm 1).

    .. math::
       m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
       v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
       \hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad
       \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
       u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    AMSGrad is its own block, :func:`scale_by_amsgrad`.

    Args:
      b1: :math:`\beta_1 \in [0, 1)` (paper: 0.9).
      b2: :math:`\beta_2 \in [0, 1)` (paper: 0.999).
      eps: :math:`\epsilon` (paper: 1e-8); must be > 0, or >= 0 when ``eps_root`` > 0.
      eps_root: :math:`\epsilon_{root} \ge 0`, added under the root (optax's argument; keeps
        the gradient of the update finite for meta-learning).
      mu_dtype: dtype of the first moment (e.g. ``jnp.bfloat16``); ``None`` keeps each
        parameter's dtype. The second moment always keeps the parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByAdamState`.
    """
    _check_adam("scale_by_adam", b1, b2, eps, eps_root)
    _hparams.check_dtype("scale_by_adam", "mu_dtype", mu_dtype)

    def init_fn(params: Any) -> ScaleByAdamState:
        return ScaleByAdamState(
            count=_zeros(),
            mu=_tree_zeros("scale_by_adam", params, mu_dtype),
            nu=_tree_zeros("scale_by_adam", params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        hp = [_hparams.value_at(h, state.count) for h in (b1, b2, eps, eps_root)]
        t = _increment(state.count)

        def leaf(g, m, v):
            return _adam_leaf(g, m, v, None, hp, t)[:3]

        updates = _check_like("scale_by_adam", updates, state.mu)
        triples = jax.tree.map(leaf, updates, state.mu, state.nu)
        new_updates, mu, nu = _unzip(triples, updates, n=3)
        return new_updates, ScaleByAdamState(count=t, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_amsgrad(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with the running maximum of the second moment (AMSGrad; Reddi et al., 2018).

    .. math::
       v^{max}_t = \max(v^{max}_{t-1}, v_t), \qquad
       u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v^{max}_t / (1-\beta_2^t) + \epsilon_{root}}
       + \epsilon}

    with :math:`m_t, v_t` as in :func:`scale_by_adam`. The maximum is taken of the raw
    :math:`v_t`, before bias correction: PyTorch's (and Keras') convention. optax's
    ``scale_by_amsgrad`` takes it of the bias-corrected :math:`\hat v_t`, which differs during
    the first steps.

    Args:
      b1, b2, eps, eps_root, mu_dtype: as for :func:`scale_by_adam`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByAmsgradState`.
    """
    _check_adam("scale_by_amsgrad", b1, b2, eps, eps_root)
    _hparams.check_dtype("scale_by_amsgrad", "mu_dtype", mu_dtype)

    def init_fn(params: Any) -> ScaleByAmsgradState:
        owner = "scale_by_amsgrad"
        mu, nu = _tree_zeros(owner, params, mu_dtype), _tree_zeros(owner, params)
        nu_max = _tree_zeros(owner, params)
        return ScaleByAmsgradState(count=_zeros(), mu=mu, nu=nu, nu_max=nu_max)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        hp = [_hparams.value_at(h, state.count) for h in (b1, b2, eps, eps_root)]
        t = _increment(state.count)

        def leaf(g, m, v, vmax):
            return _adam_leaf(g, m, v, vmax, hp, t)

        updates = _check_like("scale_by_amsgrad", updates, state.mu)
        quads = jax.tree.map(leaf, updates, state.mu, state.nu, state.nu_max)
        new_updates, mu, nu, nu_max = _unzip(quads, updates, n=4)
        return new_updates, ScaleByAmsgradState(count=t, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@exportable
class ScaleByTrustRatioState(NamedTuple):
    """State of :func:`scale_by_trust_ratio`: the step counter that drives schedules."""

    count: jax.Array


def _norm(x: jax.Array) -> jax.Array:
    """Euclidean norm of all entries (moduli for complex), with a gradient of 0 (not NaN) at 0."""
    sq = jnp.sum(_abs_sq(x))
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)


def scale_by_trust_ratio(
    min_norm: ScalarOrSchedule = 0.0,
    trust_coefficient: ScalarOrSchedule = 1.0,
    eps: ScalarOrSchedule = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescale each leaf (layer) by its trust ratio, as LARS and LAMB do.

    .. math::
       r_t = \frac{c\, \max(\lVert w_{t-1} \rVert, n_{min})}
                  {\max(\lVert g_t \rVert, n_{min}) + \epsilon}, \qquad
       u_t = r_t\, g_t, \qquad r_t = 1 \text{ when either norm is } 0

    with norms over each leaf's entries. LARS (You, Gitman & Ginsburg, 2017, eq. 6) uses
    :math:`c` = 0.001 on the weight-decayed gradient; LAMB (You et al., 2020, Algorithm 2,
    with :math:`\phi` the identity) :math:`c = 1` on Adam's direction plus the decay. The
    zero-norm safeguard keeps a zero-initialised layer (biases) or a zero gradient from a
    ratio of 0 or 0/0: the step is then left as given. Same rule as optax's
    ``scale_by_trust_ratio``. Needs ``params``.

    Args:
      min_norm: :math:`n_{min} \ge 0`, a floor on both norms (0: none).
      trust_coefficient: :math:`c \ge 0`.
      eps: :math:`\epsilon \ge 0` added to the update's norm.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`ScaleByTrustRatioState`.
    """
    owner = "scale_by_trust_ratio"
    _hparams.check_range(owner, "min_norm", min_norm, low=0.0)
    _hparams.check_range(owner, "trust_coefficient", trust_coefficient, low=0.0)
    _hparams.check_range(owner, "eps", eps, low=0.0)

    def init_fn(params: Any) -> ScaleByTrustRatioState:
        del params
        return ScaleByTrustRatioState(count=_zeros())

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "scale_by_trust_ratio: update() needs params (call update(grads, state, params))"
            )
        hp = [_hparams.value_at(h, state.count) for h in (min_norm, trust_coefficient, eps)]

        def leaf(g: jax.Array, p: jax.Array) -> jax.Array:
            dt = _hparams.compute_dtype(g, p)
            floor, c, e = (_real_hparam(h, dt) for h in hp)
            g32 = g.astype(dt)
            p_norm = jnp.maximum(_norm(jnp.asarray(p).astype(dt)), floor)
            g_norm = jnp.maximum(_norm(g32), floor)
            ratio = jnp.where((p_norm == 0) | (g_norm == 0), 1, c * p_norm / (g_norm + e))
            return (ratio.astype(dt) * g32).astype(g.dtype)

        updates = _check_like("scale_by_trust_ratio", updates, params, "params")
        updates = jax.tree.map(leaf, updates, params)
        return updates, ScaleByTrustRatioState(count=_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _unzip(tree_of_tuples: Any, like: Any, n: int = 2) -> tuple[Any, ...]:
    """Split a pytree whose leaves (at ``like``'s leaf positions) are n-tuples into n pytrees."""
    treedef = jax.tree.structure(like)
    tuples = treedef.flatten_up_to(tree_of_tuples)
    return tuple(treedef.unflatten([tup[i] for tup in tuples]) for i in range(n))
