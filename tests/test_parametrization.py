"""Parametrizations: NTK is standard with per-layer rates 2η/fan_in; under μP
the hidden layers' first-step spectral update does not change with width."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normsweep import config, train
from normsweep.data import member_keys, sphere_data
from normsweep.errors import GridError
from tests import reference

X, Y = sphere_data(jax.random.key(5), 32, 8, 4, jnp.float32)


def test_ntk_equals_standard_with_per_layer_rates_2eta_over_fan_in():
    dims, lr = (8, 24, 24, 4), 0.7
    prog = train.Program(dims=dims, parametrization="ntk")
    ik, pk = member_keys(np.array([0]))
    traj = train.train_members(prog, X, Y, np.array([lr]), ik, pk, np.arange(6), keep_weights=True)
    ws = [jnp.asarray(w[0]) for w in traj.initial]
    rates = [lr * 2 / fan_in for fan_in in dims[:-1]]
    grad = jax.jit(jax.grad(reference.loss))
    for _ in range(5):
        gs = grad(ws, X, Y)
        ws = [w - r * g for w, r, g in zip(ws, rates, gs)]
    for got, want in zip(traj.final, ws):
        np.testing.assert_allclose(got[0], want, rtol=2e-4, atol=1e-6)
    # the recorded norms are of the effective W_l
    np.testing.assert_allclose(traj.records["frob_norm"][0, -1],
                               [np.linalg.norm(w) for w in ws], rtol=1e-4)


def test_mup_hidden_first_step_update_is_width_independent():
    widths = np.array([128, 256, 512])
    ik, pk = member_keys(np.array([0, 1]))
    spec, std = [], []
    for m in widths:
        for name, found in (("mup", spec), ("standard", std)):
            # the parametrization is an input: both share one compiled program per width
            prog = train.Program(dims=(8, m, m, 4), parametrization=name, lanczos_steps=30)
            traj = train.train_members(prog, X, Y, np.array([0.5, 0.5]), ik, pk, np.arange(2))
            found.append(traj.records["spec_dist"][:, 1, 1].mean())    # ‖W_1(1) − W_1(0)‖₂
    slope = np.polyfit(np.log(widths), np.log(spec), 1)[0]
    assert abs(slope) <= 0.15, (slope, spec)
    # while under the standard parametrization at fixed η it grows like m^½
    assert np.polyfit(np.log(widths), np.log(std), 1)[0] > 0.3, std


def test_mup_init_scales():
    from normsweep.model import init_std, lr_multipliers
    assert init_std("mup", 16, 512, 512) == pytest.approx(np.sqrt(2 / 16) * 1.0)   # input: d→m
    assert init_std("mup", 512, 512, 512) == pytest.approx(np.sqrt(2 / 512))
    assert init_std("mup", 512, 512, 10) == pytest.approx(np.sqrt(2 / 512) * np.sqrt(10 / 512))
    assert lr_multipliers("mup", "he", (16, 512, 512, 10)) == (32.0, 1.0, 10 / 512)


def test_parametrization_in_grid_files():
    base = '[grid]\nwidth = [8]\ndepth = [2]\nlr = [0.1]\n'
    c = config.parse('[model]\nparametrization = "mup"\n' + base, default_name="a")
    assert c.model.parametrization == "mup"
    assert c.fingerprint() != config.parse(base, default_name="a").fingerprint()
    with pytest.raises(GridError, match="model.parametrization"):
        config.parse('[model]\nparametrization = "mean_field"\n' + base, default_name="a")
    with pytest.raises(GridError, match="sets its own init"):
        config.parse('[model]\nparametrization = "mup"\ninit = "width"\n' + base, default_name="a")
