"""Compiled programs kept on disk by what shapes them, beside JAX's
persistent compilation cache.

JAX's cache is keyed by the lowered program, so a hit there still traces and
lowers it: about a second per cohort on a CPU host, as long as a warm cohort
trains on an accelerator. Here a program is keyed by what determines it (the
function, the `Program`'s compared fields, the arguments' shapes, dtypes and
placements, the mesh, the devices, the JAX version and normsweep's own
source), and a hit loads the executable without tracing. A miss compiles as
JAX would and stores the result; any failure to read or write falls back to
compiling. Programs with custom calls are not kept (`compiled`). The folder
is `executables/` in the compilation cache's, and exists only while that
cache is on.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import tempfile
import threading
from pathlib import Path

import jax
from jax.experimental import serialize_executable

_loaded: dict[str, jax.stages.Compiled] = {}     # this process's, by key
_lock = threading.Lock()


@functools.cache
def _source_digest() -> str:
    """normsweep's own source: a changed program body is a new key."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def folder() -> Path | None:
    """Where executables are kept: None while the compilation cache is off."""
    cache = jax.config.jax_compilation_cache_dir
    return Path(cache) / "executables" if cache else None


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (str(treedef), tuple((tuple(a.shape), str(a.dtype), bool(getattr(a, "weak_type", False)),
                                 str(getattr(a, "sharding", None))) for a in leaves))


def key(name: str, program, static: tuple, args: tuple, context: tuple = ()) -> str:
    """What determines the executable; `context`: settings of the process
    that change the traced program (the loops' unrolling)."""
    shape = tuple((f.name, getattr(program, f.name)) for f in dataclasses.fields(program)
                  if f.compare)
    devices = tuple((d.platform, d.device_kind, d.id) for d in jax.local_devices())
    text = repr((name, shape, static, _signature(args), context, devices, jax.__version__,
                 os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", ""),
                 _source_digest()))
    return hashlib.sha256(text.encode()).hexdigest()


def compiled(name: str, jitted, program, static: tuple, args: tuple,
             context: tuple = ()) -> jax.stages.Compiled:
    """`jitted.lower(program, *static, *args).compile()`, or the same
    executable loaded from this process or the disk (`key`)."""
    k = key(name, program, tuple(repr(s) for s in static), args, context)
    with _lock:
        if k in _loaded:
            return _loaded[k]
    where = folder()
    out = _read(where / f"{k}.pkl") if where is not None else None
    if out is None:
        out = jitted.lower(program, *static, *args).compile()
        # a custom call's target (LAPACK's SVD on a CPU) is registered when a
        # process first lowers it: a loaded executable that calls one crashed
        # a fresh process, so those stay with JAX's own cache
        if where is not None and "custom-call(" not in out.as_text():
            _write(where / f"{k}.pkl", out)
    with _lock:
        return _loaded.setdefault(k, out)


def _read(path: Path) -> jax.stages.Compiled | None:
    try:
        with open(path, "rb") as f:
            payload, in_tree, out_tree = pickle.load(f)
        return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except Exception:           # noqa: BLE001 -- absent, damaged or stale: compile instead
        return None


def _write(path: Path, out: jax.stages.Compiled) -> None:
    """Atomically (a reader never meets half a file); nothing on a failure."""
    tmp = None
    try:
        blob = pickle.dumps(serialize_executable.serialize(out))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except Exception:           # noqa: BLE001 -- a cache that cannot be written is no failure
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
