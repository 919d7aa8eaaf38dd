"""The finished optimizers pinned three ways: against optax, against torch.optim, against the paper.

If a parity test fails, first check the convention named in the optimizer's docstring (where
the learning rate and the weight decay enter, where eps sits): a change there is a change of
behaviour for users, not a tolerance to loosen.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_testing import (
    all_optimizers,
    max_rel_diff,
    mixed_tree,
    noises,
    trajectories,
    trajectory,
)

import gdjax

STEPS = 200
# float32 round-off accumulated over 200 steps (measured worst case 7.8e-6 here).
OPTAX_TOL = 2e-5

SCHEDULE = optax.cosine_decay_schedule(0.05, decay_steps=STEPS, alpha=0.1)


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


# name -> (ours(lr), optax equivalent(lr)); each is run with a constant lr and with SCHEDULE.
OPTAX_CASES = {
    "sgd": (gdjax.sgd, optax.sgd),
    "momentum": (
        lambda lr: gdjax.momentum(lr, 0.9),
        lambda lr: optax.sgd(lr, momentum=0.9),
    ),
    "nesterov": (
        lambda lr: gdjax.momentum(lr, 0.9, nesterov=True),
        lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    ),
    # optax's own spelling of momentum, which gdjax.sgd takes as well
    "sgd_momentum_keyword": (
        lambda lr: gdjax.sgd(lr, momentum=0.9),
        lambda lr: optax.sgd(lr, momentum=0.9),
    ),
    "sgd_nesterov_keyword": (
        lambda lr: gdjax.sgd(lr, momentum=0.8, nesterov=True),
        lambda lr: optax.sgd(lr, momentum=0.8, nesterov=True),
    ),
    "momentum_weight_decay": (
        lambda lr: gdjax.momentum(lr, 0.8, weight_decay=1e-2),
        lambda lr: optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(lr, momentum=0.8)),
    ),
    "alexnet_sgd": (
        gdjax.alexnet_sgd,
        lambda lr: optax.chain(
            optax.add_decayed_weights(5e-4), optax.scale_by_learning_rate(lr), optax.trace(0.9)
        ),
    ),
    "adagrad": (
        lambda lr: gdjax.adagrad(lr, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True),
        lambda lr: optax.adagrad(lr, initial_accumulator_value=0.1, eps=1e-7),
    ),
    "rmsprop": (
        lambda lr: gdjax.rmsprop(lr, eps_in_sqrt=True),
        lambda lr: optax.rmsprop(lr),
    ),
    "rmsprop_centered": (
        lambda lr: gdjax.rmsprop(lr, centered=True, eps_in_sqrt=True),
        lambda lr: optax.rmsprop(lr, centered=True),
    ),
    "rmsprop_momentum": (
        # optax.rmsprop puts the lr inside the momentum buffer; the optax chain with the lr
        # outside is the equivalent of ours under a schedule.
        lambda lr: gdjax.rmsprop(lr, decay=0.95, momentum=0.9, eps_in_sqrt=True),
        lambda lr: optax.chain(
            optax.scale_by_rms(0.95, eps_in_sqrt=True),
            optax.trace(0.9),
            optax.scale_by_learning_rate(lr),
        ),
    ),
    "adam": (gdjax.adam, optax.adam),
    "adam_eps_root": (
        lambda lr: gdjax.adam(lr, b1=0.8, b2=0.99, eps=0.0, eps_root=1e-8),
        lambda lr: optax.adam(lr, b1=0.8, b2=0.99, eps=0.0, eps_root=1e-8),
    ),
    "adamw": (
        lambda lr: gdjax.adamw(lr, weight_decay=1e-2),
        lambda lr: optax.adamw(lr, weight_decay=1e-2),
    ),
    "adamw_mask": (
        lambda lr: gdjax.adamw(lr, weight_decay=0.1, mask=_decay_mask),
        lambda lr: optax.adamw(lr, weight_decay=0.1, mask=_decay_mask),
    ),
    # LARS and LAMB: optax's defaults, then masks (kernels only) with every other argument set.
    "lars": (
        lambda lr: gdjax.lars(lr, trust_coefficient=0.5),
        lambda lr: optax.lars(lr, trust_coefficient=0.5),
    ),
    "lars_masks_nesterov": (
        lambda lr: gdjax.lars(
            lr, 1e-2, _decay_mask, 0.5, 1e-8, _decay_mask, momentum=0.8, nesterov=True
        ),
        lambda lr: optax.lars(
            lr, 1e-2, _decay_mask, 0.5, 1e-8, _decay_mask, momentum=0.8, nesterov=True
        ),
    ),
    "lamb": (gdjax.lamb, optax.lamb),
    "lamb_mask": (
        lambda lr: gdjax.lamb(lr, 0.8, 0.99, 1e-7, 1e-9, weight_decay=0.1, mask=_decay_mask),
        lambda lr: optax.lamb(lr, 0.8, 0.99, 1e-7, 1e-9, weight_decay=0.1, mask=_decay_mask),
    ),
}


@functools.cache
def _optax_runs(lr, dtype) -> dict | None:
    """name -> (ours, optax's) trajectories for every OPTAX_CASES entry, all stepped in one
    jitted function (one XLA program instead of two per case). None where that fails: each
    case then runs alone, so that an error shows in the case it belongs to."""
    names = sorted(OPTAX_CASES)
    txs = [make(lr) for name in names for make in OPTAX_CASES[name]]
    try:
        runs = trajectories(txs, mixed_tree(0, dtype), noises(STEPS, dtype=dtype))
    except Exception:
        return None
    return {name: (runs[2 * i], runs[2 * i + 1]) for i, name in enumerate(names)}


def _ours_and_optax(name, lr, dtype=np.float32):
    runs = _optax_runs(lr, dtype)
    if runs is not None:
        return runs[name]
    params, noise = mixed_tree(0, dtype), noises(STEPS, dtype=dtype)
    ours, theirs = OPTAX_CASES[name]
    return trajectory(ours(lr), params, noise), trajectory(theirs(lr), params, noise)


@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "schedule"])
@pytest.mark.parametrize("name", sorted(OPTAX_CASES))
def test_matches_optax(name, schedule):
    got, want = _ours_and_optax(name, SCHEDULE if schedule else 0.03)
    moved = max_rel_diff(want[-1], mixed_tree(0))
    assert moved > 1e-2, "the reference did not move; the comparison would prove nothing"
    assert max_rel_diff(got, want) < OPTAX_TOL


@pytest.mark.parametrize("name", sorted(OPTAX_CASES))
def test_matches_optax_on_complex_parameters(name):
    """Complex leaves: squares are squared moduli and norms sum them, optax's convention (a
    real square of a complex gradient would make Adam's root imaginary and its step wrong)."""
    got, want = _ours_and_optax(name, SCHEDULE, np.complex64)
    assert all(leaf.dtype == np.complex64 for leaf in jax.tree.leaves(got[-1]))
    assert max_rel_diff(want[-1], mixed_tree(0, np.complex64)) > 1e-2, "the reference did not move"
    assert max_rel_diff(got, want) < OPTAX_TOL


@pytest.mark.parametrize("name", sorted(all_optimizers()))
def test_complex_parameters_with_real_values_step_as_real_ones(name):
    """A complex leaf whose values are all real follows the real leaf's trajectory (to float32
    round-off: XLA's complex products round differently from real ones)."""
    factory, kwargs = all_optimizers()[name]
    params, noise = mixed_tree(0), noises(20)
    as_complex = lambda tree: jax.tree.map(lambda x: x.astype(np.complex64), tree)  # noqa: E731
    want = trajectory(factory(0.03, **kwargs), params, noise)
    got = trajectory(factory(0.03, **kwargs), as_complex(params), [as_complex(n) for n in noise])
    assert max_rel_diff(want[-1], params) > 1e-3, "the reference did not move"
    for g in jax.tree.leaves(got):
        np.testing.assert_array_equal(np.imag(g), 0)
    assert max_rel_diff(jax.tree.map(np.real, got), want) < OPTAX_TOL


def test_adam_bf16_first_moment_is_at_least_as_accurate_as_optax():
    """A bfloat16 `mu` cannot match optax to f32 round-off: optax multiplies b1 * mu in
    bfloat16, we in float32. Both are measured against the float32-moment trajectory."""
    params, noise = mixed_tree(0), noises(STEPS)
    exact = trajectory(gdjax.adam(0.03), params, noise)
    ours = trajectory(gdjax.adam(0.03, mu_dtype=jnp.bfloat16), params, noise)
    theirs = trajectory(optax.adam(0.03, mu_dtype=jnp.bfloat16), params, noise)
    ours_err, theirs_err = max_rel_diff(ours, exact), max_rel_diff(theirs, exact)
    assert 0 < ours_err <= theirs_err


def test_rmsprop_momentum_equals_optax_rmsprop_at_constant_lr():
    params, noise = mixed_tree(0), noises(STEPS)
    got = trajectory(gdjax.rmsprop(0.01, momentum=0.9, eps_in_sqrt=True), params, noise)
    want = trajectory(optax.rmsprop(0.01, momentum=0.9), params, noise)
    assert max_rel_diff(got, want) < OPTAX_TOL


# ---------------------------------------------------------------------------------------------
# PyTorch: same trajectories under the documented argument mapping, with a lr change mid-run.

TORCH_STEPS, DROP_AT, LR = 120, 60, 0.02
TORCH_TOL = 2e-5  # measured worst case 2.2e-6 (AdamW with AMSGrad)


def _lr_schedule(lr):
    return optax.piecewise_constant_schedule(lr, {DROP_AT: 0.1})


TORCH_CASES = {
    # name: (gdjax factory(lr), torch class name, torch kwargs)
    "sgd": (lambda lr: gdjax.sgd(lr), "SGD", {}),
    "sgd_momentum": (lambda lr: gdjax.momentum(lr, 0.9), "SGD", {"momentum": 0.9}),
    "sgd_nesterov": (
        lambda lr: gdjax.momentum(lr, 0.9, nesterov=True),
        "SGD",
        {"momentum": 0.9, "nesterov": True},
    ),
    "sgd_keyword_nesterov": (
        lambda lr: gdjax.sgd(lr, momentum=0.9, nesterov=True),
        "SGD",
        {"momentum": 0.9, "nesterov": True},
    ),
    "sgd_weight_decay": (
        lambda lr: gdjax.momentum(lr, 0.9, nesterov=True, weight_decay=1e-2),
        "SGD",
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    ),
    "adam": (lambda lr: gdjax.adam(lr), "Adam", {}),
    "adam_l2": (
        lambda lr: gdjax.adam(lr, b1=0.8, b2=0.99, eps=1e-6, weight_decay=1e-2),
        "Adam",
        {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1e-2},
    ),
    "adam_amsgrad": (lambda lr: gdjax.adam(lr, amsgrad=True), "Adam", {"amsgrad": True}),
    "adamw": (lambda lr: gdjax.adamw(lr), "AdamW", {}),
    "adamw_amsgrad": (
        lambda lr: gdjax.adamw(lr, weight_decay=0.1, amsgrad=True),
        "AdamW",
        {"weight_decay": 0.1, "amsgrad": True},
    ),
    "rmsprop": (lambda lr: gdjax.rmsprop(lr, decay=0.99), "RMSprop", {}),
    "rmsprop_centered": (
        lambda lr: gdjax.rmsprop(lr, decay=0.99, centered=True),
        "RMSprop",
        {"centered": True},
    ),
    "rmsprop_momentum": (
        lambda lr: gdjax.rmsprop(lr, decay=0.9, momentum=0.8),
        "RMSprop",
        {"alpha": 0.9, "momentum": 0.8},
    ),
    "rmsprop_all": (
        lambda lr: gdjax.rmsprop(lr, decay=0.9, centered=True, momentum=0.8, weight_decay=1e-2),
        "RMSprop",
        {"alpha": 0.9, "centered": True, "momentum": 0.8, "weight_decay": 1e-2},
    ),
    "adagrad": (lambda lr: gdjax.adagrad(lr), "Adagrad", {}),
    "adagrad_init_wd": (
        lambda lr: gdjax.adagrad(lr, initial_accumulator_value=0.1, weight_decay=1e-2),
        "Adagrad",
        {"initial_accumulator_value": 0.1, "weight_decay": 1e-2},
    ),
}


def _torch_trajectory(torch, cls_name, kwargs, params, noise_list):
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.tensor(np.array(x), requires_grad=True) for x in leaves]
    opt = getattr(torch.optim, cls_name)(tensors, lr=LR, **kwargs)
    out = []
    for t, noise in enumerate(noise_list):
        if t == DROP_AT:
            for group in opt.param_groups:
                group["lr"] = LR * 0.1
        with torch.no_grad():
            for p, n in zip(tensors, jax.tree.leaves(noise), strict=True):
                p.grad = torch.from_numpy(n) + 0.5 * p.detach()
        opt.step()
        out.append(treedef.unflatten([p.detach().numpy().copy() for p in tensors]))
    return out


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_matches_torch_optim(name):
    torch = pytest.importorskip("torch")
    ours, cls_name, kwargs = TORCH_CASES[name]
    params, noise = mixed_tree(0), noises(TORCH_STEPS)
    got = trajectory(ours(_lr_schedule(LR)), params, noise)
    want = _torch_trajectory(torch, cls_name, kwargs, params, noise)
    assert max_rel_diff(want[-1], want[DROP_AT - 1]) > 1e-3, "no movement after the lr drop"
    assert max_rel_diff(got, want) < TORCH_TOL


