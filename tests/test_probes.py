"""The margin, the preactivation change, the spectra and the "log" probe
schedule against independent computations; the analysis of them against
planted laws."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from normsweep.data import member_keys
from normsweep import plan, train
from normsweep.analysis import tables, theory
from normsweep.data import sphere_data
from normsweep.errors import GridError
from tests import reference, synthetic

X, Y = sphere_data(jax.random.key(5), 24, 5, 3, jnp.float32)
STEPS = np.arange(9)


@pytest.fixture(scope="module")
def probed():
    prog = train.Program(dims=(5, 7, 7, 3), spectra=True, probes=("activations", "jacobian"))
    ik, pk = member_keys(np.array([2, 3]))
    return prog, train.train_members(prog, X, Y, np.array([0.3, 0.3]), ik, pk, STEPS,
                                     keep_weights=True, probe_points=4,
                                     schedules={"activations": 4, "jacobian": "log"})


def preactivations(ws, x):
    out, h = [], np.asarray(x, np.float64)
    for l, w in enumerate(ws):
        a = h @ np.asarray(w, np.float64)
        out.append(a)
        h = np.maximum(a, 0)
    return out


def test_margin_is_the_smallest_logit_margin(probed):
    _, traj = probed
    for step, ws in ((0, traj.initial), (-1, traj.final)):
        for member in range(2):
            z = preactivations([w[member] for w in ws], X)[-1]
            y = np.asarray(Y).argmax(1)
            right = z[np.arange(len(y)), y]
            other = np.where(np.asarray(Y) > 0, -np.inf, z).max(1)
            assert traj.records["margin"][member, step] == pytest.approx(
                np.min(right - other), rel=1e-4, abs=1e-5)


def test_activation_change_is_the_mean_preactivation_move(probed):
    _, traj = probed
    change = traj.records["activation_change"]          # (member, record, layer)
    measured = np.isfinite(change[0, :, 0])
    np.testing.assert_array_equal(STEPS[measured], [0, 4, 8])
    assert np.all(change[:, 0] == 0)
    for member in range(2):
        now = preactivations([w[member] for w in traj.final], X)
        then = preactivations([w[member] for w in traj.initial], X)
        want = [np.mean(np.abs(a - b)) for a, b in zip(now, then)]
        np.testing.assert_allclose(change[member, -1], want, rtol=1e-4)


def test_spectra_match_numpy_svd_and_the_gradient_rank(probed):
    _, traj = probed
    sv, dsv = traj.spectra["singular_values"], traj.spectra["change_singular_values"]
    rank = traj.spectra["gradient_effective_rank"]
    assert sv.shape == (2, 2, 3, 7) and rank.shape == (2, 2, 3)
    for member in range(2):
        ws0 = [w[member] for w in traj.initial]
        ws = [w[member] for w in traj.final]
        for l in range(3):
            for i, w in enumerate((ws0[l], ws[l])):
                want = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
                np.testing.assert_allclose(sv[member, i, l, :len(want)], want, rtol=1e-5,
                                           atol=1e-6)
                assert np.isnan(sv[member, i, l, len(want):]).all()
            change = np.linalg.svd(np.asarray(ws[l], np.float64) - ws0[l], compute_uv=False)
            np.testing.assert_allclose(dsv[member, 1, l, :len(change)], change, rtol=1e-4,
                                       atol=1e-6)
            assert np.all(dsv[member, 0, l, :len(change)] == 0)
        grads = jax.grad(reference.loss)([jnp.asarray(w) for w in ws], X, Y)
        for l, g in enumerate(grads):
            s = np.linalg.svd(np.asarray(g, np.float64), compute_uv=False)
            p = s / s.sum()
            assert rank[member, 1, l] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-3)


def test_log_probes_measure_the_chosen_records(probed):
    _, traj = probed
    measured = np.isfinite(traj.records["jacobian_frob_norm"][0])
    np.testing.assert_array_equal(STEPS[measured], STEPS[plan.probe_due(STEPS, "log", 4)])
    assert STEPS[measured][0] == 0 and STEPS[measured][-1] == 8 and 3 <= measured.sum() <= 4


def test_marchenko_pastur_density_matches_monte_carlo():
    rng = np.random.default_rng(0)
    for p, q in ((200, 200), (200, 50), (30, 300)):
        s2 = 2 / p
        svs = np.concatenate([np.linalg.svd(rng.normal(0, math.sqrt(s2), (p, q)),
                                            compute_uv=False) for _ in range(20)])
        grid = np.linspace(0, svs.max() * 1.2, 40001)
        dens = theory.marchenko_pastur_singular(grid, p, q, s2)
        assert np.trapezoid(dens, grid) == pytest.approx(1, abs=2e-3)
        assert np.trapezoid(grid * dens, grid) == pytest.approx(svs.mean(), rel=0.01)
        assert np.trapezoid(grid ** 2 * dens, grid) == pytest.approx(np.mean(svs ** 2), rel=0.01)


def test_outliers_count_a_planted_spike_and_nothing_in_noise():
    rng = np.random.default_rng(1)
    p, q, s2 = 128, 96, 2 / 128
    counts = {0: [], 1: [], 2: []}
    for _ in range(20):
        w = rng.normal(0, math.sqrt(s2), (p, q))
        u, v = rng.normal(size=p), rng.normal(size=q)
        spike = 3 * theory.spectral_edge(p, q, s2) * np.outer(u / np.linalg.norm(u),
                                                              v / np.linalg.norm(v))
        for k in counts:
            sv = np.linalg.svd(w + (spike if k else 0) + (k == 2) * spike[::-1, ::-1],
                               compute_uv=False)
            da = xr.DataArray(sv, dims=["singular"])
            counts[k].append(int(tables.outliers(da, p, q, xr.DataArray(s2))))
    assert counts[0] == [0] * 20 and counts[1] == [1] * 20 and counts[2] == [2] * 20
    # the threshold's promise, below 1e-3 false outliers in pure noise, at the
    # small shapes where finite-size effects are largest (a readout, an input
    # layer): at 2 scales instead of 4 about 6e-3 exceed it, so the count tells
    for p, q in ((32, 10), (16, 32)):
        top = np.linalg.svd(rng.normal(0, math.sqrt(2 / p), (8000, p, q)), compute_uv=False)[:, 0]
        noise = xr.DataArray(top[:, None], dims=["matrix", "singular"])
        assert int(tables.outliers(noise, p, q, xr.DataArray(2 / p)).sum()) <= 8
        assert (top > theory.outlier_threshold(p, q, 2 / p, scales=2.0)).sum() > 24


def test_local_width_slopes_approach_a_planted_limit():
    """rel_frob_dist ∝ m^−½ (1 + 4/√m): the local slope between adjacent
    widths is exact, and moves toward −½ as the widths grow."""
    widths = (16, 64, 256, 1024)
    ds = synthetic.planted(0.0, -0.5, widths=widths, noise=0.0)
    corr = np.array([1 + 4 / math.sqrt(m) for m in widths])
    ds["frob_dist"] = ds["frob_dist"] * xr.DataArray(corr, coords={"width": list(widths)})
    ds["accuracy"][:] = 1.0
    local = tables.local_width_slopes(ds)
    rows = local[(local.metric == "rel_frob_dist") & (local.layer == 1)
                 & (local.lr == local.lr.iloc[0])]
    assert set(rows.layer_role) == {"hidden"}
    assert list(rows.width_from) == list(widths[:-1]) and list(rows.width_to) == list(widths[1:])
    law = np.array(widths) ** -0.5 * corr
    want = np.diff(np.log(law)) / np.diff(np.log(widths))
    assert list(rows.slope) == pytest.approx(want)
    assert abs(rows.slope.iloc[-1] + 0.5) < abs(rows.slope.iloc[0] + 0.5)


def growth_dataset(a: float, depth: int, fit_from: int = 20) -> xr.Dataset:
    """‖W_l(t)‖_F = c_l·(log t)^a for t ≥ 3 in every layer, accuracy 1 from `fit_from`."""
    steps = np.unique(np.geomspace(1, 3000, 60).astype(int))
    steps = np.concatenate([[0], steps])
    t = np.maximum(steps, 3).astype(float)
    base = np.log(t) ** a
    frob = np.stack([base * (l + 1) for l in range(depth)], -1)[None, None, None, None]
    dims = ("width", "depth", "lr", "seed", "step", "layer")
    acc = np.where(steps >= fit_from, 1.0, 0.5)[None, None, None, None]
    loss = np.linspace(10, 1, len(steps))[None, None, None, None]
    return xr.Dataset(
        {"frob_norm": (dims, frob), "accuracy": (dims[:-1], acc), "loss": (dims[:-1], loss),
         "margin": (dims[:-1], np.ones_like(acc)),
         "diverged_at": (dims[:4], -np.ones((1, 1, 1, 1), np.int64))},
        coords={"width": [32], "depth": [depth], "lr": [0.1], "seed": [0], "step": steps,
                "layer": np.arange(depth)})


@pytest.mark.parametrize("depth", [2, 4])
def test_norm_growth_recovers_a_planted_log_t_exponent(depth):
    from normsweep import outcomes
    ds = growth_dataset(1 / depth, depth)
    table = tables.norm_growth(ds, outcomes.classify(ds))
    assert table["a"].iloc[0] == pytest.approx(1 / depth, abs=0.01)
    assert table["lyu_li"].iloc[0] == pytest.approx(1 / depth, abs=1e-12)
    assert np.isnan(table["a_lo"].iloc[0])          # one seed: no interval
    # separated (margin > 0) from step 0 on: a planted margin 1 over ‖θ‖^L
    # is smaller at the end than at separation, as ‖θ‖ grew
    assert table["separated_at"].iloc[0] == 0
    assert table["margin_rate"].iloc[0] == pytest.approx(0.0, abs=1e-9)   # planted q = 1
    assert table["margin_at_end"].iloc[0] < table["margin_at_separation"].iloc[0]


def test_norm_growth_interval_is_over_seeds_not_learning_rates():
    """Seeds with exponents a_s: the interval is mean ± t·sd/√S over the
    seeds, whatever the number of η copies each seed has."""
    from scipy import stats
    from normsweep import outcomes
    a_s = np.array([0.40, 0.50, 0.55])
    parts = [growth_dataset(a, 2).assign_coords(seed=[s]) for s, a in enumerate(a_s)]
    one_lr = xr.concat(parts, "seed")
    three_lr = xr.concat([one_lr.assign_coords(lr=[lr]) for lr in (0.1, 0.2, 0.4)], "lr")
    half = stats.t.ppf(0.975, 2) * a_s.std(ddof=1) / np.sqrt(3)
    for ds in (one_lr, three_lr):
        row = tables.norm_growth(ds, outcomes.classify(ds)).iloc[0]
        assert row["seeds"] == 3 and row["networks"] == ds.sizes["lr"] * 3
        assert row["a"] == pytest.approx(a_s.mean(), abs=1e-6)
        assert (row["a_lo"], row["a_hi"]) == pytest.approx(
            (a_s.mean() - half, a_s.mean() + half), abs=1e-6)


def test_norm_by_loss_reads_the_first_record_below_each_level():
    from normsweep import outcomes
    ds = growth_dataset(0.5, 2)
    steps = ds["step"].values
    ds["loss"][:] = 10.0 * np.exp(-steps / 300.0)
    table = tables.norm_by_loss(ds, outcomes.classify(ds), levels=(1e-1, 1e-2))
    theta = np.sqrt((ds["frob_norm"] ** 2).sum("layer")).squeeze().values
    assert list(table["when"]) == ["init", "loss ≤ 0.1·loss(0)", "loss ≤ 0.01·loss(0)", "end"]
    assert (table["lr"] == 0.1).all() and (table["networks"] == 1).all()
    for level, row in zip((1e-1, 1e-2), table.iloc[1:3].itertuples()):
        first = int(np.argmax(np.exp(-steps / 300.0) <= level))
        assert row.step == steps[first] and row.theta == pytest.approx(theta[first])
    assert table["theta"].iloc[0] == pytest.approx(theta[0])
    assert table["step"].iloc[-1] == steps[-1]


def test_separation_is_the_record_from_which_every_point_stays_right():
    from normsweep import outcomes
    ds = growth_dataset(0.5, 2)
    margin = np.where(ds["step"].values >= 40, 1.0, -1.0)
    margin[ds["step"].values == 5] = 1.0         # a passing moment before: not separation
    ds["margin"][:] = margin
    want = int(ds["step"].values[ds["step"].values >= 40][0])
    assert int(tables.separated_at(ds, 0.99).squeeze()) == want
    table = tables.norm_growth(ds, outcomes.classify(ds))
    assert table["separated_at"].iloc[0] == want
    ds["margin"][..., -1] = -1.0                 # ends misclassified: never separated
    assert tables.separated_at(ds, 0.99).isnull().all()
    assert not len(tables.norm_growth(ds, outcomes.classify(ds)))


def test_coordinate_slopes_recover_a_planted_width_exponent():
    """mean |Δa_l| = 0.1·m^b_l·t: the check's exponent per layer at every step."""
    import types
    widths, steps = np.array([32, 64, 128, 256]), np.arange(5)
    b = np.array([0.0, -0.5, 0.5])
    vals = 0.1 * widths[:, None, None] ** b[None, None, :] * steps[None, :, None]
    vals = np.broadcast_to(vals[:, None, None, None], (4, 1, 1, 2, 5, 3)).copy()
    dims = ("width", "depth", "lr", "seed", "step", "layer")
    ds = xr.Dataset({"activation_change": (dims, vals)},
                    coords={"width": widths, "depth": [3], "lr": [0.1], "seed": [0, 1],
                            "step": steps, "layer": np.arange(3)})
    keep = xr.DataArray(np.ones((4, 1, 1, 2), bool), dims=dims[:4], coords={
        "width": widths, "depth": [3], "lr": [0.1], "seed": [0, 1]})
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(parametrization="mup", init="he"),
                                grid=types.SimpleNamespace(lr_width_exponent=0.0))
    table = tables.coordinate_slopes(ds, keep, 0.1, cfg)
    assert sorted(set(table.step)) == [1, 2, 3]
    for layer, want in zip((0, 1, 2), b):
        rows = table[table.layer == layer]
        assert list(rows.exponent) == pytest.approx([want] * 3, abs=1e-6)
        assert set(rows.predicted) == {0.0}


