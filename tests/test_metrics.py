"""Norms: power iteration and the small-Gram method against numpy's SVD."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normsweep import metrics


def gaussian(p, q, seed=0):
    return np.random.default_rng(seed).normal(0, np.sqrt(2 / p), (p, q)).astype(np.float32)


@pytest.mark.parametrize("shape", [(16, 1024), (1024, 10), (64, 64), (16, 16), (3, 40)])
def test_small_side_is_exact(shape):
    w = gaussian(*shape)
    got = float(jax.jit(metrics.spectral_exact)(w))
    assert got == pytest.approx(np.linalg.norm(w, 2), rel=1e-5)


def test_small_side_with_a_tie_at_the_top():
    w = np.diag(np.array([3.0, 3.0, 1.0, 0.5], np.float32))
    assert float(metrics.spectral_exact(w)) == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("m", [128, 1024])
def test_cold_power_iteration_matches_svd(m):
    w = gaussian(m, m, seed=m)
    v = metrics.unit_vector(jax.random.key(0), m, jnp.float32)
    est, _ = jax.jit(metrics.power_iteration, static_argnums=2)(w, v, 100)
    assert float(est) == pytest.approx(np.linalg.norm(w, 2), rel=1e-3)
    assert float(est) <= np.linalg.norm(w, 2) * (1 + 1e-5)   # a lower bound


def test_warm_start_needs_few_iterations():
    m = 256
    w = gaussian(m, m, seed=1)
    v = metrics.unit_vector(jax.random.key(0), m, jnp.float32)
    _, v = metrics.power_iteration(w, v, 200)
    w2 = w + 1e-3 * gaussian(m, m, seed=2)
    est, _ = metrics.power_iteration(w2, v, 3)
    assert float(est) == pytest.approx(np.linalg.norm(w2, 2), rel=1e-4)


def test_zero_matrix_has_norm_zero_and_keeps_its_vector():
    v = metrics.unit_vector(jax.random.key(1), 100, jnp.float32)
    est, v2 = metrics.power_iteration(jnp.zeros((100, 100)), v, 5)
    assert float(est) == 0.0 and np.array_equal(v, v2)
    assert float(metrics.spectral_exact(jnp.zeros((8, 100)))) == 0.0


def test_frobenius():
    w = gaussian(30, 7)
    assert float(metrics.frobenius(w)) == pytest.approx(np.linalg.norm(w), rel=1e-6)


def test_nan_matrix_gives_nan_and_returns():
    w = jnp.full((8, 100), jnp.nan)
    assert np.isnan(float(metrics.spectral_exact(w)))
