"""Hidden-layer norms at initialisation against random-matrix theory.

    python examples/init_vs_theory.py results/seed

‖W‖_F ≈ √(2m) and ‖W‖₂ ≈ 2√2 (finite-size corrected) for an m×m matrix with
entries N(0, 2/m). Needs a grid with depth ≥ 3 (a hidden m×m layer).
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from normsweep.analysis import theory

p = argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("dir")
p.add_argument("--out", default="init_vs_theory.png")
args = p.parse_args()

ds = xr.open_dataset(f"{args.dir}/sweep.nc")
init = ds.isel(step=0, lr=0).sel(depth=int(ds.depth.max()), layer=1)   # a hidden layer
m = ds.width.values
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
a.errorbar(m, init.frob_norm.mean("seed"), init.frob_norm.std("seed"), fmt="o", label="measured")
a.plot(m, [theory.frobenius(w, w, 2 / w) for w in m], "--", label="σ√(pq) = √(2m)")
a.set(xscale="log", yscale="log", xlabel="width m", ylabel="‖W(0)‖_F")
b.errorbar(m, init.spec_norm.mean("seed"), init.spec_norm.std("seed"), fmt="o", label="measured")
b.plot(m, [theory.spectral_finite(w, w, 2 / w) for w in m], "--", label="finite-size edge")
b.axhline(2 * np.sqrt(2), color="k", lw=0.8, label="2√2")
b.set(xscale="log", xlabel="width m", ylabel="‖W(0)‖₂")
for ax in (a, b):
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(args.out, dpi=100)
print(args.out)
