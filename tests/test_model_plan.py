"""Initialisation, data and the plan (schedules, keys, chunks)."""
from __future__ import annotations


import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from normsweep import plan
from normsweep.config import parse
from normsweep.data import member_keys, sphere_data
from normsweep.model import MLP, kernels, normals, unit_kernels, unit_vectors


def test_he_init_is_untruncated_with_variance_2_over_fan_in():
    dims = (16, 512, 512, 10)
    ws = kernels(MLP(dims).init(jax.random.key(0), jnp.ones((1, 16))))
    assert [w.shape for w in ws] == [(16, 512), (512, 512), (512, 10)]
    for w, fan_in in zip(ws, dims[:-1]):
        z = np.asarray(w).ravel() / np.sqrt(2 / fan_in)
        assert z.var() == pytest.approx(1.0, abs=0.05 if z.size > 5000 else 0.15)
        assert abs(z).max() > 2.5, "truncated at 2σ like he_normal?"
    hidden = np.asarray(ws[1])
    assert np.linalg.norm(hidden) == pytest.approx(np.sqrt(2 * 512), rel=0.01)
    assert np.linalg.norm(hidden, 2) == pytest.approx(2 * np.sqrt(2), rel=0.05)


def test_width_init_uses_2_over_width_everywhere():
    ws = kernels(MLP((16, 256, 10), init_scheme="width").init(jax.random.key(1), jnp.ones((1, 16))))
    for w in ws:
        assert np.asarray(w).std() == pytest.approx(np.sqrt(2 / 256), rel=0.1)


def _ulps(a, b) -> int:
    """The largest distance between a and b in units of the last place."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return int(np.max(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))))


@pytest.mark.parametrize("shapes", [
    [(16, 64), (64, 64), (64, 64), (64, 10)],    # split: the hidden layers, then the thin ones
    [(16, 40), (40, 3)],                          # one group
    [(7,), (5, 5), (1,), (30,)],
])
def test_batched_normals_are_the_draws_one_by_one(shapes):
    keys = [jax.random.fold_in(jax.random.key(3), i) for i in range(len(shapes))]
    got = jax.jit(lambda: normals(keys, shapes, jnp.float32))()
    for k, s, g in zip(keys, shapes, got):
        want = jax.random.normal(k, s, jnp.float32)
        assert g.shape == s
        # the same bits, transformed to normals in another program: equal to rounding
        assert _ulps(g, want) <= 2


def test_unit_kernels_are_flax_init_with_fewer_draws():
    model = MLP((16, 64, 64, 10), init_scheme="unit")
    x = jnp.ones((1, 16))
    keys = jax.random.split(jax.random.key(4), 3)
    got = jax.jit(jax.vmap(lambda k: unit_kernels(model, k, x)))(keys)
    want = jax.jit(jax.vmap(lambda k: kernels(model.init(k, x))))(keys)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert max(_ulps(g, w) for g, w in zip(got, want)) <= 2
    jaxpr = jax.make_jaxpr(jax.vmap(lambda k: unit_kernels(model, k, x)))(keys)
    assert _count(jaxpr.jaxpr, "random_bits") == 2  # the hidden layers, then the thin ones
    flax_jaxpr = jax.make_jaxpr(jax.vmap(lambda k: kernels(model.init(k, x))))(keys)
    assert _count(flax_jaxpr.jaxpr, "random_bits") == 3


def _count(jaxpr, primitive: str) -> int:
    """Call sites of `primitive` in a jaxpr and the jaxprs inside it."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == primitive
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count(sub, primitive)
    return n


