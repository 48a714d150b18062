"""What XLA's CPU backend needs from normsweep, and nothing else.

XLA's CPU runtime runs a program's independent operations at once on its
thread pool (the "concurrency-optimized scheduler"). The spectra program
(`train.spectra_cohort`: batched LAPACK SVDs of every layer, of its change
and of its gradient) then deadlocks with jaxlib 0.10.2: every thread waits
on a futex and none runs. Seen on 2 cores with sweeps/seed.toml's
width-64, depth-4 cohort, six members or more, every time; a per-program
compiler option does not reach it, so the flag goes into XLA_FLAGS before
the backend starts. The scheduler only orders independent operations: the
numbers are the same.

A CPU compiles a cohort's programs in a third to a half less time with
XLA's older elementwise emitters and LLVM at -O1 (`COMPILE_OPTIONS`), and
they train as fast; on two cores a cold launch is mostly compiling. The
numbers agree with XLA's defaults to rounding (tested). The programs get
them through `jit`, only where the backend is a CPU.
"""
from __future__ import annotations

import functools
import os
import threading

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}


def configure() -> None:
    """Adds `FLAG` to XLA_FLAGS (unless the user set that option), for the
    backend that starts after this. Other backends ignore xla_cpu options."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()


@functools.cache
def compiler_options() -> dict:
    """`COMPILE_OPTIONS` where the default backend is a CPU whose XLA takes
    them; none elsewhere (an accelerator compiles with XLA's defaults)."""
    import jax

    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=COMPILE_OPTIONS).lower(1.0).compile()
    except Exception:       # noqa: BLE001 - an XLA without them: its defaults
        return {}
    return dict(COMPILE_OPTIONS)


def options_key() -> tuple:
    """`compiler_options()` as a hashable key: programs compiled with
    other options are other programs."""
    return tuple(sorted(compiler_options().items()))


def jit(**kwargs):
    """A decorator: `jax.jit(fn, **kwargs)` with `compiler_options()`, made
    at its first call or lowering, once the backend is known (importing
    normsweep starts no backend). `__wrapped__` and `__name__` are `fn`'s."""
    return functools.partial(_Jit, kwargs=kwargs)


class _Jit:
    def __init__(self, fn, kwargs):
        functools.update_wrapper(self, fn)
        self._kwargs, self._jitted, self._lock = kwargs, {}, threading.Lock()

    def _made(self):
        key = options_key()
        with self._lock:
            if key not in self._jitted:
                import jax
                self._jitted[key] = jax.jit(self.__wrapped__, compiler_options=dict(key),
                                            **self._kwargs)
            return self._jitted[key]

    def __call__(self, *args, **kwargs):
        return self._made()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._made().lower(*args, **kwargs)