def test_cross_entropy_networks_separate_and_their_normalised_margin_rises(tmp_path):
    """Lyu & Li's setting (cross-entropy, a homogeneous ReLU network): once
    GD separates the data its normalised margin rises and ‖θ‖ keeps growing;
    the margin record and `norm_growth` must show both."""
    import normsweep
    from normsweep import config, sweep
    from normsweep import outcomes
    text = ('name = "ce"\n[data]\nn = 16\nd = 8\nk = 3\n[train]\nloss = "cross_entropy"\n'
            'steps = 3000\n[record]\njacobian_norm = 0\n[grid]\nwidth = [32]\ndepth = [2]\n'
            'lr = [0.05]\nseed = [0, 1]\n')
    sweep.launch(config.parse(text), tmp_path / "ce")
    ds = normsweep.open_sweep(tmp_path / "ce").load()
    outcome = outcomes.classify(ds)
    assert (outcome == outcomes.FIT).all()
    table = tables.norm_growth(ds, outcome)
    row = table.iloc[0]
    assert row["networks"] == 2 and row["seeds"] == 2
    assert row["margin_at_end"] > 2 * row["margin_at_separation"] > 0
    # (log t)^{1/L}: measured 0.55 against 1/L = 0.5 over 3000 steps
    assert row["a"] == pytest.approx(0.5, abs=0.2)
    assert row["a_lo"] < row["a"] < row["a_hi"]
    # q_min grows like log t once separated (the loss falls like 1/t)
    assert 0.5 < row["margin_rate"] < 1.5


