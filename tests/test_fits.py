"""Scaling-law fits recover planted exponents, with honest intervals."""
from __future__ import annotations

import numpy as np
import xarray as xr
import pytest

from normsweep.analysis import fits, outcomes
from tests.synthetic import planted


def row(table, metric="rel_frob_dist", layer=1):
    return table[(table.metric == metric) & (table.layer == layer)].iloc[0]


def test_planted_exponents_are_recovered_within_their_interval():
    table = fits.fit_sweep(planted(0.8, -0.5, seeds=5), boot=300)
    r = row(table)
    assert r.lr_exponent_lo <= 0.8 <= r.lr_exponent_hi
    assert r.width_exponent_lo <= -0.5 <= r.width_exponent_hi
    assert r.lr_exponent == pytest.approx(0.8, abs=0.1)
    assert r.width_exponent == pytest.approx(-0.5, abs=0.1)
    assert r.prefactor == pytest.approx(0.5, rel=0.3) and r.r2 > 0.9
    assert r.n == 4 * 3 * 5 and r.layer_role == "hidden"


def test_coverage_of_the_intervals():
    hits = 0
    for rng in range(20):
        f = fits.fit_power_law(*_cell(1.0, -1.0, rng), boot=200, rng=rng)
        hits += f.b_lo <= -1.0 <= f.b_hi
    assert hits >= 15, f"95% intervals covered the truth only {hits}/20 times"


def _cell(a, b, rng, seeds=4):
    g = np.random.default_rng(rng)
    lr, width = np.array([0.01, 0.1]), np.array([32, 64, 128])
    y = 2 * lr[:, None, None] ** a * width[None, :, None] ** b
    return y * np.exp(0.2 * g.normal(size=(2, 3, seeds))), lr, width


def test_intervals_shrink_with_more_seeds():
    few = row(fits.fit_sweep(planted(0.8, -0.5, seeds=3, rng=1), boot=300))
    many = row(fits.fit_sweep(planted(0.8, -0.5, seeds=24, rng=1), boot=300))
    assert (many.width_exponent_hi - many.width_exponent_lo) < \
        0.6 * (few.width_exponent_hi - few.width_exponent_lo)


def test_diverged_networks_are_excluded_and_counted():
    ds = planted(0.8, -0.5, seeds=4, diverge=[(0, 0, 0), (3, 2, 1)])
    assert outcomes.counts(outcomes.classify(ds))["diverged"] == 2
    r = row(fits.fit_sweep(ds, boot=200))
    assert r.excluded_diverged == 2 and r.n == 4 * 3 * 4 - 2
    assert r.width_exponent == pytest.approx(-0.5, abs=0.1)


def test_one_value_on_an_axis_fits_only_the_other():
    y, lr, width = _cell(1.0, -1.0, 0)
    f = fits.fit_power_law(y[:1], lr[:1], width, boot=50)
    assert np.isnan(f.a) and f.fitted == "width" and f.b == pytest.approx(-1, abs=0.2)
    f = fits.fit_power_law(y[:, :1], lr, width[:1], boot=50)
    assert np.isnan(f.b) and f.fitted == "lr" and f.a == pytest.approx(1, abs=0.2)


def test_sign_of_the_norm_change_is_reported():
    ds = planted(1.0, -1.0)
    ds["frob_norm"][..., -1, :] = 0.9        # every norm shrank by 10%
    r = row(fits.fit_sweep(ds, boot=50), metric="rel_frob_change")
    assert r.sign == -1.0 and r.prefactor == pytest.approx(0.1, rel=1e-6)
    assert r.lr_exponent == pytest.approx(0, abs=1e-6)


def test_fit_table_as_dataset():
    table = fits.fit_sweep(planted(0.8, -0.5), boot=50)
    ds = fits.to_dataset(table)
    assert float(ds["width_exponent"].sel(metric="rel_frob_dist", depth=3, layer=1)) == \
        pytest.approx(row(table).width_exponent)


def test_lr_scaled_with_width_from_one_value_fits_the_path_only():
    """η = 0.5/m for every width: η and m are collinear, so only the exponent
    along η ∝ 1/m is identified (planted: a − ... = b_path)."""
    g = np.random.default_rng(3)
    width = np.array([32, 64, 128, 256])
    lr = (0.5 / width)[None, :]                       # (1 lr value, widths)
    y = (0.5 * width ** -0.8)[None, :, None] * np.exp(0.05 * g.normal(size=(1, 4, 4)))
    f = fits.fit_power_law(y, lr, width, boot=100)
    assert np.isnan(f.a) and "η scaled with width" in f.fitted
    assert f.b_lo <= -0.8 <= f.b_hi


