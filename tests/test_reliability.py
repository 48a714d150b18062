"""Faults: damaged and foreign files, concurrent launches, interrupts, write
failures, oversized grids, and determinism under chunking."""
from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from normsweep import config, sweep, store
from normsweep.cli import main
from normsweep.errors import RunError
from tests import equal
from tests.conftest import TINY, write_grid


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def temporaries(root):
    return [p for p in root.rglob(".*") if store.TEMP_RE.fullmatch(p.name)
            or store.LEGACY_TEMP_RE.fullmatch(p.name)]


def same_sweep(a, b):
    with xr.open_dataset(a / "sweep.nc") as x, xr.open_dataset(b / "sweep.nc") as y:
        equal.assert_sweeps_identical(x, y)


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
    same_sweep(tiny_copy, tiny_sweep)


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
    same_sweep(tiny_copy, tiny_sweep)


def test_concurrent_launch_is_refused_while_the_folder_is_locked(tiny_copy, tmp_path):
    grid = write_grid(tmp_path, TINY)
    with store.folder_lock(tiny_copy):
        result = invoke("launch", grid, "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and "being written by another launch" in result.output
    assert invoke("launch", grid, "--out", tiny_copy, "--quiet").exit_code == 0


def test_lock_held_by_another_process(tiny_copy, tmp_path):
    code = ("import sys, time\nfrom pathlib import Path\nfrom normsweep import store\n"
            "with store.folder_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n"
            "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tiny_copy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
        assert result.exit_code == 1 and f"pid {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()
    # the dead holder's lock is gone
    assert invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet").exit_code == 0


def interrupt_after_first_cohort(cmd: list[str], out) -> str:
    """Runs `cmd`, sends SIGINT once a cohort file is in `out`, and returns
    its stderr, once it has exited 130 (within 2 minutes)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("cohorts/*.nc")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    return err


def test_sigint_stops_cleanly_and_says_how_to_resume(tmp_path):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "int"
    err = interrupt_after_first_cohort(
        [sys.executable, "-m", "normsweep.cli", "launch", str(grid), "--out", str(out), "--quiet"],
        out)
    assert "interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert not temporaries(out)


def test_a_ctrl_c_that_a_gc_callback_swallows_still_stops_the_launch(capsys):
    """Python drops a KeyboardInterrupt raised inside a gc callback (JAX
    registers one); the launch's next progress callback raises it again."""
    from normsweep.cli import Interrupt, InterruptibleReporter

    def collector(phase, info):
        if phase == "start":
            signal.raise_signal(signal.SIGINT)

    calls = []

    class Counting(sweep.Reporter):
        def advance(self, steps):
            calls.append(steps)

    # what it was (SIG_IGN in a process started in the background by a shell)
    before = signal.getsignal(signal.SIGINT)
    with Interrupt() as interrupt:
        reporter = InterruptibleReporter(Counting(), interrupt)
        reporter.advance(1)
        gc.callbacks.append(collector)
        try:
            gc.collect()                    # the interrupt lands in the callback: dropped
        finally:
            gc.callbacks.remove(collector)
        assert interrupt.seen
        with pytest.raises(KeyboardInterrupt):
            reporter.advance(1)
    assert calls == [1]
    assert "Traceback" not in capsys.readouterr().err      # the dropped one is not reported
    assert signal.getsignal(signal.SIGINT) is before       # restored


def test_write_failure_exits_1_and_keeps_finished_cohorts(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "full"
    real = store.write_netcdf
    calls = []

    def flaky(path, ds, groups=None):
        calls.append(path)
        if len(calls) == 2:
            raise RunError(f"cannot write {path}: No space left on device")
        return real(path, ds, groups)

    monkeypatch.setattr(store, "write_netcdf", flaky)
    result = invoke("launch", grid, "--out", out, "--quiet")
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert [p.name for p in out.glob("cohorts/*.nc")] == [calls[0].name]
    xr.open_dataset(calls[0]).close()
    assert not temporaries(out)


def test_grid_too_large_for_memory_is_a_usage_error(tmp_path):
    out = tmp_path / "big"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--memory-budget", "1KiB",
                    "--quiet")
    assert result.exit_code == 2 and "data.n = 64" in result.output and "memory budget" in result.output
    assert not out.exists()


def test_only_the_cohorts_a_launch_trains_need_to_fit_its_memory(tmp_path):
    """--only may leave out a cohort too large for this machine's budget (to
    be launched on another): the launch and its dry run check only the
    cohorts they train, and refuse the whole grid."""
    from normsweep import config, plan
    text = 'name = "wide"\n[data]\nn = 16\nd = 4\nk = 3\n[train]\nsteps = 3\n' \
        '[record]\njacobian_norm = 0\n[grid]\nwidth = [8, 2048]\ndepth = [2]\nlr = [0.1]\n'
    grid = write_grid(tmp_path, text)
    cfg = config.load(grid)
    small, large = (plan.member_bytes(cfg, c, 4) for c in plan.cohorts(cfg))
    budget = str((small + large) // 2)
    out = tmp_path / "wide"
    refused = invoke("launch", grid, "--out", out, "--memory-budget", budget, "--quiet")
    assert refused.exit_code == 2 and "width 2048" in refused.output and not out.exists()
    dry = invoke("launch", grid, "--out", out, "--memory-budget", budget, "--only", "width=8",
                 "--dry-run")
    assert dry.exit_code == 0, dry.output
    memory = dry.output.split("memory: about ")[1].split(" for")[0]
    assert memory.endswith("KiB") and float(memory.split()[0]) * 1024 <= small * 1.01
    done = invoke("launch", grid, "--out", out, "--memory-budget", budget, "--only", "width=8",
                  "--quiet")
    assert done.exit_code == 0 and "1 cohorts still to do (width2048_depth2)" in done.output


def test_grid_too_large_for_disk_is_a_usage_error(tmp_path, monkeypatch):
    import collections
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "disk"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--quiet")
    assert result.exit_code == 2 and "B free" in result.output and "cohorts left" in result.output
    assert not out.exists()


def test_results_agree_whatever_the_chunking(tmp_path):
    """A memory budget that splits every cohort into chunks changes the
    records by rounding at most, at learning rates where the dynamics are
    stable (TINY's larger rates are chaotic: there rounding grows, as any
    change of machine or version would make it grow)."""
    from normsweep import plan
    text = TINY.replace("lr = { geomspace = [0.5, 8.0, 3] }", "lr = [0.02, 0.1]") \
               .replace("width = [16, 24]", "width = [16]").replace("depth = [2, 3]", "depth = [3]")
    cfg = config.load(write_grid(tmp_path, text))
    per = max(plan.member_bytes(cfg, c, 31) for c in plan.cohorts(cfg))
    budget = int(1.5 * per)
    counts = [plan.chunking(cfg, c, 31, budget).count for c in plan.cohorts(cfg)]
    assert min(counts) >= 2, counts
    sweep.launch(cfg, tmp_path / "whole")
    sweep.launch(cfg, tmp_path / "chunked", budget_bytes=budget)
    with xr.open_dataset(tmp_path / "chunked" / "sweep.nc") as a, \
            xr.open_dataset(tmp_path / "whole" / "sweep.nc") as b:
        equal.assert_sweeps_close(a, b)

@pytest.mark.parametrize("errno_,text", [(13, "Permission denied"), (28, "No space left")])
def test_os_errors_while_writing_exit_1_and_leave_no_temporary(tmp_path, monkeypatch, errno_, text):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "ro"

    def refuse(self, path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError(errno_, text)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", refuse)
    result = invoke("launch", grid, "--out", out, "--quiet")
    assert result.exit_code == 1 and text in result.output and "Traceback" not in result.output
    assert not temporaries(out) and not list(out.glob("cohorts/*.nc"))


def test_results_folder_removed_mid_run_exits_1(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "gone"
    real = store.write_netcdf
    calls = []

    def remove_after_first(path, ds, groups=None):
        calls.append(path)
        if len(calls) == 2:
            shutil.rmtree(out)
        return real(path, ds, groups)

    monkeypatch.setattr(store, "write_netcdf", remove_after_first)
    result = invoke("launch", grid, "--out", out, "--quiet")
    assert result.exit_code == 1 and "cannot write" in result.output
    assert "no longer exists" in result.output and "Traceback" not in result.output


SLOW_COMPILE_AHEAD = """\
import runpy, sys, threading, time
from normsweep import store, work
from normsweep.errors import RunError
compile_here = work.compile_cohort
def compile_for_ten_minutes(*args, **kwargs):      # ahead: a GPU compilation, only longer
    if threading.current_thread() is not threading.main_thread():
        time.sleep(600)
    return compile_here(*args, **kwargs)
def disk_full(path, ds, groups=None):
    raise RunError(f"cannot write {path}: No space left on device")
work.compile_cohort = compile_for_ten_minutes
if sys.argv[3:] == ["full"]:            # and every write fails
    store.write_netcdf = disk_full
sys.argv = ["normsweep", "launch", sys.argv[1], "--out", sys.argv[2], "--quiet"]
runpy.run_module("normsweep.cli", run_name="__main__")
"""


def test_sigint_does_not_wait_for_a_compilation_ahead(tmp_path):
    """Ctrl-C while the next cohort compiles in the background exits at once
    (XLA cannot be stopped mid-compilation, and Python's exit would join the
    thread), with the finished cohort kept and nothing half-written."""
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "int"
    # once cohort 1 is written the launch waits for cohort 2's compilation
    # ahead, which sleeps for 600 s
    err = interrupt_after_first_cohort(
        [sys.executable, "-c", SLOW_COMPILE_AHEAD, str(grid), str(out)], out)
    # the cohorts written before the interrupt landed (one, or two where it
    # landed while the next file was being written: a write is finished first)
    done = re.search(r"interrupted: (\d+) cohort file\(s\) are complete", err)
    assert done and "Traceback" not in err, err
    assert int(done[1]) == len(list(out.glob("cohorts/*.nc"))) in (1, 2)
    assert not temporaries(out)
    assert invoke("launch", grid, "--out", out, "--quiet").exit_code == 0    # and it resumes


def test_a_failure_does_not_wait_for_a_compilation_ahead(tmp_path):
    """A run-time failure while the next cohort compiles in the background
    reports its error and exits 1 at once, as Ctrl-C exits, with nothing
    half-written."""
    out = tmp_path / "full"
    proc = subprocess.run([sys.executable, "-c", SLOW_COMPILE_AHEAD,
                           str(write_grid(tmp_path, TINY)), str(out), "full"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Error: cannot write" in proc.stderr and "No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not temporaries(out) and not list(out.glob("cohorts/*.nc"))


def test_the_seed_grids_spectra_do_not_deadlock_a_cpu(tmp_path):
    """XLA's CPU runtime ran the spectra program's independent LAPACK calls
    at once and deadlocked on this cohort of sweeps/seed.toml, every time
    (normsweep/cpu.py); a fresh process, as a user's launch is. Three steps
    and no probes still deadlock without the flag: the spectra program is
    the same."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "normsweep.cli", "launch", str(root / "sweeps" / "seed.toml"),
         "--set", "grid.width=64", "--set", "grid.depth=4", "--set", "grid.lr=[0.001, 0.1]",
         "--set", "train.steps=3", "--set", "record.jacobian_norm=0", "--set", "record.sharpness=0",
         "--out", str(tmp_path / "seed"), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with xr.open_dataset(tmp_path / "seed" / "sweep.nc") as ds:
        assert np.isfinite(ds["singular_values"].isel(spectrum_step=0).values).any()
