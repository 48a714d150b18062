"""The network: `depth` bias-free dense layers with ReLU between them.

Convention (the contract's): h_{l+1} = relu(h_l @ W_l), W_l of shape
(fan_in, fan_out); layer 0 maps d → width, layers 1..depth-2 map width →
width, layer depth-1 maps width → k and gives the logits. The output map
(softmax or identity) belongs to the loss, see `train.py`.

Init (untruncated normals; Flax's `he_normal` is truncated and not used):
  "he":    W_l[i, j] ~ N(0, 2 / fan_in_l)
  "width": W_l[i, j] ~ N(0, 2 / width) for every layer, as the seed question states it.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def layer_name(l: int) -> str:
    return f"layer_{l:03d}"


def init_std(init: str, fan_in: int, width: int, fan_out: int | None = None) -> float:
    """Standard deviation of every entry of a layer with `fan_in` inputs.

    "mup" is the maximal-update init for SGD (Yang, Simon & Bernstein 2023,
    with the ReLU gain √2): √(2/fan_in)·min(1, √(fan_out/fan_in)).
    """
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    if init == "width":
        return math.sqrt(2.0 / width)
    if init == "mup":
        return math.sqrt(2.0 / fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
    if init == "unit":
        return 1.0
    raise ValueError(f"init = {init!r}: must be 'he', 'width', 'mup' or 'unit'")


def init_stds(parametrization: str, init: str, dims) -> tuple[float, ...]:
    """Per-layer init std of the effective weights W_l: μP sets its own, the
    other parametrizations use `init`."""
    scheme = "mup" if parametrization == "mup" else init
    return tuple(init_std(scheme, fan_in, dims[1], fan_out)
                 for fan_in, fan_out in zip(dims[:-1], dims[1:]))


def lr_multipliers(parametrization: str, init: str, dims) -> tuple[float, ...]:
    """Per-layer factors c_l of the learning rate: W_l ← W_l − η·c_l·∂L/∂W_l.

    standard: c_l = 1.
    ntk:      W_l = s_l·ω_l with ω_l ~ N(0, 1) and GD on ω at rate η, which in
              W's coordinates is c_l = s_l² (s_l the init std of the layer).
    mup:      c_l = fan_out/fan_in (maximal update for SGD; the init is "mup").
    """
    width = dims[1]
    out = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        if parametrization == "standard":
            out.append(1.0)
        elif parametrization == "ntk":
            out.append(init_std(init, fan_in, width) ** 2)
        elif parametrization == "mup":
            out.append(fan_out / fan_in)
        else:
            raise ValueError(f"parametrization = {parametrization!r}")
    return tuple(out)


class MLP(nn.Module):
    """Bias-free ReLU network with layer sizes `dims` = (d, m, ..., m, k)."""
    dims: Sequence[int]
    init_scheme: str = "he"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = self.dims[1]
        depth = len(self.dims) - 1
        for l in range(depth):
            std = init_std(self.init_scheme, self.dims[l], width, self.dims[l + 1])
            x = nn.Dense(self.dims[l + 1], use_bias=False, name=layer_name(l),
                         kernel_init=jax.nn.initializers.normal(std),
                         dtype=self.dtype, param_dtype=self.dtype)(x)
            if l < depth - 1:
                x = nn.relu(x)
        return x


def kernels(params) -> tuple[jax.Array, ...]:
    """The weight matrices (W_0, ..., W_{L-1}) of a parameter tree, in layer order."""
    layers = params["params"]
    return tuple(layers[layer_name(l)]["kernel"] for l in range(len(layers)))


def with_kernels(params, ws: Sequence[jax.Array]):
    """The parameter tree of `params` with its kernels replaced by `ws`."""
    return {"params": {layer_name(l): {"kernel": w} for l, w in enumerate(ws)}}
