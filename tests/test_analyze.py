"""`normsweep analyze` on a real tiny sweep, and the scripts in examples/."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import normsweep
from normsweep import outcomes
from normsweep.analysis import fits, report, tables, theory
from tests import synthetic
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["metric", "layer", "lr_exponent", "lr_exponent_lo", "lr_exponent_hi",
            "width_exponent", "width_exponent_lo", "width_exponent_hi", "prefactor", "r2", "n"]


def test_analyze_writes_every_output(analyzed):
    root, output = analyzed
    out = root / "analysis"
    for name in ("report.md", "fits.csv", "fits.nc", "init_norms.png", "stability.png",
                 "scaling_rel_frob_dist.png", "per_step_identity.png", "trajectory_frob_norm.png",
                 "init.csv", "stability.csv", "runs.csv"):
        assert (out / name).stat().st_size > 0, name
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 24 and set(runs.outcome) <= {"fit", "training", "failed", "diverged"}
    init = pd.read_csv(out / "init.csv")
    assert {"layer", "width", "frob", "frob_theory", "spec", "spec_finite"} <= set(init.columns)
    stable = pd.read_csv(out / "stability.csv")
    assert list(stable.columns) == ["width", "depth", "largest_stable_lr"] and len(stable) == 4
    table = pd.read_csv(out / "fits.csv")
    assert set(REQUIRED) <= set(table.columns)
    assert set(fits.METRICS) == set(table.metric)
    per_layer = len(fits.METRICS) - len(fits.NETWORK_METRICS)
    assert len(table) == per_layer * (2 + 3) + len(fits.NETWORK_METRICS) * 2   # depths 2 and 3
    whole = table[table.metric == "rel_param_dist"]
    assert list(whole.layer) == [-1, -1] and set(whole.layer_role) == {"all"}
    with xr.open_dataset(out / "fits.nc") as ds:
        assert "width_exponent" in ds and ds.sizes["metric"] == len(fits.METRICS)
    assert "rel_frob_dist" in output and "width exponent" in output


def test_the_report_renders_from_its_tables_alone(analyzed, tmp_path):
    """report.md is a function of the CSV tables and summary.json in
    analysis/: copied on their own, away from the sweep, they give it back
    byte for byte; and every table the summary names is on disk."""
    import json
    import shutil

    from normsweep.analysis import render
    out = analyzed[0] / "analysis"
    summary = json.loads((out / "summary.json").read_text())
    assert {"fits", "init", "runs", "stability", "identity", "first_step", "regimes",
            "balance"} <= set(summary["tables"])
    alone = tmp_path / "tables"
    alone.mkdir()
    for name in summary["tables"]:
        shutil.copy(out / f"{name}.csv", alone)
    shutil.copy(out / "summary.json", alone)
    assert sorted(p.suffix for p in alone.iterdir()) == [".csv"] * len(summary["tables"]) \
        + [".json"]
    assert render.render_folder(alone) == (out / "report.md").read_text()


def test_a_table_the_summary_does_not_name_is_not_read(analyzed, tmp_path):
    """A CSV left over from an earlier analysis (here a kernel table) does
    not enter the report."""
    import shutil

    from normsweep.analysis import render
    alone = tmp_path / "tables"
    shutil.copytree(analyzed[0] / "analysis", alone)
    (alone / "kernel.csv").write_text("networks,ratio\n3,0.5\n")
    assert render.render_folder(alone) == (analyzed[0] / "analysis" / "report.md").read_text()


def test_report_answers_each_part_with_numbers(analyzed):
    root, _ = analyzed
    text = (root / "analysis" / "report.md").read_text()
    for heading in ("Norms at initialisation", "During training", "Per iteration",
                    "Well-trained networks", "Stability", "Scaling laws",
                    "Is one power law enough?", "How the norms move, signed"):
        assert heading in text
    # the tiny sweep's 3 learning rates span lazy to chaotic: the slices differ, and
    # its log schedule of 31 records over 30 steps records every early step
    regimes = text.split("Is one power law enough?")[1]
    assert "width exponent at each η" in regimes and "η₀ 0.5:" in regimes
    assert "Record schedule" not in regimes
    assert "√(2m)" in text and "Bai–Yin" in text
    assert "−2η⟨W, ∇L⟩ + η²‖∇L‖²" in text
    assert "no finite minimiser" in text


def test_identity_holds_in_a_real_sweep(tiny_sweep):
    ds = xr.open_dataset(tiny_sweep / "sweep.nc").load()
    check = tables.identity_check(ds.where(ds.diverged_at < 0))
    assert check["pairs"] > 100
    assert check["identity_rel_max"] < 1e-4
    assert check["layer_spread_p90"] < 1e-3


def test_init_table_matches_theory(tiny_sweep):
    from normsweep import config
    ds = xr.open_dataset(tiny_sweep / "sweep.nc").load()
    table = tables.init_numbers(ds, config.parse(ds.attrs["config_toml"]))
    hidden = table[table.layer == "hidden"]
    assert len(hidden) == 2 and list(hidden.width) == [16, 24]
    assert (abs(table.frob / table.frob_theory - 1) < 0.1).all()


def test_init_table_counts_each_matrix_once(tiny_sweep):
    """W_l(0) depends on the seed and l: the input layer of depths 2 and 3 is
    one matrix per seed, however its norms round in each depth's program."""
    from normsweep import config
    ds = xr.open_dataset(tiny_sweep / "sweep.nc").load()
    at = dict(depth=3, layer=0)
    for name in ("frob_norm", "spec_norm"):         # the depth-3 program's, a few ulps off
        ds[name].loc[at] = ds[name].loc[at].values * (1 + 3e-7)
    table = tables.init_numbers(ds, config.parse(ds.attrs["config_toml"]))
    seeds = ds.sizes["seed"]
    count = {(row.layer, row.width): row.n for row in table.itertuples()}
    for width in ds["width"].values:
        assert count["input", width] == count["hidden", width] == seeds
        assert count["readout", width] == 2 * seeds        # each depth's readout is its own
    shallow = ds["frob_norm"].isel(step=0, lr=0).sel(depth=2, layer=0, width=16)
    assert table[(table.layer == "input") & (table.width == 16)].frob.item() == \
        pytest.approx(float(shallow.mean()))


