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

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from normsweep.parametrization import init_std, init_stds, lr_multipliers  # noqa: F401


def layer_name(l: int) -> str:
    return f"layer_{l:03d}"


def slots(depth: int, deepest: int) -> list[int]:
    """Where the layers of a network of `depth` sit in a program of
    `deepest` layers (`MLP.shallowest`): its first depth − 1 layers in the
    first slots, its readout in the last; the hidden slots between are
    skipped."""
    return list(range(depth - 1)) + [deepest - 1]


def present(slot: int, depth, deepest: int):
    """Whether a network of (traced) `depth` has a layer in `slot` of a
    program of `deepest` layers (`slots`)."""
    return (slot < depth - 1) | (slot == deepest - 1)


def skippable(dot_general, active, relu: bool, reverse: bool):
    """A `dot_general` for a square layer that a network may lack: its
    product (then ReLU, with `relu`) where `active` (traced, unbatched),
    else its input unchanged, in a conditional. After a ReLU, and followed
    by one (`relu`, or after the layer), the skipped layer is the identity,
    as if it were not there, and costs no matmul. With `reverse`, its
    gradient is written out (`_relu_layer`): only reverse mode then."""
    def dot(x, w, *args, **kwargs):
        product = functools.partial(dot_general, dimension_numbers=args[0] if args else
                                    kwargs.pop("dimension_numbers"), **kwargs)
        if reverse and relu:
            return _relu_layer(product, active, x, w)
        return jax.lax.cond(active, lambda x, w: jax.nn.relu(product(x, w)) if relu
                            else product(x, w), lambda x, w: x, x, w)
    return dot


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _relu_layer(product, active, x, w):
    return jax.lax.cond(active, lambda x, w: jax.nn.relu(product(x, w)), lambda x, w: x, x, w)


def _relu_layer_fwd(product, active, x, w):
    # the residuals are the inputs and the output: JAX's own rule for a
    # conditional makes both branches output the product's intermediates,
    # zero-filled in the skipping one (passes over h and W every step)
    y = _relu_layer(product, active, x, w)
    return y, (active, x, w, y)


def _relu_layer_bwd(product, res, dy):
    active, x, w, y = res

    def on(x, w, y, dy):
        da = jnp.where(y > 0, dy, 0)
        _, pull = jax.vjp(product, x, w)
        return pull(da)

    dx, dw = jax.lax.cond(active, on, lambda x, w, y, dy: (dy, jnp.zeros_like(w)), x, w, y, dy)
    return None, dx, dw


_relu_layer.defvjp(_relu_layer_fwd, _relu_layer_bwd)


class MLP(nn.Module):
    """Bias-free ReLU network with layer sizes `dims` = (d, m, ..., m, k):
    the one forward pass of training, the Jacobian and the NTK. Applied with
    a "perturbations" collection, ∂/∂ of a layer's preactivation
    ("preactivation_l") is the gradient at it; with "intermediates" mutable,
    each layer's input is sown as "input_l" (the NTK needs both).

    With `shallowest` below the depth, one program serves every network of
    depth `shallowest` to len(dims) − 1, the network's depth an input
    (traced): hidden layers from `shallowest` − 1 on are skipped in a
    network that lacks them (`slots`), each in a conditional."""
    dims: Sequence[int]
    init_scheme: str = "he"
    dtype: jnp.dtype = jnp.float32
    kernel_init: Callable | None = None     # replaces the normals of `init_scheme`
    shallowest: int | None = None
    reverse_only: bool = False          # skipped layers differentiate in reverse mode only

    @nn.compact
    def __call__(self, x: jax.Array, depth: jax.Array | None = None) -> jax.Array:
        width = self.dims[1]
        deepest = len(self.dims) - 1
        for l in range(deepest):
            std = init_std(self.init_scheme, self.dims[l], width, self.dims[l + 1])
            self.sow("intermediates", f"input_{l}", x)
            dot, relu = jax.lax.dot_general, l < deepest - 1
            if depth is not None and self.shallowest is not None \
                    and self.shallowest - 1 <= l < deepest - 1:
                # the ReLU inside the conditional, where no perturbation is
                # added between: a skipped layer then makes no pass over h
                perturbed = self.has_variable("perturbations", f"preactivation_{l}")
                dot = skippable(dot, present(l, depth, deepest), not perturbed,
                                self.reverse_only)
                relu = perturbed
            x = nn.Dense(self.dims[l + 1], use_bias=False, name=layer_name(l),
                         kernel_init=self.kernel_init or jax.nn.initializers.normal(std),
                         dtype=self.dtype, param_dtype=self.dtype, dot_general=dot)(x)
            x = self.perturb(f"preactivation_{l}", x)
            if relu:
                x = nn.relu(x)
        return x