def test_stored_spectra_are_those_of_the_stored_weights(tiny_sweep):
    """sweep.nc's singular values (one `singular` dim for every cohort, NaN
    past a layer's rank) against numpy's SVD of the weights load_weights reads."""
    import normsweep
    ds = normsweep.open_sweep(tiny_sweep).load()
    assert ds.sizes["singular"] == 24 and list(ds["spectrum_step"].values) == [0, 30]
    checked = 0
    for width, depth in ((16, 2), (24, 3)):
        for lr, seed in ((float(ds["lr"][0]), 1), (float(ds["lr"][-1]), 0)):
            cell = ds.sel(width=width, depth=depth, lr=lr, seed=seed)
            if int(cell["diverged_at"]) >= 0:
                continue
            for i, which in enumerate(("initial", "final")):
                ws = normsweep.load_weights(tiny_sweep, width=width, depth=depth, lr=lr,
                                            seed=seed, which=which)
                for l, w in enumerate(ws):
                    want = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
                    got = cell["singular_values"].isel(spectrum_step=i).sel(layer=l).values
                    np.testing.assert_allclose(got[:len(want)], want, rtol=1e-5, atol=1e-6)
                    assert np.isnan(got[len(want):]).all()
                    checked += 1
            assert cell["singular_values"].sel(layer=slice(depth, None)).isnull().all()
    assert checked >= 10


