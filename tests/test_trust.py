"""Results folders that stay safe and numbers that stay right: the lock file,
the folder marker, temporaries, disk estimates, damaged and partial folders,
checksums, and clear refusals of bad input."""
from __future__ import annotations

import collections
import fcntl
import os
import re
import shutil
import warnings

import netCDF4
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import normsweep
from normsweep import config, folder, plan, resources, store, sweep
from normsweep import outcomes
from normsweep.analysis import fits, report
from normsweep.cli import RichReporter, main, parse_bytes
from normsweep.errors import GridError, RunError, SweepWarning
from tests import equal
from tests.conftest import TINY, write_grid

Usage = collections.namedtuple("usage", "total used free")


def invoke(*args):
    # wide enough that rich never wraps a path
    return CliRunner(env={"COLUMNS": "400"}).invoke(main, [str(a) for a in args],
                                                    catch_exceptions=False)


def temporaries(root):
    return [p for p in root.rglob(".*") if store.TEMP_RE.fullmatch(p.name)
            or store.LEGACY_TEMP_RE.fullmatch(p.name)]


# -- the lock file ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_file_that_leads_elsewhere_is_refused_and_its_target_untouched(
        tiny_copy, tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tiny_copy / ".lock").unlink()
    (os.symlink if kind == "symlink" else os.link)(victim, tiny_copy / ".lock")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and "not normsweep's lock file" in result.output
    assert victim.read_text() == "precious"


def test_the_folder_is_checked_while_the_lock_is_held(tmp_path, monkeypatch):
    """Check, then write, under one lock: otherwise a second launch can pass
    the check and then mix its cohorts into the first's folder."""
    held = []
    real = folder.check_folder

    def check(cfg, root):
        with open(root / ".lock", "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except OSError:
                held.append(True)
        return real(cfg, root)

    monkeypatch.setattr(folder, "check_folder", check)
    cfg = config.parse(TINY.replace("steps = 30", "steps = 3").replace(
        "width = [16, 24]", "width = [16]").replace("depth = [2, 3]", "depth = [2]"))
    sweep.launch(cfg, tmp_path / "out")
    assert held == [True]


# -- what counts as a results folder ---------------------------------------------

def test_a_folder_holding_the_users_own_grid_file_is_not_a_results_folder(tmp_path):
    """`--out .` beside one's grid.toml: refused, every file left as it was."""
    grid = write_grid(tmp_path, TINY)
    mine = {".notes.tmp-1": "draft", ".grid.toml.tmp-7": "an editor's backup", "data.csv": "1,2"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "cohorts").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("launch", grid, "--out", tmp_path, "--quiet")
    assert result.exit_code == 2 and "not a normsweep results folder" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert all((tmp_path / n).read_text() == t for n, t in mine.items())
    assert invoke("show", tmp_path).exit_code == 2


def test_only_temporaries_named_by_normsweep_are_removed(tiny_copy, tmp_path):
    ours = [tiny_copy / ".sweep.nc.normsweep-tmp-123",
            tiny_copy / "cohorts" / ".width16_depth2.nc.normsweep-tmp-9",
            tiny_copy / ".sweep.nc.tmp-99"]                   # an earlier version's
    theirs = [tiny_copy / ".mine.tmp-3", tiny_copy / ".x.normsweep-tmp-abc",
              tiny_copy / "cohorts" / ".notes.tmp"]
    for p in ours + theirs:
        p.write_text("x")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in ours)
    assert all(p.read_text() == "x" for p in theirs)


def test_a_results_folder_of_an_earlier_version_resumes_and_is_marked(tiny_copy, tmp_path):
    (tiny_copy / store.MARKER).unlink()          # grid.toml, cohorts/ and .lock remain
    assert store.is_sweep_folder(tiny_copy)
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0 and "4 already done" in result.output
    assert (tiny_copy / store.MARKER).is_file()


def test_a_refused_launch_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "a" / "b"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--quiet")
    assert result.exit_code == 2 and "1000 B free" in result.output
    assert not (tmp_path / "a").exists()


# -- the disk estimate and write failures ----------------------------------------

def test_the_disk_estimate_counts_only_what_is_left_to_write(tiny_copy, tmp_path, monkeypatch):
    cfg = config.load(write_grid(tmp_path, TINY))
    cohorts = plan.cohorts(cfg)
    n = plan.record_count(cfg.train.steps, cfg.record.steps, cfg.record.log_points)
    left = resources.disk_needed(cfg, cohorts, [], n)          # sweep.nc only
    fresh = resources.disk_needed(cfg, cohorts, cohorts, n)
    assert 0 < left < fresh
    free = (left + fresh) // 2
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * fresh, 0, free))
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0 and "4 already done" in result.output      # a resume
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tmp_path / "new", "--quiet")
    assert result.exit_code == 2 and "4 cohorts left" in result.output     # a fresh launch