def test_adagrad_lr_decay_maps_to_a_schedule():
    torch = pytest.importorskip("torch")
    lr, lr_decay = 0.1, 0.05
    params, noise = mixed_tree(0), noises(50)
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.tensor(np.array(x), requires_grad=True) for x in leaves]
    opt = torch.optim.Adagrad(tensors, lr=lr, lr_decay=lr_decay)
    want = []
    for n in noise:
        with torch.no_grad():
            for p, ni in zip(tensors, jax.tree.leaves(n), strict=True):
                p.grad = torch.from_numpy(ni) + 0.5 * p.detach()
        opt.step()
        want.append(treedef.unflatten([p.detach().numpy().copy() for p in tensors]))
    got = trajectory(gdjax.adagrad(lambda t: lr / (1 + t * lr_decay)), params, noise)
    assert max_rel_diff(got, want) < TORCH_TOL


# ---------------------------------------------------------------------------------------------
# The AlexNet paper's two lines, transcribed in numpy float64.


def _paper_alexnet(params, noise_list, lr_at, mu=0.9, wd=5e-4):
    """v <- mu v - wd*eps*w - eps*grad;  w <- w + v   (Krizhevsky et al. 2012, section 5)."""
    w = jax.tree.map(lambda x: np.array(x, np.float64), params)
    v = jax.tree.map(np.zeros_like, w)
    out = []
    for t, noise in enumerate(noise_list):
        eps = lr_at(t)
        grad = jax.tree.map(lambda wi, n: n + 0.5 * wi, w, noise)
        v = jax.tree.map(lambda vi, wi, gi: mu * vi - wd * eps * wi - eps * gi, v, w, grad)
        w = jax.tree.map(lambda wi, vi: wi + vi, w, v)
        out.append(w)
    return out