def test_theory_values():
    assert theory.frobenius(256, 256, 2 / 256) == pytest.approx((2 * 256) ** 0.5, rel=1e-4)
    for m, want in ((64, 2.75), (256, 2.80), (1024, 2.82)):
        assert theory.spectral_finite(m, m, 2 / m) == pytest.approx(want, abs=0.01)
    assert theory.spectral_edge(256, 256, 2 / 256) == pytest.approx(2 * 2**0.5)


def test_outcomes_classification(tiny_sweep):
    ds = xr.open_dataset(tiny_sweep / "sweep.nc").load()
    out = outcomes.classify(ds)
    c = outcomes.counts(out)
    assert sum(c.values()) == ds.diverged_at.size
    last, first = ds.loss.isel(step=-1), ds.loss.isel(step=0)
    stuck = (ds.grad_norm.isel(step=-1).fillna(0) == 0).all("layer")
    fit = ds.accuracy.isel(step=-1) >= outcomes.FIT_ACCURACY
    failed = ((last >= first) | (stuck & ~fit)) & (ds.diverged_at < 0)
    assert bool(((out == outcomes.FAILED) == failed).all())


def test_a_stuck_network_is_failed_even_when_its_loss_fell():
    """All ReLUs dead: the gradient is exactly 0 and, with a linear output,
    the loss n/2 can be below the initial one; that is no 'still training'."""
    ds = synthetic.planted(0.5, -0.5, seeds=2)
    grad = ds["grad_norm"].values.copy()
    grad[0, 0, 0, 0, -1, :] = 0.0                      # stuck at the last step
    grad[1, 0, 0, 0, -1, 0] = 0.0                      # one layer at 0 is not stuck
    ds["grad_norm"] = (ds["grad_norm"].dims, grad)
    out = outcomes.classify(ds).isel(depth=0, lr=0, seed=0)
    assert out.values[0] == outcomes.FAILED and out.values[1] == outcomes.TRAINING


