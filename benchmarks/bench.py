"""normsweep against the machine's matmul rate and the loops a user would write.

    python benchmarks/bench.py              # every part (about 12 minutes on 2 CPU cores)
    python benchmarks/bench.py --smoke      # a tiny version, to keep the script working

Everything is measured in one run on one machine and reported as ratios,
since absolute seconds on shared machines are noise. FLOPs of a training step
are counted as 6·n·P (forward 2nP, backward 4nP; P = number of weights).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normsweep import config as config_mod
from normsweep import linalg, plan, resources, train
from normsweep.data import member_keys, sphere_data

import xprof


# the instructions of an optimised HLO module that launch work: on a GPU each
# fusion is a kernel compiled of its own
LAUNCHES = ("fusion(", "custom-call(", "dot(", "convolution(", "while(", "conditional(")


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_rate(size: int, repeat: int, precision: str = "highest") -> float:
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: jnp.matmul(a, a, precision=precision))
    f(a).block_until_ready()
    return 2 * size**3 / best_of(lambda: f(a).block_until_ready(), repeat)


def params(dims):
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def member_args(lrs, seeds) -> tuple:
    """(lr, init keys, power keys) of a cohort of every η × seed."""
    return (np.repeat(lrs, len(seeds)), *member_keys(np.tile(seeds, len(lrs))))


def normsweep_run(dims, n, lrs, seeds, steps_array, x, y, precision="highest", schedules=None):
    schedules = dict(schedules or {})
    spectra = bool(schedules.pop("spectra", False))     # not a scheduled probe: steps 0 and T
    prog = train.Program(dims=dims, precision=precision, probes=tuple(schedules),
                         spectra=spectra)
    lr, ik, pk = member_args(lrs, seeds)
    t0 = time.perf_counter()
    train.train_members(prog, x, y, lr, ik, pk, steps_array, schedules=schedules)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    train.train_members(prog, x, y, lr, ik, pk, steps_array, schedules=schedules)
    return time.perf_counter() - t0, first - (time.perf_counter() - t0)


def baseline_run(dims, x, y, lr, steps, svd: bool):
    """One configuration at a time: a jitted step called from Python, logging
    the loss and every layer's Frobenius (and, with svd, spectral) norm."""
    def loss(ws):
        h = x
        for l, w in enumerate(ws):
            h = h @ w
            if l < len(ws) - 1:
                h = jax.nn.relu(h)
        return 0.5 * jnp.sum((jax.nn.softmax(h) - y) ** 2)

    opt = optax.sgd(lr)

    @jax.jit
    def step(ws, state):
        value, grads = jax.value_and_grad(loss)(ws)
        updates, state = opt.update(grads, state, ws)
        norms = [jnp.linalg.norm(w) for w in ws]
        if svd:
            norms += [jnp.linalg.norm(w, 2) for w in ws]
        return optax.apply_updates(ws, updates), state, value, norms

    keys = jax.random.split(jax.random.key(0), len(dims) - 1)
    step = jax.default_matmul_precision("highest")(step)   # what normsweep computes
    ws = [jax.random.normal(k, (a, b)) * np.sqrt(2 / a)
          for k, a, b in zip(keys, dims[:-1], dims[1:])]
    state = opt.init(ws)
    out = step(ws, state)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        ws, state, value, norms = step(ws, state)
        float(value)                     # a user's loop logs every step
    return (time.perf_counter() - t0) / steps


