"""Progress that suits where the output goes: a tqdm bar on a terminal (or in Jupyter), plain log lines elsewhere.

With stderr redirected to a file (a cluster job's log, CI) a bar's carriage-return refreshes fill the log with
hundreds of kilobytes; there, :func:`progress_bar` logs one line per 10 % of the work instead (through the
``medseg.progress`` logger, so the lines carry the logging format and go where logging goes). Every medseg loop uses
this module rather than tqdm directly.

Set ``MEDSEG_PROGRESS=bar`` or ``MEDSEG_PROGRESS=lines`` to force one style.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

log = logging.getLogger("medseg.progress")

#: Fraction of the work between two log lines off a terminal.
LINE_STEP = 0.1


def use_bars(stream=None) -> bool:
    """True when progress should be drawn as bars: ``stream`` (default stderr) is a terminal, or Jupyter runs us."""
    forced = os.environ.get("MEDSEG_PROGRESS", "").lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    if "ipykernel" in sys.modules:
        return True
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """tqdm's small interface (``update``, ``set_postfix``, ``close``, iteration, ``with``) as log lines.

    A line is logged each time another 10 % of ``total`` is done (``desc: 30% (30/100 case) 12.0 s, 2.5 case/s``),
    and one at the end when the work had no total or stopped early.
    """

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", initial: int = 0):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.desc = desc or "progress"
        self.unit = unit
        self.n = initial
        self.postfix = ""
        self.started = time.perf_counter()
        self._done_at_start = initial
        self._last_step = self._step()
        self._last_logged = initial
        self._closed = False

    def _step(self) -> int:
        if not self.total:
            return 0
        return int(self.n / self.total / LINE_STEP + 1e-9)

    def _log(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = (self.n - self._done_at_start) / elapsed if elapsed > 0 else 0.0
        done = f"{100 * self.n / self.total:.0f}% ({self.n}/{self.total} {self.unit})" if self.total else \
            f"{self.n} {self.unit}"
        extra = f", {self.postfix}" if self.postfix else ""
        log.info("%s: %s %.1f s, %.2f %s/s%s", self.desc, done, elapsed, rate, self.unit, extra)
        self._last_logged = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        step = self._step()
        if step > self._last_step:
            self._last_step = step
            self._log()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def close(self) -> None:
        if not self._closed and self.n != self._last_logged:
            self._log()
        self._closed = True

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(LineProgress):
    def _log(self) -> None:
        pass


def progress_bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", disable: bool = False,
                 initial: int = 0, **tqdm_options):
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere, nothing visible when ``disable``.

    Takes the arguments of ``tqdm(...)`` that medseg uses; other tqdm options (``dynamic_ncols``...) apply to the
    bar only. A transient bar (``leave=False``, e.g. the slices of one volume inside a loop over cases that logs its
    own line per case) logs nothing off a terminal.
    """
    if disable or (tqdm_options.get("leave") is False and not use_bars()):
        return _Silent(iterable, total=total, desc=desc, unit=unit, initial=initial)
    if use_bars():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, **tqdm_options)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)


@contextlib.contextmanager
def logging_redirect():
    """While bars are drawn, print log lines above the bar instead of through it (tqdm's redirect)."""
    if use_bars():
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            yield
    else:
        yield