def kernels(params) -> tuple[jax.Array, ...]:
    """The weight matrices (W_0, ..., W_{L-1}) of a parameter tree, in layer order."""
    layers = params["params"]
    return tuple(layers[layer_name(l)]["kernel"] for l in range(len(layers)))


def with_kernels(params, ws: Sequence[jax.Array]):
    """The parameter tree of `params` with its kernels replaced by `ws`."""
    return {"params": {layer_name(l): {"kernel": w} for l, w in enumerate(ws)}}


def unit_kernels(model: MLP, key: jax.Array, x: jax.Array, depth=None
                 ) -> tuple[jax.Array, ...]:
    """The kernels `model.init(key, x)` draws with `init_scheme="unit"`, from
    the same random bits, in fewer random-number computations (`normals`):
    Flax derives each layer's key and draws it alone, and each draw is a
    threefry hash that XLA compiles on its own (BENCHMARKS.md). With
    `depth` (traced; `MLP.shallowest`), the readout slot draws from the key
    of the network's own readout, layer depth − 1, as that network's
    `init` would."""
    keys = []

    def capture(k, shape, dtype):
        keys.append(k)
        return jnp.zeros(shape, dtype)

    shapes = [w.shape for w in kernels(model.clone(kernel_init=capture).init(key, x))]
    if depth is not None:
        keys[-1] = jnp.stack(keys)[depth - 1]
    return tuple(normals(keys, shapes, model.dtype))


def normals(keys: Sequence[jax.Array], shapes: Sequence[tuple[int, ...]], dtype) -> list[jax.Array]:
    """[jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes)], from the
    same random bits, by one batched draw per group of similar sizes.

    With JAX's partitionable threefry (its default) the i-th random word of
    a draw depends on the key and i only, so a draw is the first entries of
    a longer draw with the same key: draws are padded to their group's
    largest and batched over keys. Groups keep the padding at most the
    numbers drawn (a depth-3 network: its two hidden layers, then the input
    and readout layers). The normals are the same to an ulp or two: how XLA
    rounds the inverse-erf transform of the bits depends on the program
    around it, as it does from one program to another. Other generators are
    drawn one by one."""
    sizes = [math.prod(s) for s in shapes]
    if not keys or not prefix_draws(keys[0]):
        return [jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes)]
    out: list = [None] * len(keys)
    todo = sorted(range(len(keys)), key=lambda i: -sizes[i])
    while todo:
        group = todo
        # padding the whole group to its largest draw would more than double
        # the numbers drawn: the draws of the largest size go alone
        while sizes[group[0]] * len(group) > 2 * sum(sizes[i] for i in group):
            group = [i for i in group if sizes[i] == sizes[group[0]]]
        size = sizes[group[0]]
        flat = jax.vmap(lambda k, size=size: jax.random.normal(k, (size,), dtype))(
            jnp.stack([keys[i] for i in group]))
        for row, i in enumerate(group):
            out[i] = flat[row, :sizes[i]].reshape(shapes[i])
        todo = [i for i in todo if i not in group]
    return out


def prefix_draws(key: jax.Array) -> bool:
    """Whether a draw from `key` is the first entries of a longer draw from
    it: JAX's partitionable threefry (its default), whose i-th random word
    depends on the key and i only."""
    return str(jax.random.key_impl(key)) == "threefry2x32" and jax.config.jax_threefry_partitionable


def unit_vectors(keys: jax.Array, sizes: Sequence[int], dtype) -> list[jax.Array]:
    """[g / ‖g‖ for g = jax.random.normal(keys[i], (sizes[i],))], drawn in
    one batch and normalised in one operation: the vectors of `normals`
    and a norm per vector, to an ulp (how XLA rounds depends on the program
    around it), in less compile time (BENCHMARKS.md)."""
    size = max(sizes)
    if prefix_draws(keys[0]):
        flat = jax.vmap(lambda k: jax.random.normal(k, (size,), dtype))(keys)
        flat = jnp.where(np.arange(size)[None, :] < np.asarray(sizes)[:, None], flat, 0)
    else:
        flat = jnp.stack([jnp.pad(jax.random.normal(k, (n,), dtype), (0, size - n))
                          for k, n in zip(keys, sizes)])
    flat = flat / jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
    return [flat[i, :n] for i, n in enumerate(sizes)]
