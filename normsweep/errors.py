"""Errors normsweep raises, split by who has to act.

`GridError` is a usage error (exit status 2): the grid file, a command-line
option or a results folder does not fit what the command was asked to do.
`RunError` is a failure at run time (exit status 1): a write failed, a file on
disk is damaged. Both carry a message meant for a person, naming the file, the
key, the value and what is allowed.
"""
from __future__ import annotations


class NormsweepError(Exception):
    """Base class of the errors normsweep raises on purpose."""


class GridError(NormsweepError):
    """A grid file (or a setting derived from one) is not acceptable.

    Args:
      source: the file (or option) the bad value came from.
      key: the dotted key, e.g. ``grid.width``; None for the file as a whole,
        whose message is then `allowed` alone, a sentence.
      value: the offending value, as read.
      allowed: what would have been accepted, in words.
    """

    def __init__(self, source: str, key: str | None, value: object, allowed: str):
        self.source, self.key, self.value, self.allowed = source, key, value, allowed
        super().__init__(allowed if key is None else f"{source}: {key} = {_show(value)}: {allowed}")


class RunError(NormsweepError):
    """A failure while running (I/O, damaged files): exit status 1."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class SweepWarning(RuntimeWarning):
    """Something about a results folder the reader should know: a partial
    sweep, a cohort file left out, a stale sweep.nc recombined."""
