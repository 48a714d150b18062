"""Compiling the next cohorts on a background thread while one trains."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import xarray as xr

from normsweep import config, sweep, work
from tests import equal
from tests.conftest import TINY, write_grid

# Three cohorts of shapes no other test compiles, so that every program is
# compiled in the child process (persistent cache off) and the counts mean
# something.
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
    [grid]
    width = [11, 13, 19]
    depth = [2]
    lr = [0.1, 0.2]
    seed = [0]
    ''', source="ahead.toml")
    sweep.launch(cfg, sys.argv[1], prefetch=int(sys.argv[2]), devices=None)
    print(json.dumps(counts))
    """)


@pytest.mark.parametrize("devices", [1, 2])
def test_the_next_cohorts_compile_ahead_and_the_launch_compiles_only_the_first(tmp_path, devices):
    """On two devices the programs are lowered against sharded placements."""
    env = ["env", "NORMSWEEP_JAX_CACHE=off",
           f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}"]
    out = subprocess.run(env + [sys.executable, "-c", COUNT_COMPILES, str(tmp_path / "run"), "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("init_cohort", "segment_cohort"):
        # the first cohort compiles as it starts, the other two ahead of it
        assert counts.get(f"main jit({name})") == 1, counts
        assert counts.get(f"ahead jit({name})") == 2, counts


def test_results_do_not_depend_on_how_many_cohorts_compile_ahead(tiny_sweep, tmp_path):
    """tiny_sweep compiled one cohort ahead (the CPU default)."""
    assert sweep.default_prefetch() == 1
    cfg = config.load(write_grid(tmp_path, TINY))
    for prefetch in (0, 3):
        out = tmp_path / f"ahead{prefetch}"
        sweep.launch(cfg, out, prefetch=prefetch)
        with xr.open_dataset(out / "sweep.nc") as a, xr.open_dataset(tiny_sweep / "sweep.nc") as b:
            equal.assert_sweeps_identical(a, b)


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
    summary = sweep.launch(cfg, out, prefetch=1)
    assert failed == summary.trained[1:]        # every cohort but the first was tried ahead
    with xr.open_dataset(out / "sweep.nc") as a, xr.open_dataset(tiny_sweep / "sweep.nc") as b:
        equal.assert_sweeps_identical(a, b)


# jax.monitoring's events of the persistent compilation cache: "cache_misses"
# counts programs compiled and written to the cache (those that took at least
# jax_persistent_cache_min_compile_time_secs), "cache_hits" programs read from it
CACHE_EVENTS = textwrap.dedent("""\
    import collections, json, sys
    import jax
    from normsweep import config, sweep
    counts = collections.Counter()
    jax.monitoring.register_event_listener(
        lambda event, **kw: counts.update([event.rsplit("/", 1)[-1]]))
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
    sweep.launch(cfg, sys.argv[1], prefetch=0)
    print(json.dumps(counts))
    """)


def test_a_relaunch_compiles_nothing_that_the_first_launch_compiled(tmp_path):
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
    assert second.get("cache_misses", 0) == 0, second      # nothing compiled and stored again
    assert second.get("cache_hits", 0) >= first["cache_misses"], second
    off = launch_in_a_fresh_process("off", "off")          # the opt-out: no cache anywhere
    assert "cache_misses" not in off and "cache_hits" not in off, off
    assert not (tmp_path / "home").exists()
