"""Interrupts and failures at run time: Ctrl-C, a full disk and write errors
stop a launch cleanly (exit 130 or 1), keep the finished cohorts, leave no
temporary, and do not wait for a compilation ahead."""
from __future__ import annotations

import collections
import gc
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import xarray as xr

from normsweep import store, sweep
from normsweep.errors import RunError
from tests.conftest import TINY, invoke, temporaries, write_grid


Usage = collections.namedtuple("usage", "total used free")


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


def before_second_write(monkeypatch, act) -> list:
    """`store.write_netcdf` calls `act(path)` before its second write; the
    paths it was called with."""
    real, calls = store.write_netcdf, []

    def write(path, ds, groups=None):
        calls.append(path)
        if len(calls) == 2:
            act(path)
        return real(path, ds, groups)

    monkeypatch.setattr(store, "write_netcdf", write)
    return calls


def test_write_failure_exits_1_and_keeps_finished_cohorts(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "full"

    def full(path):
        raise RunError(f"cannot write {path}: No space left on device")

    calls = before_second_write(monkeypatch, full)
    result = invoke("launch", grid, "--out", out, "--quiet")
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert [p.name for p in out.glob("cohorts/*.nc")] == [calls[0].name]
    xr.open_dataset(calls[0]).close()
    assert not temporaries(out)


def test_results_folder_removed_mid_run_exits_1(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "gone"
    before_second_write(monkeypatch, lambda path: shutil.rmtree(out))
    result = invoke("launch", grid, "--out", out, "--quiet")
    assert result.exit_code == 1 and "cannot write" in result.output
    assert "no longer exists" in result.output and "Traceback" not in result.output


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
