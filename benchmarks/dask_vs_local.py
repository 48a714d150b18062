"""A grid of several cohorts: 2 Dask workers (LocalCluster) against the local executor.

    NORMSWEEP_JAX_CACHE=off python benchmarks/dask_vs_local.py

Both compile from scratch (no persistent compilation cache); the ratio is
local wall time / Dask wall time, measured in one run.
"""
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NORMSWEEP_JAX_CACHE", "off")

from normsweep import config, sweep  # noqa: E402

GRID = """
name = "bench"
[data]
n = 1024
[train]
steps = 150
[grid]
width = [64, 128, 256]
depth = [2, 3]
lr = { geomspace = [0.001, 0.01, 4] }
seed = [0, 1]
"""


def timed(scheduler):
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        sweep.launch(config.parse(GRID), Path(tmp) / "out", scheduler=scheduler)
        return time.perf_counter() - t


if __name__ == "__main__":     # Dask's worker processes re-import this file
    local = timed(None)
    dask = timed("local:2")
    print(f"6 cohorts × 8 networks × 150 steps: local {local:.1f} s, Dask local:2 {dask:.1f} s "
                f"(includes starting the cluster), ratio local/Dask = {local / dask:.2f}")
