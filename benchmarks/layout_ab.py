"""Whole launches with the CPU member loop (`Program.layout = "auto"`: networks
whose widest layer is >= 256 step in a loop over members) against batched
steps everywhere (`"vmap"`), in fresh processes with the compilation cache
off, alternating, best of REPS each.

    python benchmarks/layout_ab.py sweeps/quickstart.toml 2
    python benchmarks/layout_ab.py seedlike 2     # widths 256-1024, n = 1024, depth 3, 100 steps

A backend-specific trick stays only if it makes a whole launch >= 15% faster.
"""
import os
import shutil
import subprocess
import sys
import tempfile

SEEDLIKE = """
name = "seedlike"
[data]
n = 1024
[train]
steps = 100
[grid]
width = [256, 512, 1024]
depth = [3]
lr = { geomspace = [0.001, 0.1, 5] }
seed = [0, 1, 2]
"""

CODE = r'''
import dataclasses, sys, time
from normsweep import config, launch, work
if sys.argv[3] != "auto":
    real = work.program_for
    work.program_for = lambda c, h: dataclasses.replace(real(c, h), layout=sys.argv[3])
cfg = config.load(sys.argv[1])
t = time.perf_counter()
launch.launch(cfg, sys.argv[2], prefetch=1)
print(f"{time.perf_counter() - t:.2f}")
'''


def main() -> None:
    grid, reps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2
    work_dir = tempfile.mkdtemp(prefix="layout-ab-")
    if grid == "seedlike":
        grid = os.path.join(work_dir, "seedlike.toml")
        with open(grid, "w") as f:
            f.write(SEEDLIKE)
    env = {**os.environ, "NORMSWEEP_JAX_CACHE": "off"}
    times = {"auto": [], "vmap": []}
    for _ in range(reps):
        for layout in times:
            out = os.path.join(work_dir, layout)
            shutil.rmtree(out, ignore_errors=True)
            res = subprocess.run([sys.executable, "-c", CODE, grid, out, layout],
                                 capture_output=True, text=True, env=env, check=True)
            times[layout].append(float(res.stdout.split()[-1]))
            print(f"{layout}: {times[layout][-1]:.1f} s", flush=True)
    auto, vmap = min(times["auto"]), min(times["vmap"])
    print(f"best: auto {auto:.1f} s, vmap {vmap:.1f} s; the member loop is x{vmap / auto:.2f}")
    shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
