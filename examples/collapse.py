"""Data collapse: relative distance from init divided by the fitted η^a·m^b.

    python examples/collapse.py results/quickstart --depth 3 --layer 1

If the scaling law holds, the rescaled curves of all widths and learning
rates fall on one curve. An exponent the sweep cannot identify (one width,
or one learning rate) is taken as 0: no rescaling along that axis.
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from normsweep import outcomes
from normsweep.analysis import fits

p = argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("dir")
p.add_argument("--depth", type=int)
p.add_argument("--layer", type=int, default=0)
p.add_argument("--out", default="collapse.png")
args = p.parse_args()

ds = xr.open_dataset(f"{args.dir}/sweep.nc").load()
depth = args.depth if args.depth is not None else int(ds.depth.max())
table = fits.fit_sweep(ds.sel(depth=[depth]))
row = table[(table.metric == "rel_frob_dist") & (table.layer == args.layer)].iloc[0]
keep = outcomes.classify(ds).isin([outcomes.FIT, outcomes.TRAINING])
rel = (ds.frob_dist / ds.frob_norm.isel(step=0)).where(keep).sel(depth=depth, layer=args.layer)
ea = row.lr_exponent if np.isfinite(row.lr_exponent) else 0.0
eb = row.width_exponent if np.isfinite(row.width_exponent) else 0.0
law = ds.lr_effective ** ea * ds.width ** eb
scaled = (rel / law).mean("seed").isel(step=slice(1, None))
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
for width in ds.width.values:
    for lr in ds.lr.values:
        a.plot(rel.step[1:], rel.sel(width=width, lr=lr).mean("seed")[1:], lw=0.8)
        b.plot(scaled.step, scaled.sel(width=width, lr=lr), lw=0.8)
a.set(xscale="log", yscale="log", xlabel="step", ylabel="‖W(t) − W(0)‖_F / ‖W(0)‖_F", title="raw")
b.set(xscale="log", yscale="log", xlabel="step",
      ylabel=f"rescaled by η^{ea:.2f}·m^{eb:.2f}", title="collapsed")
fig.tight_layout()
fig.savefig(args.out, dpi=100)
print(args.out)