def test_normals_draw_one_by_one_without_partitionable_threefry():
    keys = [jax.random.fold_in(jax.random.key(5), i) for i in range(3)]
    shapes = [(8, 8), (8, 8), (8, 2)]
    with jax.threefry_partitionable(False):
        got = normals(keys, shapes, jnp.float32)
        want = [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)]
        assert all(np.array_equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("partitionable", [True, False])
def test_unit_vectors_are_the_draws_one_by_one_normalised(partitionable):
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(6), jnp.arange(6))
    sizes = [40, 40, 3, 40, 40, 3]              # a depth-3 network's start vectors
    with jax.threefry_partitionable(partitionable):
        got = jax.jit(lambda k: unit_vectors(k, sizes, jnp.float32))(keys)
        for k, n, g in zip(keys, sizes, got):
            want = jax.random.normal(k, (n,), jnp.float32)
            assert g.shape == (n,) and _ulps(g, want / jnp.linalg.norm(want)) <= 4
    jaxpr = jax.make_jaxpr(lambda k: unit_vectors(k, sizes, jnp.float32))(keys)
    assert _count(jaxpr.jaxpr, "random_bits") == 1     # one batched draw


def test_sphere_data():
    x, y = sphere_data(jax.random.key(0), 500, 5, 3, jnp.float32)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-6)
    assert abs(np.asarray(x).mean(0)).max() < 0.1
    assert set(np.asarray(y).sum(1).tolist()) == {1.0}
    assert 100 < np.asarray(y).sum(0).min()


@pytest.mark.parametrize("total,schedule", [(2000, "log"), (10, "log"), (100, "all"),
                                            (100, 7), (100_000, "log")])
def test_record_steps(total, schedule):
    s = plan.record_steps(total, schedule, 256)
    assert s[0] == 0 and s[-1] == total and np.all(np.diff(s) > 0)
    if schedule == "log":
        assert len(s) <= 256 and (len(s) > 200 or len(s) == total + 1)
    if schedule == "all":
        assert len(s) == total + 1
    if schedule == 7:
        assert set(range(0, 100, 7)) <= set(s.tolist())


def test_member_keys_depend_on_seed_only():
    a, pa = member_keys(np.array([3, 4]))
    b, pb = member_keys(np.array([4]))
    assert jnp.array_equal(jax.random.key_data(a[1]), jax.random.key_data(b[0]))
    assert not jnp.array_equal(jax.random.key_data(a[1]), jax.random.key_data(pa[1]))


def test_chunking_fits_the_budget_and_pads_equal_chunks():
    c = parse('name = "a"\n[grid]\nwidth = [64]\ndepth = [3]\nlr = [1, 2, 3]\nseed = [0, 1, 2]\n')
    cohort = plan.cohorts(c)[0]
    per = plan.member_bytes(c, cohort, 300)
    ch = plan.chunking(c, cohort, 300, 4 * per)
    assert ch.count == 3 and ch.size == 3
    ch = plan.chunking(c, cohort, 300, 2 * per)
    slices = ch.slices(cohort.size)
    assert ch.count == 5 and {len(s) for s in slices} == {2}
    assert sorted(set(np.concatenate(slices).tolist())) == list(range(9))
    assert plan.chunking(c, cohort, 300, 10**12).count == 1


def test_a_program_per_width_serves_every_depth_and_is_budgeted_as_the_deepest():
    from normsweep import work
    text = 'name = "a"\n[grid]\nwidth = [8, 16]\ndepth = [2, 4]\nlr = [1]\n'
    c = parse(text + '[train]\nprograms = "width"\n')
    by = {(co.width, co.depth): co for co in plan.cohorts(c)}
    for m in (8, 16):
        shallow, deep = work.program_for(c, by[m, 2]), work.program_for(c, by[m, 4])
        assert shallow == deep and list(deep.served()) == [2, 3, 4]
        assert deep.dims == (16, m, m, m, 10)
        assert plan.member_bytes(c, by[m, 2], 50) == plan.member_bytes(c, by[m, 4], 50)
    assert work.program_for(c, by[8, 2]) != work.program_for(c, by[16, 2])
    per_cohort = parse(text)       # the default
    own = work.program_for(per_cohort, by[8, 2])
    assert own.dims == (16, 8, 10) and list(own.served()) == [2]
    assert plan.member_bytes(per_cohort, by[8, 2], 50) < plan.member_bytes(c, by[8, 2], 50)
    assert plan.member_bytes(per_cohort, by[8, 4], 50) == plan.member_bytes(c, by[8, 4], 50)
