"""How close the dry run's time estimate comes to the launch it plans.

    python benchmarks/estimate.py

In a fresh timings file and compilation cache: launches the quickstart and
a seed-shaped grid (sweeps/seed.toml's widths 256 and 512, depths 2–5,
n = 1024, 100 steps) with one seed, to calibrate; then, each in a fresh
process after its dry run's calibrated estimate: the quickstart again in a
new folder (warm cache), grown by a seed, the seed-shaped grid with two
seeds in a new folder (new programs: two members per cohort), and
sweeps/seed.toml at width 128 (shapes no launch here has trained). Prints
wall / estimate for each, beside the uncalibrated estimate (the matmul
rate and a stored compile time) as the baseline.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(grid: Path, out: Path, env: dict, extra=()) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "normsweep.cli", "launch", str(grid), "--out",
                    str(out), "--quiet", *extra], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def estimate(grid: Path, out: Path, env: dict, overrides=()) -> tuple[float, int, float]:
    code = ("import sys; from normsweep import config, preview\n"
            f"cfg = config.load({str(grid)!r}, {list(overrides)!r})\n"
            f"p = preview.preview(cfg, {str(out)!r})\n"
            "e = preview.calibrated_estimate(p)\n"
            "print(e[0], e[3], preview.estimate_seconds(p, preview.matmul_rate()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), float(out[2])


SEED_SHAPED = ["grid.width=[256, 512]", "grid.depth=[2, 3, 4, 5]", "grid.lr=[0.001, 0.01]",
               "train.steps=100"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    quick, seed = ROOT / "sweeps" / "quickstart.toml", ROOT / "sweeps" / "seed.toml"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, NORMSWEEP_TIMINGS=str(tmp / "timings.jsonl"),
                   NORMSWEEP_JAX_CACHE=str(tmp / "cache"))
        print(f"calibrating: the quickstart launched once, cold cache, "
              f"{launch(quick, tmp / 'calib', env):.1f} s")
        one_seed = SEED_SHAPED + ["grid.seed=[0]"]
        extra = [a for o in one_seed for a in ("--set", o)]
        print(f"calibrating: the seed-shaped grid with one seed, "
              f"{launch(seed, tmp / 'seed1', env, extra):.1f} s")
        cases = [("quickstart, a new folder (warm cache)", quick, tmp / "again", ()),
                 ("quickstart, grown by a seed", quick, tmp / "again",
                  ("grid.seed=[0, 1, 2, 3]",)),
                 ("seed-shaped, two seeds, a new folder", seed, tmp / "seed2",
                  tuple(SEED_SHAPED + ["grid.seed=[0, 1]"])),
                 ("sweeps/seed.toml at width 128 (shapes not launched here)", seed,
                  tmp / "w128", ("grid.width=[128]",))]
        print("| launch | wall (s) | estimate (s) | wall / estimate | cohorts recorded | "
              "uncalibrated estimate (s) | wall / it |")
        print("|---|---|---|---|---|---|---|")
        for what, grid, out, overrides in cases:
            guess, earlier, flat = estimate(grid, out, env, overrides)
            extra = [a for o in overrides for a in ("--set", o)]
            wall = launch(grid, out, env, extra)
            print(f"| {what} | {wall:.1f} | {guess:.1f} | {wall / guess:.2f} | {earlier} | "
                  f"{flat:.1f} | {wall / flat:.2f} |", flush=True)


if __name__ == "__main__":
    main()
