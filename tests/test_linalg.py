"""Norms: Lanczos and the small-Gram method against numpy's SVD."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normsweep import config, linalg, step


def gaussian(p, q, seed=0):
    return np.random.default_rng(seed).normal(0, np.sqrt(2 / p), (p, q)).astype(np.float32)


def unit_vector(key: jax.Array, size: int, dtype) -> jax.Array:
    """A start vector: a normal draw, normalised."""
    v = jax.random.normal(key, (size,), dtype)
    return v / jnp.linalg.norm(v)


@pytest.mark.parametrize("shape", [(16, 1024), (1024, 10), (64, 64), (16, 16), (3, 40)])
def test_small_side_is_exact(shape):
    w = gaussian(*shape)
    got = float(jax.jit(linalg.spectral_exact)(w))
    assert got == pytest.approx(np.linalg.norm(w, 2), rel=1e-5)


def test_small_side_with_a_tie_at_the_top():
    w = np.diag(np.array([3.0, 3.0, 1.0, 0.5], np.float32))
    assert float(linalg.spectral_exact(w)) == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("squarings", [23, 24])
def test_rescaling_once_per_two_squarings_changes_no_bit(squarings):
    """A power-of-two rescale is exact: the top eigenpair equals, to the bit
    (v up to a power of two), that of the matrix rescaled after every squaring."""
    a = gaussian(12, 12, seed=squarings)
    gram = a @ a.T

    @jax.jit
    def every_squaring(g):
        a = linalg._rescale(g)
        for _ in range(squarings):
            a = linalg._rescale(linalg.matmul(a, a))
        v = a[:, jnp.argmax(jnp.sum(jnp.square(a), axis=0))]
        return linalg.inner(v, linalg.matmul(g, v)) / linalg.sum_squares(v), v

    lam, v = jax.jit(linalg.top_eigenpair_psd, static_argnums=(1, 2))(gram, squarings, True)
    want_lam, want_v = every_squaring(gram)
    assert float(lam) == float(want_lam)
    assert float(lam) == pytest.approx(np.linalg.eigvalsh(gram.astype(np.float64))[-1], rel=1e-5)
    ratio = np.asarray(v) / np.asarray(want_v)
    assert np.all(ratio == ratio[0]) and np.log2(ratio[0]) == np.round(np.log2(ratio[0]))


@pytest.mark.parametrize("m", [128, 1024])
def test_cold_lanczos_matches_svd(m):
    w = gaussian(m, m, seed=m)
    v = unit_vector(jax.random.key(0), m, jnp.float32)
    est, _ = jax.jit(linalg.lanczos, static_argnums=2)(w, v, 50)
    assert float(est) == pytest.approx(np.linalg.norm(w, 2), rel=1e-5)
    assert float(est) <= np.linalg.norm(w, 2) * (1 + 1e-6)   # a lower bound


@pytest.mark.parametrize("m", [65, 96, 100, 127, 128])
def test_lanczos_matches_svd_at_every_step_count_up_to_the_largest_allowed(m):
    """Steps past the Krylov space's dimension (m for an m×m matrix) add only
    rounding noise; they must not corrupt the estimate. Every count from 1 to
    MAX_LANCZOS_STEPS, in one compiled program (`trips`), and the cold start's
    and the largest counts through the public path."""
    w = gaussian(m, m, seed=m)
    svd = np.linalg.norm(w.astype(np.float64), 2)
    v = unit_vector(jax.random.key(m), m, jnp.float32)
    most = config.MAX_LANCZOS_STEPS
    run = jax.jit(jax.vmap(lambda t: linalg.lanczos(w, v, most, True, trips=t)[0]))
    est = np.asarray(run(jnp.arange(1, most + 1)), np.float64) / svd
    assert (est <= 1 + 1e-6).all()                       # a lower bound at every count
    assert (np.diff(est) >= -1e-6).all()                 # more steps never lose ground
    np.testing.assert_allclose(est[49:], 1, rtol=1e-5)   # 50 steps and more: converged
    for steps in (step.COLD_ITERS, m - 1, m, m + 1, most):
        got = float(jax.jit(linalg.lanczos, static_argnums=(2, 3))(w, v, steps, True)[0])
        assert got == pytest.approx(svd, rel=1e-5 if steps >= 50 else 1e-2), steps


def test_lanczos_stops_where_a_low_rank_matrix_runs_out_of_directions():
    # rank 3: the Krylov space from a generic start has 4 dimensions
    rng = np.random.default_rng(5)
    w = (rng.normal(size=(100, 3)) @ rng.normal(size=(3, 100))).astype(np.float32)
    v = unit_vector(jax.random.key(3), 100, jnp.float32)
    got = float(jax.jit(linalg.lanczos, static_argnums=2)(w, v, 60)[0])
    assert got == pytest.approx(np.linalg.norm(w.astype(np.float64), 2), rel=1e-5)


def test_a_rolled_lanczos_loop_is_the_unrolled_one(monkeypatch):
    # the cold start keeps its loop rolled on every backend, where records
    # unroll theirs on an accelerator (UNROLL copies of the body): the same steps
    monkeypatch.setattr(linalg, "_unroll", lambda trips: min(linalg.UNROLL, trips))
    m = 128
    w = gaussian(m, m, seed=3)
    v = unit_vector(jax.random.key(1), m, jnp.float32)
    run = jax.jit(lambda *a: linalg.lanczos(*a), static_argnums=(2, 3))
    for steps in (10, 12):      # UNROLL copies and a remainder of 2 or 4
        unrolled, rolled = run(w, v, steps, False), run(w, v, steps, True)
        np.testing.assert_allclose(rolled[0], unrolled[0], rtol=1e-6)
        np.testing.assert_allclose(rolled[1], unrolled[1], rtol=1e-4, atol=1e-6)


# linalg.lanczos as a record calls it, compiled: called eagerly, each of its
# small operations compiles as a program of its own
lanczos = jax.jit(linalg.lanczos, static_argnums=(2, 3))


def test_warm_start_needs_few_steps():
    m = 256
    w = gaussian(m, m, seed=1)
    v = unit_vector(jax.random.key(0), m, jnp.float32)
    _, v = lanczos(w, v, 100)
    w2 = w + 1e-3 * gaussian(m, m, seed=2)
    est, _ = lanczos(w2, v, 3)
    assert float(est) == pytest.approx(np.linalg.norm(w2, 2), rel=1e-5)


def power_iteration(w, v, iters):
    """Plain power iteration on WᵀW in float64: what the records used before."""
    w, u = w.astype(np.float64), np.asarray(v, np.float64)
    for _ in range(iters):
        u = w.T @ (w @ u)
        u /= np.linalg.norm(u)
    return np.linalg.norm(w @ u)


def test_lanczos_finds_a_direction_that_grew_since_the_last_record():
    """A warm start aligned with W's old top direction, and a new one grown
    just out of the bulk (σ₁ up 2%, as GD makes at a catapult): 10 power
    iterations stay 2% short, 10 Lanczos steps on the same products do not."""
    m = 256
    rng = np.random.default_rng(3)
    w = rng.normal(0, np.sqrt(2 / m), (m, m)).astype(np.float32)
    _, v = lanczos(w, unit_vector(jax.random.key(0), m, jnp.float32), 100)
    a, b = rng.normal(size=m), rng.normal(size=m)
    w2 = (w + 1.6 * np.outer(a / np.linalg.norm(a), b / np.linalg.norm(b))).astype(np.float32)
    exact = np.linalg.norm(w2.astype(np.float64), 2)
    assert exact > 1.02 * np.linalg.norm(w.astype(np.float64), 2)
    assert power_iteration(w2, v, 10) < exact * (1 - 1e-2)      # the case is hard
    est, _ = jax.jit(linalg.lanczos, static_argnums=2)(w2, v, 10)
    assert float(est) == pytest.approx(exact, rel=1e-4)


def test_zero_matrix_has_norm_zero_and_keeps_its_vector():
    v = unit_vector(jax.random.key(1), 100, jnp.float32)
    est, v2 = lanczos(jnp.zeros((100, 100)), v, 5)
    assert float(est) == 0.0 and np.array_equal(v, v2)
    assert float(linalg.spectral_exact(jnp.zeros((8, 100)))) == 0.0


def test_frobenius():
    w = gaussian(30, 7)
    assert float(linalg.frobenius(w)) == pytest.approx(np.linalg.norm(w), rel=1e-6)


@pytest.mark.parametrize("shape", [(1,), (17,), (32, 10), (300, 500)])
def test_inner_and_sum_squares_equal_float64_sums(shape):
    a = np.asarray(jax.random.normal(jax.random.key(1), shape))
    b = np.asarray(jax.random.normal(jax.random.key(2), shape))
    exact = np.sum(np.float64(a) * np.float64(b))
    assert float(linalg.inner(a, b)) == pytest.approx(exact, rel=1e-5, abs=1e-5 * a.size ** 0.5)
    assert float(linalg.sum_squares(a)) == pytest.approx(np.sum(np.float64(a) ** 2), rel=1e-6)


def test_nan_matrix_gives_nan_and_returns():
    w = jnp.full((8, 100), jnp.nan)
    assert np.isnan(float(linalg.spectral_exact(w)))
    v = unit_vector(jax.random.key(1), 100, jnp.float32)
    assert np.isnan(float(lanczos(jnp.full((100, 100), jnp.nan), v, 5)[0]))


def test_spectral_norms_together_equal_each_alone():
    # a record's mix: exact matrices of three shapes (a Gram of 40, 16 and
    # 10), Lanczos on two shapes (one a zero matrix, whose vector is kept),
    # with T's of 8: two buckets (40; 16, 10 and 8), each zero-padded
    shapes = [(16, 100), (100, 100), (100, 10), (100, 100), (100, 80), (16, 100), (40, 100)]
    ws = [gaussian(*s, seed=i) for i, s in enumerate(shapes)]
    ws[3] = np.zeros((100, 100), np.float32)
    vs = [unit_vector(jax.random.key(i), s[1], jnp.float32) for i, s in enumerate(shapes)]
    together = jax.jit(lambda ws, vs: linalg.spectral_norms(ws, vs, 8))(ws, vs)
    for w, v, got, got_v in zip(ws, vs, *together):
        want, want_v = jax.jit(linalg.spectral, static_argnums=2)(w, v, 8)
        assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(got_v, want_v, atol=1e-4)
        assert float(got) == pytest.approx(np.linalg.norm(w, 2), rel=0.05, abs=1e-6)
    assert float(together[0][3]) == 0.0 and np.array_equal(together[1][3], vs[3])


def test_a_matrix_flagged_absent_is_skipped_and_the_others_solved_as_before():
    # a program serving several depths: a layer the network lacks is zero,
    # and its flag (traced) skips its Lanczos recursion
    shapes = [(100, 100), (100, 100), (100, 100), (16, 100)]
    ws = [gaussian(*s, seed=i) for i, s in enumerate(shapes)]
    ws[1] = np.zeros((100, 100), np.float32)
    vs = [unit_vector(jax.random.key(i), s[1], jnp.float32) for i, s in enumerate(shapes)]

    def solve(ws, vs, on):
        return linalg.spectral_norms(ws, vs, 8, present=[None, on, on == on, None])

    flagged = jax.jit(solve)(ws, vs, False)
    plain = jax.jit(lambda ws, vs: linalg.spectral_norms(ws, vs, 8))(ws, vs)
    assert float(flagged[0][1]) == 0.0 and np.array_equal(flagged[1][1], vs[1])
    for i in (0, 2, 3):
        assert float(flagged[0][i]) == pytest.approx(float(plain[0][i]), rel=1e-6)
        np.testing.assert_allclose(flagged[1][i], plain[1][i], atol=1e-5)
    # flagged present, the zero matrix is solved: the same norm and vector
    on = jax.jit(solve)(ws, vs, True)
    assert float(on[0][1]) == 0.0 and np.array_equal(on[1][1], vs[1])


def test_size_buckets_keep_each_problem_within_half_its_buckets_largest():
    sizes = [64, 16, 10, 64, 100, 40]
    buckets = linalg.size_buckets(sizes)
    assert buckets == [[4, 0, 3], [5], [1, 2]]
    assert sorted(i for b in buckets for i in b) == list(range(len(sizes)))
    assert all(2 * sizes[i] >= sizes[b[0]] == max(sizes[j] for j in b) for b in buckets for i in b)
