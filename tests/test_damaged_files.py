"""Damaged, partial, foreign and stale files in a results folder: each is
caught by its checksum or its name, named, kept aside, and recomputed or
left out."""
from __future__ import annotations

import re
import shutil
import warnings

import netCDF4
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import normsweep
from normsweep import config, store, sweep
from normsweep.cli import main
from normsweep.errors import RunError, SweepWarning
from tests import equal
from tests.conftest import TINY, invoke, write_grid


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


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
    equal.assert_folders_identical(tiny_copy, tiny_sweep)


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


def test_truncated_cohort_is_reported_and_recomputed(tiny_sweep, tiny_copy, tmp_path):
    victim = tiny_copy / "cohorts" / "width16_depth3.nc"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    result = CliRunner().invoke(main, ["launch", str(write_grid(tmp_path, TINY)), "--out",
                                       str(tiny_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "width16_depth3.nc" in result.output and "damaged" in result.output
    assert "1 trained, 3 already done" in result.output
    assert (tiny_copy / "cohorts" / "width16_depth3.nc.damaged").exists()
    equal.assert_folders_identical(tiny_copy, tiny_sweep)


def test_cohort_of_another_grid_is_refused_by_name(tiny_copy, tmp_path):
    other = tmp_path / "other"
    text = TINY.replace("width = [16, 24]", "width = [16]").replace("depth = [2, 3]", "depth = [2]")
    sweep.launch(config.parse(text.replace("steps = 30", "steps = 5"), default_name="o"), other)
    target = tiny_copy / "cohorts" / "width16_depth2.nc"
    shutil.copy(other / "cohorts" / "width16_depth2.nc", target)
    before = target.read_bytes()
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1
    assert "width16_depth2.nc" in result.output and "other settings" in result.output
    assert target.read_bytes() == before


def test_stray_file_is_reported_and_not_combined(tiny_sweep, tiny_copy, tmp_path):
    shutil.copy(tiny_copy / "cohorts" / "width16_depth2.nc", tiny_copy / "cohorts" / "extra.nc")
    result = CliRunner().invoke(main, ["launch", str(write_grid(tmp_path, TINY)), "--out",
                                       str(tiny_copy), "--quiet"])
    assert result.exit_code == 0
    assert "extra.nc is not a cohort of this grid" in result.output
    equal.assert_folders_identical(tiny_copy, tiny_sweep)


def test_a_foreign_netcdf_under_a_cohorts_name_is_named_and_kept(tiny_copy, tmp_path):
    victim = tiny_copy / "cohorts" / "width16_depth2.nc"
    victim.unlink()
    xr.Dataset({"x": ("width", [1.0])}, coords={"width": [16]}).to_netcdf(victim)
    foreign = victim.read_bytes()
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    said = " ".join(result.output.split())           # unwrapped
    assert result.exit_code == 0, result.output
    assert "width16_depth2.nc: not a cohort file" in said
    assert (tiny_copy / "cohorts" / "width16_depth2.nc.damaged").read_bytes() == foreign
    assert "Traceback" not in result.output


def test_a_flipped_attribute_byte_is_caught_moved_aside_and_recomputed(tiny_sweep, tiny_copy,
                                                                      tmp_path):
    """HDF5 refuses the damaged attribute (AttributeError from netCDF4):
    every command names the file instead of a traceback."""
    import normsweep
    victim = tiny_copy / "cohorts" / "width16_depth2.nc"
    flip(victim, victim.read_bytes().index(b"normsweep sweep tiny") + 2)
    for args in (["show", tiny_copy], ["ls", tiny_copy.parent]):
        result = invoke(*args)
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    with pytest.warns(Warning, match="width16_depth2.nc"):
        with pytest.raises(RunError, match="cohorts are not on disk"):
            normsweep.open_sweep(tiny_copy)
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "moved to width16_depth2.nc.damaged and recomputing" in said
    with xr.open_dataset(tiny_copy / "sweep.nc") as a, xr.open_dataset(tiny_sweep / "sweep.nc") as b:
        np.testing.assert_array_equal(a["frob_norm"].values, b["frob_norm"].values)


def test_an_altered_attribute_fails_its_checksum(tiny_sweep, tiny_copy, tmp_path):
    """An attribute changed in place (HDF5 checks no attribute values): the
    grid recorded in the file no longer matches its digest."""
    import netCDF4
    victim = tiny_copy / "cohorts" / "width24_depth2.nc"
    with netCDF4.Dataset(victim, "a") as nc:
        nc.setncattr("config_toml", nc.getncattr("config_toml").replace("steps = 30",
                                                                          "steps = 31"))
    with pytest.raises(RunError, match="do not match their checksum"):
        store.read_cohort(victim)
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "checksum" in said and "width24_depth2.nc.damaged" in said
    with xr.open_dataset(tiny_copy / "sweep.nc") as a, xr.open_dataset(tiny_sweep / "sweep.nc") as b:
        np.testing.assert_array_equal(a["frob_norm"].values, b["frob_norm"].values)


def test_damaged_weights_are_named_and_recomputed(tiny_sweep, tiny_copy, tmp_path):
    import normsweep
    victim = tiny_copy / "cohorts" / "width24_depth3.nc"
    original = victim.read_bytes()
    point = dict(width=24, depth=3, lr=0.5, seed=0)
    damaged = False
    for offset in range(len(original) - 1, len(original) // 2, -97):   # the group is written last
        flip(victim, offset)
        try:
            store.read_cohort(victim)
            normsweep.load_weights(tiny_copy, **point)
            store.read_cohort(victim, weights=True)
        except RunError:
            try:
                store.read_cohort(victim)       # the trajectories still read: only weights hit
                damaged = True
                break
            except RunError:
                pass
        victim.write_bytes(original)
    assert damaged, "no single flip damaged the weights alone"
    with pytest.raises(RunError, match="width24_depth3.nc"):
        store.read_cohort(victim, weights=True)
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "width24_depth3.nc.damaged" in said, result.output
    for a, b in zip(normsweep.load_weights(tiny_copy, **point),
                    normsweep.load_weights(tiny_sweep, **point)):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_sweep_nc_is_rebuilt_from_intact_cohorts(tiny_sweep, tiny_copy):
    import normsweep
    victim = tiny_copy / "sweep.nc"
    flip(victim, victim.read_bytes().index(b"normsweep sweep tiny") + 2)
    with pytest.warns(Warning, match="sweep.nc"):
        ds = normsweep.open_sweep(tiny_copy).load()
    with xr.open_dataset(tiny_sweep / "sweep.nc") as ref:
        np.testing.assert_array_equal(ds["frob_norm"].values, ref["frob_norm"].values)


def test_a_sweep_nc_normsweep_did_not_write_is_moved_aside(tmp_path):
    """A stray marker makes a folder look like a results folder: its own
    sweep.nc is kept, moved aside, not overwritten."""
    root = tmp_path / "looks-like"
    root.mkdir()
    (root / store.MARKER).write_text(store.MARKER_TEXT)
    xr.Dataset({"mine": ("x", [1.0, 2.0])}).to_netcdf(root / "sweep.nc")
    theirs = (root / "sweep.nc").read_bytes()
    small = TINY.replace("width = [16, 24]", "width = [8]").replace("depth = [2, 3]", "depth = [2]")
    result = invoke("launch", write_grid(tmp_path, small.replace("steps = 30", "steps = 3")),
                    "--out", root, "--quiet")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "moved to sweep.nc.damaged" in said, result.output
    assert (root / "sweep.nc.damaged").read_bytes() == theirs
    with xr.open_dataset(root / "sweep.nc") as ds:
        assert "frob_norm" in ds
