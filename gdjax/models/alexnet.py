r"""AlexNet in Flax: the 2012 paper's network, torchvision's layout, and a small variant.

All variants take NHWC images (floating point in any precision, integer pixels are refused;
normalisation is the data pipeline's job) and return logits of shape ``(N, num_classes)``.
Dropout follows the ``train`` flag and draws from the caller's ``'dropout'`` RNG stream::

    model = AlexNet(num_classes=1000, variant="paper")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 227, 227, 3)))
    logits = model.apply(variables, images, train=True, rngs={"dropout": key})

Variants (``variant=``):

``"paper"``
    Krizhevsky, Sutskever & Hinton (2012): conv 96@11×11/4 → LRN → max-pool 3/2 → conv 256@5×5
    → LRN → pool → conv 384@3×3 → conv 384@3×3 → conv 256@3×3 → pool → fc 4096 → fc 4096 → fc,
    ReLU after every conv and hidden fc, dropout 0.5 before fc7 and fc8 (on the outputs of the
    two hidden fc layers). The two-GPU split is expressed as grouped convolutions (``groups=2``
    on conv2, conv4 and conv5, and LRN within each group); ``groups=1`` gives the one-tower
    network. Initialisation as in §5: weights N(0, 0.01²), biases 1 on conv2, conv4, conv5 and
    the hidden fc layers, 0 elsewhere.

    **Input size: 227×227.** The paper says 224, but its own numbers (55×55 maps after an
    11×11 stride-4 convolution with no padding) need 227; 224 gives 54×54 and a 5×5 map at fc6.
    We follow the arithmetic, as Caffe's reference model does: inputs of 227–230 px are
    accepted (all give the 6×6×256 map the paper's fc6 expects), anything else is an error.
    With 1000 classes and ``groups=2`` the network has 60,965,224 parameters.

``"torchvision"``
    ``torchvision.models.alexnet``: 64-192-384-256-256 channels, padded convolutions, no LRN,
    adaptive average pooling to 6×6, dropout before fc6 and fc7; 61,100,840 parameters with
    1000 classes; PyTorch's default initialisation (uniform ±1/√fan_in). Any input of at least
    63 px; 224 is the usual. Pretrained torchvision weights load with :func:`from_torchvision`.

``"small"``
    For 28–32 px images (MNIST, CIFAR): conv 32@5×5 → LRN → max-pool 3/2 → conv 64@5×5 → LRN →
    pool → conv 96@3×3 → conv 96@3×3 → conv 64@3×3 → pool → fc 256 → fc 256 → fc, with ReLU,
    overlapping pooling, dropout on the hidden fc layers, and He initialisation (so that it
    trains in seconds without the paper's careful learning-rate start), except for the last
    layer, drawn from N(0, 0.01²) so that the untrained network's loss starts near
    ln(num_classes). Inputs of at least 15 px; about 0.4 M parameters at 28×28×1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gdjax._checks import check_flag, check_one_of, is_int
from gdjax.models.conv import CONV_IMPLS, conv_bias_relu, conv_general_dilated
from gdjax.models.layers import adaptive_avg_pool, local_response_norm, max_pool, relu

__all__ = [
    "ACTIVATIONS",
    "BATCH",
    "FUSED_BY_DEFAULT",
    "MAPS",
    "NEURONS",
    "VARIANTS",
    "AlexNet",
    "grouping_problem",
    "min_input_size",
    "spatial_sizes",
    "takes_side",
]

# Logical axis names (Flax partitioning) of the activations and parameters; a mesh's rules map
# them onto its axes (gdjax.train.Parallel: batch -> "data", maps and neurons -> "model").
BATCH = "batch"  # the examples of a batch
MAPS = "maps"  # the output maps of a convolution split into towers (the paper's two GPUs)
NEURONS = "neurons"  # the units of a hidden fully connected layer

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": relu,  # jax.nn.relu's values and derivatives, a 1-bit mask kept for the backward
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
}


@dataclass(frozen=True)
class _Conv:
    features: int
    kernel: int
    stride: int
    padding: int
    grouped: bool  # split into `groups` towers when grouping is on
    lrn: bool
    pool: bool
    bias_one: bool  # the paper initialises these biases to 1


@dataclass(frozen=True)
class _Spec:
    convs: tuple[_Conv, ...]
    hidden: tuple[int, ...]
    hidden_bias_one: bool
    adaptive_pool: tuple[int, int] | None
    init: str  # "paper" | "torch" | "he"
    default_groups: int
    dropout_before_fc: bool  # torchvision: before fc6/fc7; paper: after the hidden fc layers


VARIANTS: dict[str, _Spec] = {
    "paper": _Spec(
        convs=(
            _Conv(96, 11, 4, 0, grouped=False, lrn=True, pool=True, bias_one=False),
            _Conv(256, 5, 1, 2, grouped=True, lrn=True, pool=True, bias_one=True),
            _Conv(384, 3, 1, 1, grouped=False, lrn=False, pool=False, bias_one=False),
            _Conv(384, 3, 1, 1, grouped=True, lrn=False, pool=False, bias_one=True),
            _Conv(256, 3, 1, 1, grouped=True, lrn=False, pool=True, bias_one=True),
        ),
        hidden=(4096, 4096),
        hidden_bias_one=True,
        adaptive_pool=None,
        init="paper",
        default_groups=2,
        dropout_before_fc=False,
    ),
    "torchvision": _Spec(
        convs=(
            _Conv(64, 11, 4, 2, grouped=False, lrn=False, pool=True, bias_one=False),
            _Conv(192, 5, 1, 2, grouped=False, lrn=False, pool=True, bias_one=False),
            _Conv(384, 3, 1, 1, grouped=False, lrn=False, pool=False, bias_one=False),
            _Conv(256, 3, 1, 1, grouped=False, lrn=False, pool=False, bias_one=False),
            _Conv(256, 3, 1, 1, grouped=False, lrn=False, pool=True, bias_one=False),
        ),
        hidden=(4096, 4096),
        hidden_bias_one=False,
        adaptive_pool=(6, 6),
        init="torch",
        default_groups=1,
        dropout_before_fc=True,
    ),
    "small": _Spec(
        convs=(
            _Conv(32, 5, 1, 2, grouped=False, lrn=True, pool=True, bias_one=False),
            _Conv(64, 5, 1, 2, grouped=True, lrn=True, pool=True, bias_one=False),
            _Conv(96, 3, 1, 1, grouped=False, lrn=False, pool=False, bias_one=False),
            _Conv(96, 3, 1, 1, grouped=True, lrn=False, pool=False, bias_one=False),
            _Conv(64, 3, 1, 1, grouped=True, lrn=False, pool=True, bias_one=False),
        ),
        hidden=(256, 256),
        hidden_bias_one=False,
        adaptive_pool=None,
        init="he",
        default_groups=1,
        dropout_before_fc=False,
    ),
}

# The variants whose convolutions fuse their bias and ReLU into oneDNN's call unless
# ``fused_relu`` says otherwise: the ones with LRN, where the step measured faster fused.
FUSED_BY_DEFAULT = ("paper", "small")


def _mesh_axis_size(name: str) -> int:
    """Devices the logical axis ``name`` is split over under the current logical-axis rules
    and mesh (1 outside them)."""
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return 1
    axes = nn.logical_to_mesh_axes((name,), rules)[0]
    if axes is None:
        return 1
    return int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))


def _per_device(fn: Callable, in_names: Sequence[tuple], out_names: tuple) -> Callable:
    """``fn`` on each device's part of its operands (``shard_map``) under logical-axis rules
    and a mesh, else ``fn`` itself.

    For a layer that needs nothing from the other devices once its operands are laid out as
    ``in_names`` say (a tower's convolution, max-pooling): XLA's partitioner would otherwise
    gather whole operands for a grouped convolution, and cannot split oneDNN's custom calls.
    """

    def apply(*args: Any, **kwargs: Any) -> jax.Array:
        rules = nn.get_logical_axis_rules()
        mesh = jax.sharding.get_abstract_mesh()
        if not rules or mesh.empty:
            return fn(*args, **kwargs)
        arrays, rest = args[: len(in_names)], args[len(in_names) :]

        def local(*parts: jax.Array) -> jax.Array:  # the arrays, then the other arguments
            return fn(*parts, *rest, **kwargs)

        specs = tuple(nn.logical_to_mesh_axes(n, rules) for n in in_names)
        out = nn.logical_to_mesh_axes(out_names, rules)
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=out)(*arrays)

    return apply


def _torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default Conv/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in**-0.5

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _initializers(init: str, fan_in: int, bias_one: bool) -> tuple[Callable, Callable]:
    if init == "paper":
        bias = nn.initializers.ones if bias_one else nn.initializers.zeros
        return nn.initializers.normal(stddev=0.01), bias
    if init == "torch":
        return _torch_uniform(fan_in), _torch_uniform(fan_in)
    return nn.initializers.he_normal(), nn.initializers.zeros


def _local_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    *args: Any,
    impl: str,
    groups: int,
    feature_group_count: int = 1,
    **kwargs: Any,
) -> jax.Array:
    """The convolution of one device's operands: ``groups`` towers (of the layer's
    ``feature_group_count``) are here."""
    del feature_group_count  # the layer's; this device holds ``groups`` of them
    return conv_general_dilated(lhs, rhs, *args, feature_group_count=groups, impl=impl, **kwargs)


def _local_conv_relu(
    x: jax.Array, w: jax.Array, b: jax.Array, *, strides: int, padding: int, groups: int, impl: str
) -> jax.Array:
    """``relu(conv + bias)`` of one device's operands (``groups`` towers are here)."""
    return conv_bias_relu(x, w, b, (strides, strides), [(padding, padding)] * 2, groups, impl=impl)