@pytest.mark.usefixtures("x64")
def test_alexnet_sgd_is_the_papers_rule_with_lr_divided_by_ten():
    params, noise = mixed_tree(0, np.float64), noises(TORCH_STEPS, dtype=np.float64)
    lr_at = _lr_schedule(0.05)
    want = _paper_alexnet(params, noise, lambda t: 0.05 * (0.1 if t >= DROP_AT else 1.0))
    got = trajectory(gdjax.alexnet_sgd(lr_at), params, noise)
    assert jax.tree.leaves(got[0])[0].dtype == np.float64
    assert max_rel_diff(got, want) < 1e-12


@pytest.mark.usefixtures("x64")
def test_alexnet_sgd_and_momentum_differ_only_after_the_lr_drop():
    """Same rule at constant lr; after a drop the velocity is rescaled only by `momentum`."""
    params, noise = mixed_tree(0, np.float64), noises(TORCH_STEPS, dtype=np.float64)
    lr_at = _lr_schedule(0.05)
    paper = trajectory(gdjax.alexnet_sgd(lr_at), params, noise)
    pytorch_style = trajectory(gdjax.momentum(lr_at, 0.9, weight_decay=5e-4), params, noise)
    assert max_rel_diff(paper[:DROP_AT], pytorch_style[:DROP_AT]) < 1e-12
    assert max_rel_diff(paper[DROP_AT:], pytorch_style[DROP_AT:]) > 1e-3


