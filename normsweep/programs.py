"""A cohort's programs found again without tracing them.

JAX's persistent cache keys a compiled program by its lowered module, so
finding one there still traces and lowers the Python that writes it: most
of a cohort's time to its programs on a warm relaunch (BENCHMARKS.md).
Where that cache is on, each program is also kept beside it as a
`jax.export` artifact, keyed by everything its trace reads: the package's
source; the versions of jax, jaxlib, flax and optax; the backend; the jax
options and `linalg` settings that change a trace; the static arguments;
and the arguments' shapes and dtypes. A program met again is deserialized
and lowered as it was exported, and JAX's cache supplies its executable.
A first launch runs the artifact it has just exported, so a relaunch runs
the same module. Programs placed on a mesh of several devices are traced
as before.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import jax
from jax import export
from jax.sharding import Mesh

from normsweep import cpu, linalg

# the jax options a trace reads
OPTIONS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_threefry_partitionable",
           "jax_default_prng_impl", "jax_numpy_dtype_promotion", "jax_numpy_rank_promotion")

_lock = threading.Lock()
_programs: dict = {}
_registering = threading.Lock()


def lowered(fn, static: tuple, args: tuple, donate: tuple[int, ...] = ()):
    """`fn.lower(*static, *args)` (`fn` jitted, its static arguments first)."""
    found = _program(fn, static, args, donate)
    return fn.lower(*static, *args) if found is None else found.lower(*args)


def called(fn, static: tuple, args: tuple, donate: tuple[int, ...] = ()):
    """`fn(*static, *args)`; `donate` indexes `args`, as `fn` donates them."""
    found = _program(fn, static, args, donate)
    return fn(*static, *args) if found is None else found(*args)


def exported(static: tuple) -> bool:
    """Whether programs with these static arguments run from exported modules:
    where JAX's persistent cache is on, on one device. Their outputs are then
    placed on the device (committed), where a traced program's follow its
    inputs."""
    return bool(jax.config.jax_compilation_cache_dir) and \
        not any(isinstance(s, Mesh) for s in static)


def _program(fn, static, args, donate) -> Callable | None:
    """A jitted function of `args` that runs `fn`'s exported module, or None
    where programs are traced (`exported`)."""
    if not exported(static):
        return None
    options = cpu.options_key()
    key = (fn.__name__, static, _shapes(args), options)
    with _lock:
        if key in _programs:
            return _programs[key]
    _register_types()
    path = artifact_path(fn, static, args, donate)
    artifact = _read(path)
    if artifact is None:
        artifact = export.export(jax.jit(_named(fn.__name__, functools.partial(fn.__wrapped__,
                                                                                *static)),
                                         donate_argnums=donate))(*args)
        _write(path, artifact.serialize())
    jitted = jax.jit(_named(fn.__name__, artifact.call), donate_argnums=donate,
                     compiler_options=dict(options))
    with _lock:
        return _programs.setdefault(key, jitted)


def artifact_path(fn, static: tuple, args: tuple, donate: tuple[int, ...] = ()) -> Path:
    """Where `fn`'s program for these arguments is kept (the persistent
    cache's folder must be set): named by a digest of all that its trace
    reads, so that anything else finds another file."""
    text = repr((_source_digest(), _trace_settings(), fn.__name__, static, _shapes(args), donate))
    return Path(jax.config.jax_compilation_cache_dir) / "normsweep-programs" / \
        f"{fn.__name__}-{hashlib.sha256(text.encode()).hexdigest()[:40]}.bin"


def _named(name: str, f: Callable) -> Callable:
    """`f` under `name`: jit names its events and its module after it."""
    def run(*args):
        return f(*args)
    run.__name__ = run.__qualname__ = name
    return run


def _shapes(args) -> tuple:
    leaves, tree = jax.tree.flatten(args)
    avals = [a if isinstance(a, jax.ShapeDtypeStruct) else jax.typeof(a) for a in leaves]
    return str(tree), tuple((tuple(a.shape), str(a.dtype), bool(a.weak_type)) for a in avals)


@functools.cache
def _source_digest() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    for dist in ("jax", "jaxlib", "flax", "optax"):
        digest.update(f"{dist} {importlib.metadata.version(dist)}\0".encode())
    return digest.hexdigest()


def _trace_settings() -> tuple:
    unroll = linalg._unroll
    return (jax.default_backend(), tuple(str(getattr(jax.config, o)) for o in OPTIONS),
            linalg.EXACT_MAX, linalg.SQUARINGS, linalg.UNROLL,
            f"{unroll.__module__}.{unroll.__qualname__}")


def _register_types() -> None:
    """Registers, for (de)serialization, the named tuples of a program's
    arguments and outputs: `Hyper`, `State` and the optimizer's states. Once
    a process, whichever thread comes first."""
    with _registering:
        _register()


@functools.cache
def _register() -> None:
    from normsweep.model import with_kernels
    from normsweep.step import Program, State, hyper, optimizer

    kinds = {State}
    for decay in (False, True):
        program = Program(dims=(2, 2, 2), decay=decay)
        hp = hyper(program, [0.1], [0.0], None)
        kinds.add(type(hp))
        params = with_kernels(None, [jax.ShapeDtypeStruct((2, 2), "float32")] * 2)
        stack = [jax.eval_shape(optimizer(program, hp).init, params)]
        while stack:
            node = stack.pop()
            if isinstance(node, tuple) and hasattr(type(node), "_fields"):
                kinds.add(type(node))
            if isinstance(node, (tuple, list)):
                stack.extend(node)
            elif isinstance(node, dict):
                stack.extend(node.values())
    for kind in kinds:
        export.register_namedtuple_serialization(
            kind, serialized_name=f"{kind.__module__}.{kind.__qualname__}")


def _read(path: Path):
    """The artifact at `path`, or None: none yet, or one this jax cannot read
    (it is exported again)."""
    try:
        return export.deserialize(bytearray(path.read_bytes()))
    except Exception:       # noqa: BLE001 - missing, damaged or from another jax
        return None


def _write(path: Path, data: bytes) -> None:
    """`data` to `path` whole or not at all; an unwritable cache fails nothing."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
