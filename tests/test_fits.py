"""Scaling-law fits recover planted exponents, with honest intervals."""
from __future__ import annotations

import numpy as np
import xarray as xr
import pytest

from normsweep import outcomes
from normsweep.analysis import fits
from tests.synthetic import planted


def row(table, metric="rel_frob_dist", layer=1):
    return table[(table.metric == metric) & (table.layer == layer)].iloc[0]


def test_planted_exponents_are_recovered_within_their_interval():
    table = fits.fit_sweep(planted(0.8, -0.5, seeds=5))
    r = row(table)
    assert r.lr_exponent_lo <= 0.8 <= r.lr_exponent_hi
    assert r.width_exponent_lo <= -0.5 <= r.width_exponent_hi
    assert r.lr_exponent == pytest.approx(0.8, abs=0.1)
    assert r.width_exponent == pytest.approx(-0.5, abs=0.1)
    assert r.prefactor == pytest.approx(0.5, rel=0.3) and r.r2 > 0.9
    assert r.n == 4 * 3 * 5 and r.layer_role == "hidden"


def _copies(rng, seeds=4, n_lr=4, a=1.0, b=-0.5, shared=0.2, own=0.02):
    """A planted law whose errors are shared by a seed's networks at every η
    (one W(0) per seed), as the first step's are: y = 2·η^a·m^b·e^(u + ε),
    u ~ N(0, shared²) per (width, seed), ε ~ N(0, own²) per network."""
    g = np.random.default_rng(rng)
    lr, width = np.geomspace(0.01, 0.1, n_lr), np.array([32, 64, 128, 256])
    u = shared * g.normal(size=(1, 4, seeds))
    eps = own * g.normal(size=(n_lr, 4, seeds))
    y = 2 * lr[:, None, None] ** a * width[None, :, None] ** b * np.exp(u + eps)
    return y, lr, width


def test_intervals_cover_a_law_with_errors_shared_across_lr_at_95_percent():
    trials, hits_a, hits_b = 600, 0, 0
    for rng in range(trials):
        f = fits.fit_power_law(*_copies(rng))
        hits_a += f.a_lo <= 1.0 <= f.a_hi
        hits_b += f.b_lo <= -0.5 <= f.b_hi
        assert f.n_seeds == 4
    # 95% ± 3%: the binomial sd over 600 trials is 0.9%
    assert 0.92 <= hits_b / trials <= 0.98, hits_b / trials
    assert 0.92 <= hits_a / trials <= 0.98, hits_a / trials


def test_copies_at_more_learning_rates_do_not_narrow_the_interval():
    few = fits.fit_power_law(*_copies(5, n_lr=2, own=0.0))
    many = fits.fit_power_law(*_copies(5, n_lr=5, own=0.0))
    assert many.b_hi - many.b_lo == pytest.approx(few.b_hi - few.b_lo, rel=1e-6)


def test_one_seed_gives_no_interval():
    y, lr, width = _copies(0, seeds=1)
    f = fits.fit_power_law(y, lr, width)
    assert f.n_seeds == 1 and np.isfinite(f.b) and np.isnan(f.b_lo) and np.isnan(f.b_hi)


def test_exponent_at_fixed_lr0_along_a_width_scaled_lr():
    """η = η₀·m^−1 at three η₀: the fit gives b at fixed η and b − a along η ∝ 1/m."""
    g = np.random.default_rng(4)
    width, lr0 = np.array([32, 64, 128, 256]), np.array([0.5, 1.0, 2.0])
    lr = lr0[:, None] / width[None, :]
    y = (lr[..., None] ** 0.7) * width[None, :, None] ** -0.2 * np.exp(
        0.05 * g.normal(size=(3, 4, 5)))
    f = fits.fit_power_law(y, lr, width, lr_width_exponent=-1.0)
    assert f.c == pytest.approx(f.b - f.a) and f.c_lo <= -0.9 <= f.c_hi


def _cell(a, b, rng, seeds=4):
    g = np.random.default_rng(rng)
    lr, width = np.array([0.01, 0.1]), np.array([32, 64, 128])
    y = 2 * lr[:, None, None] ** a * width[None, :, None] ** b
    return y * np.exp(0.2 * g.normal(size=(2, 3, seeds))), lr, width


def test_intervals_shrink_with_more_seeds():
    few = row(fits.fit_sweep(planted(0.8, -0.5, seeds=3, rng=1)))
    many = row(fits.fit_sweep(planted(0.8, -0.5, seeds=24, rng=1)))
    assert (many.width_exponent_hi - many.width_exponent_lo) < \
        0.6 * (few.width_exponent_hi - few.width_exponent_lo)


