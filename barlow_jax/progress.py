"""Progress of long operations: one updating line on a terminal, a few lines elsewhere.

    with Progress("Decoding train", total=50000, unit="images") as p:
        for _ in work:
            p.update(1)

On a terminal the line is rewritten in place (``\\r``) at most every
``TTY_INTERVAL`` seconds; in logs and notebooks (not a TTY) a new line is
printed about every 25% of the work (and not more often than every
``LINE_INTERVAL`` seconds), so a 10-minute job writes a handful of lines.
Each line reads ``what: done/total unit (pct%), rate/s, ETA m:ss``; the last
one ``what: total unit in 12.3s``. Operations that finish within
``QUIET_SECONDS`` print only that last line (none with ``summary=False``, for
callers that report the time themselves).
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

TTY_INTERVAL = 0.5
LINE_INTERVAL = 5.0
LINE_FRACTION = 0.25
QUIET_SECONDS = 2.0


def format_eta(seconds: float) -> str:
    if not seconds == seconds or seconds == float("inf"):  # NaN / inf
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts ``update(n)`` calls towards ``total``; see the module docstring."""

    def __init__(self, what: str, total: int, unit: str = "items",
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 summary: bool = True, clock=time.monotonic):
        self.what, self.total, self.unit = what, max(int(total), 0), unit
        self.stream = stream if stream is not None else sys.stdout
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.clock = clock
        self.done_count = 0
        self.start = clock()
        self._last_print = self.start
        self._next_fraction = LINE_FRACTION
        self._tty_dirty = False
        self._printed = False
        self.summary = summary
        self.closed = False

    def line(self) -> str:
        elapsed = self.clock() - self.start
        rate = self.done_count / elapsed if elapsed > 0 else float("nan")
        pct = 100.0 * self.done_count / self.total if self.total else 100.0
        eta = (self.total - self.done_count) / rate if rate and rate == rate else float("nan")
        rate_text = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
        return (f"{self.what}: {self.done_count:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
                f"{rate_text}/s, ETA {format_eta(eta)}")

    def _emit(self, text: str, end: str = "\n"):
        self._printed = True
        self.stream.write(text + end)
        self.stream.flush()

    def update(self, n: int = 1):
        self.done_count += int(n)
        now = self.clock()
        if now - self.start < QUIET_SECONDS or self.done_count >= self.total:
            return
        if self.tty:
            if now - self._last_print >= TTY_INTERVAL:
                self._emit("\r" + self.line() + "\033[K", end="")
                self._last_print, self._tty_dirty = now, True
        elif (self.total and self.done_count / self.total >= self._next_fraction
              and now - self._last_print >= LINE_INTERVAL):
            self._emit(self.line())
            self._last_print = now
            while self._next_fraction <= self.done_count / self.total:
                self._next_fraction += LINE_FRACTION

    def close(self, note: str = ""):
        """Prints the final line (``note`` appended) once (see ``summary``)."""
        if self.closed:
            return
        self.closed = True
        if not (self.summary or self._printed):
            return
        text = (f"{self.what}: {self.done_count:,} {self.unit} in "
                f"{self.clock() - self.start:.1f}s" + (f"; {note}" if note else ""))
        self._emit(("\r" if self._tty_dirty else "") + text + ("\033[K" if self._tty_dirty else ""))

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None:
            self.close()
        elif self._tty_dirty:
            self._emit("")  # leave the partial line; the error starts on a new one
        return False