# ---------------------------------------------------------------------------------------------
# LARS and LAMB: the papers' algorithm boxes, transcribed in numpy float64.


def _norm64(x):
    return float(np.sqrt(np.sum(np.square(x))))


def _paper_lars(params, noise_list, lr_at, eta, beta, m):
    """You, Gitman & Ginsburg (2017), Algorithm 1, per layer l:
    lambda = eta ||w|| / (||g|| + beta ||w||);  v <- m v + gamma_t lambda (g + beta w);  w <- w - v.
    """
    w = jax.tree.map(lambda x: np.array(x, np.float64), params)
    v = jax.tree.map(np.zeros_like, w)
    out = []
    for t, noise in enumerate(noise_list):
        g = jax.tree.map(lambda wi, n: n + 0.5 * wi, w, noise)

        def local_lr(wi, gi):
            return eta * _norm64(wi) / (_norm64(gi) + beta * _norm64(wi))

        v = jax.tree.map(
            lambda vi, wi, gi: m * vi + lr_at(t) * local_lr(wi, gi) * (gi + beta * wi), v, w, g
        )
        w = jax.tree.map(lambda wi, vi: wi - vi, w, v)
        out.append(w)
    return out


def _paper_lamb(params, noise_list, lr_at, b1, b2, eps, lam):
    """You et al. (2020), Algorithm 2 with phi the identity, per layer i:
    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  m^ = m/(1-b1^t);  v^ = v/(1-b2^t);
    r = m^/(sqrt(v^) + eps);  x <- x - eta_t ||x|| / ||r + lam x|| (r + lam x).
    """
    x = jax.tree.map(lambda a: np.array(a, np.float64), params)
    m = jax.tree.map(np.zeros_like, x)
    v = jax.tree.map(np.zeros_like, x)
    out = []
    for t, noise in enumerate(noise_list, start=1):
        g = jax.tree.map(lambda xi, n: n + 0.5 * xi, x, noise)
        m = jax.tree.map(lambda mi, gi: b1 * mi + (1 - b1) * gi, m, g)
        v = jax.tree.map(lambda vi, gi: b2 * vi + (1 - b2) * gi * gi, v, g)

        def step(xi, mi, vi):
            r = (mi / (1 - b1**t)) / (np.sqrt(vi / (1 - b2**t)) + eps)
            d = r + lam * xi
            return xi - lr_at(t - 1) * _norm64(xi) / _norm64(d) * d

        x = jax.tree.map(step, x, m, v)
        out.append(x)
    return out


