"""Where cohorts run: in this process, or as tasks on a Dask cluster.

A Dask task trains one cohort and writes its file into the shared results
folder itself (atomically), returning only a small summary; the client
combines sweep.nc at the end. Tasks are idempotent: a cohort already on disk
is skipped, so a task retried after its worker died, or a relaunch, never
duplicates work or files. Dask is an optional extra: `pip install
'normsweep[dask]'`.

    --scheduler tcp://host:8786    an existing scheduler (workers must see DIR)
    --scheduler local[:N]          a LocalCluster of N single-threaded worker
                                   processes on loopback (default N: CPU count)

This module imports no JAX at the top: a worker sets its environment first.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from collections.abc import Callable, Iterator

from normsweep.errors import RunError

WORKER_ENV = {
    # several workers may share one accelerator: allocate on demand
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}
LOCAL_RE = re.compile(r"local(?::([1-9]\d{0,3}))?")
# [tcp|tls|ucx|ws|wss://]HOST:PORT, HOST a name, an IPv4 address or [IPv6]
REMOTE_RE = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])"
                       r":(\d{1,5})/?")


def parse_scheduler(address: str) -> tuple[str, int | None]:
    """("local", N) for local[:N]; ("remote", None) for a scheduler address;
    ValueError for anything else."""
    match = LOCAL_RE.fullmatch(address)
    if match:
        return "local", int(match.group(1)) if match.group(1) else None
    match = REMOTE_RE.fullmatch(address)
    if match and 0 < int(match.group(1)) < 65536:
        return "remote", None
    raise ValueError(address)


@contextlib.contextmanager
def connect(address: str) -> Iterator:
    """A Dask client for `address` (a LocalCluster for local[:N]), closed on
    exit. A launch connects before it writes anything, so a scheduler that
    cannot be reached leaves no folder behind."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise RunError("--scheduler needs Dask: pip install 'normsweep[dask]'") from err
    try:
        kind, workers = parse_scheduler(address)
    except ValueError:
        raise RunError(f"--scheduler {address!r}: give tcp://HOST:PORT, HOST:PORT or "
                       "local[:N]") from None
    cluster = None
    try:
        if kind == "local":
            import jax
            # local workers use the client's platform rather than probing for others
            env = {**WORKER_ENV, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS",
                                                                 jax.default_backend())}
            cluster = LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1,
                                   processes=True, host="127.0.0.1", dashboard_address=None,
                                   env=env)
            client = Client(cluster)
        else:
            client = Client(address, timeout="30s")
    except (OSError, TimeoutError, ValueError) as err:
        if cluster is not None:
            cluster.close()
        raise RunError(f"cannot reach the Dask scheduler at {address}: {err}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def worker_environment() -> None:
    """Pins the worker's JAX set-up before JAX is imported there."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    if "JAX_PLATFORMS" not in os.environ and os.environ.get("NORMSWEEP_JAX_PLATFORMS"):
        os.environ["JAX_PLATFORMS"] = os.environ["NORMSWEEP_JAX_PLATFORMS"]


def cohort_task(config_text: str, source: str, root: str, index: int, budget: int) -> dict:
    """Trains cohort `index` of the grid unless its file exists; runs on a worker."""
    worker_environment()
    import time

    from normsweep import config as config_mod
    from normsweep import plan, work

    started = time.perf_counter()
    cfg = config_mod.parse(config_text, source=source)
    work.enable_dtype(cfg)
    work.enable_compilation_cache()
    cohort = plan.cohorts(cfg)[index]
    skipped = work.cohort_done(cfg, cohort, Path(root), lambda message: None)
    diverged = 0
    if not skipped:
        x, y = work.training_data(cfg, cohort)
        steps = plan.record_steps(cfg.train.steps, cfg.record.steps, cfg.record.log_points)
        diverged = work.run_cohort(cfg, Path(root), cohort, x, y, steps, budget, None)
    import socket
    return {"cohort": cohort.name, "skipped": skipped, "diverged": diverged,
            "seconds": time.perf_counter() - started, "pid": os.getpid(),
            "host": socket.gethostname()}


def run_dask(client, config, root: Path, cohorts: list, budget: int,
             done: Callable[..., None]) -> None:
    """Runs `cohorts` (a list of (index, cohort)) as tasks of `client`
    (`connect`); returns when all are on disk. `done(name, where)` as each
    finishes, `where` naming the worker and its time."""
    from distributed import as_completed

    futures = [client.submit(cohort_task, config.text, config.source, str(root.resolve()),
                             index, budget, key=f"normsweep-{config.fingerprint()}-{c.name}",
                             pure=False, retries=2)
               for index, c in cohorts]
    for future in as_completed(futures):
        r = future.result()
        what = "found on disk" if r["skipped"] else f"trained in {r['seconds']:.1f} s"
        done(r["cohort"], f"{what} by worker {r['host']}:{r['pid']}")
