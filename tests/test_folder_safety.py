"""The results folder against planted links, odd files and bad command-line
input: every case ends in a clear message and an exit status, writes
nothing through a link, and leaves what is on disk intact."""
from __future__ import annotations

import os
import resource
import shutil

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from normsweep import config, store
from normsweep.cli import main
from normsweep.errors import GridError, RunError
from tests.conftest import TINY, write_grid


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def temporaries(root):
    return [p for p in root.rglob(".*") if store.TEMP_RE.fullmatch(p.name)]


@pytest.fixture(scope="module")
def analyzed_copy(tiny_sweep, tmp_path_factory):
    """A copy of the tiny sweep whose analysis/ holds, before `analyze`, a
    link under every name analyze writes, each to a file outside the folder."""
    root = tmp_path_factory.mktemp("planted") / "tiny"
    shutil.copytree(tiny_sweep, root)
    outside = tmp_path_factory.mktemp("outside")
    names = ["report.md", "fits.csv", "fits.nc", "init_norms.png", "stability.png",
             "per_step_identity.png", "scaling_rel_frob_dist.png", "balance.png",
             "spectrum.png", "margin.png", "jacobian.png", "trajectories_frob_norm.png"]
    (root / "analysis").mkdir()
    for name in names:
        (outside / name).write_text("precious")
        (root / "analysis" / name).symlink_to(outside / name)
    result = invoke("analyze", root)
    return root, outside, names, result


def test_analyze_writes_no_file_through_a_planted_link(analyzed_copy):
    root, outside, names, result = analyzed_copy
    assert result.exit_code == 0, result.output
    assert all((outside / name).read_text() == "precious" for name in names)
    written = [p for p in (root / "analysis").iterdir() if p.name in names and not p.is_symlink()]
    assert {"report.md", "fits.csv", "fits.nc", "init_norms.png"} <= {p.name for p in written}
    assert not temporaries(root)


def test_analyze_refuses_a_linked_analysis_folder(tiny_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tiny_copy / "analysis").symlink_to(elsewhere)
    result = invoke("analyze", tiny_copy)
    assert result.exit_code == 1
    assert "analysis is a symbolic link" in result.output and "Traceback" not in result.output
    assert list(elsewhere.iterdir()) == []


def test_a_file_size_limit_leaves_no_truncated_figure(tiny_copy):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, hard))
    try:
        result = invoke("analyze", tiny_copy)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert result.exit_code == 1, result.output
    assert "file-size limit" in result.output and "cannot write" in result.output
    assert "Traceback" not in result.output
    for png in (tiny_copy / "analysis").glob("*.png"):     # whole PNGs only
        assert png.read_bytes()[-8:] == b"IEND\xaeB`\x82", png
    assert not temporaries(tiny_copy)


def test_analyze_of_a_read_only_folder_exits_1_naming_it(tiny_copy):
    if os.geteuid() == 0:       # root writes anyway: make analysis/ a file instead
        (tiny_copy / "analysis").write_text("not a folder")
        result = invoke("analyze", tiny_copy)
        assert result.exit_code == 1 and "analysis is not a folder" in result.output
        return
    tiny_copy.chmod(0o555)
    try:
        result = invoke("analyze", tiny_copy)
    finally:
        tiny_copy.chmod(0o755)
    assert result.exit_code == 1 and "cannot write" in result.output


def test_analyze_of_an_empty_folder_is_a_usage_error(tmp_path):
    result = invoke("analyze", tmp_path)
    assert result.exit_code == 2 and "not a normsweep results folder" in result.output


def test_a_linked_cohorts_folder_is_refused_and_its_target_untouched(tiny_copy, tmp_path):
    other = tmp_path / "other-cohorts"
    shutil.move(tiny_copy / "cohorts", other)
    (tiny_copy / "cohorts").symlink_to(other)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    (tiny_copy / "sweep.nc").unlink()
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and "cohorts is a symbolic link" in result.output
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    assert not (tiny_copy / "sweep.nc").exists()


@pytest.mark.parametrize("override, said", [
    ("train.steps=5\n", "control character"),
    ('train.steps=5\ninit = "width"', "control character"),
    ("train.steps=5\r", "control character"),
    ("grid.lr=" + "[" * 2000 + "0.1" + "]" * 2000, "nested more than"),
    ("a.b.c.d.e.f.g.h.i.j=1", "nested more than"),
], ids=["newline", "second-line", "carriage-return", "deep-value", "deep-key"])
def test_set_refuses_control_characters_and_deep_nesting(tmp_path, override, said):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "out"
    result = invoke("launch", grid, "--out", out, "--set", override, "--quiet")
    assert result.exit_code == 2 and said in result.output, result.output
    assert not out.exists()
    with pytest.raises(GridError, match=said):      # the Python API's `overrides` too
        config.load(grid, [override])


def test_a_key_set_twice_is_refused(tmp_path):
    grid = write_grid(tmp_path, TINY)
    result = invoke("launch", grid, "--dry-run", "--set", "train.steps=5",
                    "--set", "train.steps=6")
    assert result.exit_code == 2 and "set twice" in result.output


def test_the_recorded_grid_parses_back_whatever_the_source_name(tmp_path):
    odd = tmp_path / "odd\nname.toml"
    odd.write_text(TINY)
    cfg = config.load(odd, ["train.steps=5"])
    assert config.parse(cfg.text).train.steps == 5


def test_only_naming_an_axis_twice_is_refused(tmp_path):
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tmp_path / "o",
                    "--only", "width=16,width=24", "--quiet")
    assert result.exit_code == 2 and "names width twice" in result.output
    assert not (tmp_path / "o").exists()


def test_out_below_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tmp_path / "file" / "sub",
                    "--quiet")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output


def test_a_fifo_lock_is_refused_by_name(tiny_copy, tmp_path):
    (tiny_copy / ".lock").unlink()
    os.mkfifo(tiny_copy / ".lock")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and ".lock is not a regular file" in result.output


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


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


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
