"""Norm trajectories of one layer, one panel per width, one line per learning rate.

    python examples/trajectories.py results/quickstart --depth 3 --layer 1 --var spec_norm

Copy and edit: everything below is plain xarray + matplotlib.
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import xarray as xr

p = argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("dir")
p.add_argument("--var", default="frob_dist", help="frob_norm, spec_norm, frob_dist, spec_dist, ...")
p.add_argument("--depth", type=int)
p.add_argument("--layer", type=int, default=0)
p.add_argument("--out", default="trajectories.png")
args = p.parse_args()

ds = xr.open_dataset(f"{args.dir}/sweep.nc")
depth = args.depth if args.depth is not None else int(ds.depth.max())
da = ds[args.var].sel(depth=depth, layer=args.layer).isel(step=slice(1, None))
mean, sd = da.mean("seed"), da.std("seed")
fig, axes = plt.subplots(1, ds.sizes["width"], figsize=(3.2 * ds.sizes["width"], 3), sharey=True,
                         squeeze=False)
axes = axes[0]
for ax, width in zip(axes, ds.width.values):
    for lr in ds.lr.values:
        m, s = mean.sel(width=width, lr=lr), sd.sel(width=width, lr=lr)
        ax.plot(m.step, m, label=f"η₀ = {lr:.2g}")
        ax.fill_between(m.step, m - s, m + s, alpha=0.2)
    ax.set(xscale="log", yscale="log", xlabel="step", title=f"width {width}")
axes[0].set_ylabel(f"{ds[args.var].long_name} (layer {args.layer})")
axes[-1].legend(fontsize=7)
fig.tight_layout()
fig.savefig(args.out, dpi=100)
print(args.out)