def peak_rss(steps: int) -> int:
    code = ("import numpy as np, jax, jax.numpy as jnp, resource\n"
            "from normsweep import plan, train\n"
            "from normsweep.data import member_keys, sphere_data\n"
            "x, y = sphere_data(jax.random.key(0), 64, 16, 10, jnp.float32)\n"
            "ik, pk = member_keys(np.array([0, 1]))\n"
            f"s = plan.record_steps({steps}, 'log')\n"
            "train.train_members(train.Program(dims=(16, 32, 32, 10)), x, y, "
            "np.array([0.01, 0.02]),"
            " ik, pk, s)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024


# the first lines of every script measured in a process of its own: --unroll
# reaches it through the environment
UNROLL = """\
import os
from normsweep import linalg
linalg.UNROLL = int(os.environ.get("NORMSWEEP_BENCH_UNROLL", linalg.UNROLL))
"""


LAUNCH = UNROLL + """\
import collections, json, sys, threading, time
from normsweep import compile_ahead, config, dataset, store, sweep, work
cfg = config.parse(sys.argv[1], source="bench.toml", overrides=json.loads(sys.argv[4]))
spent, lock = collections.defaultdict(float), threading.Lock()

def timed(owner, name, part):
    # wall seconds in owner.name, per part and per thread (the launching one, or ahead)
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            ahead = threading.current_thread() is not threading.main_thread()
            with lock:
                spent[part + ("_ahead" if ahead else "")] += time.perf_counter() - start
    setattr(owner, name, wrapper)

timed(work, "compile_cohort", "compile")         # the programs of a cohort, running nothing
timed(work, "train_cohort", "train")             # its training, records included
timed(dataset, "cohort_dataset", "write")        # its dataset built, then written
timed(store, "write_netcdf", "write")
timed(compile_ahead.CompileAhead, "next", "wait")  # the launching thread waiting for one

class Lines(sweep.Reporter):
    # each cohort as it is written, on stderr, which the benchmark passes
    # through: what a launch stopped by a time limit had done
    def done(self, name, where=""):
        print(f"  {time.perf_counter() - t0:7.1f} s  {name} written", file=sys.stderr, flush=True)

t0, cpu0 = time.perf_counter(), time.process_time()
sweep.launch(cfg, sys.argv[2], reporter=Lines(),
             compile_workers=None if sys.argv[3] == "default" else int(sys.argv[3]))
spent["wall"] = time.perf_counter() - t0
spent["cpu"] = time.process_time() - cpu0      # every thread's, compiler's and training's
spent["workers"] = (compile_ahead.default_compile_workers(len(sweep.plan.cohorts(cfg)))
                    if sys.argv[3] == "default" else int(sys.argv[3]))
print(json.dumps(spent))
"""


PROGRAMS = UNROLL + """\
import collections, json, sys, time
import jax
from normsweep import config, linalg, plan, resources, train, work
from bench import LAUNCHES
if sys.argv[2] == "1":      # an accelerator's unrolling of the small loops, on this CPU
    linalg._unroll = linalg.accelerator_unroll
cfg = config.parse(sys.argv[1], source="bench.toml", overrides=json.loads(sys.argv[3]))
work.enable_dtype(cfg)
x, y = work.training_data(cfg)
steps = plan.record_steps(cfg.train.steps, cfg.record.steps, cfg.record.log_points)
budget = resources.default_budget()
rows, python = [], collections.defaultdict(float)

def listener(event, duration, **_):
    # tracing and lowering run Python, under the GIL: the part of a compilation
    # that compile threads cannot overlap with each other
    if event.endswith(("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration")):
        python["s"] += duration

jax.monitoring.register_event_duration_secs_listener(listener)
first = {}         # program -> the first cohort that compiled it
for cohort in plan.cohorts(cfg):
    python["s"] = 0.0
    members = work.Members(cfg, cohort, len(steps), budget)
    args, kwargs = members.arguments(members.chunks[0])
    start = time.perf_counter()
    compiled = train.compile_members(members.program, x, y, *args, steps, 1, **kwargs)
    key = (members.program, len(members.chunks[0]))
    # a program that serves several depths is counted once, for its first cohort
    rows.append({"cohort": cohort.name, "width": cohort.width, "depth": cohort.depth,
                 "compile_s": time.perf_counter() - start, "trace_lower_s": python["s"],
                 "program_of": first.setdefault(key, cohort.name),
                 "kernels": {name: sum(c.as_text().count(op) for op in LAUNCHES)
                             for name, c in compiled.items()} if first[key] == cohort.name
                 else {}})
print(json.dumps(rows))
"""


def fresh_env(extra: dict | None = None) -> dict:
    """The environment of a measurement in a fresh process: the compilation
    cache off, this folder importable (the scripts import `bench`), `extra`
    added."""
    env = {**os.environ, "NORMSWEEP_JAX_CACHE": "off", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(__file__)),
                                                      env.get("PYTHONPATH")]))
    return env


