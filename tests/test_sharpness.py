"""Sharpness: power iteration on Hessian-vector products against a dense Hessian."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from normsweep.data import member_keys
from normsweep import step, train
from normsweep.config import parse
from normsweep.data import sphere_data

X, Y = sphere_data(jax.random.key(2), 16, 4, 3, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def dense_hessian(program, params):
    """The loss's Hessian in the flattened weights: one compiled program
    (run eagerly, its hundreds of small operations each compiled on their own)."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda f: step.loss_and_logits(program, unravel(f), X, Y)[0])(flat)


def dense_top(program, params):
    eig = np.linalg.eigvalsh(np.asarray(dense_hessian(program, params), np.float64))
    return eig[np.argmax(np.abs(eig))]


def test_sharpness_matches_dense_hessian_along_training():
    prog = train.Program(dims=(4, 6, 6, 3), probes=("sharpness",), sizes={"sharpness_iters": 60})
    ik, pk = member_keys(np.array([0]))
    steps = np.arange(16)
    traj = train.train_members(prog, X, Y, np.array([0.3]), ik, pk, steps, keep_weights=True,
                               schedules={"sharpness": 5})
    s = traj.records["sharpness"][0]
    assert np.isnan(s[[1, 2, 3, 4, 6]]).all() and np.isfinite(s[[0, 5, 10, 15]]).all()
    init = prog.model().init(ik[0], X[:1])
    for w_name, got in (("initial", s[0]), ("final", s[15])):
        ws = getattr(traj, w_name)
        params = {"params": {f"layer_{l:03d}": {"kernel": jnp.asarray(w[0])}
                             for l, w in enumerate(ws)}}
        assert got == pytest.approx(dense_top(prog, params), rel=1e-3)
    del init


def test_sharpness_is_off_by_default_and_recorded_when_asked(tmp_path):
    """Sharpness is off unless asked for; the Jacobian is on by default at
    "log" and off at 0; measuring either changes nothing else."""
    from normsweep import sweep
    text = ('name = "s"\n[data]\nn = 16\nd = 4\nk = 3\n[train]\nsteps = 10\n'
            '[record]\nsteps = "all"\nsharpness = 5\njacobian_norm = 5\n[grid]\nwidth = [6]\n'
            'depth = [2]\n'
            'lr = [0.1, 0.2]\n')
    sweep.launch(parse(text), tmp_path / "on")
    sweep.launch(parse(text.replace("sharpness = 5\njacobian_norm = 5\n", "")), tmp_path / "dflt")
    sweep.launch(parse(text.replace("sharpness = 5\njacobian_norm = 5\n", "jacobian_norm = 0\n")),
                 tmp_path / "off")
    import xarray as xr
    with xr.open_dataset(tmp_path / "on" / "sweep.nc") as on, \
            xr.open_dataset(tmp_path / "off" / "sweep.nc") as off, \
            xr.open_dataset(tmp_path / "dflt" / "sweep.nc") as dflt:
        assert "sharpness" not in dflt and "jacobian_frob_norm" in dflt
        # 11 records: "log" measures all of them at probe_points = 16
        assert dflt["jacobian_frob_norm"].notnull().all()
        for name in ("sharpness", "jacobian_frob_norm", "jacobian_spec_norm"):
            assert name not in off and name in on, name
            assert on[name].attrs["long_name"] and on[name].attrs["units"] == "1"
        assert on["sharpness"].dims == ("width", "depth", "lr", "seed", "step")
        measured = on["sharpness"].notnull().any(["width", "depth", "lr", "seed"])
        assert list(on["step"].values[measured.values]) == [0, 5, 10]
        assert on["sharpness"].attrs["long_name"]
        xr.testing.assert_identical(on["loss"], off["loss"])   # measuring changes nothing


def test_report_has_an_edge_of_stability_section(tmp_path):
    from normsweep import sweep
    from normsweep.analysis import report
    text = ('name = "eos"\n[data]\nn = 16\nd = 4\nk = 3\n[train]\nsteps = 12\n'
            '[record]\nsharpness = 4\njacobian_norm = 0\n[grid]\nwidth = [6, 8]\ndepth = [3]\n'
            'lr = [0.1, 0.3]\nseed = [0, 1]\n')
    sweep.launch(parse(text), tmp_path / "eos")
    result = report.analyze(tmp_path / "eos")
    text = result.report.read_text()
    assert "Edge of stability" in text and "λ·η/2" in text
    assert (tmp_path / "eos" / "analysis" / "sharpness.png").stat().st_size > 1000
    # the stability limit beside the sharpness at init, λ₀ the median over η and seeds
    assert "η_max·λ₀" in text
    import normsweep
    from normsweep import outcomes
    from normsweep.analysis import tables
    ds = normsweep.open_sweep(tmp_path / "eos").load()
    against = tables.stability_against_sharpness(ds, outcomes.classify(ds))
    row = against[(against.width == 8) & (against.depth == 3)].iloc[0]
    lam0 = float(np.median(ds["sharpness"].sel(width=8, depth=3).isel(step=0).values))
    assert row["sharpness_init"] == pytest.approx(lam0, rel=1e-2)


def test_sharpness_is_preconditioned_by_the_lr_multipliers():
    """Under ntk, GD at rate η moves W_l by η·c_l·∇L: the threshold 2/η applies
    to C^½HC^½ (C = diag(c_l)), which is what is recorded; the plain Hessian
    would be off by the factor c_l = 2/fan_in."""
    from normsweep import model
    dims = (4, 6, 6, 3)
    prog = train.Program(dims=dims, probes=("sharpness",), sizes={"sharpness_iters": 80},
                         parametrization="ntk")
    ik, pk = member_keys(np.array([1]))
    traj = train.train_members(prog, X, Y, np.array([5.0]), ik, pk, np.arange(6), keep_weights=True,
                               schedules={"sharpness": 5})
    params = {"params": {f"layer_{l:03d}": {"kernel": jnp.asarray(w[0])}
                         for l, w in enumerate(traj.initial)}}
    hess = np.asarray(dense_hessian(prog, params), np.float64)
    c = model.lr_multipliers("ntk", "he", dims)
    root = np.concatenate([np.full(a * b, np.sqrt(cl)) for (a, b), cl in
                           zip(zip(dims[:-1], dims[1:]), c)])
    eig = np.linalg.eigvalsh(root[:, None] * hess * root[None, :])
    want = eig[np.argmax(np.abs(eig))]
    got = traj.records["sharpness"][0][0]
    assert got == pytest.approx(want, rel=1e-3)
    plain = np.linalg.eigvalsh(hess)
    assert abs(plain[np.argmax(np.abs(plain))]) > 2 * abs(want)   # the two really differ