@pytest.fixture(scope="module")
def one_width_sweep(tmp_path_factory):
    """A sweep with one width: the degenerate case of every width-exponent fit."""
    from normsweep import config, sweep
    root = tmp_path_factory.mktemp("onew") / "onew"
    sweep.launch(config.parse(TINY, overrides=["grid.width=16", "train.steps=12"]), root)
    return root


@pytest.mark.parametrize("one_width", [False, True], ids=["tiny", "one-width"])
@pytest.mark.parametrize("script,args", [
    ("trajectories.py", ["--depth", "3", "--layer", "1"]),
    ("init_vs_theory.py", []),
    ("exponent_table.py", []),
    ("collapse.py", ["--depth", "3", "--layer", "1"]),
])
def test_example_scripts_run(request, tmp_path, script, args, one_width):
    sweep_dir = request.getfixturevalue("one_width_sweep" if one_width else "tiny_sweep")
    out = tmp_path / "fig.png"
    cmd = [sys.executable, str(ROOT / "examples" / script), str(sweep_dir), *args]
    if script != "exponent_table.py":
        cmd += ["--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if script == "exponent_table.py":
        assert "width exponent b" in result.stdout and "η exponent a" in result.stdout
        assert ("–" in result.stdout) == one_width     # no width exponent from one width
        assert "nan" not in result.stdout.lower()
    else:
        assert out.stat().st_size > 1000


def test_python_api_launches_with_overrides_and_analyzes(tmp_path):
    import normsweep
    text = TINY.replace("width = [16, 24]", "width = [8]").replace("depth = [2, 3]", "depth = [3]")
    summary = normsweep.launch(text, tmp_path / "api", overrides=["train.steps=12"])
    assert summary.cohorts == 1 and summary.networks == 6 and summary.trained == ["width8_depth3"]
    ds = normsweep.open_sweep(summary.root)
    assert ds.sizes["step"] == 13 and ds.attrs["config_toml"].startswith("# <string> with --set")
    result = normsweep.analyze(summary.root)
    assert result.report.exists() and "## 1." in result.report.read_text()
    assert {"metric", "width_exponent"} <= set(result.table.columns)
    with pytest.raises(normsweep.GridError, match="grid.width"):
        normsweep.launch(text, tmp_path / "bad", overrides=["grid.width=[0]"])
    assert not (tmp_path / "bad").exists()


def test_balance_is_the_signed_change_of_each_layer(tiny_sweep):
    import numpy as np

    import normsweep
    ds = normsweep.open_sweep(tiny_sweep).load()
    keep = outcomes.usable(outcomes.classify(ds))
    got = tables.balance(ds, 1.0, keep)
    depth = got["summary"]["depth"]
    f = ds["frob_norm"].sel(depth=depth).where(keep.sel(depth=depth)).values   # w, lr, seed, t, l
    change = f[..., -1, :] - f[..., 0, :]
    for layer in range(depth):
        want = np.nanmedian(change[..., layer])
        assert float(got["table"]["change"][layer]) == pytest.approx(want, rel=1e-2)
        moved = np.nanmedian(f[..., -1, layer] ** 2 - f[..., 0, layer] ** 2)
        assert float(got["table"]["squared_change"][layer]) == pytest.approx(moved, rel=1e-2)
    assert list(got["by_lr"]["lr"]) == ds["lr"].values.tolist()
    assert 0 <= got["summary"]["spread_median"] <= 2 and got["moved"].dims[-1] == "layer"


def test_stable_ranks_match_an_svd_of_the_stored_weights(tiny_sweep):
    import numpy as np

    import normsweep
    from normsweep import config
    ds = normsweep.open_sweep(tiny_sweep).load()
    one = ds.isel(lr=[0], seed=[1])
    keep = one["diverged_at"] < 0
    cfg = config.parse(ds.attrs["config_toml"])
    got = tables.stable_ranks(one, cfg, keep)
    lr = float(ds["lr"].values[0])
    for which, column in (("initial", "init"), ("final", "end")):
        ws = normsweep.load_weights(tiny_sweep, width=24, depth=3, lr=lr, seed=1, which=which)
        for layer, w in enumerate(ws):
            s = np.linalg.svd(np.float64(w), compute_uv=False)
            row = got[(got.width == 24) & (got.layer == layer)].iloc[0]
            assert float(row[column]) == pytest.approx((s**2).sum() / s[0] ** 2, rel=2e-3)
    w0 = normsweep.load_weights(tiny_sweep, width=24, depth=3, lr=lr, seed=1, which="initial")
    w1 = normsweep.load_weights(tiny_sweep, width=24, depth=3, lr=lr, seed=1, which="final")
    s = np.linalg.svd(np.float64(w1[1] - w0[1]), compute_uv=False)
    row = got[(got.width == 24) & (got.layer == 1)].iloc[0]
    assert float(row["change"]) == pytest.approx((s**2).sum() / s[0] ** 2, rel=2e-3)
    assert float(row["theory"]) == pytest.approx(24 / 4, rel=0.2)     # m/4, finite-size


def test_first_fit_step_is_the_first_recorded_step_at_the_accuracy(tiny_sweep):
    import numpy as np

    import normsweep
    ds = normsweep.open_sweep(tiny_sweep).load()
    got = tables.first_fit_step(ds, 0.5).values
    acc, steps = ds["accuracy"].values, ds["step"].values
    want = np.full(acc.shape[:-1], np.nan)
    for idx in np.ndindex(*acc.shape[:-1]):
        hit = np.flatnonzero(acc[idx] >= 0.5)
        if len(hit):
            want[idx] = steps[hit[0]]
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(want).any() and np.isnan(want).any()     # some fit, some never did


def test_a_one_width_sweep_gets_no_plot_against_width(one_width_sweep, tmp_path):
    import shutil

    import normsweep
    root = tmp_path / "onew"
    shutil.copytree(one_width_sweep, root)
    result = normsweep.analyze(root)
    assert not (root / "analysis" / "scaling_rel_frob_dist.png").exists()
    assert "One width: no width exponent is identified" in result.report.read_text()
    assert all(p.exists() for p in result.figures)


def test_the_layer_that_moves_most_is_the_largest_move_either_way(tiny_sweep):
    """When every layer shrinks, the largest relative move is the largest
    shrink, not (as a signed argmax would say) the smallest."""
    ds = normsweep.open_sweep(tiny_sweep).load()
    depth = int(ds["depth"].max())
    shrink = xr.DataArray([0.9, 0.5, 0.99], dims="layer", coords={"layer": [0, 1, 2]})
    last = ds["frob_norm"].isel(step=0) * shrink.reindex(layer=ds["layer"], fill_value=1.0)
    ds["frob_norm"].loc[dict(step=ds["step"].values[-1])] = last
    keep = xr.ones_like(ds["diverged_at"], dtype=bool)
    moved = tables.balance(ds, 1.0, keep)
    moved = moved["summary"]
    assert moved["depth"] == depth == 3
    assert moved["moves_most"] == 1 and moved["moves_most_change"] == pytest.approx(-0.5)


def test_identity_figure_pairs_each_change_with_its_own_prediction(tiny_sweep):
    from normsweep.analysis import figures
    ds = normsweep.open_sweep(tiny_sweep).load()
    keep = outcomes.usable(outcomes.classify(ds))
    check = tables.identity_check(ds.where(keep))
    assert check["measured"].dims != check["predicted"].dims      # broadcasting reorders
    measured, predicted = figures.identity_pairs(check)
    ok = np.isfinite(measured) & np.isfinite(predicted)
    scale = np.abs(measured[ok]).max()
    assert ok.sum() > 100
    assert np.median(np.abs(measured[ok] - predicted[ok])) < 1e-4 * scale


def test_a_recorded_coordinate_check_that_cannot_be_shown_is_explained(tiny_copy, monkeypatch):
    from normsweep.analysis import report
    monkeypatch.setattr(tables, "coordinate_lr", lambda ds, keep: None)
    text = report.analyze(tiny_copy).report.read_text()
    assert "Coordinate check" in text and "at no η₀ does every network of depth 3" in text


def test_first_step_terms_beside_their_closed_form(tiny_sweep):
    """⟨W_l, ∇L⟩ at init is the same in every layer (Euler) and the closed
    form is the theory's (tested against simulation in test_theory)."""
    from normsweep import config
    ds = normsweep.open_sweep(tiny_sweep).load()
    cfg = config.parse(ds.attrs["config_toml"])
    table = tables.first_step_terms(ds, cfg)
    assert list(table.width) == [16, 16, 16, 24, 24, 24]
    for width, rows in table.groupby("width"):
        means = list(rows["grad_dot_weight"])
        assert max(means) - min(means) < 1e-3 * max(abs(v) for v in means)
        dims = (cfg.data.d, width, width, cfg.data.k)
        closed = theory.first_order_init("mse", "softmax", "standard", "he", dims, cfg.data.n)
        assert float(rows["closed_form"].iloc[0]) == pytest.approx(closed, rel=1e-3)


def test_the_report_opens_with_the_answer_read_from_its_tables(analyzed, tiny_sweep):
    """The first screen: at most ten lines before section 1, each number
    one of a table's (fits.csv, the init numbers, the outcome counts)."""
    import re

    import normsweep
    from normsweep import config
    from normsweep import outcomes
    from normsweep.analysis import tables

    root, _ = analyzed
    text = (root / "analysis" / "report.md").read_text()
    head = text.split("## 1.")[0]
    answer = head.split("**The answer in brief**")[1].strip().splitlines()
    assert len([line for line in answer if line.startswith("- ")]) <= 10
    table = pd.read_csv(root / "analysis" / "fits.csv")
    one = table[(table.metric == "rel_first_step") & (table.depth == 3)
                & (table.layer_role == "input")].iloc[0]
    step_line = next(line for line in answer if line.startswith("- **One step"))
    said = re.search(r"input m\^([+-]\d\.\d\d) \[([+-]\d\.\d\d), ([+-]\d\.\d\d)\]", step_line)
    assert [float(v) for v in said.groups()] == pytest.approx(
        [one.width_exponent_at_lr0, one.width_exponent_at_lr0_lo,
         one.width_exponent_at_lr0_hi], abs=0.006)
    assert f"theory {one.theory_width_exponent:+.2g}" in step_line
    ds = normsweep.open_sweep(tiny_sweep)
    init = tables.init_numbers(ds, config.parse(ds.attrs["config_toml"]))
    hidden = init[(init.layer == "hidden") & (init.width == init.width.max())].iloc[0]
    assert f"‖W‖_F = {hidden.frob:.3g} (theory {hidden.frob_theory:.3g})" in head
    counts = outcomes.counts(ds["outcome"])
    assert (f"{counts['fit']} fit, {counts['training']} still training, {counts['failed']} "
            f"failed, {counts['diverged']} diverged") in head



def rendered(analyzed, block, fit_table=None, **summary) -> str:
    """One block of the template, rendered from the tiny sweep's tables with
    `fit_table` in place of fits.csv and `summary` over summary.json; the
    extrapolation table follows the fits as `report.compute` makes it."""
    from normsweep.analysis import render
    t, s = render.read_folder(analyzed[0] / "analysis")
    s.update(summary)
    if fit_table is not None:
        t["fits"] = fit_table
        lazy = report.lazy_extrapolation(fit_table, s["parametrization"], s["init"],
                                         s["lr_width_exponent"])
        t.pop("lazy", None)
        if lazy is not None and len(lazy):
            t["lazy"] = lazy
    return render.render(t, s, block=block)


def fit_rows(roles, param="standard", p=0.0):
    """Fit rows as `fits.fit_sweep` gives them: a measured −0.5 [−0.6, −0.4]
    everywhere, beside the table's own prediction column."""
    from normsweep.analysis import theory
    rows = [{"metric": m, "depth": 3, "layer": i, "layer_role": r, "lr_exponent": 1.0,
             "lr_exponent_lo": 0.9, "lr_exponent_hi": 1.1, "sign": 1.0, "r2": 0.9, "n": 20,
             "n_seeds": 3,
             "width_exponent": -0.5, "width_exponent_lo": -0.6, "width_exponent_hi": -0.4,
             "width_exponent_at_lr0": -0.5, "width_exponent_at_lr0_lo": -0.6,
             "width_exponent_at_lr0_hi": -0.4,
             "theory_width_exponent": theory.predict(m, r, param, "he", p, 3)}
            for m in ("rel_frob_dist", "rel_spec_dist", "first_update_spec")
            for i, r in enumerate(roles)]
    import pandas as pd
    return pd.DataFrame(rows)


def test_first_step_fits_keep_networks_that_failed_only_later(tiny_sweep):
    with xr.open_dataset(tiny_sweep / "sweep.nc") as ds:
        ds = ds.load()
    before = fits.fit_sweep(ds)
    late = ds.copy(deep=True)
    late["diverged_at"].loc[dict(width=16, depth=3, seed=0)] = 20    # diverged after step 10
    after = fits.fit_sweep(late)
    key = ["metric", "depth", "layer"]
    b, a = before.set_index(key), after.set_index(key)
    for metric in fits.WINDOWS:
        assert (a.loc[metric].n == b.loc[metric].n).all(), metric
        assert (a.loc[metric].excluded_diverged == 0).all()
    # every network that did not diverge in 10 steps is in them, the failed ones too
    assert (b.loc["first_update_spec"].n == 12).all()           # per depth
    kept = int(outcomes.usable(outcomes.classify(ds)).sel(width=16, depth=3, seed=0).sum())
    assert kept > 0
    assert (a.loc["rel_frob_dist"].loc[3].n == b.loc["rel_frob_dist"].loc[3].n - kept).all()
    assert (a.loc["rel_frob_dist"].loc[3].excluded_diverged == 3).all()


@pytest.mark.parametrize("param,p,expect,absent", [
    ("standard", -1.0, ["standard parametrization", "lazy training"], ["implied"]),
    ("standard", 0.0, ["implied under η ∝ 1/m", "leaves the stable range"], []),
    ("ntk", 0.0, ["NTK parametrization", "| rel_frob_dist | 3 | 0 (input) | -0.50 [-0.60, -0.40] "
                  "| -0.5 | yes |"], ["-1.5"]),
    ("mup", 0.0, ["μP", "feature learning", "| rel_spec_dist | 3 | 1 (hidden) | -0.50 [-0.60, "
                  "-0.40] | +0.0 | no |"], []),
    ("mup", -1.0, ["training slows with width", "| rel_frob_dist | 3 | 1 (hidden) | -0.50 "
                   "[-0.60, -0.40] | -1.5 | no |"], ["implied"]),
])
def test_the_report_compares_with_the_predictions_of_its_parametrization(
        analyzed, param, p, expect, absent):
    from normsweep.analysis import theory
    rows = fit_rows(["input", "hidden", "readout"], param, p)
    text = rendered(analyzed, "theory", rows, parametrization=param, lr_width_exponent=p,
                    regime=theory.regime(param, "he", p))
    for fragment in expect:
        assert fragment in text, (fragment, text)
    for fragment in absent:
        assert fragment not in text, (fragment, text)


def test_the_per_step_prose_names_what_is_equal_across_layers(analyzed):
    standard = rendered(analyzed, "iteration")
    assert "every layer's squared norm moves by the same amount" in standard
    for param in ("ntk", "mup"):
        text = rendered(analyzed, "iteration", parametrization=param)
        assert "Δ‖W_l‖_F²/c_l is the same for every layer" in text
        assert "same amount" not in text
    first = rendered(analyzed, "iteration", fit_rows(["input", "hidden", "readout"], "ntk"),
                     parametrization="ntk", lr_width_exponent=0.0)
    assert "Prediction for the NTK parametrization at width_exponent = 0: -0.5" in first
    assert "layer 1: -0.50 [-0.60, -0.40]" in first
