"""The dry run's time estimate from the times earlier cohorts took here
(`normsweep.calibration`)."""
from __future__ import annotations

import json

import jax
import pytest
from click.testing import CliRunner

from normsweep import calibration, config, plan, sweep
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
    cfg = config.parse(TINY)
    sweep.launch(cfg, tmp_path / "tiny")
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    cohorts = plan.cohorts(cfg)
    assert sorted(r["program"] for r in rows) == sorted(calibration.program_key(cfg, c)
                                                       for c in cohorts)
    flops = {calibration.program_key(cfg, c): plan.train_flop(cfg, c) for c in cohorts}
    for r in rows:
        assert (r["backend"], r["device"]) == here()
        assert r["flop"] == pytest.approx(flops[r["program"]])
        assert r["train_seconds"] > 0 and r["compile_seconds"] > 0
    assert calibration.load(*here()) == rows and calibration.load("tpu", "x") == []


def test_the_estimate_uses_the_recorded_rate_and_compile_times():
    rows = [{"program": "A", "flop": 2e9, "train_seconds": 2.0, "compile_seconds": c}
            for c in (2.0, 4.0, 6.0)]                       # 1 GFLOP/s; A compiles in 4 s
    rows.append({"program": "B", "flop": 1e9, "train_seconds": 0.5, "compile_seconds": 20.0})
    # median rate 1e9; A: median of its own 4 s; C never seen: median of all 5 s
    wall, train, compiled = calibration.estimate(rows, [("A", 3e9), ("C", 1e9)], workers=1)
    assert train == pytest.approx(4.0) and compiled == pytest.approx(9.0)
    assert wall == pytest.approx(4.0 + max(4.0, 5.0))
    assert calibration.estimate([], [("A", 1e9)]) is None


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
    for c in plan.cohorts(cfg):
        calibration.record(*here(), calibration.program_key(cfg, c), 1e9, 1.0, 2.0)
    again = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out), "--dry-run"])
    said = " ".join(again.output.split())
    assert "estimate from 4 earlier cohorts on this machine" in said
    # 4 cohorts at 1 GFLOP/s: their FLOPs in seconds, plus 2 s to compile each
    flop = sum(plan.train_flop(cfg, c) for c in plan.cohorts(cfg))
    wall = 2.0 + max(flop / 1e9, 6.0)
    assert f"about {wall / 60:.1f} min" in said


def test_timings_off_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSWEEP_TIMINGS", "off")
    calibration.record("cpu", "cpu", "A", 1.0, 1.0, 1.0)
    assert calibration.path() is None and calibration.load("cpu", "cpu") == []
