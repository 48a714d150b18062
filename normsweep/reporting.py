"""What a launch reports while it runs (`Reporter`) and when it is done
(`Summary`), without JAX: the command line imports these at start-up."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path


@dataclasses.dataclass
class Summary:
    """What a launch did."""
    root: Path
    cohorts: int
    trained: list[str]
    skipped: list[str]
    networks: int
    diverged: int
    seconds: float
    left: list[str] = dataclasses.field(default_factory=list)   # not done (`only`): no sweep.nc
    new: int = 0            # networks this launch trained
    kept: int = 0           # networks of the selected cohorts already on disk


class Reporter:
    """Progress callbacks; the default does nothing (see cli.RichReporter)."""

    def start(self, cohorts: int, skipped: int, work: dict[str, float] | None = None) -> None:
        ...
    def cohort(self, name: str, steps: int) -> None: ...
    def advance(self, steps: int) -> None: ...
    def done(self, name: str, where: str = "") -> None: ...

    def warn(self, message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
