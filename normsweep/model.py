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


def init_std(init: str, fan_in: int, width: int) -> float:
    """Standard deviation of every entry of a layer with `fan_in` inputs."""
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    if init == "width":
        return math.sqrt(2.0 / width)
    raise ValueError(f"init = {init!r}: must be 'he' or 'width'")


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
            std = init_std(self.init_scheme, self.dims[l], width)
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