def _polynomial_decay(gamma0):
    """The paper's gamma_t = gamma0 (1 - t/T)^2, in float64 (optax's schedules are float32)."""
    return lambda t: gamma0 * (1.0 - jnp.asarray(t, jnp.float64) / STEPS) ** 2


@pytest.mark.usefixtures("x64")
def test_lars_is_the_papers_algorithm():
    """Without weight decay our ratio and the paper's are the same, with the paper's
    polynomial decay of the global rate as the schedule."""
    params, noise = mixed_tree(0, np.float64), noises(STEPS, dtype=np.float64)
    gamma = _polynomial_decay(2.0)
    want = _paper_lars(params, noise, gamma, eta=0.01, beta=0.0, m=0.9)
    got = trajectory(gdjax.lars(gamma, trust_coefficient=0.01, momentum=0.9), params, noise)
    assert max_rel_diff(want[-1], params) > 1e-2
    assert max_rel_diff(got, want) < 1e-12


@pytest.mark.usefixtures("x64")
def test_lars_with_weight_decay_differs_from_the_paper_only_in_the_ratios_denominator():
    """The paper divides by ||g|| + beta ||w||, optax (and we) by ||g + beta w||: never larger,
    so our ratio is never smaller; with beta = 5e-4 the trajectories stay within 1e-3."""
    params, noise = mixed_tree(0, np.float64), noises(STEPS, dtype=np.float64)
    gamma = _polynomial_decay(2.0)
    paper = _paper_lars(params, noise, gamma, eta=0.01, beta=5e-4, m=0.9)
    ours = trajectory(gdjax.lars(gamma, 5e-4, trust_coefficient=0.01), params, noise)
    assert 0 < max_rel_diff(ours, paper) < 1e-3


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "schedule"])
def test_lamb_is_the_papers_algorithm(schedule):
    params, noise = mixed_tree(0, np.float64), noises(STEPS, dtype=np.float64)
    lr = SCHEDULE if schedule else 0.01
    lr_at = SCHEDULE if schedule else (lambda t: 0.01)
    want = _paper_lamb(params, noise, lr_at, b1=0.9, b2=0.999, eps=1e-6, lam=0.01)
    got = trajectory(gdjax.lamb(lr, weight_decay=0.01), params, noise)
    assert max_rel_diff(want[-1], params) > 1e-2
    assert max_rel_diff(got, want) < 1e-12


