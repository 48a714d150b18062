"""Where a compiled program's time goes, by the Python function that wrote
each operation: a `jax.profiler` trace of the program's runs, its kernels
(XLA thunks) mapped to source through the stack frames that JAX stores in
the optimised HLO.

    frames = source_frames(compiled.as_text())
    with jax.profiler.trace(tmp):
        ...                                       # run the program
    kernels = kernel_seconds(tmp, frames.module)  # seconds per kernel, and who ran it
    by_group = attribute(kernels, frames, group)  # {group(stack): seconds}

and where a compilation's time goes, by the compiler's own trace events:

    with jax.profiler.trace(tmp, profiler_options=quiet_options()):
        ...                                       # compile
    events = host_event_seconds(tmp)              # seconds per compiler phase or pass
    per_program = host_event_seconds(tmp, windows="normsweep compile ")

A kernel's time is its exclusive time on its thread (a loop's time less the
kernels it runs), summed over threads and runs: on a CPU, the thread time of
XLA's runtime (the threads of a matmul library's own pool are not traced, so
matmuls count once, on the thread that called them). A kernel that carries
no source (the body of a loop, made by XLA) takes the source of the kernel
that ran it.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re

import jax

_SECTIONS = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


@dataclasses.dataclass
class Frames:
    """The stack of every instruction of an optimised HLO module that has
    one, innermost call first, as "function:line" strings."""
    module: str
    stacks: dict[str, tuple[str, ...]]


def source_frames(hlo_text: str) -> Frames:
    """Parses the module's name, its stack-frame tables and each
    instruction's `stack_frame_id`. XLA prints a frame's parent as the
    parent's id + 1 (0: none)."""
    module = re.match(r"HloModule (\S+?),?\s", hlo_text).group(1)
    functions, locations, parents = {}, {}, {}
    section = None
    stacks_of = {}
    for line in hlo_text.splitlines():
        s = line.strip()
        if s in _SECTIONS:
            section = s
            continue
        if section and s[:1].isdigit():
            key, rest = s.split(" ", 1)
            key = int(key)
            fields = dict(re.findall(r"(\w+)=(\d+)", rest))
            if section == "FunctionNames":
                functions[key] = rest.strip('"')
            elif section == "FileLocations":
                locations[key] = (f"{functions[int(fields['function_name_id'])]}:"
                                  f"{fields['line']}")
            elif section == "StackFrames":
                parents[key] = (int(fields["file_location_id"]), int(fields["parent_frame_id"]))
            continue
        section = None
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?stack_frame_id=(\d+)", line)
        if m:
            stacks_of[m.group(1)] = int(m.group(2))

    def stack(frame: int) -> tuple[str, ...]:
        out, seen = [], set()
        while frame in parents and frame not in seen:
            seen.add(frame)
            location, parent = parents[frame]
            out.append(locations[location])
            frame = parent - 1
        return tuple(out)

    return Frames(module, {op: stack(f) for op, f in stacks_of.items()})


def _newest_trace(trace_dir: str):
    """The newest trace that `jax.profiler.trace(trace_dir)` wrote."""
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                  key=os.path.getmtime)[-1]
    return jax.profiler.ProfileData.from_file(path)


def _nested(events) -> list[list]:
    """[start, end, key, own seconds, key of the enclosing event or None] for
    each (start_ns, end_ns, key) of one thread: own seconds are the event's
    less those of the events nested in it."""
    spans, open_ = [], []
    for start, end, key in sorted(events, key=lambda e: (e[0], -e[1])):
        while open_ and open_[-1][1] <= start:
            open_.pop()
        outer = open_[-1] if open_ else None
        if outer:
            outer[3] -= (min(end, outer[1]) - start) * 1e-9
        span = [start, end, key, (end - start) * 1e-9, outer[2] if outer else None]
        spans.append(span)
        open_.append(span)
    return spans


def kernel_seconds(trace_dir: str, module: str) -> dict[str, dict[str, float | str]]:
    """{"seconds": exclusive seconds per kernel of `module` (its `hlo_op`),
    summed over threads and runs (a loop's time less that of the kernels it
    ran); "parent": the kernel that ran each nested one}, from the newest
    trace that `jax.profiler.trace(trace_dir)` wrote."""
    seconds: dict = collections.Counter()
    parent: dict[str, str] = {}
    for plane in _newest_trace(trace_dir).planes:
        for line in plane.lines:
            events = []
            for ev in line.events:
                stats = dict(ev.stats)
                if stats.get("hlo_module") == module and "hlo_op" in stats:
                    events.append((ev.start_ns, ev.start_ns + ev.duration_ns, stats["hlo_op"]))
            for _, _, op, own, outer in _nested(events):
                seconds[op] += own
                if outer is not None:
                    parent.setdefault(op, outer)
    return {"seconds": dict(seconds), "parent": parent}


def quiet_options():
    """Profiler options that leave out the Python tracer, whose events would
    drown the compiler's and slow what is timed."""
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    return options


def host_event_seconds(trace_dir: str, windows: str | None = None) -> dict:
    """{event name: {"seconds": exclusive, "inclusive": seconds, "count": n}}
    over the host threads of the newest trace in `trace_dir` (the Python
    tracer's frames left out), an event's exclusive time being its own less
    that of the events nested in it on its thread. Names lose a trailing
    program name ("simplification (jit_f)" counts as "simplification"), so
    that a phase sums over programs.

    With `windows`, the events whose names start with it (trace annotations,
    say "normsweep compile ") cut the time into windows, and the result is
    {window's event name: {event name: ...}} over the events that start
    within each ("" for the events outside every window), whatever their
    thread: a compiler's worker threads are not nested in its caller's
    events."""
    spans = []
    for plane in _newest_trace(trace_dir).planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            spans += _nested((ev.start_ns, ev.start_ns + ev.duration_ns,
                              re.sub(r"[ :]\(?jit_[\w.]+\)?$", "", ev.name))
                             for ev in line.events if not ev.name.startswith("$"))
    cuts = sorted((s[0], s[1], s[2]) for s in spans if windows and s[2].startswith(windows))
    out: dict = {}
    for start, end, name, own, _ in spans:
        window = next((w[2] for w in cuts if w[0] <= start < w[1]), "")
        entry = out.setdefault(window, {}).setdefault(
            name, {"seconds": 0.0, "inclusive": 0.0, "count": 0})
        entry["seconds"] += own
        entry["inclusive"] += (end - start) * 1e-9
        entry["count"] += 1
    return out if windows else out.get("", {})


def attribute(kernels: dict, frames: Frames, group) -> dict[str, float]:
    """Seconds per group(stack): `group` maps a kernel's stack (innermost
    first; empty if neither it nor the kernels that ran it carry a source)
    to a label."""
    def stack(op):
        seen = set()
        while op not in frames.stacks and op in kernels["parent"] and op not in seen:
            seen.add(op)
            op = kernels["parent"][op]
        return frames.stacks.get(op, ())

    out: dict = collections.Counter()
    for op, s in kernels["seconds"].items():
        out[group(stack(op))] += s
    return dict(out)
