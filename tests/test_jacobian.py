"""Input–output Jacobian norms against a dense Jacobian."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normsweep import measure, train
from normsweep.data import member_keys, sphere_data

X, Y = sphere_data(jax.random.key(4), 12, 5, 3, jnp.float32)


@pytest.mark.parametrize("output", ["softmax", "linear"])
def test_jacobian_norms_match_dense_jacobian(output):
    prog = train.Program(dims=(5, 7, 7, 3), output=output, probes=("jacobian",))
    ik, pk = member_keys(np.array([1]))
    traj = train.train_members(prog, X, Y, np.array([0.2]), ik, pk, np.arange(7), keep_weights=True,
                               schedules={"jacobian": 3})
    frob, spec = traj.records["jacobian_frob_norm"][0], traj.records["jacobian_spec_norm"][0]
    assert np.isnan(frob[[1, 2, 4, 5]]).all() and np.isfinite(frob[[0, 3, 6]]).all()
    # the dense Jacobian of each point's output, one compiled program for both steps
    dense = jax.jit(jax.vmap(jax.jacrev(lambda x, params: measure.output(prog, params, x[None])[0]),
                             (0, None)))
    for step, ws in ((0, traj.initial), (6, traj.final)):
        params = {"params": {f"layer_{l:03d}": {"kernel": jnp.asarray(w[0])}
                             for l, w in enumerate(ws)}}
        jacs = np.asarray(dense(X, params))                               # (n, k, d)
        assert jacs.shape == (12, 3, 5)
        assert frob[step] == pytest.approx(np.mean(np.linalg.norm(jacs, axis=(1, 2))), rel=1e-4)
        assert spec[step] == pytest.approx(np.mean(np.linalg.norm(jacs, 2, axis=(1, 2))), rel=1e-4)


def test_report_sets_the_jacobian_beside_its_bound_and_he_prediction(tmp_path):
    import normsweep
    from normsweep import config, sweep
    from normsweep.analysis import tables
    text = ('name = "jac"\n[data]\nn = 64\nd = 8\nk = 4\n[model]\noutput = "linear"\n'
            '[train]\nsteps = 6\n[record]\njacobian_norm = 3\n[grid]\nwidth = [32]\n'
            'depth = [3]\nlr = [0.01]\nseed = [0, 1, 2, 3, 4, 5]\n')
    cfg = config.parse(text)
    sweep.launch(cfg, tmp_path / "jac")
    ds = normsweep.open_sweep(tmp_path / "jac").load()
    row = tables.jacobian_table(ds, cfg).iloc[0]
    assert row["frob_init"] == pytest.approx(8 ** 0.5, rel=0.25)   # √(2k), k = 4
    assert row["frob_init_theory"] == pytest.approx(8 ** 0.5, rel=1e-3)
    assert row["spec_init"] <= row["bound_init"]
    assert row["spec_end"] <= row["bound_end"]
    # the bound is the product of the recorded spectral norms
    prod = ds["spec_norm"].isel(step=0, depth=0, width=0).sel(layer=[0, 1, 2]).prod("layer")
    assert row["bound_init"] == pytest.approx(float(prod.median()), rel=1e-2)
    text = normsweep.analyze(tmp_path / "jac").report.read_text()
    assert "The input–output Jacobian" in text and "√(2k)" in text