def test_trust_ratio_safeguards_match_optax_on_zero_norms():
    """A zero layer (fresh biases) or a zero gradient keeps the step as given (ratio 1)."""
    params = {"zero_w": jnp.zeros(3), "w": jnp.array([3.0, 4.0]), "w2": jnp.array([1.0, 0.0])}
    grads = {"zero_w": jnp.array([1.0, 2.0, 2.0]), "w": jnp.array([0.0, 0.5]), "w2": jnp.zeros(2)}
    ours = gdjax.optim.scale_by_trust_ratio(trust_coefficient=0.1)
    theirs = optax.scale_by_trust_ratio(trust_coefficient=0.1)
    got, _ = ours.update(grads, ours.init(params), params)
    want, _ = theirs.update(grads, theirs.init(params), params)
    np.testing.assert_allclose(got["zero_w"], grads["zero_w"])  # ratio 1
    np.testing.assert_allclose(got["w"], [0.0, 0.1 * 5.0 / 0.5 * 0.5])  # c ||w|| / ||g|| g
    np.testing.assert_array_equal(got["w2"], 0.0)
    jax.tree.map(np.testing.assert_allclose, got, want)
    # and the gradient of the update through a zero norm is finite (meta-learning)
    jac = jax.grad(lambda p: jnp.sum(ours.update(grads, ours.init(p), p)[0]["zero_w"]))(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(jac))