def test_diverged_networks_are_excluded_and_counted():
    ds = planted(0.8, -0.5, seeds=4, diverge=[(0, 0, 0), (3, 2, 1)])
    assert outcomes.counts(outcomes.classify(ds))["diverged"] == 2
    r = row(fits.fit_sweep(ds))
    assert r.excluded_diverged == 2 and r.n == 4 * 3 * 4 - 2
    assert r.width_exponent == pytest.approx(-0.5, abs=0.1)


def test_one_value_on_an_axis_fits_only_the_other():
    y, lr, width = _cell(1.0, -1.0, 0)
    f = fits.fit_power_law(y[:1], lr[:1], width)
    assert np.isnan(f.a) and f.fitted == "width" and f.b == pytest.approx(-1, abs=0.2)
    f = fits.fit_power_law(y[:, :1], lr, width[:1])
    assert np.isnan(f.b) and f.fitted == "lr" and f.a == pytest.approx(1, abs=0.2)


def test_sign_of_the_norm_change_is_reported():
    ds = planted(1.0, -1.0)
    ds["frob_norm"][..., -1, :] = 0.9        # every norm shrank by 10%
    r = row(fits.fit_sweep(ds), metric="rel_frob_change")
    assert r.sign == -1.0 and r.prefactor == pytest.approx(0.1, rel=1e-6)
    assert r.lr_exponent == pytest.approx(0, abs=1e-6)


def test_fit_table_as_dataset():
    table = fits.fit_sweep(planted(0.8, -0.5))
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
    f = fits.fit_power_law(y, lr, width)
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
    r = row(fits.fit_sweep(ds), "rel_param_dist", -1)
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


def test_regime_slices_are_labelled_by_the_grids_lr0():
    """With η = η₀/m the slices are the grid's η₀, not the rate at the
    smallest width."""
    ds = planted(0.8, -0.5, seeds=4)
    lr0 = ds["lr"].values
    ds = ds.assign_coords(lr_effective=(("width", "lr"), lr0[None, :] / ds["width"].values[:, None]))
    for _, _, _, by_lr, _ in fits.regimes(ds):
        assert by_lr.at == pytest.approx(list(lr0))


def test_the_finite_size_correction_recovers_a_planted_limit():
    """log y = log η − ½·log m + 3/√m: the plain exponent, fitted at widths
    16–256, is biased; with the correction the limit −½ and c = 3 come back,
    and the gap at the largest width is 3/(2·16)."""
    lr, width = np.array([0.01, 0.03, 0.1]), np.array([16, 32, 64, 128, 256])
    law = np.log(lr)[:, None, None] - 0.5 * np.log(width)[None, :, None] \
        + 3 / np.sqrt(width)[None, :, None]
    hits = 0
    for rng in range(200):
        y = np.exp(law + 0.02 * np.random.default_rng(rng).normal(size=(3, 5, 5)))
        limit = fits.fit_finite_width(y, width)
        hits += limit.b_lo <= -0.5 <= limit.b_hi
    assert 0.9 <= hits / 200 <= 0.99, hits                     # 95% intervals
    plain = fits.fit_power_law(y, lr, width)
    assert plain.b_hi < -0.5 or plain.b_lo > -0.5          # biased: misses the limit
    assert limit.c == pytest.approx(3, abs=0.6) and limit.n_seeds == 5
    assert limit.gap == pytest.approx(abs(limit.c) / 32)
    assert np.isnan(fits.fit_finite_width(y[:, :2], width[:2]).b)     # two widths: no fit


def _with_n(b: float, c: float, noise: float = 0.05):
    """planted(1, b) with frob_dist also ∝ n^c, over an n dim."""
    parts = []
    for i, n in enumerate((64, 256, 1024)):
        ds = planted(1.0, b, noise=noise, rng=i)
        ds["frob_dist"] = ds["frob_dist"] * float(n) ** c
        ds["spec_dist"] = ds["frob_dist"]
        parts.append(ds.expand_dims(n=[n]))
    return xr.concat(parts, "n")


def test_planted_width_and_sample_exponents_are_recovered():
    table = fits.data_size_exponents(_with_n(-0.5, 0.5))
    row = table[(table.metric == "rel_frob_dist") & (table.layer == 1)].iloc[0]
    assert row.width_exponent_lo <= -0.5 <= row.width_exponent_hi
    assert row.n_exponent_lo <= 0.5 <= row.n_exponent_hi
    assert abs(row.width_exponent + 0.5) < 0.05 and abs(row.n_exponent - 0.5) < 0.05
    assert row.sum_lo <= 0 <= row.sum_hi and row.n_seeds == 4
    # a law in m and n that is not one of m/n: the sum is told apart from 0
    other = fits.data_size_exponents(_with_n(-0.5, 1.0))
    row = other[(other.metric == "rel_frob_dist") & (other.layer == 1)].iloc[0]
    assert row.sum_lo > 0.3


def test_without_two_sample_sizes_there_is_no_trade_off_table():
    assert not len(fits.data_size_exponents(planted(1.0, -0.5)))
