"""Compiling the next cohorts on threads while one trains (`compile_ahead.CompileAhead`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import xarray as xr

from normsweep import compile_ahead, config, resources, sweep, work
from tests import equal
from tests.conftest import TINY, write_grid

# Four cohorts of shapes no other test compiles, two depths at each of two
# widths (one program per width), so that every program is compiled in the
# child process (persistent cache off) and the counts mean something.
COUNT_COMPILES = textwrap.dedent("""\
    import collections, json, sys, threading
    import jax
    from normsweep import config, sweep
    counts = collections.Counter()

    def listener(event, duration, **kw):
        if event.endswith("backend_compile_duration") and "_cohort" in kw.get("fun_name", ""):
            where = "main" if threading.current_thread() is threading.main_thread() else "ahead"
            counts[f"{where} {kw['fun_name']}"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    cfg = config.parse('''
    name = "ahead"
    [data]
    n = 24
    d = 5
    k = 3
    [train]
    steps = 7
    programs = "width"
    [grid]
    width = [11, 13]
    depth = [2, 3]
    lr = [0.1, 0.2]
    seed = [0]
    ''', source="ahead.toml")
    sweep.launch(cfg, sys.argv[1], compile_workers=int(sys.argv[2]), devices=None)
    print(json.dumps(counts))
    """)


@pytest.mark.parametrize("devices", [1, 2])
def test_cohorts_compile_ahead_and_no_program_compiles_twice(tmp_path, devices):
    """On two devices the programs are lowered against sharded placements.
    The two cohorts of a width share their programs: whichever thread
    comes second waits for the first's compilation, and compiles nothing."""
    env = ["env", "NORMSWEEP_JAX_CACHE=off",
           f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}"]
    out = subprocess.run(env + [sys.executable, "-c", COUNT_COMPILES, str(tmp_path / "run"), "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("init_cohort", "segment_cohort"):
        # the launching thread compiles the first cohort it takes (none is
        # ready yet), the thread the others it reaches first: each program once
        main, ahead = counts.get(f"main jit({name})", 0), counts.get(f"ahead jit({name})", 0)
        assert main + ahead == 2 and ahead >= 1, counts


def test_results_do_not_depend_on_how_many_cohorts_compile_ahead(tiny_sweep, tmp_path):
    """tiny_sweep compiled on one thread ahead (the CPU default)."""
    assert compile_ahead.default_compile_workers(10) == 1
    cfg = config.load(write_grid(tmp_path, TINY))
    for workers in (0, 3):
        out = tmp_path / f"ahead{workers}"
        sweep.launch(cfg, out, compile_workers=workers)
        equal.assert_folders_identical(out, tiny_sweep)


def test_a_program_per_width_gives_a_program_per_cohorts_results(tiny_sweep, tmp_path):
    """tiny_sweep trains each (width, depth) in its own program (the
    default); one program per width, serving both depths, gives the same
    records to rounding, and the same weights."""
    cfg = config.load(write_grid(tmp_path, TINY), ["train.programs=width"])
    out = tmp_path / "per-width"
    sweep.launch(cfg, out)
    with xr.open_dataset(out / "sweep.nc") as a, xr.open_dataset(tiny_sweep / "sweep.nc") as b:
        assert a.attrs["config_fingerprint"] != b.attrs["config_fingerprint"]
        equal.assert_sweeps_close(a, b, rtol=1e-4)
    for cohort in ("width16_depth2", "width24_depth3"):
        with xr.open_dataset(out / "cohorts" / f"{cohort}.nc", group="weights") as a, \
                xr.open_dataset(tiny_sweep / "cohorts" / f"{cohort}.nc", group="weights") as b:
            for name in a.data_vars:
                equal.assert_record_close(a[name].values, b[name].values, name, rtol=1e-4)


def test_a_compilation_ahead_that_fails_is_left_to_the_cohort_itself(tiny_sweep, tmp_path,
                                                                      monkeypatch):
    failed, compile_here = [], work.compile_cohort

    def broken(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            return compile_here(*args, **kwargs)         # the cohort's own compilation
        failed.append(args[1].name)
        raise RuntimeError("compilation ahead failed")

    monkeypatch.setattr(work, "compile_cohort", broken)
    cfg = config.load(write_grid(tmp_path, TINY))
    out = tmp_path / "broken"
    summary = sweep.launch(cfg, out, compile_workers=1)
    assert failed and set(failed) <= set(summary.trained) and len(summary.trained) == 4
    equal.assert_folders_identical(out, tiny_sweep)


# jax.monitoring's events of the persistent compilation cache: "cache_misses"
# counts programs compiled and written to the cache (every one: normsweep sets
# jax_persistent_cache_min_compile_time_secs to 0), "cache_hits" programs read
# from it; "exported" counts the programs traced and exported (`programs`)
CACHE_EVENTS = textwrap.dedent("""\
    import collections, json, sys
    import jax
    import jax.export
    from normsweep import config, sweep
    counts = collections.Counter()
    jax.monitoring.register_event_listener(
        lambda event, **kw: counts.update([event.rsplit("/", 1)[-1]]))
    export = jax.export.export

    def counted(*args, **kwargs):
        counts["exported"] += 1
        return export(*args, **kwargs)

    jax.export.export = counted
    cfg = config.parse('''
    name = "cache"
    [data]
    n = 24
    d = 5
    k = 3
    [train]
    steps = 6
    [grid]
    width = [17]
    depth = [3]
    lr = [0.1, 0.2]
    seed = [0]
    ''', source="cache.toml")
    sweep.launch(cfg, sys.argv[1], compile_workers=0)
    print(json.dumps(counts))
    """)


def test_a_relaunch_traces_and_compiles_nothing_that_the_first_launch_did(tmp_path):
    def launch_in_a_fresh_process(out, cache):
        env = dict(os.environ, NORMSWEEP_JAX_CACHE=cache, HOME=str(tmp_path / "home"))
        run = subprocess.run([sys.executable, "-c", CACHE_EVENTS, str(tmp_path / out)],
                             capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout.strip().splitlines()[-1])

    cache = str(tmp_path / "cache")
    first = launch_in_a_fresh_process("first", cache)
    second = launch_in_a_fresh_process("second", cache)
    assert first.get("cache_misses", 0) >= 2, first        # init and segment, at least
    assert first["exported"] == 2, first                   # and kept beside the cache
    assert second.get("cache_misses", 0) == 0, second      # nothing compiled and stored again
    assert second.get("cache_hits", 0) >= first["cache_misses"], second
    assert "exported" not in second, second                # nor traced: read back
    # damaged programs are traced and exported again, to the same modules
    kept = sorted((tmp_path / "cache" / "normsweep-programs").glob("*.bin"))
    assert len(kept) == 2
    for path in kept:
        path.write_bytes(b"damaged")
    again = launch_in_a_fresh_process("again", cache)
    assert again["exported"] == 2 and again.get("cache_misses", 0) == 0, again
    off = launch_in_a_fresh_process("off", "off")          # the opt-out: no cache anywhere
    assert "cache_misses" not in off and "cache_hits" not in off, off
    assert not (tmp_path / "home").exists()
    # and the traced programs (cache off) compute what the exported ones do, to the bit
    with xr.open_dataset(tmp_path / "first" / "sweep.nc") as want:
        for out in ("second", "again", "off"):
            with xr.open_dataset(tmp_path / out / "sweep.nc") as got:
                equal.assert_sweeps_identical(got, want)


def test_the_compile_threads_run_at_once_and_hand_out_every_cohort_once():
    calls, lock = [], threading.Lock()
    together = threading.Barrier(3, timeout=30)     # broken unless 3 compile at the same time

    def compile_one(i):
        with lock:
            calls.append(i)
            first = len(calls) <= 3
        if first:
            together.wait()
        return float(i)

    ahead = compile_ahead.CompileAhead(8, compile_one, workers=3)
    handed = [ahead.next() for _ in range(8)]
    assert sorted(i for i, _ in handed) == list(range(8))
    # a cohort the threads compiled comes with its seconds; one that none had
    # started when nothing was ready is handed out to be compiled by the caller
    assert sorted(i for i, s in handed if s is not None) == sorted(calls)
    assert all(s == i for i, s in handed if s is not None)
    assert not together.broken


def test_a_closed_pool_starts_no_compilation_and_a_failed_one_is_left_to_the_caller():
    started, release = [], threading.Event()

    def compile_one(i):
        started.append(i)
        release.wait(30)
        if i == 0:
            raise RuntimeError("compilation failed")
        return 1.0

    ahead = compile_ahead.CompileAhead(5, compile_one, workers=2)
    deadline = time.monotonic() + 30
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ahead.next() == (2, None)     # nothing ready: the next one, to compile here
    ahead.close()
    release.set()
    # the two in flight finish; the failed one is handed out to compile again
    assert sorted([ahead.next(), ahead.next()]) == [(0, None), (1, 1.0)]
    for thread in threading.enumerate():
        if thread.name.startswith(compile_ahead.COMPILE_THREAD):
            thread.join(30)
    assert compile_ahead.compiling_ahead() == 0 and sorted(started) == [0, 1]   # 3 and 4 never started


@pytest.mark.parametrize("cores, free_gib, cohorts, want", [
    (16, 128, 20, 15),      # one per core but the launching thread's
    (16, 4, 20, 4),         # as many as the host's free memory holds
    (16, 128, 3, 3),        # no more than there are cohorts
    (1, 128, 20, 1),        # at least one
])
def test_the_compile_pool_is_sized_to_the_host(monkeypatch, cores, free_gib, cohorts, want):
    monkeypatch.setattr(compile_ahead.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: set(range(cores)),
                        raising=False)
    monkeypatch.setattr(compile_ahead, "available_memory", lambda: free_gib * resources.COMPILE_BYTES)
    assert compile_ahead.default_compile_workers(cohorts) == want


def test_available_memory_is_what_the_host_reports():
    free = resources.available_memory()
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < free <= total


SCHEDULED = """
name = "strides"
[data]
n = 12
d = 3
k = 2
[train]
steps = 9
[record]
jacobian_norm = 3
jacobian_points = 5
sharpness = 2
[grid]
width = [9]
depth = [2]
lr = [0.1]
"""


def test_grids_that_differ_only_in_a_probe_stride_share_their_programs():
    """A probe's stride picks which records it measures, an input of the
    compiled program: a second grid that changes only strides (and the
    parametrization, a traced per-member input) compiles nothing; one that
    changes a probe's size compiles again."""
    import jax

    from normsweep import plan

    def compiles(text: str) -> int:
        cfg = config.parse(text, source="strides.toml")
        cohort = plan.cohorts(cfg)[0]
        steps = plan.record_steps(cfg.train.steps, cfg.record.steps, cfg.record.log_points)
        names = []

        def listener(event, duration, **kw):
            if event.endswith("backend_compile_duration") and "_cohort" in kw.get("fun_name", ""):
                names.append(kw["fun_name"])

        # the persistent cache off (a hit there compiles nothing either), so
        # that a count of 0 says the in-memory jit cache served the program
        persistent = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)
        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            work.compile_cohort(cfg, cohort, *work.training_data(cfg), steps, 2**30)
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)
            jax.config.update("jax_enable_compilation_cache", persistent)
        return len(names)

    assert compiles(SCHEDULED) == 2                    # init and segment, never seen before
    strides = SCHEDULED.replace("jacobian_norm = 3", 'jacobian_norm = "log"').replace(
        "sharpness = 2", "sharpness = 4").replace("[grid]", '[model]\nparametrization = "ntk"'
                                                  "\n[grid]")
    assert compiles(strides) == 0
    assert compiles(SCHEDULED.replace("jacobian_points = 5", "jacobian_points = 4")) == 2


def test_a_kept_program_is_found_only_by_what_traces_it_alike(monkeypatch, tmp_path):
    """The artifact's name digests what the trace reads: another shape, dtype,
    Program or linalg setting finds another file; other values the same.
    (Host arrays only: nothing compiles while the cache folder is changed.)"""
    import jax
    import numpy as np

    from normsweep import linalg, programs, train

    prog = train.Program(dims=(3, 5, 2))
    args = (np.zeros((4, 3), np.float32), np.ones(2, np.float32))

    def path(program=prog, args=args):
        return programs.artifact_path(train.init_cohort, (program, None), args)

    prior = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    try:
        base = path()
        assert base.parent == tmp_path / "normsweep-programs"
        assert path(args=(np.ones((4, 3), np.float32), args[1])) == base         # values
        assert path(args=(np.zeros((5, 3), np.float32), args[1])) != base        # a shape
        assert path(args=(args[0], np.ones(2, np.int32))) != base                # a dtype
        assert path(program=train.Program(dims=(3, 5, 2), lanczos_steps=11)) != base
        monkeypatch.setattr(linalg, "EXACT_MAX", linalg.EXACT_MAX + 1)
        assert path() != base
    finally:
        jax.config.update("jax_compilation_cache_dir", prior)
