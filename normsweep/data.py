"""The training set of the reference setting."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sphere_data(key: jax.Array, n: int, d: int, k: int, dtype) -> tuple[jax.Array, jax.Array]:
    """`n` points uniform on the unit sphere S^{d-1} ⊂ R^d and random one-hot targets.

    A standard normal vector divided by its norm is uniform on the sphere.
    Returns (inputs of shape (n, d), targets of shape (n, k)), both `dtype`.
    """
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, d), jnp.float64 if dtype == jnp.float64 else jnp.float32)
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    labels = jax.random.randint(ky, (n,), 0, k)
    return x.astype(dtype), jax.nn.one_hot(labels, k, dtype=dtype)
