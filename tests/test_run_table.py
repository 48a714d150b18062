"""The run table (`normsweep table`), the `outcome` variable of
`open_sweep`, and `show`'s outcome counts, against the records they read."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
from click.testing import CliRunner

import normsweep
from normsweep import outcomes
from normsweep.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_open_sweep_carries_each_networks_outcome(tiny_sweep):
    ds = normsweep.open_sweep(tiny_sweep)
    want = outcomes.classify(ds)
    assert ds["outcome"].dims == ds["diverged_at"].dims
    assert (ds["outcome"].values == want.values.astype(str)).all()
    assert set(np.unique(ds["outcome"].values)) <= set(outcomes.ORDER)


def test_the_csv_table_is_the_records_read_back(tiny_sweep):
    result = invoke("table", tiny_sweep)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    ds = normsweep.open_sweep(tiny_sweep)
    assert len(table) == ds["diverged_at"].size
    last = ds.isel(step=-1)
    for row in table.sample(6, random_state=0).itertuples():
        at = dict(width=row.width, depth=row.depth, lr=row.lr, seed=row.seed)
        assert row.outcome == str(ds["outcome"].sel(at).item())
        assert np.isclose(row.loss, float(last["loss"].sel(at)), rtol=1e-5)
        for layer in range(row.depth):
            assert np.isclose(getattr(row, f"frob_norm_{layer}"),
                              float(last["frob_norm"].sel(dict(at, layer=layer))), rtol=1e-5)
        fit = ds["accuracy"].sel(at) >= 0.99
        first = ds["step"].values[fit.values.argmax()] if fit.any() else np.nan
        assert (np.isnan(first) and np.isnan(row.first_fit_step)) or row.first_fit_step == first


def test_a_step_that_was_not_recorded_is_a_usage_error_naming_the_nearest(tiny_sweep):
    result = invoke("table", tiny_sweep, "--step", "999")
    assert result.exit_code == 2
    assert "nearest recorded steps are 29, 30" in " ".join(result.output.split())
    md = invoke("table", tiny_sweep, "--step", "5", "--format", "markdown")
    assert md.exit_code == 0 and md.output.startswith("| width | depth | lr | seed |")
    assert "| 5 |" in md.output


def test_show_counts_outcomes_as_the_report_does(tiny_sweep):
    said = " ".join(invoke("show", tiny_sweep).output.split())
    counts = outcomes.counts(normsweep.open_sweep(tiny_sweep)["outcome"])
    assert (f"{counts['fit']} fit, {counts['training']} still training, {counts['failed']} "
            f"failed, {counts['diverged']} diverged") in said
