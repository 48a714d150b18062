"""Parametrization and weight decay as axes, and the empirical NTK."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import normsweep
from normsweep.data import member_keys
from normsweep import sweep, measure, linalg, model, plan, step, train
from normsweep.analysis import fits, report, tables
from normsweep.config import parse
from normsweep.data import sphere_data
from tests import equal, reference

X, Y = sphere_data(jax.random.key(4), 24, 5, 3, jnp.float32)
DIMS = (5, 12, 12, 3)


def run(program, lrs, seeds, steps, **kw):
    ik, pk = member_keys(np.asarray(seeds))
    return train.train_members(program, X, Y, np.asarray(lrs), ik, pk, steps, keep_weights=True,
                               **kw)


def test_mixed_parametrizations_equal_separate_runs():
    steps = np.arange(8)
    names = ["standard", "ntk", "mup", "ntk"]
    lrs = [0.3, 20.0, 0.3, 5.0]
    mixed = run(train.Program(dims=DIMS), lrs, [0, 1, 2, 3], steps, parametrization=names)
    for i, (name, lr) in enumerate(zip(names, lrs)):
        alone = run(train.Program(dims=DIMS, parametrization=name), [lr], [i], steps)
        for key, value in alone.records.items():
            equal.assert_record_close(mixed.records[key][i], value[0], key)


def loss_of(ws):
    prog = train.Program(dims=DIMS)
    return step.loss_and_logits(prog, model.with_kernels(None, ws), X, Y)[0]


@pytest.mark.parametrize("name", ["standard", "ntk", "mup"])
def test_one_step_with_weight_decay_is_the_stated_update(name):
    """W(1) = W(0) − η·c_l·∇L − η·λ·W(0), against jax.grad directly."""
    lr, wd = 0.2, 0.05
    prog = train.Program(dims=DIMS, decay=True)
    traj = run(prog, [lr], [0], np.arange(2), weight_decay=[wd], parametrization=[name])
    w0 = [jnp.asarray(w[0]) for w in traj.initial]
    grads = jax.jit(jax.grad(loss_of))(w0)
    c = model.lr_multipliers(name, "he", DIMS)
    for l in range(len(DIMS) - 1):
        expect = w0[l] - lr * c[l] * grads[l] - lr * wd * w0[l]
        np.testing.assert_allclose(traj.final[l][0], expect, rtol=1e-5, atol=1e-7)
    # μP draws its own init; the others draw N(0, 2/fan_in)
    stds = model.init_stds(name, "he", DIMS)
    assert stds[0] == pytest.approx(np.sqrt(2 / 5) * (1 if name != "mup" else 1.0))
    if name == "mup":
        assert stds[-1] == pytest.approx(np.sqrt(2 / 12) * np.sqrt(3 / 12))


def test_zero_weight_decay_in_a_decay_program_changes_nothing():
    steps = np.arange(6)
    plain = run(train.Program(dims=DIMS), [0.3, 1.0], [0, 1], steps)
    decay = run(train.Program(dims=DIMS, decay=True), [0.3, 1.0], [0, 1], steps,
                weight_decay=[0.0, 0.0])
    for key, value in plain.records.items():
        np.testing.assert_array_equal(decay.records[key], value, err_msg=key)
    with pytest.raises(ValueError, match="decay=True"):
        run(train.Program(dims=DIMS), [0.3], [0], steps, weight_decay=[0.1])


@jax.jit
def dense_ntk(ws, xs, mult):
    jac = jax.jacrev(lambda ws: reference.forward(ws, xs))(ws)   # per layer (s, k, fan_in, fan_out)
    return sum(c * jnp.einsum("ickl,jckl->ij", j, j, precision="highest")
               for c, j in zip(mult, jac))


def test_ntk_gram_and_its_extreme_eigenvalues_match_dense_jacobians():
    ws = [jax.random.normal(jax.random.key(l), (a, b)) * np.sqrt(2 / a)
          for l, (a, b) in enumerate(zip(DIMS[:-1], DIMS[1:]))]
    xs = X[:10]
    mult = jnp.asarray(model.lr_multipliers("ntk", "he", DIMS), jnp.float32)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(measure.ntk_gram, static_argnums=0)(
            train.Program(dims=DIMS), model.with_kernels(None, ws), mult, xs)
        want = dense_ntk(ws, xs, mult)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.max(want)))
    top, bottom = jax.jit(linalg.extreme_eigenvalues_psd)(got)
    eig = np.linalg.eigvalsh(np.asarray(want, np.float64))
    assert float(top) == pytest.approx(eig[-1], rel=1e-5)
    assert abs(float(bottom) - eig[0]) < 1e-5 * eig[-1]
    assert eig[0] > 1e-3 * eig[-1]                 # a real test of λ_min, not of 0


def test_ntk_eigenvalues_are_recorded_at_their_stride():
    prog = train.Program(dims=DIMS, probes=("ntk",), sizes={"ntk_points": 10},
                         parametrization="ntk")
    traj = run(prog, [5.0], [0], np.arange(10), schedules={"ntk": 4})
    top, bottom = traj.records["ntk_max_eig"][0], traj.records["ntk_min_eig"][0]
    measured = np.flatnonzero(np.isfinite(top))
    assert list(measured) == [0, 4, 8, 9]          # multiples of 4, and the last step
    mult = model.lr_multipliers("ntk", "he", DIMS)
    for t, ws in ((0, traj.initial), (9, traj.final)):
        eig = np.linalg.eigvalsh(np.asarray(dense_ntk([jnp.asarray(w[0]) for w in ws], X[:10],
                                                      mult), np.float64))
        assert top[t] == pytest.approx(eig[-1], rel=1e-4)
        assert bottom[t] == pytest.approx(eig[0], rel=1e-3, abs=1e-5 * eig[-1])


AXES = """\
name = "axes"
[data]
n = 24
d = 5
k = 3
[train]
steps = 12
[record]
steps = "log"
weights = true
ntk_eigs = 4
ntk_points = 8
[grid]
width = [8, 16]
depth = [2, 3]
parametrization = ["mup", "standard", "ntk"]
lr = [0.2, 0.5]
weight_decay = [0.0, 0.01]
seed = [0, 1]
"""


@pytest.fixture(scope="module")
def axes_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("axes") / "sweep"
    sweep.launch(parse(AXES), root)
    return root


def test_axes_become_dims_written_equals_read_back(axes_sweep):
    ds = normsweep.open_sweep(axes_sweep)
    assert ds["frob_norm"].dims == ("width", "depth", "parametrization", "lr", "weight_decay",
                                    "seed", "step", "layer")
    assert ds["loss"].dims == ds["frob_norm"].dims[:-1]
    assert list(ds["parametrization"].values) == ["mup", "standard", "ntk"]   # as given
    assert list(ds["weight_decay"].values) == [0.0, 0.01]
    for name in ("weight_decay", "ntk_max_eig", "ntk_min_eig"):
        assert ds[name].attrs["long_name"] and ds[name].attrs["units"] == "1"
    assert ds["parametrization"].attrs["long_name"] and "units" not in ds["parametrization"].attrs
    cohort = xr.open_dataset(axes_sweep / "cohorts" / "width16_depth3.nc")
    xr.testing.assert_identical(cohort["frob_norm"].drop_attrs(),
                                ds["frob_norm"].sel(width=[16], depth=[3]).drop_attrs())
    # the weights of one member are its trajectory's endpoints
    point = dict(width=16, depth=3, parametrization="ntk", lr=0.5, weight_decay=0.01, seed=1)
    ws = normsweep.load_weights(axes_sweep, which="final", **point)
    frob = ds["frob_norm"].sel(**point).isel(step=-1).values[:3]
    np.testing.assert_allclose([np.linalg.norm(w) for w in ws], frob, rtol=1e-5)
    with pytest.raises(KeyError, match="parametrization"):
        normsweep.load_weights(axes_sweep, width=16, depth=3, lr=0.5, seed=1, weight_decay=0.0)
    # members differ where their settings do: decay shrinks the final norms
    last = ds["frob_norm"].sel(width=16, depth=3, parametrization="standard").isel(step=-1)
    assert (last.sel(weight_decay=0.01) < last.sel(weight_decay=0.0)).all()


def test_axes_sweep_agrees_whatever_the_chunking(axes_sweep, tmp_path):
    cfg = parse(AXES)
    steps = plan.record_steps(cfg.train.steps, "log")
    # the largest cohort, its 24 members in chunks of 5: one padded
    largest = max(plan.cohorts(cfg), key=lambda c: plan.member_bytes(cfg, c, len(steps)))
    per = plan.member_bytes(cfg, largest, len(steps))
    assert plan.chunking(cfg, largest, len(steps), 5 * per) == plan.Chunking(5, 5)
    only = [{"width": largest.width, "depth": largest.depth}]
    sweep.launch(cfg, tmp_path / "chunked", budget_bytes=5 * per, only=only)
    name = f"cohorts/{largest.name}.nc"
    with xr.open_dataset(tmp_path / "chunked" / name) as a, \
            xr.open_dataset(axes_sweep / name) as b:
        equal.assert_sweeps_close(a, b)


def test_identity_holds_with_lr_multipliers_and_weight_decay(axes_sweep):
    ds = normsweep.open_sweep(axes_sweep).load()
    cfg = parse(AXES)
    for name in ("standard", "ntk", "mup"):
        for wd in (0.0, 0.01):
            part = ds.sel(parametrization=name, weight_decay=wd)
            check = tables.identity_check(part, tables.layer_multipliers(part, cfg, name), wd)
            assert check["pairs"] > 100
            assert check["identity_rel_median"] < 1e-5, (name, wd, check["identity_rel_median"])
    # and ignoring the decay breaks it: the check can fail
    part = ds.sel(parametrization="standard", weight_decay=0.01)
    wrong = tables.identity_check(part, 1.0, 0.0)
    assert wrong["identity_rel_median"] > 1e-4


def test_analyze_fits_each_slice_and_compares_them(axes_sweep):
    result = report.analyze(axes_sweep)
    table = result.table
    assert {"parametrization", "weight_decay"} <= set(table.columns)
    per_slice = table.groupby(["parametrization", "weight_decay"]).size()
    assert len(per_slice) == 6 and per_slice.nunique() == 1
    text = result.report.read_text()
    import re
    numbered = re.findall(r"^## (\d+)\. (.+)$", text, re.M)
    assert [int(n) for n, _ in numbered] == list(range(1, len(numbered) + 1))
    sections = {title: n for n, title in numbered}
    compare = sections["Parametrizations and weight decay side by side"]
    assert int(sections["The neural tangent kernel"]) > int(compare)
    assert f"section {compare} compares all its slices" in text and "\x00" not in text
    assert "The other sections describe the slice standard, λ = 0" in text
    assert "m-exponent, mup, λ = 0.01" in text
    assert (axes_sweep / "analysis" / "parametrizations.png").exists()
    assert (axes_sweep / "analysis" / "ntk.png").exists()
    on_disk = xr.open_dataset(axes_sweep / "analysis" / "fits.nc")
    assert {"parametrization", "weight_decay"} <= set(on_disk.dims)
    # the table's reference slice: standard, no decay
    assert fits.reference_labels(normsweep.open_sweep(axes_sweep)) == {
        "parametrization": "standard", "weight_decay": 0.0}


def test_the_report_names_whichever_axes_the_sweep_has(analyzed):
    from normsweep.analysis import render
    t, s = render.read_folder(analyzed[0] / "analysis")

    def header(text):
        s["axes"] = report.axes(parse(text).grid)
        return render.render(t, s, block="header")

    assert "parametrization ['mup', 'standard', 'ntk'] and weight decay [0.0, 0.01]:" in \
        header(AXES)
    only = header(AXES.replace("weight_decay = [0.0, 0.01]\n", ""))
    assert "parametrization ['mup', 'standard', 'ntk']:" in only and "decay" not in only
    none = header(AXES.replace('parametrization = ["mup", "standard", "ntk"]\n', "")
                  .replace("weight_decay = [0.0, 0.01]\n", ""))
    assert "axes" not in none and "in this slice" not in none


def test_the_parametrization_script_runs_on_an_axes_sweep(axes_sweep, tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "examples" / "parametrizations.py"
    out = tmp_path / "p.png"
    run = subprocess.run([sys.executable, str(script), str(axes_sweep), "--layer", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.stat().st_size > 1000
    # one line per (parametrization, weight decay) slice, each with its fitted slope
    assert sum("∝ m^" in line for line in run.stdout.splitlines()) == 6


def test_mup_init_norms_are_compared_with_mups_own_init(axes_sweep):
    """μP draws the readout with s² = 2k/m², not He's 2/m: the reference
    value is μP's, and the measured norms sit within a few per cent of it."""
    full = normsweep.open_sweep(axes_sweep).load()
    cfg = parse(full.attrs["config_toml"])
    ds = full.sel(parametrization="mup", weight_decay=0.0)
    table = tables.init_numbers(ds, cfg)
    for _, row in table.iterrows():
        assert abs(row.frob / row.frob_theory - 1) < 0.15, row.to_dict()
    readout = table[table.layer == "readout"].iloc[0]
    m, k = int(readout.width), cfg.data.k
    assert float(readout["frob_theory"]) == pytest.approx(k * (2 / m) ** 0.5, rel=0.02)