def test_cumulative_first_order_part_is_layer_independent_and_matches_the_gradients(tiny_sweep):
    """Δ‖W_l‖² − Σ_t‖ΔW_l‖² (from the norm and update records) equals
    −2η·Σ_t⟨W_l, ∇_l L⟩ (from the gradient records), and is the same in
    every layer: ⟨W_l, ∇_l L⟩ is layer-independent by Euler homogeneity."""
    import normsweep
    from normsweep import config
    from normsweep import outcomes
    ds = normsweep.open_sweep(tiny_sweep).load()
    cfg = config.parse(ds.attrs["config_toml"])
    keep = outcomes.usable(outcomes.classify(ds))
    table = tables.cumulative_terms(ds, tables.layer_multipliers(ds, cfg, "standard"), keep)
    assert table is not None and len(table)
    for _, rows in table.groupby("lr"):
        first = rows["first_order"].to_numpy()
        assert np.ptp(first) <= 1e-4 * np.abs(first).max()
        np.testing.assert_allclose(first, rows["first_order_check"], rtol=1e-4)
        assert (rows["second_order"] > 0).all()
    assert tables.cumulative_terms(ds.isel(step=[0, 2, 4]), 1.0, keep) is None


def test_sharpness_table_reads_a_planted_rise_to_the_threshold():
    """λ(t) = (2/η)·(0.5 + 0.5·min(t/50, 1)) + a spike of 3× at t = 10:
    starts at 0.5 of the threshold, peaks at 3, hovers at 1 in the second
    half; a failed network is left out."""
    from normsweep import outcomes
    steps = np.arange(0, 201, 10)
    lrs = np.array([0.01, 0.1])
    shape = 0.5 + 0.5 * np.minimum(steps / 50, 1.0)
    shape[steps == 10] = 3.0
    sharp = (2 / lrs)[:, None, None] * np.broadcast_to(shape, (2, 3, len(steps)))
    dims = ("lr", "seed", "step")
    ds = xr.Dataset({"sharpness": (dims, sharp.copy())},
                    coords={"lr": lrs, "seed": [0, 1, 2], "step": steps,
                            "lr_effective": ("lr", lrs)})
    outcome = xr.DataArray(np.full((2, 3), outcomes.FIT, dtype=object), dims=dims[:2],
                           coords={"lr": lrs, "seed": [0, 1, 2]})
    outcome[1, 2] = outcomes.FAILED
    ds["sharpness"][1, 2] = 1e6                 # a failed network's nonsense: left out
    table = tables.sharpness_table(ds, outcome)
    assert list(table["networks"]) == [3, 2]
    for _, row in table.iterrows():
        assert row["at_init"] == pytest.approx(0.5)
        assert row["peak"] == pytest.approx(3.0)
        assert row["second_half"] == pytest.approx(1.0)
        assert row["second_half_q25"] == pytest.approx(1.0) == row["second_half_q75"]


