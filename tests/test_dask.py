"""Cohorts as Dask tasks: same results as a local run, idempotent, and
robust to a worker dying mid-sweep. One LocalCluster (2 worker processes,
1 thread each, loopback, no dashboard) is shared by these tests."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

distributed = pytest.importorskip("distributed")

from normsweep import config, executors, sweep  # noqa: E402
from tests import equal
from tests.conftest import TINY  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  env=dict(executors.WORKER_ENV)) as c:
        yield c


def test_dask_run_equals_local_run_and_relaunch_skips(cluster, tiny_sweep, tmp_path):
    cfg = config.parse(TINY, source="tiny.toml")
    out = tmp_path / "dask"
    finished = []

    class Record(sweep.Reporter):
        def done(self, name, where=""):
            finished.append((name, where))

    summary = sweep.launch(cfg, out, scheduler=cluster.scheduler_address, reporter=Record())
    assert len(summary.trained) == 4
    equal.assert_folders_identical(out, tiny_sweep)
    # each cohort reported as it finished, with the worker that trained it
    assert sorted(n for n, _ in finished) == sorted(summary.trained)
    assert all(w.startswith("trained in ") and " by worker " in w for _, w in finished)
    again = sweep.launch(cfg, out, scheduler=cluster.scheduler_address)
    assert again.trained == [] and len(again.skipped) == 4


def test_task_is_idempotent(cluster, tiny_sweep, tmp_path):
    import shutil
    out = tmp_path / "idem"
    shutil.copytree(tiny_sweep, out)
    before = (out / "cohorts" / "width16_depth2.nc").stat().st_mtime_ns
    result = executors.cohort_task(TINY, "tiny.toml", str(out), 0, 2**30)
    assert result["skipped"] and result["cohort"] == "width16_depth2"
    assert (out / "cohorts" / "width16_depth2.nc").stat().st_mtime_ns == before


def test_worker_killed_mid_sweep_still_completes(cluster, tiny_sweep, tmp_path):
    cfg = config.parse(TINY, source="tiny.toml")
    out = tmp_path / "killed"
    with distributed.Client(cluster.scheduler_address) as client:
        pids = list(client.run(os.getpid).values())
    killed = []

    def kill_one():
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("cohorts/*.nc")):
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    killer = threading.Thread(target=kill_one)
    killer.start()
    sweep.launch(cfg, out, scheduler=cluster.scheduler_address)
    killer.join()
    assert killed
    equal.assert_folders_identical(out, tiny_sweep)
    assert sorted(p.name for p in out.glob("cohorts/*")) == sorted(
        p.name for p in tiny_sweep.glob("cohorts/*.nc")), "a temporary file was left behind"


def test_scheduler_addresses():
    assert executors.parse_scheduler("local") == ("local", None)
    assert executors.parse_scheduler("local:3") == ("local", 3)
    assert executors.parse_scheduler("tcp://10.0.0.1:8786") == ("remote", None)
    with pytest.raises(ValueError):
        executors.parse_scheduler("nonsense")


def test_a_dask_task_runs_its_cohort_through_work():
    """A Dask task and `launch` both run a cohort through `work` (that
    neither imports `launch` is the import contract's, `lint-imports`)."""
    assert "work" in {n.split(".")[-1] for n in _imported_in(executors.cohort_task)}


def _imported_in(function) -> set[str]:
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            for a in n.names}
