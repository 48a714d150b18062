"""normsweep: how weight norms move under plain gradient descent.

    import normsweep
    ds = normsweep.open_sweep("results/quickstart")        # an xarray Dataset
    ws = normsweep.load_weights("results/quickstart", width=32, depth=3,
                                lr=0.5, seed=0, which="final")
"""
from normsweep.store import load_weights, open_sweep

__all__ = ["open_sweep", "load_weights"]
