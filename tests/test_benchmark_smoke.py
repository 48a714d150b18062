"""The benchmark script still runs (tiny sizes; no timing is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke",
                             "--json", str(out)], capture_output=True, text=True, timeout=600,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["matmul_flops"] > 0 and figures["cohorts"][0]["net_steps_per_s"] > 0
    assert figures["compilations_for_3_lr_cohorts"] == 2     # init and segment, once
    assert set(figures["compile_split"][0]["programs"]) == {"init", "segment"}
    assert figures["compile_ahead"]["seconds_with"] > 0 and figures["compile_ahead"]["cohorts"] == 2
    assert "recording" in result.stdout and "peak memory" in result.stdout
    split = figures["compile_split"][0]
    assert split["compile_s"] > 0 and split["second_run_s"] > 0


def test_benchmark_runs_the_parts_asked_for(tmp_path):
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke"]
    out = tmp_path / "bench.json"
    result = subprocess.run(bench + ["--parts", "compilations", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["compilations_for_3_lr_cohorts"] == 2
    assert "cohorts" not in figures and "compile_ahead" not in figures
    bad = subprocess.run(bench + ["--parts", "table,memroy"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert bad.returncode == 2
    assert "memroy" in bad.stderr and "allowed: table, precision, record" in bad.stderr