def program_sizes(grid: str, unrolled: bool, overrides: tuple[str, ...] = ()) -> list[dict]:
    """Every cohort of `grid` (with `--set` `overrides`) compiled in a fresh
    process (cache off, running nothing): per cohort its compile seconds and
    the kernels (fusions, library calls, loops) of each program's optimised
    HLO, none for a cohort whose program an earlier cohort compiled
    ("program_of" names it); `unrolled` unrolls the small loops as an
    accelerator does, so that a CPU counts about the kernels a GPU compiles
    one by one."""
    out = subprocess.run([sys.executable, "-c", PROGRAMS, grid, str(int(unrolled)),
                          json.dumps(list(overrides))],
                         env=fresh_env(),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


COMPILE = UNROLL + """\
import contextlib, json, sys, tempfile, time, collections
import numpy as np, jax, jax.numpy as jnp
from normsweep import linalg, plan, train
from normsweep.data import member_keys, sphere_data
import xprof
from bench import member_args
m, seeds, steps, n, unroll, trace, again = map(int, sys.argv[1:8])
if unroll:
    linalg.UNROLL = unroll
x, y = sphere_data(jax.random.key(0), n, 16, 10, jnp.float32)
prog = train.Program(dims=(16, m, m, 10))
sched = plan.record_steps(steps, "log", 64)
def cohort(seeds):
    return member_args(np.geomspace(1e-3, 1e-2, 4), np.arange(seeds))
seconds = collections.defaultdict(float)
def listener(event, duration, fun_name="", **_):
    stage = event.rsplit("/", 1)[-1].removesuffix("_duration")
    name = fun_name.removeprefix("jit(").removesuffix(")").removesuffix("_cohort")
    seconds[name, stage] += duration
jax.monitoring.register_event_duration_secs_listener(listener)
events = {}
with tempfile.TemporaryDirectory() as tmp:
    with (jax.profiler.trace(tmp, profiler_options=xprof.quiet_options()) if trace
          else contextlib.nullcontext()):
        t0 = time.perf_counter()
        compiled = train.compile_members(prog, x, y, *cohort(seeds), sched)
        t1 = time.perf_counter()
    if trace:
        events = xprof.host_event_seconds(tmp, windows="normsweep compile ")
from bench import LAUNCHES
programs = {name: {"trace_s": seconds[name, "jaxpr_trace"],
                   "lower_s": seconds[name, "jaxpr_to_mlir_module"],
                   "compile_s": seconds[name, "backend_compile"],
                   "kernels": sum(c.as_text().count(op) for op in LAUNCHES)}
            for name, c in compiled.items()}
train.train_members(prog, x, y, *cohort(seeds), sched)
t2 = time.perf_counter()
train.train_members(prog, x, y, *cohort(seeds), sched)
t3 = time.perf_counter()
# the same shapes but 4 more members, in the same process: what a compilation
# costs once a first one has loaded and set up the compiler
if again:
    train.compile_members(prog, x, y, *cohort(seeds + 1), sched)
t4 = time.perf_counter()
top = {window.removeprefix("normsweep compile ") or "outside": dict(
           sorted(stats.items(), key=lambda e: -e[1]["seconds"])[:20])
       for window, stats in events.items()}
print(json.dumps({"compile_s": t1 - t0, "first_run_s": t2 - t1, "second_run_s": t3 - t2,
                  "next_cohort_compile_s": t4 - t3 if again else None, "programs": programs,
                  "compiler_events": top}))
"""


def compile_split(m: int, seeds: int, steps: int, n: int, xla_flags: str = "",
                  unroll: int = 0, trace: bool = False, again: bool = False,
                  env: dict | None = None) -> dict:
    """One cohort in a fresh process with the cache off and `xla_flags` added
    to XLA_FLAGS (and `linalg.UNROLL` set to `unroll`, if not 0): seconds of
    its compilation alone (`train.compile_members`, which runs nothing), then
    of the same cohort trained twice, and per program (init, segment)
    the seconds JAX spent tracing, lowering and compiling it and the number
    of kernels (fusions, library calls, loops) in its optimised HLO. A first
    run much slower than the second means the first call still does work
    that is not compilation. With `again`, a cohort of the same shapes with
    4 more networks then compiles in the same process
    ("next_cohort_compile_s"): what a compilation costs once a first one has
    set the compiler up. With `trace`,
    the first compilation runs under `jax.profiler`, and "compiler_events"
    holds per program the 20 compiler phases and passes that took the most
    exclusive host time, summed over threads. A variant that fails (an XLA
    flag this jaxlib does not know, say) returns {"error": ...}. `env` adds
    environment variables (JAX_* ones set jax.config options)."""
    env = fresh_env(env)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    out = subprocess.run([sys.executable, "-c", COMPILE, str(m), str(seeds), str(steps), str(n),
                          str(unroll), str(int(trace)), str(int(again))], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        return {"error": (out.stderr or out.stdout).strip()[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def launch_split(grid: str, root: str, workers: str, cache: bool | str = False,
                 overrides: tuple[str, ...] = ()) -> dict:
    """`normsweep launch` of `grid` (with `--set` `overrides`) in a fresh
    process, the persistent compilation cache off (or on, for the smoke run,
    which times nothing; or in the folder `cache`, to time a warm cache
    against the cold launch that filled it): wall seconds from the call
    (import excluded), and the seconds its launching thread spent compiling,
    waiting for a compilation ahead, training (records included) and
    building and writing files; "compile_ahead" sums the compile threads'
    seconds, which overlap the rest; "cpu" is the CPU seconds of all its
    threads. Its stderr passes through: a line as each cohort is written,
    and any error."""
    env = dict(os.environ)
    if isinstance(cache, str):
        env["NORMSWEEP_JAX_CACHE"] = cache
    elif not cache:
        env["NORMSWEEP_JAX_CACHE"] = "off"
    # an accelerator's memory as a user's launch has it: preallocated (gpu.sh
    # turns preallocation off for the benchmark's own process)
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    out = subprocess.run([sys.executable, "-c", LAUNCH, grid, root, workers,
                          json.dumps(list(overrides))], env=env, stdout=subprocess.PIPE,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def launch_seconds(grid: str, root: str, workers: str, cache: bool = False) -> float:
    return launch_split(grid, root, workers, cache)["wall"]


def compile_ahead_grid(widths, depths, n, steps) -> str:
    return (f'name = "ahead"\n[data]\nn = {n}\nd = 16\nk = 10\n[train]\nsteps = {steps}\n'
            f'[record]\nlog_points = 32\n[grid]\nwidth = {widths}\ndepth = {depths}\n'
            'lr = [0.001, 0.002, 0.005, 0.01]\nseed = [0, 1]\n')


PARTS = ("table", "precision", "record", "compilations", "memory", "ahead", "sweep", "programs",
         "compile", "profile",
         "long")


def segment_group(stack: tuple[str, ...]) -> str:
    """A label for a kernel of the segment program, from its source stack
    (innermost call first): the step, or which part of a record."""
    names = [frame.rsplit(":", 1)[0] for frame in stack]

    def has(name):       # a function, or a function defined inside one
        return any(n == name or n.endswith("." + name) for n in names)

    if "measured" in names:
        within = names[:names.index("measure")] if "measure" in names else []
        if any(n.startswith(("spectral", "lanczos", "top_eigen", "_rescale", "matmul"))
               for n in within):
            return "record: spectral norms (Lanczos, small Gram matrices)"
        if any(n in ("frobenius", "inner", "sum_squares") for n in within):
            return "record: sums (Frobenius norms of W, W - W(0))"
        for extra in ("sharpness", "jacobian_norms", "ntk_eigs"):    # at their strides
            if extra in names:
                return f"record: {extra}"
        return "record: the rest (W - W(0), NaN masks, stacking)"
    if has("record_and_advance"):
        return "steps (the loop of a record's step and those to the next)"
    return "other (scan, conditions, copies)" if stack else "other (no source)"


# sizes per preset: (n, matmul side, widths, steps per width, seeds per η)
PRESETS = {
    "smoke": dict(n=64, matmul=256, widths=[32], steps={32: 20}, seeds=[2], repeat=3,
                  ahead=([8, 12], [2], 32, 5),
                  compile=(32, 2, 20, [{"trace": True, "again": True}]),
                  profile=[(32, 2, 6)], long=[(32, 60)],
                  sweep=("smoke", compile_ahead_grid([8, 12], [2], 32, 5))),
    "cpu": dict(n=1024, matmul=1024, widths=[64, 256, 512, 1024],
                steps={64: 400, 256: 400, 512: 120, 1024: 40}, seeds=[2], repeat=10,
                ahead=([64, 128, 256], [2, 3], 1024, 100),
                compile=(256, 2, 400, [{}, {"unroll": 1}]), profile=[(256, 2, 100), (1024, 2, 24)],
                long=[(256, 2000), (512, 1000), (1024, 400)],
                sweep=("quickstart", "sweeps/quickstart.toml")),
    # a GPU is launch-bound on 8 small networks: 64 networks per cohort as well
    # (4 η × 16 seeds), and enough steps that a cohort runs for about a second
    "gpu": dict(n=1024, matmul=8192, widths=[64, 256, 1024, 2048],
                steps={64: 4000, 256: 2000, 1024: 400, 2048: 200}, seeds=[2, 16], repeat=20,
                fast_precision=(2048, 16), ahead=([256, 1024], [2, 3], 1024, 200),
                # where a GPU cohort's 40-113 s go: XLA's defaults under the profiler
                # (its phases and passes per program); then XLA's LLVM module split
                # and compiled on its thread pool (off by default: a program's kernels
                # are generated one after another); with every small loop rolled; and
                # with JAX's threefry kernel for the random draws (which JAX says
                # compiles faster)
                compile=(1024, 2, 100, [
                    {"trace": True, "again": True},
                    {"xla_flags": "--xla_gpu_enable_llvm_module_compilation_parallelism=true"},
                    {"unroll": 1},
                    {"env": {"JAX_THREEFRY_GPU_KERNEL_LOWERING": "1"}}]),
                profile=[(1024, 16, 100)], long=[(1024, 4000)],
                sweep=("seed", "sweeps/seed.toml"))
}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds not minutes")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="sizes: cpu (default), gpu (larger cohorts, more steps), smoke")
    ap.add_argument("--json",
                    help="also write the figures to this file (rewritten after each part)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"the parts to run, comma-separated, in the order given (default: "
                         f"{','.join(PARTS)})")
    ap.add_argument("--widths", help="the table's widths, comma-separated (default: the preset's)")
    ap.add_argument("--grid", help="the grid file of the sweep and programs parts (default: the "
                                   "preset's: sweeps/quickstart.toml, sweeps/seed.toml on a GPU)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="set a grid key in the sweep and programs parts, as `normsweep "
                         "launch --set` does (repeatable): train.programs=width measures "
                         "one program per width against the default one per cohort")
    ap.add_argument("--one-launch", action="store_true",
                    help="the sweep part's first launch only, without the second that "
                         "splits training from records (for comparing variants)")
    ap.add_argument("--unroll", type=int, help="loop bodies per trip of the small spectral "
                    "loops (linalg.UNROLL) in every part, fresh processes included; 1 keeps "
                    f"them rolled (default: the package's, {linalg.UNROLL}). It acts on an "
                    "accelerator and on the programs part's count: a CPU keeps them rolled")
    args = ap.parse_args()
    if args.unroll is not None:
        if args.unroll < 1:
            ap.error(f"--unroll: {args.unroll} is not a positive integer")
        linalg.UNROLL = args.unroll
        os.environ["NORMSWEEP_BENCH_UNROLL"] = str(args.unroll)
    preset = args.preset or ("smoke" if args.smoke else "cpu")
    smoke = preset == "smoke"
    cfg = dict(PRESETS[preset])
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {', '.join(unknown)}; allowed: {', '.join(PARTS)}")
    if args.widths:
        try:
            cfg["widths"] = [int(w) for w in args.widths.split(",")]
        except ValueError:
            ap.error(f"--widths: {args.widths!r} is not a comma-separated list of integers")
        missing = [w for w in cfg["widths"] if w not in cfg["steps"]]
        if missing:
            ap.error(f"--widths: {missing} not in the {preset} preset; allowed: "
                     f"{', '.join(map(str, cfg['steps']))}")
    n, d, k = cfg["n"], 16, 10
    x, y = sphere_data(jax.random.key(0), n, d, k, jnp.float32)
    lrs = np.geomspace(1e-3, 1e-2, 4)
    res = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
           "preset": preset, "jax": jax.__version__, "unroll": linalg.UNROLL}
    res["matmul_flops"] = matmul_rate(cfg["matmul"], cfg["repeat"])
    res["matmul_flops_default_precision"] = matmul_rate(cfg["matmul"], cfg["repeat"], "default")
    print(f"device: {res['device']} ({res['backend']}), jax {jax.__version__}")
    print(f"matmul {cfg['matmul']}² float32: {res['matmul_flops'] / 1e9:.1f} GFLOP/s at full "
          f"float32 precision (normsweep's default), "
          f"{res['matmul_flops_default_precision'] / 1e9:.1f} at XLA's default precision")
    print(f"cohorts: n = {n}, depth 3, 4 η × {'/'.join(map(str, cfg['seeds']))} seeds, "
          "record = log (64 points); baselines train one network at a time")
    if args.unroll is not None:
        print(f"--unroll {args.unroll}: {args.unroll} loop bodies per trip of the small spectral "
              "loops in every part")

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)

    def part_table():
        rows = res["cohorts"] = []     # saved row by row
        for m in cfg["widths"]:
            dims = (d, m, m, k)
            steps = cfg["steps"][m]
            # 64 log-spaced records: what a long sweep records per step; the cost of
            # recording more densely is measured on its own below
            sched = plan.record_steps(steps, "log", 64)
            base = baseline_run(dims, x, y, 1e-3, max(5, min(steps // 4, 400)), svd=False)
            base_svd = baseline_run(dims, x, y, 1e-3, max(3, min(steps // 20, 50)), svd=True)
            for n_seeds in cfg["seeds"]:
                seeds = np.arange(n_seeds)
                members = len(lrs) * n_seeds
                t, compile_s = normsweep_run(dims, n, lrs, seeds, sched, x, y)
                flop = 6 * n * params(dims) * members * steps
                ns_rate = members * steps / t
                row = {"width": m, "members": members, "steps": steps,
                       "net_steps_per_s": ns_rate, "flops": flop / t,
                       "fraction_of_matmul": flop / t / res["matmul_flops"], "compile_s": compile_s,
                       "speedup_vs_loop": ns_rate * base, "speedup_vs_loop_svd": ns_rate * base_svd}
                rows.append(row)
                save()
                print(f"width {m:5d} × {members:3d} networks: {ns_rate:9.1f} network-steps/s, "
                      f"{flop / t / 1e9:8.1f} GFLOP/s ({row['fraction_of_matmul']:.0%} of matmul), "
                      f"compile {compile_s:.1f} s, ×{row['speedup_vs_loop']:.1f} vs "
                      "one-at-a-time loop, "
                      f"×{row['speedup_vs_loop_svd']:.1f} vs loop with SVD per step")

    def part_precision():
        # on an accelerator, XLA's default precision (TF32 on a GPU): the speed
        # that [train] matmul_precision = "default" buys, against its own matmul rate
        if cfg.get("fast_precision"):
            m, n_seeds = cfg["fast_precision"]
            dims, steps = (d, m, m, k), cfg["steps"][m]
            t, _ = normsweep_run(dims, n, lrs, np.arange(n_seeds),
                                 plan.record_steps(steps, "log", 64),
                                 x, y, precision="default")
            flop = 6 * n * params(dims) * len(lrs) * n_seeds * steps
            res["default_precision"] = {"width": m, "members": len(lrs) * n_seeds,
                                        "flops": flop / t,
                                        "fraction_of_matmul": flop / t /
                                        res["matmul_flops_default_precision"]}
            print(f"width {m:5d} × {len(lrs) * n_seeds:3d} networks, matmul_precision = default: "
                  f"{flop / t / 1e9:8.1f} GFLOP/s "
                  f"({res['default_precision']['fraction_of_matmul']:.0%} of "
                  "default-precision matmul)")

    def interleaved(dims, seeds, schedules: dict) -> dict:
        # the schedules interleaved, best of 3 each: on a shared machine a single
        # timing of each drifts by more than the differences being measured
        # (a schedule may come with probe schedules: (steps, {probe: schedule}))
        best = {}
        for _ in range(1 if smoke else 3):
            for label, sched in schedules.items():
                sched, probes = sched if isinstance(sched, tuple) else (sched, {})
                t, _ = normsweep_run(dims, n, lrs, seeds, sched, x, y, schedules=probes)
                best[label] = min(t, best.get(label, t))
        return best

    def part_record():
        # recording cost: "all" and "log" against recording only the first and last step
        m = 32 if smoke else 256
        steps = 20 if smoke else 300
        seeds = np.arange(2)
        dims = (d, m, m, k)
        log = plan.record_steps(steps, "log", 64)
        timing = interleaved(dims, seeds, {"off": np.array([0, steps]), "log": log,
                                           "all": plan.record_steps(steps, "all"),
                                           # the defaults a grid file gets, and the spectra
                                           "jacobian": (log, {"jacobian": "log"}),
                                           "spectra": (log, {"spectra": True})})
        res["record_overhead_log"] = timing["log"] / timing["off"] - 1
        res["record_overhead_all"] = timing["all"] / timing["off"] - 1
        res["jacobian_overhead"] = timing["jacobian"] / timing["log"] - 1
        res["spectra_overhead"] = timing["spectra"] / timing["log"] - 1
        print(f"recording at width {m}: log {res['record_overhead_log']:+.1%}, "
              f"all {res['record_overhead_all']:+.1%} against first+last only; on top of log, "
              f"the Jacobian at \"log\" (the default) {res['jacobian_overhead']:+.1%}, the "
              f"spectra {res['spectra_overhead']:+.1%}")

    def part_compilations():
        # compilations for cohorts that differ only in η (a shape not compiled before)
        m = 40 if smoke else 264
        fresh, seeds = (d, m, m, k), np.arange(2)
        compiled = []

        def listener(event, duration, **kw):
            if event.endswith("backend_compile_duration") and "_cohort" in kw.get("fun_name", ""):
                compiled.append(kw["fun_name"])

        jax.monitoring.register_event_duration_secs_listener(listener)
        for scale in (1.0, 3.0, 7.0):
            normsweep_run(fresh, n, lrs * scale, seeds, np.array([0, 1, 2]), x, y)
        jax.monitoring.unregister_event_duration_listener(listener)
        res["compilations_for_3_lr_cohorts"] = len(compiled)
        print(f"programs compiled for 3 cohorts differing only in η: "
              f"{res['compilations_for_3_lr_cohorts']} (init and segment, once)")

    def part_memory():
        short, long = (200, 2000) if smoke else (1000, 100_000)
        res["peak_rss_short"], res["peak_rss_long"] = peak_rss(short), peak_rss(long)
        print(f"peak memory, log recording: {res['peak_rss_short'] / 2**20:.0f} MiB at "
              f"{short} steps, "
              f"{res['peak_rss_long'] / 2**20:.0f} MiB at {long} steps")

    def part_long():
        # the table's cohorts run a few hundred steps, so that its 64 log-spaced
        # records fall on up to every step: a sweep runs longer, and its records
        # thin out. Best of 2 runs per width (a single run here has drifted by
        # 15%), its compilation done before it is timed
        rows = res["long"] = []
        for m, steps in cfg["long"]:
            dims, seeds = (d, m, m, k), np.arange(2)
            members = len(lrs) * len(seeds)
            sched = plan.record_steps(steps, "log", 64)
            prog = train.Program(dims=dims)
            lr, ik, pk = member_args(lrs, seeds)
            train.compile_members(prog, x, y, lr, ik, pk, sched)
            t = best_of(lambda prog=prog, lr=lr, ik=ik, pk=pk, sched=sched:
                        train.train_members(prog, x, y, lr, ik, pk, sched),
                        1 if smoke else 2)
            flop = 6 * n * params(dims) * members * steps
            rows.append({"width": m, "members": members, "steps": steps, "records": len(sched),
                         "seconds": t, "fraction_of_matmul": flop / t / res["matmul_flops"]})
            save()
            print(f"long run, width {m} × {members} networks, {steps} steps, {len(sched)} records "
                  f"(log): {flop / t / 1e9:.1f} GFLOP/s, {rows[-1]['fraction_of_matmul']:.0%} of "
                  f"matmul over the whole run ({t:.1f} s)")

    def part_ahead():
        # compiling the next cohorts while one trains (launch's compile workers), against
        # compiling each as it starts: whole launches in fresh processes
        widths, depths, n_ahead, steps = cfg["ahead"]
        grid = compile_ahead_grid(widths, depths, n_ahead, steps)
        with tempfile.TemporaryDirectory() as tmp:
            alone = launch_seconds(grid, f"{tmp}/alone", "0", cache=smoke)
            ahead = launch_seconds(grid, f"{tmp}/ahead", "default", cache=smoke)
        res["compile_ahead"] = {"cohorts": len(widths) * len(depths), "seconds_without": alone,
                                "seconds_with": ahead, "speedup": alone / ahead}
        print(f"launch of {len(widths) * len(depths)} cohorts (widths {widths}, depths {depths}, "
              f"n = {n_ahead}, {steps} steps), "
              f"{'cache on (smoke)' if smoke else 'no compilation cache'}: "
              f"{alone:.1f} s compiling each "
              f"cohort as it starts, {ahead:.1f} s compiling the next ones while one trains "
              f"(×{alone / ahead:.2f})")

    def part_sweep():
        # a whole launch in a fresh process, into a fresh compilation cache,
        # split into what its launching thread did; the same launch again (the
        # cache warm); then recording only the first and last steps with no
        # probes, whose training is the steps alone: the difference is the
        # records' cost
        name, grid = sweep_grid()
        parsed = config_mod.parse(grid, source=name)
        steps = parsed.train.steps
        bare = (f"record.steps={steps}", "record.jacobian_norm=0", "record.sharpness=0",
                "record.ntk_eigs=0", "record.activations=0", "record.spectra=false")
        with tempfile.TemporaryDirectory() as tmp:
            # into a fresh compilation cache: cold, as a first launch is
            os.mkdir(f"{tmp}/cache")
            full = launch_split(grid, f"{tmp}/sweep", "default", cache=f"{tmp}/cache",
                                overrides=tuple(args.set))
            wall = full["wall"]
            res["sweep"] = {"grid": name, "set": args.set,
                            "cohorts": len(plan.cohorts(parsed)), "wall_s": wall,
                            "launching_thread_s": {k: full.get(k, 0.0) for k in
                                                   ("compile", "wait", "train", "write")},
                            "compile_ahead_s": full.get("compile_ahead", 0.0),
                            "compile_workers": full["workers"],
                            "training_share": full.get("train", 0.0) / wall}
            save()          # the launch's own figures, should the second launch run out of time
            print(f"launch of {name}, cold compilation cache"
                  f", {full['workers']} compile thread(s): {wall:.1f} s wall; the compile "
                  f"threads compiled for {full.get('compile_ahead', 0.0):.1f} s beside it")
            if args.one_launch:
                print_split("  the launching thread's time (training includes the records):",
                            res["sweep"]["launching_thread_s"], wall)
                return
            # the same launch again, its programs in the cache now
            warm = launch_split(grid, f"{tmp}/warm", "default", cache=f"{tmp}/cache",
                                overrides=tuple(args.set))
            steps_only = launch_split(grid, f"{tmp}/bare", "default", cache=smoke,
                                      overrides=(*args.set, *bare))
        res["sweep"]["warm_wall_s"] = warm["wall"]
        # the CPU seconds of each launch, compiler's and training's, over this
        # host's cores: the wall of the cores' whole time (XLA's thread pools
        # spin a little while idle, so it is the work as run, not a strict floor)
        cores = resources.host_cores()
        res["sweep"]["cpu_s"] = {"cold cache": full["cpu"], "warm cache": warm["cpu"],
                                 "cores": cores}
        res["sweep"]["wall_over_training"] = {"cold cache": wall / full["train"],
                                              "warm cache": warm["wall"] / warm["train"]}
        split = {"compile": full.get("compile", 0.0), "wait for compile": full.get("wait", 0.0),
                 "train (steps)": steps_only.get("train", 0.0),
                 "record": full.get("train", 0.0) - steps_only.get("train", 0.0),
                 "write": full.get("write", 0.0)}
        split["rest"] = wall - sum(split.values())
        res["sweep"].update(split_s=split, steps_only_wall_s=steps_only["wall"])
        print_split("  the launching thread's time:", split, wall)
        print(f"  the same launch recording only the first and last steps, no probes: "
              f"{steps_only['wall']:.1f} s wall")
        print("  wall / training (the launching thread's, records included): " + ", ".join(
            f"{k} ×{v:.2f}" for k, v in res["sweep"]["wall_over_training"].items()) +
            f" (warm: {warm['wall']:.1f} s wall)")
        print(f"  CPU seconds, all threads: cold {full['cpu']:.1f} s, warm {warm['cpu']:.1f} s; "
              f"the cold launch's, spread over {cores} cores, {full['cpu'] / cores:.1f} s "
              f"(×{full['cpu'] / cores / full['train']:.2f} its training)")

    def print_split(title, seconds, wall):
        print(title)
        for part, sec in seconds.items():
            print(f"    {sec:8.1f} s  {sec / wall:5.0%}  {part}")

    def sweep_grid():
        name, grid = (os.path.basename(args.grid).removesuffix(".toml"), args.grid) \
            if args.grid else cfg["sweep"]
        if grid.endswith(".toml"):          # a file of the repository's, or --grid
            path = grid if args.grid else os.path.join(os.path.dirname(__file__), "..", grid)
            with open(path) as f:
                grid = f.read()
        return name, grid

    def part_programs():
        # what each cohort of the sweep compiles: kernels per program, counted
        # with the accelerator's unrolling where this is a CPU
        name, grid = sweep_grid()
        unrolled = jax.default_backend() == "cpu"
        rows = program_sizes(grid, unrolled, tuple(args.set))
        totals = {}
        for row in rows:
            for program, count in row["kernels"].items():
                totals[program] = totals.get(program, 0) + count
        res["programs"] = {"grid": name, "set": args.set, "unrolled_as_accelerator": unrolled,
                           "cohorts": rows,
                           "kernels": totals,
                           "compile_s": sum(r["compile_s"] for r in rows),
                           "trace_lower_s": sum(r["trace_lower_s"] for r in rows)}
        how = " with an accelerator's unrolling" if unrolled else ""
        print(f"programs of {name} ({len(rows)} cohorts, kernels{how}): "
              + ", ".join(f"{p} {c:,}" for p, c in totals.items())
              + f"; compiled one after another in {res['programs']['compile_s']:.1f} s, of "
              f"which {res['programs']['trace_lower_s']:.1f} s tracing and lowering (Python, "
              "under the GIL)")
        for row in rows:
            print(f"    {row['cohort']:>22s}  {row['compile_s']:5.1f} s "
                  f"({row['trace_lower_s']:4.1f} s traced and lowered)  "
                  + ("  ".join(f"{p} {c}" for p, c in row["kernels"].items())
                     if row["kernels"] else f"the program of {row['program_of']}"))

    def part_compile():
        # a cohort's compilation alone, then its first and second runs, in
        # fresh processes, under each set of XLA flags
        m, n_seeds, steps, variants = cfg["compile"]
        rows = res["compile_split"] = []
        for variant in variants:
            row = {"xla_flags": variant.get("xla_flags", ""), "unroll": variant.get("unroll", 0),
                   "trace": variant.get("trace", False), "again": variant.get("again", False),
                   "env": variant.get("env", {}),
                   "width": m, "members": 4 * n_seeds, "steps": steps,
                   **compile_split(m, n_seeds, steps, n, **variant)}
            rows.append(row)
            save()
            label = ", ".join(f"{k} {v!r}" for k, v in variant.items()) or "as set"
            if "error" in row:
                print(f"width {m} × {4 * n_seeds} networks ({label}): failed\n{row['error']}")
                continue
            print(f"width {m} × {4 * n_seeds} networks ({label}): compiled in "
                  f"{row['compile_s']:.1f} s, then trained in {row['first_run_s']:.2f} s "
                  f"(first run) and {row['second_run_s']:.2f} s (second)"
                  + (f"; {4 * n_seeds + 4} networks then compiled in "
                     f"{row['next_cohort_compile_s']:.1f} s" if row["again"] else ""))
            for name, p in row["programs"].items():
                print(f"    {name:8s} traced {p['trace_s']:5.2f} s, lowered {p['lower_s']:5.2f} s, "
                      f"compiled {p['compile_s']:6.2f} s, {p['kernels']} kernels")
            for program, events in row["compiler_events"].items():
                print(f"    {program}: the compiler's phases and passes with the most exclusive "
                      "host time, over threads (seconds exclusive | inclusive, count):")
                for name, e in list(events.items())[:12]:
                    print(f"      {e['seconds']:7.2f} | {e['inclusive']:7.2f} "
                          f"{e['count']:6d}  {name}")

    def part_profile():
        rows = res["profile"] = []
        for m, n_seeds, steps in cfg["profile"]:
            rows.append(profile_width(m, n_seeds, steps))
            save()

    def profile_width(m, n_seeds, steps):
        # a step between records, and what recording a step adds to it, from three
        # schedules (best of 3 interleaved), against one network's jitted step in a
        # loop; then jax.profiler traces of the runs recording every step and only the
        # first and last, their kernels attributed to the source that wrote them
        dims, seeds = (d, m, m, k), np.arange(n_seeds)
        members = len(lrs) * n_seeds
        schedules = {"first+last": np.array([0, steps]), "first+last, twice the steps":
                     np.array([0, 2 * steps]), "every step": plan.record_steps(steps, "all")}
        best = interleaved(dims, seeds, schedules)
        step_s = (best["first+last, twice the steps"] - best["first+last"]) / steps
        record_s = (best["every step"] - best["first+last"]) / (steps - 1)
        flop = 6 * n * params(dims) * members
        loop_s = baseline_run(dims, x, y, 1e-3, 3 if smoke else steps, svd=False) * members
        prog = train.Program(dims=dims)
        lr, ik, pk = member_args(lrs, seeds)
        profiled = {}          # thread seconds per group, per step of each run
        for label in ("every step", "first+last, twice the steps"):
            sched = schedules[label]
            frames = xprof.source_frames(
                train.compile_members(prog, x, y, lr, ik, pk, sched)["segment"].as_text())
            with tempfile.TemporaryDirectory() as tmp:
                with jax.profiler.trace(tmp):
                    train.train_members(prog, x, y, lr, ik, pk, sched)
                kernels = xprof.kernel_seconds(tmp, frames.module)
            per_step = int(sched[-1]) + (label == "every step")    # the last record's step too
            profiled[label] = {g: sec / per_step for g, sec in
                               xprof.attribute(kernels, frames, segment_group).items()}
        step_s = max(step_s, 1e-9)     # (a smoke run's steps are within its noise)
        row = {"width": m, "members": members, "steps": steps, "step_s": step_s,
               "step_fraction_of_matmul": flop / step_s / res["matmul_flops"],
               "loop_step_s": loop_s, "record_extra_s": record_s,
               "record_extra_steps": record_s / step_s, "thread_s_per_step": profiled}
        print(f"profile, width {m} × {members} networks: a step between records takes "
              f"{step_s * 1e3:.1f} ms ({row['step_fraction_of_matmul']:.0%} of matmul; "
              f"{loop_s * 1e3:.1f} ms for as many steps of one network at a time in a jitted "
              f"loop); recording a step adds {record_s * 1e3:.1f} ms "
              f"({record_s / step_s:.2f} of a step)")
        print("  thread time per step of the segment program (jax.profiler), recording every "
              "step | first and last only:")
        every, sparse = profiled["every step"], profiled["first+last, twice the steps"]
        for group in sorted(set(every) | set(sparse), key=lambda g: -every.get(g, 0)):
            print(f"    {every.get(group, 0) * 1e3:8.1f} ms | {sparse.get(group, 0) * 1e3:8.1f} ms"
                  f"  {group}")
        return row

    run = {"table": part_table, "precision": part_precision, "record": part_record,
           "compilations": part_compilations, "memory": part_memory, "ahead": part_ahead,
           "compile": part_compile, "sweep": part_sweep, "programs": part_programs,
           "profile": part_profile, "long": part_long}
    save()
    for part in parts:     # in the order asked for; each part's figures saved as it ends
        run[part]()
        save()


if __name__ == "__main__":
    main()
