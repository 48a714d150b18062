"""One recorded quantity against width, one line per parametrization (and
weight decay), at a chosen step: how each parametrization scales.

    python examples/parametrizations.py results/lazy-vs-mup --var spec_dist --step 1 --layer 1

Needs a sweep with a `parametrization` and/or `weight_decay` axis. Copy and
edit: everything below is plain xarray + matplotlib.
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

p = argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("dir")
p.add_argument("--var", default="spec_dist", help="frob_norm, spec_norm, frob_dist, spec_dist, ...")
p.add_argument("--step", type=int, default=1, help="a recorded step (default 1: the first update)")
p.add_argument("--layer", type=int, default=1)
p.add_argument("--depth", type=int)
p.add_argument("--lr-index", type=int, default=0, help="which learning rate (index into lr)")
p.add_argument("--out", default="parametrizations.png")
args = p.parse_args()

ds = xr.open_dataset(f"{args.dir}/sweep.nc")
axes = [d for d in ("parametrization", "weight_decay") if d in ds.dims]
if not axes:
    raise SystemExit(f"{args.dir}: this sweep has no parametrization or weight_decay axis")
depth = args.depth if args.depth is not None else int(ds.depth.max())
da = ds[args.var].sel(depth=depth, layer=args.layer, step=args.step).isel(lr=args.lr_index)
da = da.where(ds.diverged_at.sel(depth=depth).isel(lr=args.lr_index) < 0).mean("seed")
fig, ax = plt.subplots(figsize=(5.5, 4))
widths = ds.width.values.astype(float)
for labels in da.stack(slice=axes).slice.values:
    labels = labels if isinstance(labels, tuple) else (labels,)
    line = da.sel(dict(zip(axes, labels)))
    ok = np.isfinite(line.values) & (line.values > 0)
    slope = (np.polyfit(np.log(widths[ok]), np.log(line.values[ok]), 1)[0] if ok.sum() > 1
             else np.nan)
    name = ", ".join(str(v) for v in labels)
    ax.plot(widths, line, "o-", label=f"{name}: slope {slope:+.2f}")
    print(f"{name:>24}: {args.var} at step {args.step} ∝ m^{slope:+.2f}")
lr = float(ds.lr.values[args.lr_index])
ax.set(xscale="log", yscale="log", xlabel="width m", ylabel=args.var,
       title=f"{args.var}, layer {args.layer}, depth {depth}, step {args.step}, lr {lr:.3g}")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(args.out, dpi=120)
print(f"wrote {args.out}")
