"""The fitted exponents of one metric, as tables (layer × depth): the
width exponent b and the η exponent a. An exponent the sweep cannot
identify (one width, one learning rate, or η tied to width) is shown as
"–", with the reason.

    python examples/exponent_table.py results/seed --metric rel_spec_dist

Fits afresh from the sweep with normsweep's fit function; select a subset
first (e.g. ds.sel(lr=ds.lr[:3])) to fit your own selection.
"""
import argparse

import xarray as xr

from normsweep.analysis import fits

p = argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("dir")
p.add_argument("--metric", default="rel_frob_dist", choices=list(fits.METRICS))
args = p.parse_args()

ds = xr.open_dataset(f"{args.dir}/sweep.nc").load()
table = fits.fit_sweep(ds)
t = table[table.metric == args.metric]


def ci(v, lo, hi):
    if v != v:
        return "–"
    return f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo == lo else f"{v:+.2f} (one seed: no interval)"


t = t.assign(b=[ci(*v) for v in zip(t.width_exponent, t.width_exponent_lo, t.width_exponent_hi)],
             a=[ci(*v) for v in zip(t.lr_exponent, t.lr_exponent_lo, t.lr_exponent_hi)])
print(f"{args.metric} ≈ C·η^a·m^b, with 95% intervals ({ds.sizes['width']} widths, "
      f"{ds.sizes['lr']} learning rates; fitted: {', '.join(sorted(set(t.fitted)))})")
for name, label in (("b", "width exponent b"), ("a", "η exponent a")):
    print(f"\n{label}:")
    print(t.pivot(index="layer", columns="depth", values=name).fillna("").to_string())