class _ConvReLU(nn.Module):
    """A convolution layer and its ReLU: ``flax.linen.Conv``'s parameters (``kernel`` HWIO,
    ``bias``, created in that order, so initialisation and checkpoints are the same), computed
    by ``conv`` as ``relu(conv(x, kernel) + bias)`` — one oneDNN call where it can
    (:func:`gdjax.models.conv_bias_relu`)."""

    features: int
    kernel_size: int
    feature_group_count: int
    kernel_init: Callable
    bias_init: Callable
    conv: Callable
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        shape = (k, k, x.shape[-1] // self.feature_group_count, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return self.conv(x, kernel, bias)


def _pool_shape(overlapping: bool) -> tuple[int, int]:
    """(window, stride): 3/2 is the paper's overlapping pooling (§3.4), 2/2 the classic one."""
    return (3, 2) if overlapping else (2, 2)


def spatial_sizes(variant: str, size: int, overlapping_pool: bool = True) -> list[int]:
    """The side of the feature map after each conv stage (after its pooling, if any); 0 where
    the input is too small for the stage."""
    check_one_of("spatial_sizes: variant", variant, sorted(VARIANTS))
    check_flag("spatial_sizes: overlapping_pool", overlapping_pool)  # "no" was overlapping
    window, stride = _pool_shape(overlapping_pool)
    sizes = []
    for conv in VARIANTS[variant].convs:
        size = max(0, (size + 2 * conv.padding - conv.kernel) // conv.stride + 1)
        if conv.pool:
            size = (size - window) // stride + 1 if size >= window else 0
        sizes.append(size)
    return sizes


def min_input_size(variant: str, overlapping_pool: bool = True) -> int:
    """The smallest input side the variant accepts (every feature map at least 1x1)."""
    return next(s for s in range(1, 1024) if min(spatial_sizes(variant, s, overlapping_pool)) >= 1)


def grouping_problem(variant: str, groups: int) -> str | None:
    """Why ``groups`` towers cannot split the variant's grouped convolutions (each tower takes
    an equal share of the input and output channels), or None when they can."""
    convs = VARIANTS[variant].convs
    if groups != 1 and not any(c.grouped for c in convs):
        return f"groups={groups}: the {variant!r} AlexNet has no grouped convolutions (use 1)"
    for i, conv in enumerate(convs):
        if not conv.grouped:
            continue
        for what, channels in (("input", convs[i - 1].features), ("output", conv.features)):
            if channels % groups:
                return (
                    f"groups={groups} does not divide conv{i + 1}'s {channels} {what} channels "
                    f"(the {variant!r} AlexNet's grouped convolutions take "
                    f"{_divisors(variant)})"
                )
    return None


def _divisors(variant: str) -> str:
    """The group counts that split every grouped convolution of the variant, in words."""
    convs = VARIANTS[variant].convs
    split = [
        n for i, c in enumerate(convs) if c.grouped for n in (convs[i - 1].features, c.features)
    ]
    common = math.gcd(*split)
    return "groups " + ", ".join(str(g) for g in range(1, common + 1) if common % g == 0)


def takes_side(variant: str, side: int, overlapping_pool: bool = True) -> bool:
    """Whether the variant accepts images ``side`` pixels high (or wide): the paper's layout
    needs its 6x6 last map (227 px with overlapping pooling); the others, every map >= 1x1."""
    if variant == "paper":
        return spatial_sizes("paper", side, overlapping_pool)[-1] == 6
    return side >= min_input_size(variant, overlapping_pool)


class AlexNet(nn.Module):
    """AlexNet; see the module docstring for the variants and their exact layouts.

    Attributes:
      num_classes: size of the last layer.
      variant: ``"paper"``, ``"torchvision"`` or ``"small"``.
      dropout_rate: dropout on the hidden fc layers (0.5 in the paper).
      activation: ``"relu"`` (the paper's), ``"tanh"`` or ``"sigmoid"`` — for the paper's
        ReLU-vs-tanh comparison.
      groups: towers of the grouped convolutions (``None``: the variant's default, 2 for the
        paper, 1 otherwise; 1 switches the two-GPU split off).
      lrn: apply local response normalization where the variant has it.
      overlapping_pool: 3×3 windows with stride 2 (the paper's); ``False`` gives 2×2/2.
      in_channels: channels of the input images (3 for RGB, 1 for MNIST).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``param_dtype``: storage dtype.
      impl: where the convolutions, max-pooling and LRN run. ``"auto"``: on oneDNN for float32 on
        the CPU when the kernels load (:func:`gdjax.models.conv_general_dilated`), else XLA;
        ``"xla"``: always XLA; ``"onednn"``: insist on oneDNN. Same function, same parameters.
        oneDNN's custom calls cannot be serialised: to :func:`jax.export` a model use
        :func:`gdjax.models.export` or :func:`gdjax.models.portable` (``impl="xla"``).
        oneDNN's kernels have first-order reverse-mode derivatives only (``grad``, ``vjp``);
        the XLA path (``impl="xla"``, and every non-CPU backend) supports every JAX
        transformation: ``jvp``, ``jacfwd``, ``jax.hessian``, Hessian-vector products.
      fused_relu: compute each convolution layer and its ReLU as one oneDNN call with the
        bias and ReLU as post-ops (:func:`gdjax.models.conv_bias_relu`; needs
        ``activation="relu"``). Same parameters and function. ``None`` (the default) fuses
        them in the variants with LRN, ``"paper"`` and ``"small"`` (:data:`FUSED_BY_DEFAULT`),
        when the activation is ReLU: there the bias-add and ReLU would be a pass of their own
        between oneDNN's convolution and its LRN, and fusing measured 1.04-1.21x in training
        and 1.05-1.25x in inference on a 2-core AMD Zen 5 (the README's "where the speed
        comes from"). The torchvision variant stays unfused by default: 0.93-0.94x in
        inference there. ``experiments/levers.py`` measures it on your machine.
      partitioned: create the parameters as Flax ``nn.LogicallyPartitioned`` boxes that name
        their logical axes, for a device mesh to place them (remove the boxes with
        ``flax.linen.unbox``). Where the model has towers (``groups`` > 1: the paper's
        two-GPU split), every convolution's kernel and bias are split along their output maps
        (:data:`MAPS`), as the paper split them between its GPUs; every hidden fully connected
        layer is split along its units (:data:`NEURONS`); the last layer is whole. The
        activations always carry the matching sharding constraints (:data:`BATCH`,
        :data:`MAPS`, :data:`NEURONS`): the layers that read both towers (conv3 and the fully
        connected ones, as in the paper's Figure 2) see every map, the others only their own
        tower's. The constraints do nothing unless logical-axis rules and a mesh are set
        (:class:`gdjax.train.Parallel` with ``model_parallel`` sets both).
    """

    num_classes: int = 1000
    variant: str = "paper"
    dropout_rate: float = 0.5
    activation: str = "relu"
    groups: int | None = None
    lrn: bool = True
    overlapping_pool: bool = True
    in_channels: int = 3
    dtype: Any = None
    param_dtype: Any = jnp.float32
    impl: str = "auto"
    fused_relu: bool | None = None
    partitioned: bool = False

    def _check(self, x: jax.Array) -> None:
        check_one_of("AlexNet: impl", self.impl, CONV_IMPLS)
        check_one_of("AlexNet: variant", self.variant, sorted(VARIANTS))
        check_one_of("AlexNet: activation", self.activation, sorted(ACTIVATIONS))
        if self.fused_relu not in (None, True, False):
            raise ValueError(
                f"AlexNet: fused_relu must be None, True or False, got {self.fused_relu!r}"
            )
        if self.fused_relu and self.activation != "relu":
            raise ValueError(
                f"AlexNet: fused_relu=True needs activation='relu', got {self.activation!r}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"AlexNet: dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        for name in ("num_classes", "in_channels"):
            value = getattr(self, name)
            if not is_int(value):
                raise TypeError(f"AlexNet: {name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"AlexNet: {name} must be >= 1, got {value!r}")
        if self.groups is not None and (not is_int(self.groups) or self.groups < 1):
            raise ValueError(
                f"AlexNet: groups must be None (the variant's own) or an int >= 1, "
                f"got {self.groups!r}"
            )
        for name in ("lrn", "overlapping_pool", "partitioned"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"AlexNet: {name} must be a bool, got {getattr(self, name)!r}")
        problem = grouping_problem(self.variant, self._groups())
        if problem:
            raise ValueError(f"AlexNet: {problem}")
        expected = self._expected_shape()
        if x.ndim != 4:
            raise ValueError(
                f"AlexNet({self.variant!r}): expected a batch of NHWC images of shape {expected}, "
                f"got an array of shape {x.shape} (rank {x.ndim})"
            )
        if x.shape[-1] != self.in_channels:
            hint = "set in_channels= for other inputs"
            if x.shape[1] == self.in_channels:  # PyTorch's layout
                hint = "this looks channels-first (NCHW): pass x.transpose(0, 2, 3, 1)"
            raise ValueError(
                f"AlexNet({self.variant!r}): expected {self.in_channels} channels (shape "
                f"{expected}), got shape {x.shape}; {hint}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            # flax's Conv promoted uint8 pixels silently: a forward pass on 0..255 values
            raise TypeError(
                f"AlexNet({self.variant!r}): expected floating-point images, normalised as the "
                f"training data was, got dtype {x.dtype}; for raw pixels pass "
                f"(x.astype(jnp.float32) / 255 - mean) / std"
            )
        h, w = x.shape[1], x.shape[2]
        if not all(takes_side(self.variant, s, self.overlapping_pool) for s in (h, w)):
            raise ValueError(
                f"AlexNet({self.variant!r}): expected images of shape {expected}, got spatial "
                f"size {h}x{w}"
            )

    def _check_fc6(self, shape: tuple[int, ...], h_w: tuple[int, int]) -> None:
        """Parameters made for one image size, applied to another (the small variant takes
        any size, so its fc6 width follows the images): say so instead of flax's shape error."""
        fc6 = self.variables.get("params", {}).get("fc6")
        if fc6 is None:
            return
        made_for = jnp.shape(nn.unbox(fc6["kernel"]))[0]
        given = math.prod(shape[1:])
        if made_for == given:
            return
        sides = [
            s
            for s in range(1, 1024)
            if spatial_sizes(self.variant, s, self.overlapping_pool)[-1] ** 2 * shape[-1]
            == made_for
        ]
        if not sides:
            size = f"images giving {made_for} features"
        elif sides[0] == sides[-1]:
            size = f"{sides[0]}x{sides[0]} images"
        else:  # several sides give the same last map
            size = f"images of {sides[0]} to {sides[-1]} px a side"
        raise ValueError(
            f"AlexNet({self.variant!r}): these parameters were made for {size} (fc6 takes "
            f"{made_for} inputs), got {h_w[0]}x{h_w[1]} images ({given}); give images of the "
            "size the parameters were initialised with"
        )

    def _groups(self) -> int:
        return VARIANTS[self.variant].default_groups if self.groups is None else self.groups

    def _fused(self) -> bool:
        """Whether each convolution's bias and ReLU are oneDNN post-ops (``fused_relu``)."""
        if self.fused_relu is None:
            return self.activation == "relu" and self.variant in FUSED_BY_DEFAULT
        return bool(self.fused_relu)

    def _expected_shape(self) -> str:
        if self.variant == "paper":
            return f"(N, 227, 227, {self.in_channels})"
        m = min_input_size(self.variant, self.overlapping_pool)
        return f"(N, H, W, {self.in_channels}) with H, W >= {m}"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_flag(f"AlexNet({self.variant!r}): train", train)  # train="no" ran dropout
        x = jnp.asarray(x)  # a nested list or a numpy array is an array too
        self._check(x)
        spec = VARIANTS[self.variant]
        act = ACTIVATIONS[self.activation]
        groups = self._groups()
        window, stride = _pool_shape(self.overlapping_pool)
        dtype = self.dtype
        if dtype is None:
            dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        x = x.astype(dtype)
        x_hw = (x.shape[1], x.shape[2])
        in_features = x.shape[-1]
        # Towers (groups > 1) are split between the devices of the "maps" mesh axis when its
        # size divides them; otherwise every device holds whole layers (the fc layers are
        # split all the same).
        split = _mesh_axis_size(MAPS)
        maps = MAPS if groups > 1 and groups % split == 0 else None
        towers_here = groups // split if maps else groups

        def named(init: Callable, *names: str | None) -> Callable:
            return nn.with_logical_partitioning(init, names) if self.partitioned else init

        def place(y: jax.Array, *names: str | None) -> jax.Array:
            return nn.with_logical_constraint(y, names)

        for i, conv in enumerate(spec.convs, start=1):
            g = groups if conv.grouped else 1
            if g == 1:  # an ungrouped layer reads the maps of every tower
                x = place(x, BATCH, None, None, None)
            x_maps = maps if g > 1 else None
            # Each device convolves its own examples with its own tower(s): the kernel's
            # output maps are split like the layer's output, its input maps like the input.
            operands = [(BATCH, None, None, x_maps), (None, None, None, maps)]
            fan_in = conv.kernel * conv.kernel * in_features // g
            kernel_init, bias_init = _initializers(spec.init, fan_in, conv.bias_one)
            if self._fused():  # the bias and ReLU as post-ops of the convolution
                fused = _per_device(
                    functools.partial(
                        _local_conv_relu,
                        strides=conv.stride,
                        padding=conv.padding,
                        groups=towers_here if g > 1 else 1,
                        impl=self.impl,
                    ),
                    [*operands, (maps,)],
                    (BATCH, None, None, maps),
                )
                x = _ConvReLU(
                    conv.features,
                    conv.kernel,
                    g,
                    kernel_init=named(kernel_init, None, None, None, maps),
                    bias_init=named(bias_init, maps),
                    conv=fused,
                    dtype=dtype,
                    param_dtype=self.param_dtype,
                    name=f"conv{i}",
                )(x)
                x = place(x, BATCH, None, None, maps)
            else:
                conv_fn = _per_device(
                    functools.partial(
                        _local_conv, impl=self.impl, groups=towers_here if g > 1 else 1
                    ),
                    operands,
                    (BATCH, None, None, maps),
                )
                x = nn.Conv(
                    conv.features,
                    (conv.kernel, conv.kernel),
                    strides=(conv.stride, conv.stride),
                    padding=[(conv.padding, conv.padding)] * 2,
                    feature_group_count=g,
                    kernel_init=named(kernel_init, None, None, None, maps),
                    bias_init=named(bias_init, maps),
                    dtype=dtype,
                    param_dtype=self.param_dtype,
                    conv_general_dilated=conv_fn,
                    name=f"conv{i}",
                )(x)
                x = act(place(x, BATCH, None, None, maps))
            if conv.lrn and self.lrn:
                # Each GPU of the paper normalised its own maps: LRN within the towers of
                # the layer the maps feed (conv1's maps are split between the GPUs too);
                # each device normalises its own towers.
                lrn = functools.partial(local_response_norm, groups=towers_here, impl=self.impl)
                x = _per_device(lrn, [(BATCH, None, None, maps)], (BATCH, None, None, maps))(x)
            if conv.pool:
                pool = functools.partial(max_pool, window=window, stride=stride, impl=self.impl)
                x = _per_device(pool, [(BATCH, None, None, maps)], (BATCH, None, None, maps))(x)
            in_features = conv.features
        if spec.adaptive_pool is not None:
            x = adaptive_avg_pool(x, spec.adaptive_pool)
        x = place(x, BATCH, None, None, None)  # the fully connected layers read every map
        self._check_fc6(x.shape, h_w=x_hw)
        x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: a batch may be empty
        for j, width in enumerate(spec.hidden, start=6):
            if spec.dropout_before_fc:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = place(x, BATCH, None)  # ... and every unit of the layer before
            kernel_init, bias_init = _initializers(spec.init, x.shape[-1], spec.hidden_bias_one)
            x = nn.Dense(
                width,
                kernel_init=named(kernel_init, None, NEURONS),
                bias_init=named(bias_init, NEURONS),
                dtype=dtype,
                param_dtype=self.param_dtype,
                name=f"fc{j}",
            )(x)
            x = place(x, BATCH, NEURONS)
            x = act(x)
            if not spec.dropout_before_fc:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = place(x, BATCH, None)
        kernel_init, bias_init = _initializers(spec.init, x.shape[-1], False)
        if spec.init == "he":  # a small classifier: the untrained net starts near ln(classes)
            kernel_init = nn.initializers.normal(stddev=0.01)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=named(kernel_init, None, None),
            bias_init=named(bias_init, None),
            dtype=dtype,
            param_dtype=self.param_dtype,
            name=f"fc{6 + len(spec.hidden)}",
        )(x)
        return place(logits, BATCH, None)
