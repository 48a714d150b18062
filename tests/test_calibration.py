"""The dry run's time estimate from the times earlier cohorts took here
(`normsweep.calibration`)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from click.testing import CliRunner

from normsweep import calibration, config, plan, sweep, train, work
from normsweep.cli import main
from tests.conftest import TINY, write_grid


@pytest.fixture
def timings(tmp_path, monkeypatch):
    where = tmp_path / "timings.jsonl"
    monkeypatch.setenv("NORMSWEEP_TIMINGS", str(where))
    return where


def here():
    return jax.default_backend(), jax.devices()[0].device_kind


def test_a_launch_records_each_cohorts_times(timings, tmp_path):
    cfg = config.parse(TINY, overrides=["train.programs=width"])
    sweep.launch(cfg, tmp_path / "tiny")
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    cohorts = plan.cohorts(cfg)
    assert sorted(r["program"] for r in rows) == sorted(calibration.program_key(cfg, c)
                                                       for c in cohorts)
    flops = {calibration.program_key(cfg, c): plan.train_flop(cfg, c) for c in cohorts}
    # one program per width trains both depths: the cohort that compiled it
    # records its compile time, the other none (it found it compiled)
    compiled = {}
    for r in rows:
        assert (r["backend"], r["device"]) == here()
        assert r["flop"] == pytest.approx(flops[r["program"]])
        assert r["train_seconds"] > 0
        assert r["compile_seconds"] is None or r["compile_seconds"] > 0
        compiled.setdefault(calibration.compiled(r["program"]), []).append(
            r["compile_seconds"] is not None)
    assert len(compiled) == len(cfg.grid.width)
    assert all(sorted(flags) == [False, True] for flags in compiled.values())
    assert calibration.load(*here()) == rows and calibration.load("tpu", "x") == []
    for r in rows:      # each chunk's calls timed, and its size
        assert [sum(seg[1] for seg in run) for run in r["timing"]["runs"]] == [cfg.train.steps + 1]
        size = plan.chunk_size(cfg, cohorts[0], 1)
        assert r["step_flop"] * cfg.train.steps == pytest.approx(r["flop"])
        assert r["step_flop"] / r["weights"] == size["step_flop"] / size["weights"] == 6 * 64
        # (the tiny grid records every step: steps and records not told apart)
        assert calibration.fit_costs(r) is None


def test_training_times_the_work_the_dry_run_counts():
    # the segments' steps, records and probe measurements add up to
    # `plan.record_work`, which the dry run's estimate multiplies by the costs
    cfg = config.parse(TINY.replace('steps = "log"', 'steps = "log"\nlog_points = 12\nprobe_points = 4'))
    cohort = plan.cohorts(cfg)[0]
    steps = plan.record_steps(cfg.train.steps, cfg.record.steps, cfg.record.log_points)
    x, y = work.training_data(cfg, cohort)
    members = work.Members(cfg, cohort, len(steps), 2**30)
    args, kwargs = members.arguments(members.chunks[0][:2])
    timing = train.train_members(members.program, x, y, *args, steps, **kwargs).timing
    counted = plan.record_work(cfg, cohort)
    segs = timing["segments"]
    assert sum(s[0] for s in segs) == counted["steps"] == cfg.train.steps
    assert sum(s[1] for s in segs) == counted["records"] == len(steps) == 12
    assert {p: sum(s[2][p] for s in segs) for p in counted["due"]} == counted["due"]
    assert counted["due"]["jacobian"] < len(steps) and timing["once"] > 0
    assert all(s[3] > 0 for s in segs)
    # and the time estimate fits its costs to them
    costs = calibration.fit_costs({"timing": {"once": timing["once"], "runs": [segs]}})
    assert costs is None or (costs["step"] > 0 and costs["once"] == timing["once"])


def _planted(steps, schedules, costs, once=0.5):
    """The timing of a run in two chunks, each recording at `steps`, whose
    wall times are exactly `costs` (seconds per step, record, probe
    measurement; `once` per chunk)."""
    segs = []
    for _, gap, valid, due in train.segments(steps, schedules):
        taken, records = int(np.sum(gap[valid] + 1)), int(valid.sum())
        counts = {p: int(d[valid].sum()) for p, d in due.items()}
        seconds = taken * costs["step"] + records * costs["record"] \
            + sum(n * costs[p] for p, n in counts.items())
        segs.append([taken, records, counts, seconds])
    return {"once": 2 * once, "runs": [segs, segs]}


PLANTED = {"step": 2e-3, "record": 5e-3, "jacobian": 0.04}
LOG = plan.record_steps(400, "log", 64)


def test_fit_costs_recovers_planted_costs():
    got = calibration.fit_costs({"timing": _planted(LOG, {"jacobian": "log"}, PLANTED)})
    assert got == pytest.approx(PLANTED | {"once": 0.5}, rel=1e-9)      # once: per chunk
    # a probe due at every record cannot be told from the records: folded in
    every = calibration.fit_costs({"timing": _planted(LOG, {"jacobian": 1}, PLANTED)})
    assert "jacobian" not in every
    assert every["record"] == pytest.approx(PLANTED["record"] + PLANTED["jacobian"])
    # recording every step, or at one stride: steps and records cannot be told apart
    for steps in (np.arange(101), plan.record_steps(1000, 10)):
        assert calibration.fit_costs({"timing": _planted(steps, {}, PLANTED)}) is None
    # segments whose seconds do not grow with their steps: no step cost to carry
    flat = _planted(LOG, {"jacobian": "log"}, PLANTED)
    flat["runs"] = [[seg[:3] + [1.0] for seg in run] for run in flat["runs"]]
    assert calibration.fit_costs({"timing": flat}) is None
    # with noise of 0.02 s per segment it is found (standard error about
    # 10%); with 0.5 s (the segments' steps take 0.01–0.2 s), not within RELIABLE
    for noise, found in ((0.02, True), (0.5, False)):
        rng = np.random.default_rng(0)
        noisy = _planted(LOG, {"jacobian": "log"}, PLANTED)
        noisy["runs"] = [[seg[:3] + [seg[3] + float(rng.normal(0, noise))] for seg in run]
                         for run in noisy["runs"]]
        got = calibration.fit_costs({"timing": noisy})
        assert (got is not None) == found
        if found:
            assert got["step"] == pytest.approx(PLANTED["step"], rel=0.3)


def test_costs_carry_to_programs_of_other_sizes_by_what_each_grows_with():
    size = {"step_flop": 1e9, "weights": 1e6}
    rows = [{"program": "A", "flop": 1e12, "train_seconds": 10.0,
             "timing": _planted(LOG, {"jacobian": "log"}, PLANTED)} | size]
    work = {"steps": 100, "records": 10, "due": {"jacobian": 4}, "chunks": 3} | size

    def per_chunk(step, record, jacobian, once):
        return once + 100 * step + 10 * record + 4 * jacobian

    # its own program: its own costs, per chunk
    assert calibration.train_guess(rows, "A", 0.0, work) == pytest.approx(
        3 * per_chunk(2e-3, 5e-3, 0.04, 0.5))
    # twice the FLOPs per step (twice the data): the steps take twice as
    # long; the records, the Jacobian and the init grow with the weights
    twice = work | {"step_flop": 2e9}
    assert calibration.train_guess(rows, "B", 0.0, twice) == pytest.approx(
        3 * per_chunk(4e-3, 5e-3, 0.04, 0.5))
    wider = work | {"step_flop": 2e9, "weights": 2e6}
    assert calibration.train_guess(rows, "B", 0.0, wider) == pytest.approx(
        2 * calibration.train_guess(rows, "A", 0.0, work))
    # a probe no recorded program measured counts as its steps_per steps, or nothing
    sharp = work | {"due": {"sharpness": 4}}
    assert calibration.train_guess(rows, "B", 0.0, sharp | {"steps_per": {"sharpness": 40}}) \
        == pytest.approx(3 * per_chunk(2e-3, 5e-3, 40 * 2e-3, 0.5))
    assert calibration.train_guess(rows, "B", 0.0, sharp) == pytest.approx(
        3 * per_chunk(2e-3, 5e-3, 0.0, 0.5))
    # beyond `NEAR`× in FLOPs per step: its own shape's FLOP rate, where it
    # has one; else the costs, from afar
    far = work | {"step_flop": 1e12, "weights": 1e9}
    assert calibration.train_guess(rows, "C", 0.0, far) == pytest.approx(
        1000 * calibration.train_guess(rows, "A", 0.0, work))
    shape = rows + [{"program": "dims=(1, 2) members=4", "flop": 4e12, "train_seconds": 2.0}]
    assert calibration.train_guess(shape, "dims=(1, 2) members=8", 6e12, far) == \
        pytest.approx(3.0)


def test_the_estimate_uses_the_recorded_rate_and_compile_times():
    rows = [{"program": "A", "flop": 2e9, "train_seconds": 2.0, "compile_seconds": c}
            for c in (2.0, 4.0, 6.0)]                       # 1 GFLOP/s; A compiles in 4 s
    rows.append({"program": "B", "flop": 1e9, "train_seconds": 0.5, "compile_seconds": 20.0})
    # median rate 1e9; A: median of its own 4 s; C never seen: median of all 5 s
    wall, train, compiled, unseen = calibration.estimate(rows, [("A", 3e9), ("C", 1e9)],
                                                         workers=1)
    assert train == pytest.approx(4.0) and compiled == pytest.approx(9.0) and unseen == 1
    assert wall == pytest.approx(4.0 + max(4.0, 5.0))
    assert calibration.estimate([], [("A", 1e9)]) is None


def test_a_program_of_one_depth_keeps_the_key_recorded_before_programs_served_several():
    cfg = config.parse(TINY)
    cohort = plan.cohorts(cfg)[1]                  # width 16, depth 3
    # the format of the timings already on users' disks
    assert calibration.program_key(cfg, cohort) == \
        "dims=(8, 16, 16, 4) n=64 float32 softmax mse probes=jacobian,activations,spectra members=6"
    shared = config.parse(TINY, overrides=["train.programs=width"])
    keys = [calibration.program_key(shared, c) for c in plan.cohorts(shared)[:2]]
    assert [k.rsplit(" depth=", 1)[1] for k in keys] == ["2", "3"]
    assert calibration.compiled(keys[0]) == calibration.compiled(keys[1]) == \
        "dims=(8, 16, 16, 4) depths=2-3 n=64 float32 softmax mse " \
        "probes=jacobian,activations,spectra members=6"


def test_cohorts_that_share_a_program_compile_it_once_in_the_estimate():
    shared = "dims=(8, 16, 16, 3) depths=2-3 n=64 float32 softmax mse probes=- members=4"
    rows = [{"program": f"{shared} depth=2", "flop": 1e9, "train_seconds": 1.0,
             "compile_seconds": 8.0},
            {"program": f"{shared} depth=3", "flop": 2e9, "train_seconds": 4.0,
             "compile_seconds": None}]
    # depth 3's rate is its own (0.5 GFLOP/s); the program compiles in 8 s, once
    wall, train, compiled, unseen = calibration.estimate(
        rows, [(f"{shared} depth=2", 1e9), (f"{shared} depth=3", 1e9)], workers=1)
    assert train == pytest.approx(1.0 + 2.0) and compiled == pytest.approx(8.0)
    assert wall == pytest.approx(8.0 + 3.0) and unseen == 0
    assert calibration.compile_guess(rows, f"{shared} depth=3") == 8.0


def test_a_program_compiled_before_with_the_cache_on_is_a_cache_hit(monkeypatch):
    key = "dims=(8, 16, 3) n=64 float32 softmax mse probes=- members=4"
    cold = {"program": key, "flop": 1e9, "train_seconds": 1.0, "compile_seconds": 10.0,
            "cache": True}
    other = dict(cold, program=key.replace("members=4", "members=2"), compile_seconds=6.0)
    monkeypatch.delenv("NORMSWEEP_JAX_CACHE", raising=False)
    assert calibration.compile_guess([cold], key) == pytest.approx(
        calibration.HIT_SHARE * 10.0)                       # seen once: a hit, before any
    assert calibration.compile_guess([cold, dict(cold, compile_seconds=1.5)], key) == 1.5
    # other members: another program of the same shape, compiled cold
    assert calibration.compile_guess([cold], other["program"]) == 10.0
    monkeypatch.setenv("NORMSWEEP_JAX_CACHE", "off")        # no cache now: a miss
    assert calibration.compile_guess([cold, dict(cold, compile_seconds=1.5)], key) == 10.0


def test_the_dry_run_says_what_its_estimate_rests_on(timings, tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSWEEP_JAX_CACHE", "off")       # every compile a miss
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "new"
    first = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out), "--dry-run"])
    assert first.exit_code == 0, first.output
    assert "uncalibrated: no earlier cohort recorded here" in " ".join(first.output.split())
    cfg = config.parse(TINY)
    cohorts = plan.cohorts(cfg)
    for c in cohorts[:3]:
        calibration.record(*here(), calibration.program_key(cfg, c), 1e9, 1.0, 2.0)
    some = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out), "--dry-run"])
    assert "1 of the 4 cohorts are of shapes not trained here" in " ".join(some.output.split())
    calibration.record(*here(), calibration.program_key(cfg, cohorts[3]), 1e9, 1.0, 2.0)
    again = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out), "--dry-run"])
    said = " ".join(again.output.split())
    assert "estimate from 4 earlier cohorts on this machine" in said
    assert "not trained here" not in said
    # 4 cohorts at 1 GFLOP/s: their FLOPs in seconds, plus 2 s to compile each
    flop = sum(plan.train_flop(cfg, c) for c in plan.cohorts(cfg))
    wall = 2.0 + max(flop / 1e9, 6.0)
    assert f"about {wall / 60:.1f} min" in said
    per_width = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out), "--dry-run",
                                          "--set", "train.programs=width"])
    said = " ".join(per_width.output.split())
    # a program per width: programs of other shapes, none recorded; 2 of
    # them, one compiled before any training
    assert "4 of the 4 cohorts are of shapes not trained here" in said
    assert f"about {(2.0 + max(flop / 1e9, 2.0)) / 60:.1f} min" in said


def test_the_timings_file_keeps_its_newest_lines_and_their_cache_hits(timings, monkeypatch):
    monkeypatch.setattr(calibration, "LIMIT", 4000)
    every = []
    for i in range(60):     # A's first compile is its only miss; B, with the cache off, no hit
        key = "A" if i % 3 else "B"
        if key == "B":
            monkeypatch.setenv("NORMSWEEP_JAX_CACHE", "off")
        else:
            monkeypatch.delenv("NORMSWEEP_JAX_CACHE", raising=False)
        calibration.record("cpu", "cpu", key, 1e9, 1.0, 5.0 + i, None)
        every.append({"program": key, "cache": key == "A"})
        assert timings.stat().st_size <= calibration.LIMIT + 200
    rows = calibration.load("cpu", "cpu")
    assert 10 < len(rows) < 60 and [r["compile_seconds"] for r in rows] == \
        [5.0 + i for i in range(60 - len(rows), 60)]
    assert calibration.hits(rows) == calibration.hits(every)[-len(rows):]


def test_timings_off_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSWEEP_TIMINGS", "off")
    calibration.record("cpu", "cpu", "A", 1.0, 1.0, 1.0)
    assert calibration.path() is None and calibration.load("cpu", "cpu") == []