def test_every_probe_has_a_grid_key_a_measurement_and_documented_records():
    """A probe is declared once (`probes.PROBES`): from that, the grid file
    takes its schedule and size keys, with their defaults and bounds; the
    dataset its records; `measure` must give it a measurement; and
    docs/schema.md must document each key and record."""
    from normsweep import config, measure, probes, schema
    docs = (Path(__file__).parent.parent / "docs" / "schema.md").read_text()
    fields = {f.name: f.default for f in dataclasses.fields(config.RecordConfig)}
    assert set(measure.MEASUREMENTS) == set(probes.PROBES)
    for name, probe in probes.PROBES.items():
        assert fields[probe.key] == probe.default, name
        assert f"`{probe.key}`" in docs or f"\n{probe.key} = " in docs, probe.key
        for record, labels in probe.records.items():
            assert schema.VARIABLES[record] == labels and f"| `{record}` |" in docs, record
        for key, (default, lo, hi) in probe.sizes.items():
            assert fields[key] == default and f"\n{key} = " in docs, key
            grid = f'name = "p"\n[record]\n{key} = {{}}\n[grid]\nwidth = [8]\ndepth = [2]\nlr = [0.1]\n'
            assert getattr(config.parse(grid.format(hi)).record, key) == hi
            with pytest.raises(GridError, match=f"record.{key} = {hi + 1}: must be an integer "
                                                f"between {lo} and {hi}"):
                config.parse(grid.format(hi + 1))
    assert config.RecordConfig().schedules() == {"jacobian": "log"}      # the defaults
    # a program holds the sizes of the probes it runs, and only those
    on = train.Program(dims=(4, 6, 3), probes=("jacobian",))
    assert on.size("jacobian_points") == 64 and on.sizes == (("jacobian_points", 64),)
    assert on != train.Program(dims=(4, 6, 3), probes=("jacobian",), sizes={"jacobian_points": 5})
    assert train.Program(dims=(4, 6, 3)).sizes == ()
    with pytest.raises(ValueError, match="jacobian_points"):
        train.Program(dims=(4, 6, 3), sizes={"jacobian_points": 5})
    with pytest.raises(ValueError, match="unknown probes"):
        train.Program(dims=(4, 6, 3), probes=("hessian",))


