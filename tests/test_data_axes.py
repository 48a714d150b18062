"""The n and d axes: each (n, d) is a training set of its own, trained as
its own cohorts; a cohort equals the same network trained by a grid that
fixes that n and d in [data]."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import normsweep
from normsweep import config, folder, plan, sweep
from normsweep.errors import GridError
from normsweep.folder import ResultsFolder

BASE = """name = "nd"
[data]
k = 3
{data}
[train]
steps = 20
[record]
weights = true
jacobian_norm = 0
[grid]
width = [16]
depth = [2]
lr = [0.1, 0.4]
seed = [0, 1]
{grid}
"""
AXES = BASE.format(data="", grid="n = [8, 16]\nd = [4, 6]")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("nd") / "nd"
    sweep.launch(config.parse(AXES), root)
    return root


def test_cohorts_are_named_by_their_training_set(swept):
    names = sorted(p.name for p in (swept / "cohorts").glob("*.nc"))
    assert names == sorted(f"n{n}_d{d}_width16_depth2.nc" for n in (8, 16) for d in (4, 6))
    ds = normsweep.open_sweep(swept)
    assert ds["frob_norm"].dims[:4] == ("width", "depth", "n", "d")
    assert ds["inputs"].dims == ("n", "d", "sample", "feature")
    x = ds["inputs"].sel(n=8, d=4).values
    assert np.isnan(x[8:]).all() and np.isnan(x[:, 4:]).all()
    np.testing.assert_allclose(np.linalg.norm(x[:8, :4], axis=1), 1.0, rtol=1e-6)
    assert int(ds["diverged_at"].size) == config.parse(AXES).grid.size == 16


@pytest.mark.parametrize("n, d", [(8, 6), (16, 4)])
def test_a_cohort_equals_the_grid_that_fixes_its_n_and_d(swept, tmp_path, n, d):
    fixed = BASE.format(data=f"n = {n}\nd = {d}", grid="")
    sweep.launch(config.parse(fixed), tmp_path / "fixed")
    one = normsweep.open_sweep(tmp_path / "fixed")
    both = normsweep.open_sweep(swept).sel(n=n, d=d).isel(sample=slice(0, n),
                                                           feature=slice(0, d))
    for name in ("frob_norm", "spec_norm", "frob_dist", "loss", "accuracy", "margin"):
        np.testing.assert_array_equal(both[name].values, one[name].values, err_msg=name)
    np.testing.assert_array_equal(both["inputs"].values, one["inputs"].values, err_msg="inputs")
    w = normsweep.load_weights(swept, width=16, depth=2, lr=0.4, seed=1, n=n, d=d)
    w1 = normsweep.load_weights(tmp_path / "fixed", width=16, depth=2, lr=0.4, seed=1)
    assert w[0].shape == (d, 16)
    for a, b in zip(w, w1):
        np.testing.assert_array_equal(a, b, err_msg="weights")


def test_a_grown_n_axis_trains_only_the_new_training_set(swept, tmp_path):
    root = tmp_path / "nd"
    shutil.copytree(swept, root)
    grown = config.parse(AXES.replace("n = [8, 16]", "n = [8, 16, 32]"))
    status = ResultsFolder(root).status(grown)
    assert {c.cohort.name: c.state for c in status.cohorts if c.cohort.n == 32} == {
        f"n32_d{d}_width16_depth2": folder.MISSING for d in (4, 6)}
    summary = sweep.launch(grown, root)
    assert summary.new == 8 and summary.kept == 16
    assert normsweep.open_sweep(root).sizes["n"] == 3


def test_a_file_of_another_training_set_is_foreign(swept, tmp_path):
    root = tmp_path / "nd"
    shutil.copytree(swept, root)
    shutil.copy(root / "cohorts" / "n8_d4_width16_depth2.nc",
                root / "cohorts" / "n16_d4_width16_depth2.nc")
    cohort = next(c for c in plan.cohorts(config.parse(AXES))
                  if c.name == "n16_d4_width16_depth2")
    state = ResultsFolder(root).cohort_state(config.parse(AXES), cohort)
    assert state.state == folder.FOREIGN and "n=16, d=4" in state.reason


@pytest.mark.parametrize("text, key", [
    (BASE.format(data="n = 8", grid="n = [8, 16]"), "data.n"),
    (BASE.format(data="", grid="d = [1, 4]"), "grid.d"),
    (BASE.format(data="", grid="n = [8, 16]").replace("jacobian_norm = 0",
                                                     "ntk_eigs = 5\nntk_points = 12"),
     "record.ntk_points"),
])
def test_bad_data_axes_are_refused_by_key(text, key):
    with pytest.raises(GridError) as err:
        config.parse(text)
    assert err.value.key == key


def test_data_axes_change_the_fingerprint_and_nothing_else_does():
    plain = config.parse(BASE.format(data="", grid=""))
    assert config.parse(AXES).fingerprint() != plain.fingerprint()
    # a grid without the axes hashes as before they existed: data_axes = [] is the default
    assert "grid.data_axes" not in {k for k, v in plain.settings().items()
                                    if config.default_settings().get(k) != v}
