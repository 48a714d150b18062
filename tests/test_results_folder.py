"""`ResultsFolder.status`: the one rule for which cohorts of a grid are on
disk, asked by launch, the dry run, open_sweep, show and ls alike."""
from __future__ import annotations

import shutil
import warnings

import pytest
from click.testing import CliRunner

from normsweep import config, folder, plan
from normsweep.cli import main
from normsweep.folder import ResultsFolder
from tests.conftest import TINY, write_grid


def states(status):
    return {c.cohort.name: c.state for c in status.cohorts}


def test_a_finished_folder_is_done_whole(tiny_sweep):
    status = ResultsFolder(tiny_sweep).status()
    assert set(states(status).values()) == {folder.DONE}
    assert status.kept == status.config.grid.size and status.stray == ()
    assert status.done == [c.name for c in plan.cohorts(status.config)]


def test_every_state_is_told_apart(tiny_copy):
    cohorts = tiny_copy / "cohorts"
    (cohorts / "width16_depth3.nc").unlink()                                   # missing
    (cohorts / "width24_depth2.nc").write_bytes(b"not netCDF")                 # damaged
    shutil.copy(cohorts / "width16_depth2.nc", cohorts / "width24_depth3.nc")  # another cohort's
    shutil.copy(cohorts / "width16_depth2.nc", cohorts / "width99_depth2.nc")  # no cohort: stray
    status = ResultsFolder(tiny_copy).status()
    assert states(status) == {"width16_depth2": folder.DONE, "width16_depth3": folder.MISSING,
                              "width24_depth2": folder.DAMAGED,
                              "width24_depth3": folder.FOREIGN}
    by_name = {c.cohort.name: c for c in status.cohorts}
    assert "width=24, depth=3" in by_name["width24_depth3"].reason
    assert "width24_depth2.nc" in by_name["width24_depth2"].reason
    assert [p.name for p in status.stray] == ["width99_depth2.nc"]
    assert status.kept == by_name["width16_depth2"].cohort.size


def test_a_grown_grid_finds_the_earlier_networks_growable(tiny_sweep):
    grown = config.parse(TINY.replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    small = config.parse(TINY)
    status = ResultsFolder(tiny_sweep).status(grown)
    assert set(states(status).values()) == {folder.GROWABLE}
    assert status.kept == small.grid.size and grown.grid.size == small.grid.size * 3 // 2
    # and the other way: a smaller grid is done in the grown folder's files
    assert ResultsFolder(tiny_sweep).status(small).kept == small.grid.size


def test_open_sweep_show_and_the_dry_run_agree_with_status(tiny_copy, tmp_path):
    import normsweep
    (tiny_copy / "cohorts" / "width24_depth2.nc").write_bytes(b"not netCDF")
    status = ResultsFolder(tiny_copy).status()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = normsweep.open_sweep(tiny_copy, partial=True)
    assert ds.attrs["partial"] == 1 and "width24_depth2" in ds.attrs["cohorts_missing"]
    assert any("width24_depth2.nc" in str(w.message) for w in caught)
    shown = CliRunner().invoke(main, ["show", str(tiny_copy)])
    said = " ".join(shown.output.split())
    assert f"cohorts: {len(status.done)}/4 done, {status.kept}/" in said
    assert "damaged:" in said and "width24_depth2.nc" in "".join(shown.output.split())
    grid = write_grid(tmp_path, TINY)
    dry = CliRunner().invoke(main, ["launch", str(grid), "--out", str(tiny_copy), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"{status.config.grid.size - status.kept} new, {status.kept} kept" in " ".join(
        dry.output.split())


def test_the_dry_run_refuses_a_file_of_another_cohort_as_the_launch_does(tiny_copy, tmp_path):
    cohorts = tiny_copy / "cohorts"
    shutil.copy(cohorts / "width16_depth2.nc", cohorts / "width24_depth3.nc")
    grid = write_grid(tmp_path, TINY)
    runs = [CliRunner().invoke(main, ["launch", str(grid), "--out", str(tiny_copy), *extra])
            for extra in (["--dry-run"], ["--quiet"])]
    for run in runs:
        assert run.exit_code == 1, run.output
        assert "does not hold the cohort width=24, depth=3" in " ".join(run.output.split())
    assert (cohorts / "width16_depth2.nc").read_bytes() == (cohorts / "width24_depth3.nc"
                                                             ).read_bytes()


def test_writes_stay_inside_real_folders(tiny_copy, tmp_path):
    place = ResultsFolder(tiny_copy)
    place.write_text(tiny_copy / "analysis" / "note.md", "x")
    assert (tiny_copy / "analysis" / "note.md").read_text() == "x"
    with pytest.raises(ValueError):
        place.write_text(tmp_path / "elsewhere.md", "x")
    with pytest.raises(ValueError):
        place.write_text("analysis/deeper/note.md", "x")
