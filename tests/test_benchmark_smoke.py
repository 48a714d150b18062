"""The benchmark script still runs (tiny sizes; no timing is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every part of the benchmark at its smoke sizes: (its output, its figures)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke",
                             "--json", str(out)], capture_output=True, text=True, timeout=600,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(out.read_text())


def test_benchmark_smoke(smoke):
    result, figures = smoke
    assert figures["matmul_flops"] > 0 and figures["cohorts"][0]["net_steps_per_s"] > 0
    assert figures["compilations_for_3_lr_cohorts"] == 2     # init and segment, once
    assert set(figures["compile_split"][0]["programs"]) == {"init", "segment"}
    assert figures["compile_ahead"]["seconds_with"] > 0 and figures["compile_ahead"]["cohorts"] == 2
    whole = figures["sweep"]
    assert whole["cohorts"] == 2 and 0 < whole["split_s"]["train (steps)"] < whole["wall_s"]
    assert whole["split_s"]["compile"] + whole["compile_ahead_s"] > 0
    assert whole["split_s"]["write"] > 0        # each cohort's file
    programs = figures["programs"]
    assert [c["width"] for c in programs["cohorts"]] == [8, 12]
    assert programs["kernels"]["segment"] == sum(c["kernels"]["segment"]
                                                 for c in programs["cohorts"]) > 0
    assert 0 < whole["training_share"] < 1 and whole["steps_only_wall_s"] > 0
    assert set(whole["wall_over_training"]) == {"cold cache", "warm cache"}
    assert all(ratio > 1 for ratio in whole["wall_over_training"].values())
    # the cold launch compiled what the warm one found in the cache: more CPU time
    cpu = whole["cpu_s"]
    assert 0 < cpu["warm cache"] < cpu["cold cache"] and cpu["cores"] >= 1
    assert "recording" in result.stdout and "peak memory" in result.stdout
    split = figures["compile_split"][0]
    assert split["compile_s"] > 0 and split["second_run_s"] > 0
    assert split["next_cohort_compile_s"] > 0
    # the smoke preset traces its compilation: the compiler's events, per program
    assert {"init", "segment"} <= set(split["compiler_events"])
    assert sum(e["seconds"] for e in split["compiler_events"]["segment"].values()) > 0
    every = figures["profile"][0]["thread_s_per_step"]["every step"]
    steps = "steps (the loop of a record's step and those to the next)"
    assert every[steps] > 0
    assert every["record: spectral norms (Lanczos, small Gram matrices)"] > 0
    assert figures["profile"][0]["thread_s_per_step"]["first+last, twice the steps"][steps] > 0
    long = figures["long"][0]
    from normsweep import plan
    assert long["records"] == len(plan.record_steps(long["steps"], "log", 64))
    assert long["seconds"] > 0 and long["fraction_of_matmul"] > 0 and "long run" in result.stdout


def test_benchmark_runs_the_parts_asked_for(tmp_path, smoke):
    from normsweep import linalg

    bench = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke"]
    out = tmp_path / "bench.json"
    # the smoke grid's first cohort alone, from a file (--grid)
    grid = tmp_path / "one.toml"
    grid.write_text(_benchmarks_module("bench").compile_ahead_grid([8], [2], 32, 5))
    result = subprocess.run(bench + ["--parts", "sweep,programs", "--grid", str(grid),
                                     "--one-launch", "--unroll", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert not {"cohorts", "compile_ahead", "compilations_for_3_lr_cohorts"} & set(figures)
    assert "peak memory" not in result.stdout
    # one launch: its own split, and no steps-only launch
    assert figures["sweep"]["launching_thread_s"]["train"] > 0
    assert "split_s" not in figures["sweep"] and "recording only the first" not in result.stdout
    # each cohort of the launch, logged as it is written
    assert result.stderr.count(" written") == figures["sweep"]["cohorts"]
    # --unroll reaches the processes it measures: the programs part compiles
    # in one of its own, and rolled loops there are fewer kernels than the
    # package's unrolling (the full smoke run's)
    assert figures["sweep"]["grid"] == "one" and figures["sweep"]["cohorts"] == 1
    assert figures["unroll"] == 1 and smoke[1]["unroll"] == linalg.UNROLL > 1
    [rolled], unrolled = figures["programs"]["cohorts"], smoke[1]["programs"]["cohorts"][0]
    assert rolled["cohort"] == unrolled["cohort"] == "width8_depth2"
    assert rolled["kernels"]["segment"] < unrolled["kernels"]["segment"]


def test_benchmark_refuses_bad_arguments(monkeypatch, capsys):
    # in this process: the script refuses before it measures anything
    bench = _benchmarks_module("bench")
    for args, message in ((["--parts", "table,memroy"], "unknown memroy; allowed: table, precision"),
                          (["--unroll", "0"], "--unroll: 0 is not a positive integer")):
        monkeypatch.setattr(sys, "argv", ["bench.py", "--smoke"] + args)
        with pytest.raises(SystemExit) as exit_:
            bench.main()
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err


def _benchmarks_module(name: str):
    """A module of benchmarks/ (not a package), imported from its folder."""
    import importlib
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_profile_attributes_each_kernel_to_the_function_that_wrote_it(tmp_path):
    import jax
    import jax.numpy as jnp

    xprof = _benchmarks_module("xprof")

    def product(a):
        return jnp.matmul(a, a.T)

    def total(a):
        return jnp.sum(jnp.sin(a))

    def caller(a):
        return product(a), total(a)

    f = jax.jit(caller)
    a = jnp.ones((256, 256))
    frames = xprof.source_frames(f.lower(a).compile().as_text())
    assert frames.module == "jit_caller"

    def name(frame):        # "test_….<locals>.product:12" -> "product"
        return frame.rsplit(":", 1)[0].rsplit(".", 1)[-1]

    stacks = {name(stack[0]): [name(f) for f in stack] for stack in frames.stacks.values()
              if stack}
    # innermost call first, then its caller
    assert stacks["product"][:2] == ["product", "caller"]
    assert stacks["total"][:2] == ["total", "caller"]
    jax.block_until_ready(f(a))
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(3):
            jax.block_until_ready(f(a))
    kernels = xprof.kernel_seconds(str(tmp_path), frames.module)
    assert kernels["seconds"] and all(s >= 0 for s in kernels["seconds"].values())
    groups = xprof.attribute(kernels, frames, lambda stack: name(stack[0]) if stack else "none")
    assert groups.get("product", 0) > 0 and groups.get("total", 0) > 0
    assert set(groups) <= {"product", "total", "caller", "none"}


def test_host_events_are_timed_exclusive_of_their_children_and_cut_into_windows(tmp_path):
    import time

    import jax

    xprof = _benchmarks_module("xprof")

    def timed(name, seconds, *inner):
        with jax.profiler.TraceAnnotation(name):
            time.sleep(seconds)
            for args in inner:
                timed(*args)

    with jax.profiler.trace(str(tmp_path), profiler_options=xprof.quiet_options()):
        timed("window a", 0.0, ("outer", 0.05, ("inner", 0.1)))
        timed("window b", 0.0, ("inner (jit_f)", 0.02))     # a program's name is dropped
    events = xprof.host_event_seconds(str(tmp_path))
    assert events["inner"]["count"] == 2
    assert 0.12 <= events["inner"]["seconds"] == events["inner"]["inclusive"] < 0.2
    assert 0.05 <= events["outer"]["seconds"] < 0.09      # its own sleep, not its child's
    assert events["outer"]["inclusive"] >= 0.15
    windows = xprof.host_event_seconds(str(tmp_path), windows="window ")
    assert set(windows) <= {"window a", "window b", ""}
    assert windows["window a"]["inner"]["count"] == windows["window b"]["inner"]["count"] == 1
    assert windows["window a"]["inner"]["seconds"] >= 0.1
    assert 0.02 <= windows["window b"]["inner"]["seconds"] < 0.08
    assert "outer" not in windows["window b"]
