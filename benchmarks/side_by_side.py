"""Side-by-side timing: every ratio in RESULTS.md comes from here.

Both sides of a ratio run in the same process, alternating over several rounds (A, B, C, then C, B, A in the next
round, so that neither side always runs first after a pause); the ratio of one round is ``time(reference) /
time(side)`` of that round, and what is reported is the median over rounds with the smallest and largest round's
ratio (the spread) and the load average before and after. On a machine shared with other jobs the load moves both
sides of a round alike, so the per-round ratio is steadier than either time.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field


def command_text(script: str) -> str:
    """How this run was started, for a RESULTS.md section: ``python benchmarks/X.py ARGS`` (OMP_WAIT_POLICY=...)."""
    command = " ".join([f"python benchmarks/{script}"] + sys.argv[1:])
    return f"`{command}` (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"


def load_average() -> str:
    """The 1/5/15-minute load average as ``a/b/c`` (``n/a`` where the OS has none)."""
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


@dataclass
class SideBySide:
    """Times of each side per round (seconds) and the load average around the rounds."""

    reference: str
    times: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)  # the last result of each side
    load_before: str = ""
    load_after: str = ""

    @property
    def rounds(self) -> int:
        return len(self.times[self.reference])

    def ratios(self, side: str) -> list[float]:
        """Per-round ``time(reference) / time(side)``: above 1 means ``side`` is faster."""
        return [r / s for r, s in zip(self.times[self.reference], self.times[side])]

    def ratio(self, side: str) -> float:
        return statistics.median(self.ratios(side))

    def spread(self, side: str) -> tuple[float, float]:
        ratios = self.ratios(side)
        return min(ratios), max(ratios)

    def median_time(self, side: str) -> float:
        return statistics.median(self.times[side])

    def ratio_text(self, side: str) -> str:
        """``1.23x (1.20-1.27)``: the median of per-round ratios and their range."""
        low, high = self.spread(side)
        return f"{self.ratio(side):.2f}x ({low:.2f}-{high:.2f})"


def alternate(sides: dict, rounds: int, reference: str, sync=None, on_round=None) -> SideBySide:
    """Run each side once per round, alternating the order, and time it.

    Args:
        sides: ``{name: zero-argument callable}``; the callables' results are kept (the last round's).
        rounds: number of rounds (every side runs once per round).
        reference: the name of the side the ratios are taken against.
        sync: called before and after each timed call (e.g. ``torch.cuda.synchronize``).
        on_round: called as ``on_round(round_index, {name: seconds})`` after each round (progress lines).
    """
    if reference not in sides:
        raise ValueError(f"reference side {reference!r} is not among {list(sides)}")
    result = SideBySide(reference=reference, times={name: [] for name in sides}, load_before=load_average())
    names = list(sides)
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        this_round = {}
        for name in order:
            if sync:
                sync()
            start = time.perf_counter()
            value = sides[name]()
            if sync:
                sync()
            this_round[name] = time.perf_counter() - start
            result.results[name] = value
        for name in names:
            result.times[name].append(this_round[name])
        if on_round:
            on_round(index, this_round)
    result.load_after = load_average()
    return result