def test_a_full_disk_is_named_with_the_file(tmp_path, monkeypatch):
    """HDF5 reports a full disk only as "NetCDF: HDF error"."""
    def hdf_error(self, path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise RuntimeError("NetCDF: HDF error")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", hdf_error)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: Usage(10**12, 10**12, 0) if "full" in str(p) and
                        (tmp_path / "full" / ".normsweep").exists() else real(p))
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tmp_path / "full", "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    # (the first cohort whose programs are ready is the first written)
    assert re.search(r"cohorts/width\d+_depth\d+\.nc: No space left on the device", result.output)
    assert not temporaries(tmp_path / "full")


def test_a_vanished_folder_is_named_as_such(tmp_path):
    err = store.write_failure(tmp_path / "gone" / "sweep.nc", PermissionError(13, "denied"))
    assert "the folder" in str(err) and "no longer exists" in str(err)
    assert "denied" not in str(err)


# -- damaged files -----------------------------------------------------------------

def test_every_damaged_copy_is_kept(tiny_copy, tmp_path):
    grid = write_grid(tmp_path, TINY)
    victim = tiny_copy / "cohorts" / "width16_depth3.nc"
    copies = []
    for _ in range(2):
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 3])
        copies.append(data[: len(data) // 3])
        assert invoke("launch", grid, "--out", tiny_copy, "--quiet").exit_code == 0
    kept = sorted(tiny_copy.glob("cohorts/width16_depth3.nc.damaged*"))
    assert [p.name for p in kept] == ["width16_depth3.nc.damaged", "width16_depth3.nc.damaged.1"]
    assert [p.read_bytes() for p in kept] == copies


def test_every_variable_and_coordinate_carries_a_checksum(tiny_sweep):
    for path in [tiny_sweep / "sweep.nc", *tiny_sweep.glob("cohorts/*.nc")]:
        with netCDF4.Dataset(path) as nc:
            for group in [nc, *nc.groups.values()]:
                for name, var in group.variables.items():
                    if var.dtype != str and var.ndim:
                        assert var.filters()["fletcher32"], (path.name, group.path, name)


def test_a_flipped_bit_is_caught_and_the_cohort_recomputed(tiny_sweep, tiny_copy, tmp_path):
    """A healthy network's diverged_at (-1: all bits set) with one bit
    cleared would read as diverged; the checksum makes it a damaged file."""
    victim = tiny_copy / "cohorts" / "width16_depth2.nc"
    data = bytearray(victim.read_bytes())
    # diverged_at: 3 lr × 2 seeds of int64 -1, the one run of ≥ 48 set bytes
    runs = [m.start() for m in re.finditer(rb"\xff{48,}", bytes(data))]
    assert len(runs) == 1, runs
    data[runs[0] + 8] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(RunError, match="not a readable cohort file"):
        store.read_cohort(victim)
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0 and "damaged" in result.output
    assert "1 trained, 3 already done" in result.output
    with xr.open_dataset(tiny_copy / "sweep.nc") as a, \
            xr.open_dataset(tiny_sweep / "sweep.nc") as b:
        equal.assert_sweeps_identical(a, b)


# -- reading a folder: partial, foreign, stale -------------------------------------

def test_a_partial_sweep_is_refused_or_opened_as_partial(tiny_copy):
    (tiny_copy / "sweep.nc").unlink()
    (tiny_copy / "cohorts" / "width24_depth3.nc").unlink()
    with pytest.raises(RunError, match=r"1 of 4 cohorts .*width24_depth3"):
        normsweep.open_sweep(tiny_copy)
    with pytest.warns(SweepWarning, match="partial"):
        ds = normsweep.open_sweep(tiny_copy, partial=True)
    assert ds.attrs["partial"] == 1 and ds.attrs["cohorts_missing"] == "width24_depth3"
    at = ds["diverged_at"]
    assert at.dtype == np.float64 and at.min() >= -1          # never INT64_MIN
    assert at.sel(width=24, depth=3).isnull().all() and at.sel(width=16).notnull().all()
    assert ds["loss"].sel(width=24, depth=3).isnull().all()
    assert sorted(ds["width"].values) == [16, 24] and sorted(ds["depth"].values) == [2, 3]


def test_analyze_on_a_partial_sweep_says_what_is_missing(tiny_copy):
    (tiny_copy / "sweep.nc").unlink()
    (tiny_copy / "cohorts" / "width24_depth3.nc").unlink()
    result = CliRunner().invoke(main, ["analyze", str(tiny_copy)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "partial" in result.output
    text = (tiny_copy / "analysis" / "report.md").read_text()
    assert "18 trained networks" in text and "This sweep is partial" in text
    assert "width24_depth3" in text and "6 of the grid's networks are untrained" in text


def test_a_foreign_cohort_is_left_out_with_a_warning(tiny_copy, tmp_path):
    other = tmp_path / "other"
    text = TINY.replace("width = [16, 24]", "width = [16]").replace("depth = [2, 3]", "depth = [2]")
    sweep.launch(config.parse(text.replace("steps = 30", "steps = 5"), default_name="o"), other)
    (tiny_copy / "sweep.nc").unlink()
    shutil.copy(other / "cohorts" / "width16_depth2.nc", tiny_copy / "cohorts" / "width16_depth2.nc")
    with pytest.raises(RunError, match="width16_depth2"), pytest.warns(SweepWarning):
        normsweep.open_sweep(tiny_copy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SweepWarning)
        ds = normsweep.open_sweep(tiny_copy, partial=True)
    said = " ".join(str(w.message) for w in caught)
    assert "other settings" in said and "partial" in said
    assert ds["diverged_at"].sel(width=16, depth=2).isnull().all()
    assert ds.attrs["cohorts_missing"] == "width16_depth2"


def test_a_stale_sweep_file_gives_way_to_newer_cohorts(tiny_copy):
    path = tiny_copy / "cohorts" / "width16_depth2.nc"
    newer = store.read_cohort(path)
    newer["loss"] = newer["loss"] + 1.0
    newer.attrs["cohort_id"] = "recomputed"
    store.write_netcdf(path, newer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SweepWarning)
        with pytest.raises(SweepWarning, match="does not hold the cohort files"):
            normsweep.open_sweep(tiny_copy)
    with pytest.warns(SweepWarning):
        ds = normsweep.open_sweep(tiny_copy)
    xr.testing.assert_equal(ds["loss"].sel(width=16, depth=2), newer["loss"].isel(width=0, depth=0))
    assert "width16_depth2:recomputed" in ds.attrs["cohorts"]


def test_a_fresh_sweep_file_is_opened_as_is(tiny_sweep):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SweepWarning)
        with normsweep.open_sweep(tiny_sweep) as ds:
            assert ds.encoding["source"].endswith("sweep.nc")
            assert "partial" not in ds.attrs


# -- fits: each metric over its own window ---------------------------------------------

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


# -- the report follows the parametrization -------------------------------------------

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


# -- clear errors for bad input ---------------------------------------------------------

@pytest.mark.parametrize("text,value", [("2GB", 2 * 10**9), ("2GiB", 2 * 2**30), ("512 MB", 512e6),
                                        ("1.5kB", 1500), ("4096", 4096)])
def test_memory_budget_units(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["1e400", "0.5", "inf", "nan", "-1GB", "2XB", ""])
def test_a_bad_memory_budget_exits_2(tmp_path, text):
    out = tmp_path / "out"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--memory-budget", text)
    assert result.exit_code == 2 and "--memory-budget" in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("address", ["foo://x", "tcp://host", "local:x", "host:99999",
                                     "tcp://a b:1"])
def test_a_bad_scheduler_address_exits_2_and_writes_nothing(tmp_path, address):
    out = tmp_path / "out"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--scheduler", address)
    assert result.exit_code == 2 and "--scheduler" in result.output and not out.exists()


def test_an_unreachable_scheduler_exits_1_and_writes_nothing(tmp_path, monkeypatch):
    import distributed

    def unreachable(*args, **kwargs):
        raise OSError("Timed out trying to connect to tcp://10.0.0.1:8786")

    monkeypatch.setattr(distributed, "Client", unreachable)
    out = tmp_path / "out"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--scheduler",
                    "tcp://10.0.0.1:8786", "--quiet")
    assert result.exit_code == 1 and "cannot reach the Dask scheduler" in result.output
    assert not out.exists()


def test_show_ls_and_analyze_on_a_garbage_sweep_file(tiny_copy):
    """A damaged sweep.nc is named; analyze rebuilds it from the cohorts."""
    (tiny_copy / "sweep.nc").write_bytes(b"not a netCDF file")
    result = invoke("show", tiny_copy)
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "not a readable sweep file" in said, result.output
    assert "launch again to rewrite it from the cohort files" in said
    result = invoke("analyze", tiny_copy)
    assert result.exit_code == 0 and "combining the cohort files afresh" in \
        " ".join(result.output.split()), result.output
    result = invoke("ls", tiny_copy.parent)
    assert result.exit_code == 0 and "unreadable" in result.output


def test_analyze_on_a_bad_config_toml_exits_1(tiny_copy):
    """An altered config_toml fails its checksum, and the cohorts rebuild
    the sweep; in a file without the checksum (an earlier version's) it is
    named."""
    with netCDF4.Dataset(tiny_copy / "sweep.nc", "a") as nc:
        nc.setncattr("config_toml", "name = [[[")
    result = invoke("analyze", tiny_copy)
    assert result.exit_code == 0 and "checksum" in " ".join(result.output.split())
    with netCDF4.Dataset(tiny_copy / "sweep.nc", "a") as nc:
        nc.setncattr("config_toml", "name = [[[")
        nc.delncattr("attrs_sha256")
    result = invoke("analyze", tiny_copy)
    assert result.exit_code == 1 and "config_toml is not a valid grid" in result.output


def test_rich_markup_in_names_prints_literally(tiny_sweep, tmp_path):
    from rich.console import Console
    from rich.progress import Progress

    root = tmp_path / "root"
    shutil.copytree(tiny_sweep, root / "[bold red]x")
    result = invoke("ls", root)
    assert result.exit_code == 0 and "[bold red]x" in result.output
    result = invoke("show", root / "[bold red]x")
    assert result.exit_code == 0 and "[bold red]x" in result.output
    console = Console(record=True, width=200)
    RichReporter(Progress(console=console)).warn("a[/ and [bold red]x.nc")
    assert "a[/ and [bold red]x.nc" in console.export_text()


@pytest.mark.parametrize("name", ['"tiny\\n"', '"' + "x" * 300 + '"'])
def test_a_bad_name_exits_2_and_leaves_nothing(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, TINY.replace('name = "tiny"', f"name = {name}"))
    result = invoke("launch", grid, "--quiet")
    assert result.exit_code == 2 and "name" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


@pytest.mark.parametrize("change,key", [
    (("n = 64", "n = 100000000"), "data.n"),
    (("d = 8", "d = 100000000"), "data.d"),
    (("steps = 30", "steps = 1000000000"), "record.steps"),
])
def test_a_grid_too_large_for_memory_names_the_key_to_change(tmp_path, change, key):
    text = TINY.replace(*change).replace('steps = "log"', 'steps = "all"')
    out = tmp_path / "out"
    result = invoke("launch", write_grid(tmp_path, text), "--out", out, "--memory-budget", "8GiB",
                    "--quiet")
    assert result.exit_code == 2 and f"{key} = " in result.output, result.output
    assert "memory budget" in result.output and not out.exists()


def test_a_grid_file_nested_too_deeply_or_too_large_exits_2(tmp_path):
    deep = write_grid(tmp_path, TINY + "x = " + "[" * 50_000 + "]" * 50_000 + "\n", "deep.toml")
    big = write_grid(tmp_path, TINY + "# " + "x" * (1 << 20) + "\n", "big.toml")
    for grid, fragment in ((deep, "nested too deeply"), (big, "larger than 1024 KiB")):
        result = invoke("launch", grid, "--out", tmp_path / "out", "--quiet")
        assert result.exit_code == 2 and fragment in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype,lr", [("float32", "1e-46"), ("float32", "1e-39"),
                                      ("float64", "1e-320")])
def test_a_learning_rate_below_the_dtypes_normal_numbers_is_refused(dtype, lr):
    text = TINY.replace("steps = 30", f'steps = 30\ndtype = "{dtype}"').replace(
        "lr = { geomspace = [0.5, 8.0, 3] }", f"lr = [0.1, {lr}]")
    with pytest.raises(GridError, match=r"grid\.lr.*train\.dtype"):
        config.parse(text, source="g.toml")
    config.parse(text.replace(lr, "1e-30" if dtype == "float32" else "1e-300"), source="g.toml")


def test_a_scaled_learning_rate_that_underflows_at_some_width_is_refused():
    text = TINY.replace("lr = { geomspace = [0.5, 8.0, 3] }",
                        "lr = { values = [1e-36], width_exponent = -2 }")
    with pytest.raises(GridError, match="at width 16"):
        config.parse(text, source="g.toml")
