"""The results folder against planted links, odd files and bad command-line
input: every case ends in a clear message and an exit status, writes
nothing through a link, and leaves what is on disk intact."""
from __future__ import annotations

import os
import resource
import shutil

import pytest
from click.testing import CliRunner

from normsweep import config, store
from normsweep.cli import main
from normsweep.errors import GridError
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
    result = invoke("analyze", root, "--boot", "20")
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
    result = invoke("analyze", tiny_copy, "--boot", "20")
    assert result.exit_code == 1
    assert "analysis is a symbolic link" in result.output and "Traceback" not in result.output
    assert list(elsewhere.iterdir()) == []


def test_a_file_size_limit_leaves_no_truncated_figure(tiny_copy):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, hard))
    try:
        result = invoke("analyze", tiny_copy, "--boot", "20")
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
        result = invoke("analyze", tiny_copy, "--boot", "20")
        assert result.exit_code == 1 and "analysis is not a folder" in result.output
        return
    tiny_copy.chmod(0o555)
    try:
        result = invoke("analyze", tiny_copy, "--boot", "20")
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


def test_a_foreign_netcdf_under_a_cohorts_name_is_named(tiny_copy, tmp_path):
    import xarray as xr
    victim = tiny_copy / "cohorts" / "width16_depth2.nc"
    victim.unlink()
    xr.Dataset({"x": ("width", [1.0])}, coords={"width": [16]}).to_netcdf(victim)
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and "width16_depth2.nc does not hold the cohort" in result.output
    assert "Traceback" not in result.output
