"""The command line: launch, resume, refusals, ls, show, help."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from normsweep.cli import main
from tests import equal
from tests.conftest import TINY, invoke, write_grid


def test_every_command_has_help_with_an_example():
    for name, command in main.commands.items():
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert "Example:" in result.output, f"{name} --help has no example"
    assert "Example:" in invoke("--help").output


def test_bad_grid_exits_2_and_writes_nothing(tmp_path):
    grid = write_grid(tmp_path, TINY.replace("width = [16, 24]", "widht = [16, 24]"))
    out = tmp_path / "out"
    result = invoke("launch", grid, "--out", out, "--quiet")
    assert result.exit_code == 2
    assert "grid.widht" in result.output and str(grid) in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_missing_grid_file_exits_2(tmp_path):
    result = invoke("launch", tmp_path / "nope.toml", "--quiet")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"cannot read {tmp_path / 'nope.toml'}: no such file" in said


def test_relaunch_skips_and_changed_settings_are_refused(tiny_copy, tmp_path):
    grid = write_grid(tmp_path, TINY)
    before = {p.name: p.stat().st_mtime_ns for p in (tiny_copy / "cohorts").iterdir()}
    result = invoke("launch", grid, "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0, result.output
    assert "0 trained, 4 already done" in result.output
    assert before == {p.name: p.stat().st_mtime_ns for p in (tiny_copy / "cohorts").iterdir()}
    with xr.open_dataset(tiny_copy / "sweep.nc") as ds:      # each launch adds its line
        assert ds.attrs["history"].count("\n") == 1
        assert ds.attrs["history"].endswith(f"normsweep launch {grid} --out {tiny_copy} --quiet")
    other = write_grid(tmp_path, TINY.replace("steps = 30", "steps = 40"), "other.toml")
    result = invoke("launch", other, "--out", tiny_copy, "--quiet")
    assert result.exit_code == 2
    assert "train.steps" in result.output and "40" in result.output and "30" in result.output
    assert before == {p.name: p.stat().st_mtime_ns for p in (tiny_copy / "cohorts").iterdir()}


def test_relaunch_with_more_depths_adds_cohorts(tiny_copy, tmp_path):
    grid = write_grid(tmp_path, TINY.replace("depth = [2, 3]", "depth = [2, 3, 4]"))
    result = invoke("launch", grid, "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0, result.output
    assert "2 trained, 4 already done" in result.output
    with xr.open_dataset(tiny_copy / "sweep.nc") as ds:
        assert ds.sizes["layer"] == 4 and list(ds.depth.values) == [2, 3, 4]
        assert ds["frob_norm"].sel(depth=3, layer=3).isnull().all()


def test_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--quiet")
    assert result.exit_code == 2 and "not a normsweep results folder" in result.output
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_ls_and_show(tiny_sweep):
    result = invoke("ls", tiny_sweep.parent)
    assert result.exit_code == 0 and "tiny" in result.output and "4/4" in result.output
    result = invoke("show", tiny_sweep)
    assert result.exit_code == 0, result.output
    assert "cohorts: 4/4 done" in result.output and "24 networks" in result.output


def test_ls_finds_sweeps_at_any_depth_and_counts_what_is_trained(tiny_sweep, tmp_path,
                                                                  monkeypatch):
    import shutil
    monkeypatch.setenv("COLUMNS", "200")        # the table's paths unabridged
    deep = tmp_path / "project" / "2026" / "tiny"
    shutil.copytree(tiny_sweep, deep)
    part = tmp_path / "part"
    shutil.copytree(tiny_sweep, part)
    (part / "cohorts" / "width24_depth3.nc").unlink()
    (tmp_path / ".hidden").mkdir()
    shutil.copytree(tiny_sweep, tmp_path / ".hidden" / "tiny")
    result = invoke("ls", tmp_path)
    assert result.exit_code == 0, result.output
    assert "project/2026/tiny" in result.output and "24/24" in result.output
    assert "part" in result.output and "18/24" in result.output and "3/4" in result.output
    assert ".hidden" not in result.output
    result = invoke("show", part)
    shown = " ".join(result.output.split())
    assert "cohorts: 3/4 done, 18/24 networks trained; to do: width24_depth3" in shown


def test_show_on_a_foreign_folder_exits_2(tmp_path):
    assert invoke("show", tmp_path).exit_code == 2


def test_killed_launch_resumes_to_the_same_sweep(tiny_sweep, tmp_path):
    """SIGKILL mid-sweep: no half-written file; a relaunch completes it and
    the result equals an uninterrupted run bit for bit."""
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "normsweep.cli", "launch", str(grid), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("cohorts/*.nc")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.glob("cohorts/*.nc"))
    assert len(done) in (1, 2, 3), "kill the launch between its first and last cohort"
    for path in out.glob("cohorts/*.nc"):
        xr.open_dataset(path).close()   # every visible file is complete
    assert not (out / "sweep.nc").exists()
    (out / "cohorts" / ".width24_depth3.nc.tmp-99999").write_bytes(b"half")   # a killed write
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"{4 - len(done)} trained, {len(done)} already done" in result.stdout
    equal.assert_folders_identical(out, tiny_sweep)
    assert not [p for p in out.rglob(".*tmp*")]


def test_float64_launch_end_to_end(tmp_path):
    """dtype = "float64" trains and stores in float64; a huge η diverges alone."""
    text = TINY.replace("steps = 30", "steps = 12\ndtype = \"float64\"").replace(
        'lr = { geomspace = [0.5, 8.0, 3] }', "lr = [0.1, 1e6]").replace(
        "width = [16, 24]", "width = [16]").replace("depth = [2, 3]", "depth = [3]").replace(
        "[model]", "").replace("[train]", "[model]\noutput = \"linear\"\n[train]")
    grid = write_grid(tmp_path, text)
    out = tmp_path / "f64"
    result = subprocess.run([sys.executable, "-m", "normsweep.cli", "launch", str(grid), "--out",
                             str(out), "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr and "overflow" not in result.stderr
    with xr.open_dataset(out / "sweep.nc") as ds:
        assert ds["frob_norm"].dtype == np.float64 and ds["loss"].dtype == np.float64
        div = ds["diverged_at"].squeeze()
        # at η = 1e6 a seed either overflows or first kills every ReLU (zero output)
        assert int(div.sel(lr=0.1).max()) == -1 and int(div.sel(lr=1e6).max()) >= 0
        assert np.isfinite(ds["loss"].sel(lr=0.1)).all()


from tests.test_config import BAD  # noqa: E402


@pytest.mark.parametrize("text,key", [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_every_bad_grid_exits_2_through_the_cli(tmp_path, text, key):
    grid = write_grid(tmp_path, text)
    out = tmp_path / "out"
    result = invoke("launch", grid, "--out", out, "--quiet")
    assert result.exit_code == 2, result.output
    assert str(grid) in result.output and key in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_sweep, tmp_path):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "new"
    result = invoke("launch", grid, "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run, nothing written" in result.output and "width24_depth3" in result.output
    assert "24 networks (24 new, 0 kept), 30 steps each, 31 recorded steps" in result.output
    said = " ".join(result.output.split())
    assert ("estimate from" in said or "uncalibrated" in said) and not out.exists()
    before = sorted(p.name for p in tiny_sweep.rglob("*"))
    result = invoke("launch", grid, "--out", tiny_sweep, "--dry-run")
    assert result.exit_code == 0 and "4 already in" in result.output
    assert sorted(p.name for p in tiny_sweep.rglob("*")) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = invoke("launch", grid, "--out", busy, "--dry-run")
    assert result.exit_code == 2 and "not a normsweep results folder" in result.output


def test_a_launch_ends_with_the_next_command(tiny_copy, tmp_path):
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0 and f"next: normsweep analyze {tiny_copy}" in result.output


def test_show_accepts_a_grid_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, TINY)
    result = invoke("show", grid)
    assert result.exit_code == 0, result.output
    assert "width [16, 24]" in result.output and "not launched" in result.output
    # the probes TINY turns on, and the default Jacobian
    flat = " ".join(result.output.split())
    assert "jacobian_norm=log, activations=log, spectra=true" in flat
    bad = write_grid(tmp_path, TINY.replace("width = [16, 24]", "widht = [16]"), "bad.toml")
    result = invoke("show", bad)
    assert result.exit_code == 2 and "grid.widht" in result.output


def test_set_overrides_the_grid_and_the_folder_records_the_effective_grid(tmp_path):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "set"
    result = invoke("launch", grid, "--out", out, "--dry-run", "--set", "train.steps=6",
                    "--set", "grid.width=8", "--set", "grid.lr=[0.1, 0.2]")
    assert result.exit_code == 0, result.output
    assert "8 networks (8 new, 0 kept), 6 steps each" in result.output and not out.exists()
    assert f"next: normsweep launch {grid} --out {out} --set train.steps=6" in result.output
    # every option, in the recorded command's fixed order, --dry-run left out
    result = invoke("launch", grid, "--dry-run", "--only", "depth=2,width=16", "--quiet",
                    "--compile-workers", "0", "--devices", "1", "--memory-budget", "1GiB",
                    "--out", out, "--set", "train.steps=6")
    assert result.output.strip().endswith(
        f"next: normsweep launch {grid} --out {out} --memory-budget 1073741824 --devices 1 "
        "--compile-workers 0 --quiet --set train.steps=6 --only depth=2,width=16"), result.output
    bad = invoke("launch", grid, "--out", out, "--set", "train.steps=six steps", "--quiet")
    assert bad.exit_code == 2 and "train.steps" in bad.output and "--set" in bad.output
    assert not out.exists()
    result = invoke("launch", grid, "--out", out, "--quiet", "--set", "train.steps=6",
                    "--set", "grid.width=8", "--set", "grid.depth=2")
    assert result.exit_code == 0, result.output
    from normsweep import config
    stored = config.load(out / "grid.toml")
    assert stored.train.steps == 6 and stored.grid.width == (8,) and stored.grid.depth == (2,)
    with xr.open_dataset(out / "sweep.nc") as ds:
        assert config.parse(ds.attrs["config_toml"]).settings() == stored.settings()
        assert ds.sizes["step"] == 7


def test_only_trains_part_of_the_grid_and_the_rest_stays_to_do(tmp_path):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "only"
    bad = invoke("launch", grid, "--out", out, "--only", "width=17", "--quiet")
    assert bad.exit_code == 2 and "grid.width" in bad.output and "[16, 24]" in bad.output
    assert not out.exists()
    result = invoke("launch", grid, "--out", out, "--quiet", "--only", "width=16,depth=3",
                    "--only", "width=24,depth=2")
    assert result.exit_code == 0, result.output
    assert "2 trained" in result.output and "2 cohorts still to do" in result.output
    assert not (out / "sweep.nc").exists()
    assert sorted(p.name for p in (out / "cohorts").glob("*.nc")) == [
        "width16_depth3.nc", "width24_depth2.nc"]
    shown = " ".join(invoke("show", out).output.split())       # unwrapped
    assert "2/4 done, 12/24 networks trained; to do: width16_depth2, width24_depth3" in shown
    result = invoke("launch", grid, "--out", out, "--quiet")
    assert "2 trained, 2 already done" in result.output and (out / "sweep.nc").exists()


def test_the_sweeps_progress_weighs_each_cohort_by_its_cost():
    from rich.progress import Progress

    from normsweep.cli import RichReporter
    progress = Progress(disable=True)
    reporter = RichReporter(progress)
    reporter.start(3, 1, {"small": 100.0, "large": 300.0})
    sweep = progress.tasks[0]
    reporter.cohort("small", 10)
    reporter.advance(5)
    assert sweep.completed == 50.0 and progress.tasks[1].completed == 5
    reporter.done("small")
    assert sweep.completed == 100.0 and "2/3 cohorts" in sweep.description
    reporter.done("large")                  # a cohort whose steps were not streamed (Dask)
    assert sweep.completed == sweep.total == 400.0 and "3/3" in sweep.description


def test_ls_shows_each_path_whole(tiny_sweep, tmp_path):
    names = [f"a_rather_long_sweep_folder_name_that_would_be_cut_{i}" for i in ("one", "two")]
    for name in names:
        shutil.copytree(tiny_sweep, tmp_path / name)
    result = invoke("ls", tmp_path)
    assert result.exit_code == 0
    cells = "".join(line.split("│")[1].strip() for line in result.output.splitlines()
                    if line.startswith("│"))
    for name in names:
        assert name in cells
