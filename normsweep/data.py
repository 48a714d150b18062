"""The training set, and every PRNG key, derived from integers in the grid
file only:

  data key      = fold_in(key(data.seed), DATA)
  init key      = fold_in(key(seed), INIT)    (the same at every lr and chunking)
  power key     = fold_in(key(seed), POWER)   (start vectors of the spectral norms)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DATA, INIT, POWER = 0, 1, 2


def data_key(seed: int) -> jax.Array:
    """The key of the training set drawn from `data.seed`."""
    return jax.random.fold_in(jax.random.key(seed), DATA)


def member_keys(seeds: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """(init keys, spectral-norm start-vector keys), one per member seed."""
    base = jax.vmap(jax.random.key)(np.asarray(seeds, np.uint32))
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    return fold(base, INIT), fold(base, POWER)


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