def _bent(b_per_lr, seeds=4, rng=0, noise=0.05):
    g = np.random.default_rng(rng)
    lr, width = np.array([0.001, 0.01, 0.1]), np.array([32, 64, 128, 256])
    b = np.asarray(b_per_lr, float)[:, None, None]
    y = 2 * lr[:, None, None] ** 1.0 * width[None, :, None] ** b
    return y * np.exp(noise * g.normal(size=(3, 4, seeds))), lr, width


def test_local_exponents_recover_a_planted_law_and_find_one_law():
    false_alarms = covered = 0
    for rng in range(30):
        y, lr, width = _bent([-0.5, -0.5, -0.5], rng=rng)
        by_lr = fits.local_exponents(y, lr, width, "width")
        by_width = fits.local_exponents(y, lr, width, "lr")
        false_alarms += by_lr.differ + by_width.differ
        covered += ((by_lr.lo <= -0.5) & (-0.5 <= by_lr.hi)).sum()
        np.testing.assert_allclose(by_width.exponent, 1.0, atol=0.05)
        assert list(by_lr.at) == list(lr) and list(by_width.at) == list(width)
    assert false_alarms <= 3, false_alarms          # a 1% test, 60 times
    assert covered >= 0.85 * 90, covered            # 95% intervals


def test_a_width_exponent_that_drifts_with_eta_is_flagged():
    detected = 0
    for rng in range(20):
        y, lr, width = _bent([-1.0, -0.5, 0.0], rng=rng)
        local = fits.local_exponents(y, lr, width, "width")
        np.testing.assert_allclose(local.exponent, [-1.0, -0.5, 0.0], atol=0.1)
        detected += local.differ
    assert detected == 20


def test_the_schedule_gaps_name_what_a_metric_lacks():
    assert fits.schedule_gaps(np.arange(40)) == []
    gaps = fits.schedule_gaps(np.array([0, 2, 5, 10, 20]))
    assert "first_update_spec" in gaps[0] and "missing [1, 3, 4, 6, 7, 8, 9]" in gaps[1]


def test_the_whole_parameter_change_recovers_a_planted_law_in_trained_coordinates():
    ds = planted(0.8, -0.5, seeds=5)
    r = row(fits.fit_sweep(ds, boot=200), "rel_param_dist", -1)
    assert r.layer_role == "all" and r.width_exponent == pytest.approx(-0.5, abs=0.1)
    assert r.lr_exponent == pytest.approx(0.8, abs=0.1)
    # θ_l = W_l/√c_l: the layers weigh by 1/c_l
    mult = xr.DataArray([4.0, 1.0, 0.25], dims="layer")
    got = fits.derived_metrics(ds, mult)["rel_param_dist"]
    last, first = ds["frob_dist"].isel(step=-1), ds["frob_norm"].isel(step=0)
    want = np.sqrt(sum(last.isel(layer=l) ** 2 / c for l, c in enumerate([4.0, 1.0, 0.25]))
                   / sum(first.isel(layer=l) ** 2 / c for l, c in enumerate([4.0, 1.0, 0.25])))
    np.testing.assert_allclose(got.values, want.values, rtol=1e-12)


def test_a_planted_depth_exponent_is_recovered():
    covered = 0
    for rng in range(20):
        g = np.random.default_rng(rng)
        depth = np.array([2, 3, 4, 5])
        cells = np.exp(g.normal(size=(6, 1, 1)))          # a prefactor per (η, m) cell
        y = cells * depth[None, :, None] ** 0.7 * np.exp(0.05 * g.normal(size=(6, 4, 3)))
        c, lo, hi, n = fits.common_slope(y, depth)
        assert n == 72 and c == pytest.approx(0.7, abs=0.08)
        covered += lo <= 0.7 <= hi
    assert covered >= 17, covered


def test_depth_exponents_need_two_depths(tiny_sweep):
    import normsweep
    ds = normsweep.open_sweep(tiny_sweep).load()
    table = fits.depth_exponents(ds)
    assert set(table.layer_role) == {"input", "readout", "all"}
    assert (table.n > 0).all() and np.isfinite(table.depth_exponent).all()
    assert len(fits.depth_exponents(ds.sel(depth=[3]))) == 0
