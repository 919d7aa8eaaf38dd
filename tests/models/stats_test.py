"""Parameter and multiply-add counts against hand arithmetic."""

import jax
import jax.numpy as jnp
import pytest

from gdjax.models import AlexNet, count_flops, count_params
from gdjax.models.stats import count_macs


def conv_macs(out_hw, out_c, k, in_c, groups=1):
    return out_hw * out_hw * out_c * k * k * in_c // groups


def test_torchvision_macs_by_hand():
    by_hand = (
        conv_macs(55, 64, 11, 3)
        + conv_macs(27, 192, 5, 64)
        + conv_macs(13, 384, 3, 192)
        + conv_macs(13, 256, 3, 384)
        + conv_macs(13, 256, 3, 256)
        + 9216 * 4096
        + 4096 * 4096
        + 4096 * 1000
    )
    assert by_hand == pytest.approx(714e6, rel=1e-3)  # "about 714 M"
    assert count_macs(AlexNet(variant="torchvision"), (1, 224, 224, 3)) == by_hand


def test_paper_macs_by_hand():
    by_hand = (
        conv_macs(55, 96, 11, 3)
        + conv_macs(27, 256, 5, 96, groups=2)
        + conv_macs(13, 384, 3, 256)
        + conv_macs(13, 384, 3, 384, groups=2)
        + conv_macs(13, 256, 3, 384, groups=2)
        + 9216 * 4096
        + 4096 * 4096
        + 4096 * 1000
    )
    assert by_hand == pytest.approx(724e6, rel=1e-3)  # "about 724 M"
    assert count_macs(AlexNet(variant="paper"), (1, 227, 227, 3)) == by_hand
    assert count_flops(AlexNet(variant="paper"), (4, 227, 227, 3)) == 2 * 4 * by_hand


def test_plain_functions_and_nested_calls():
    a, b = jnp.ones((3, 5)), jnp.ones((5, 7))
    assert count_macs(jnp.dot, a, b) == 3 * 5 * 7
    nested = jax.jit(lambda x, y: jnp.dot(x, y) @ jnp.ones((7, 2)))
    assert count_macs(nested, a, b) == 3 * 5 * 7 + 3 * 7 * 2

    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ jnp.ones((5, 5)), None), x, None, length=4)[0]

    assert count_macs(scanned, jnp.ones((2, 5))) == 4 * 2 * 5 * 5


def test_count_params_of_any_pytree():
    assert count_params({"a": jnp.ones((2, 3)), "b": [jnp.ones(4), jnp.ones(())]}) == 11
