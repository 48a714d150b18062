"""Where a compiled program's time goes, by the Python function that wrote
each operation: a `jax.profiler` trace of the program's runs, its kernels
(XLA thunks) mapped to source through the stack frames that JAX stores in
the optimised HLO.

    frames = source_frames(compiled.as_text())
    with jax.profiler.trace(tmp):
        ...                                       # run the program
    kernels = kernel_seconds(tmp, frames.module)  # seconds per kernel, and who ran it
    by_group = attribute(kernels, frames, group)  # {group(stack): seconds}

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


def kernel_seconds(trace_dir: str, module: str) -> dict[str, dict[str, float | str]]:
    """{"seconds": exclusive seconds per kernel of `module` (its `hlo_op`),
    summed over threads and runs (a loop's time less that of the kernels it
    ran); "parent": the kernel that ran each nested one}, from the newest
    trace that `jax.profiler.trace(trace_dir)` wrote."""
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                  key=os.path.getmtime)[-1]
    data = jax.profiler.ProfileData.from_file(path)
    seconds: dict = collections.Counter()
    parent: dict[str, str] = {}
    for plane in data.planes:
        for line in plane.lines:
            events = []
            for ev in line.events:
                stats = dict(ev.stats)
                if stats.get("hlo_module") == module and "hlo_op" in stats:
                    events.append((ev.start_ns, ev.start_ns + ev.duration_ns, stats["hlo_op"]))
            events.sort(key=lambda e: (e[0], -e[1]))
            open_ = []
            for start, end, op in events:
                while open_ and open_[-1][1] <= start:
                    open_.pop()
                if open_:
                    outer = open_[-1]
                    seconds[outer[2]] -= (min(end, outer[1]) - start) * 1e-9
                    parent.setdefault(op, outer[2])
                seconds[op] += (end - start) * 1e-9
                open_.append((start, end, op))
    return {"seconds": dict(seconds), "parent": parent}


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
