"""The fitted exponents of one metric, as a table (layer × depth).

    python examples/exponent_table.py results/seed --metric rel_spec_dist

Fits afresh from the sweep with normsweep's fit function; select a subset
first (e.g. ds.sel(lr=ds.lr[:3])) to fit your own selection.
"""
import argparse

import xarray as xr

from normsweep.analysis import fits

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("dir")
p.add_argument("--metric", default="rel_frob_dist", choices=list(fits.METRICS))
p.add_argument("--boot", type=int, default=200)
args = p.parse_args()

ds = xr.open_dataset(f"{args.dir}/sweep.nc").load()
table = fits.fit_sweep(ds, boot=args.boot)
t = table[table.metric == args.metric]
t = t.assign(b=[f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]" for v, lo, hi in
                zip(t.width_exponent, t.width_exponent_lo, t.width_exponent_hi)])
print(f"{args.metric} ≈ C·η^a·m^b; width exponent b with 95% interval:")
print(t.pivot(index="layer", columns="depth", values="b").fillna("").to_string())
